"""Write indexes without ever leaving a half-written database.

The new database is built in a temporary file next to the target: a copy of the
current one (if any), from which the re-indexed models' rows are deleted and into which
their new rows go. Only when every model is written does store.replace_database move it
into place, first copying in the labels as they are at that moment. A crash, Ctrl-C or
kill before then leaves the old file untouched; the temporary file is removed (or, after
a SIGKILL, by the next run).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from index.store.schema import INDEX_TABLES, migrate
from index.store.connection import check_writable, open_read, refuse_link, replace_database, wal_path, write_lock
from solu.errors import UserError
from solu.outputs import alive
from solu.outputs import writable

TEMP_SUFFIX = ".indexing"


WRITE_MEMORY = "512MB"  # DuckDB's own buffers while a model's rows are written (it flushes, then spills)

def check_target(db: Path) -> None:
    """Refuse, before any work, a target that is not a solu index we can write."""
    refuse_link(db)
    if db.is_dir():
        raise UserError(f"--db {db} is a directory")
    if not db.parent.is_dir():
        raise UserError(f"--db {db}: folder {db.parent} does not exist")
    if db.exists():
        check_writable(db)
        open_read(db).close()  # not DuckDB, not ours, or a newer schema: UserError
    elif not writable(db.parent):
        raise UserError(f"--db {db}: folder {db.parent} is read-only")
    elif wal_path(db).exists():  # DuckDB would replay it into the new file
        raise UserError(f"--db {db}: {wal_path(db)} stands beside no database; move it away first")


def _temp_path(db: Path) -> Path:
    return db.with_name(f".{db.name}.{os.getpid()}{TEMP_SUFFIX}")


def remove_stale_temps(db: Path) -> None:
    """Delete temporary files left by indexers that were killed."""
    for path in db.parent.glob(f".{db.name}.*{TEMP_SUFFIX}"):
        pid = path.name[len(db.name) + 2:-len(TEMP_SUFFIX)]
        if pid.isdigit() and not alive(int(pid)):
            _remove(path)


def _remove(path: Path) -> None:
    for p in (path, wal_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


class IndexBuild:
    """with IndexBuild(db) as build: build.write(model_id, tables); ...; build.commit()"""

    def __init__(self, db: str | Path):
        self.db = Path(db)
        self.tmp = _temp_path(self.db)
        self.con: duckdb.DuckDBPyConnection | None = None

    def __enter__(self) -> "IndexBuild":
        check_target(self.db)
        remove_stale_temps(self.db)
        _remove(self.tmp)
        try:
            if self.db.exists():
                with write_lock(self.db):
                    shutil.copyfile(self.db, self.tmp)
                    if wal_path(self.db).exists():  # a killed writer's log goes with the copy, which replays it
                        shutil.copyfile(wal_path(self.db), wal_path(self.tmp))
            self.con = duckdb.connect(str(self.tmp), config={"memory_limit": WRITE_MEMORY})
            migrate(self.con)
        except BaseException:
            self._discard()
            raise
        return self

    def write(self, model_id: str, tables: dict[str, pa.Table]) -> float:
        """Replace one model's rows in every table given; returns seconds taken."""
        start = time.perf_counter()
        con = self.con
        con.execute("BEGIN")
        try:
            for name in INDEX_TABLES:
                if name in tables:
                    con.execute(f"DELETE FROM {name} WHERE model_id = ?", [model_id])
            # matches were computed from the activations being replaced, both ways
            con.execute("DELETE FROM neuron_matches WHERE model_id = ? OR other_model = ?", [model_id, model_id])
            for name, table in tables.items():
                con.register("new_rows", table)
                con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM new_rows")
                con.unregister("new_rows")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return time.perf_counter() - start

    def commit(self) -> None:
        self.con.execute("CHECKPOINT")
        self.con.close()
        self.con = None
        replace_database(self.tmp, self.db)

    def _discard(self) -> None:
        if self.con is not None:
            try:
                self.con.close()
            except duckdb.Error:
                pass
            self.con = None
        _remove(self.tmp)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._discard()
