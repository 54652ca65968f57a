"""Opening the database safely from several processes: the one home of the lock protocol.

DuckDB allows one read-write process or many read-only ones per file. So nobody holds
the file open for long: readers open read-only connections and close them; a label
write takes a lock file, opens read-write for one short transaction, and closes. The
indexer builds a new file and moves it into place under the same lock, carrying over
the labels as they are at that moment, so no label written meanwhile is lost.

The lock is an flock on `DB.lock` beside the database: writers hold it exclusively,
and readers wait (at most LOCK_WAIT_S, then one clear message) while a writer holds
it, instead of failing on DuckDB's own file lock. A reader never creates the lock file,
so a database in a read-only folder stays readable; a writer first checks that the
database and its folder are writable (its mode bits too, so a file marked read-only
stays so even for root) and that the database exists, so a refused write leaves
nothing behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path

import duckdb

from index.store.schema import HUMAN_TABLES, check_version, migrate
from solu.errors import UserError, first_line
from solu.outputs import writable

LOCK_WAIT_S = 10.0  # readers wait this long for a writer
WRITE_WAIT_S = 30.0  # writers wait this long for each other
_POLL_S = 0.02


def is_lock_conflict(e: Exception) -> bool:
    """DuckDB's "Could not set lock on file ... Conflicting lock is held": another process
    has the file open. The word, not the letters (a damaged file's "Could not read block"
    is no lock), and not in a quoted path (a folder named lock)."""
    text = re.sub(r'"[^"]*"', "", str(e).lower())
    return re.search(r"\block\b", text) is not None


def _connect(db: Path, read_only: bool, config: dict | None = None) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return duckdb.connect(str(db), read_only=read_only, config=config or {})
        except duckdb.IOException as e:
            if is_lock_conflict(e) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
                continue
            if is_lock_conflict(e):
                raise UserError(f"{db} is busy: another process kept it open for writing for {LOCK_WAIT_S:g}s; "
                                f"try again") from None
            if isinstance(e, duckdb.PermissionException) or "permission" in str(e).lower():
                raise UserError(f"cannot open {db}: permission denied") from None
            raise UserError(f"{db} is not a DuckDB database") from None
        except duckdb.Error as e:
            raise UserError(f"cannot open {db}: {first_line(e)}") from None


def open_read(db: str | Path, config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection to an existing index, checked against its schema; use it in a
    `with` block (a DuckDB connection closes at the end of one)."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"database {db} not found (build one with 'solu index')")
    wait_for_writers(db)
    con = _connect(db, read_only=True, config=config)
    try:
        if check_version(con) == 0:
            raise UserError(f"{db} is an empty DuckDB file, not a solu index")
    except BaseException:
        con.close()
        raise
    return con


def lock_path(db: str | Path) -> Path:
    return Path(str(db) + ".lock")


def _flock(f, mode: int, wait_s: float, busy: str) -> None:
    """flock(f, mode), polling for at most wait_s; UserError(busy) after that."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise UserError(busy) from None
            time.sleep(_POLL_S)


def wait_for_writers(db: str | Path, wait_s: float = LOCK_WAIT_S, on_wait=None) -> None:
    """Return once no process holds db's write lock, at once if none does; if one does,
    call on_wait() first (the explorer lets go of its connections there). A reader never
    creates the lock file, so this works in a read-only folder."""
    try:
        f = open(lock_path(db), "rb")
    except OSError:  # no lock file: nobody has written this database yet, or it is unreadable
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            _flock(f, fcntl.LOCK_SH, wait_s, f"{db} is busy: another process kept writing it for {wait_s:g}s; "
                                             f"try again")
        fcntl.flock(f, fcntl.LOCK_UN)


def refuse_link(db: str | Path) -> None:
    """A writer never goes through a symbolic link: its lock, its log and the file an index
    build moves into place are named after the path it is given, so through a link they
    would miss the database's own (and a rebuilt index would replace the link)."""
    db = Path(db)
    if db.is_symlink():
        try:
            target = f"to {db.resolve(strict=True)}"
        except (OSError, RuntimeError):
            target = "to nothing (dangling or looping)"
        raise UserError(f"{db} is a symbolic link {target}; give the database's own path to change it")


def check_writable(db: str | Path) -> None:
    """Refuse, before any work, to write a database that is missing, read-only, in a
    read-only folder (where neither its lock file nor DuckDB's WAL could be written) or
    reached through a symbolic link."""
    db = Path(db)
    refuse_link(db)
    if not db.is_file():
        raise UserError(f"database {db} not found (build one with 'solu index')")
    if not writable(db):
        raise UserError(f"{db} is read-only; make it writable (chmod u+w) to change it")
    folder = db.parent
    if not writable(folder):
        raise UserError(f"{db} is in a read-only folder ({folder}); copy it somewhere writable to change it")


@contextlib.contextmanager
def write_lock(db: str | Path, wait_s: float = WRITE_WAIT_S):
    """The advisory lock shared by every writer of `db` (label saves, index swaps). `db`
    need not exist yet (a first index), but its folder must be writable."""
    try:
        f = open(lock_path(db), "ab")
    except OSError as e:
        raise UserError(f"cannot write {db}: its lock file {lock_path(db)} cannot be created "
                        f"({e.strerror or e})") from None
    with f:
        _flock(f, fcntl.LOCK_EX, wait_s, f"{db} is busy: another writer held it for {wait_s:g}s; try again")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def open_write(db: str | Path):
    """A short read-write connection to an existing, writable index under the write lock;
    the schema is migrated first."""
    db = Path(db)
    check_writable(db)
    open_read(db).close()  # a solu index, before the lock file is created beside it
    with write_lock(db):
        con = _connect(db, read_only=False)
        try:
            migrate(con)
            yield con
        finally:
            con.close()
            _drop_empty_wal(db)


def _drop_empty_wal(db: Path) -> None:
    """A commit that failed (a full disk) leaves an empty log beside the file: it holds
    nothing, and no other writer can be between our close and this (we hold the lock)."""
    wal = wal_path(db)
    try:
        if wal.stat().st_size == 0:
            wal.unlink()
    except FileNotFoundError:
        pass


def wal_path(db: str | Path) -> Path:
    """DuckDB's write-ahead log beside a database file."""
    return Path(str(db) + ".wal")


def replace_database(new: Path, db: Path) -> None:
    """Move a freshly built index `new` into place at `db`, first copying in the human
    data (HUMAN_TABLES: labels, studies, study answers) that `db` holds now. Readers with
    the old file open keep reading the old file. A write-ahead log a killed writer left
    beside the old file is read with it (the attach replays it) and then removed, so no
    old log stands beside the new file (DuckDB would replay it there, and refuse it)."""
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
        wal_path(db).unlink(missing_ok=True)  # its human rows were just carried over; readers wait for the lock
        os.replace(new, db)


def sql_path(path: Path) -> str:
    """A file path as a single-quoted SQL string's contents."""
    return str(path.resolve()).replace("'", "''")
