"""Opening the database safely from several processes.

DuckDB allows one read-write process or many read-only ones per file. So nobody holds
the file open for long: readers open read-only connections and close them; a label
write takes a lock file, opens read-write for one short transaction, and closes. The
indexer builds a new file and moves it into place under the same lock, carrying over
the labels as they are at that moment, so no label written meanwhile is lost.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

import duckdb

from index.store.schema import HUMAN_TABLES, check_version, migrate
from solu.errors import UserError

LOCK_WAIT_S = 10.0


def _is_lock_conflict(e: Exception) -> bool:
    return "lock" in str(e).lower()


def _connect(db: Path, read_only: bool, config: dict | None = None) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return duckdb.connect(str(db), read_only=read_only, config=config or {})
        except duckdb.IOException as e:
            if _is_lock_conflict(e) and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            if _is_lock_conflict(e):
                raise UserError(f"{db} is busy (another process is writing it); try again") from None
            raise UserError(f"{db} is not a DuckDB database") from None
        except duckdb.Error as e:
            raise UserError(f"cannot open {db}: {str(e).splitlines()[0]}") from None


def open_read(db: str | Path, config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection to an existing index. Close it when done."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"database {db} not found (build one with 'solu index')")
    con = _connect(db, read_only=True, config=config)
    try:
        if check_version(con) == 0:
            raise UserError(f"{db} is an empty DuckDB file, not a solu index")
    except BaseException:
        con.close()
        raise
    return con


@contextlib.contextmanager
def write_lock(db: str | Path):
    """An advisory lock shared by every writer of `db` (label saves, index swaps)."""
    lock_path = Path(str(db) + ".lock")
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def open_write(db: str | Path):
    """A short read-write connection under the write lock; the schema is migrated first."""
    db = Path(db)
    with write_lock(db):
        con = _connect(db, read_only=False)
        try:
            migrate(con)
            yield con
        finally:
            con.close()


def append_label(db: str | Path, model_id: str, layer: int, neuron: int, label: str, note: str = "",
                 source: str = "human", author: str | None = None, score: float | None = None,
                 status: str | None = None) -> None:
    """Append one label row; earlier rows stay as the label's history."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"database {db} not found")
    with open_write(db) as con:
        con.execute(
            "INSERT INTO labels (label_id, model_id, layer, neuron, label, note, source, author, score, status) "
            "SELECT coalesce(max(label_id), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM labels",
            [model_id, layer, neuron, label, note, source, author, score, status])


def replace_database(new: Path, db: Path) -> None:
    """Move a freshly built index `new` into place at `db`, first copying in the human
    data (HUMAN_TABLES: labels, studies, study answers) that `db` holds now. Readers with
    the old file open keep reading the old file."""
    db, new = Path(db), Path(new)
    with write_lock(db):
        if db.exists():
            con = _connect(new, read_only=False)
            try:
                con.execute(f"ATTACH '{sql_path(db)}' AS old (READ_ONLY)")
                old_tables = {r[0] for r in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'old'").fetchall()}
                con.execute("BEGIN")
                for table in HUMAN_TABLES:
                    if table in old_tables:
                        con.execute(f"DELETE FROM {table}")
                        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM old.{table}")
                con.execute("COMMIT")
                con.execute("DETACH old")
            finally:
                con.close()
        os.replace(new, db)


def sql_path(path: Path) -> str:
    """A file path as a single-quoted SQL string's contents."""
    return str(path.resolve()).replace("'", "''")
