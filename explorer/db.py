"""Database access for the explorer process: short reads, label writes, guarded SQL.

DuckDB refuses, inside one process, a second connection to a file with a different
configuration (read-only next to read-write, or the SQL page's locked-down settings),
and across processes a reader blocks a writer. So every access goes through one gate
with three modes: any number of 'read's together, any number of 'sql's together, one
'write' alone. Reads share one read-only connection that is closed after IDLE_S
seconds without use, before any other mode, and when the file is replaced (a re-index),
so the CLI and the indexer never wait on the app for long.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from index.store import append_label, open_read

IDLE_S = 1.0


class _Gate:
    def __init__(self):
        self._cond = threading.Condition()
        self._mode: str | None = None
        self._count = 0

    @contextlib.contextmanager
    def hold(self, mode: str):
        with self._cond:
            while self._count and (self._mode != mode or mode == "write"):
                self._cond.wait()
            if mode != "read":
                _POOL.close_all()
            self._mode, self._count = mode, self._count + 1
        try:
            yield
        finally:
            with self._cond:
                self._count -= 1
                self._cond.notify_all()

    def idle(self) -> bool:
        return self._count == 0


class _Pool:
    """One shared read-only connection per database file, used under the gate's 'read'."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cons: dict[str, tuple] = {}  # path -> (connection, file identity, last use)
        self._reaper: threading.Thread | None = None

    def cursor(self, db: Path):
        key, ident = str(db), _identity(db)
        with self._lock:
            entry = self._cons.get(key)
            if entry and entry[1] != ident:
                entry[0].close()
                entry = None
            con = entry[0] if entry else open_read(db)
            self._cons[key] = (con, ident, time.monotonic())
            self._start_reaper()
            return con.cursor()

    def close_all(self) -> None:
        with self._lock:
            for con, _, _ in self._cons.values():
                con.close()
            self._cons.clear()

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="solu-db-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            time.sleep(IDLE_S / 4)
            with _GATE._cond:
                if not _GATE.idle():
                    continue
                with self._lock:
                    now = time.monotonic()
                    for key in [k for k, (_, _, used) in self._cons.items() if now - used > IDLE_S]:
                        self._cons.pop(key)[0].close()
                    if not self._cons:
                        self._reaper = None
                        return


_GATE, _POOL = _Gate(), _Pool()


def _identity(db: Path) -> tuple:
    st = os.stat(db)
    return st.st_ino, st.st_dev


def file_version(db: str | Path) -> tuple:
    """Changes whenever the file is rewritten or replaced: a cache key for query results."""
    st = os.stat(db)
    return st.st_ino, st.st_mtime_ns, st.st_size


def read(db: str | Path, fn, *args, **kwargs):
    """Run fn(connection, *args, **kwargs) on a read-only connection and return its result."""
    with _GATE.hold("read"):
        cur = _POOL.cursor(Path(db))
        try:
            return fn(cur, *args, **kwargs)
        finally:
            cur.close()


def write_label(db: str | Path, *args, **kwargs) -> None:
    """index.store.append_label, with every read connection of this process closed first."""
    with _GATE.hold("write"):
        append_label(db, *args, **kwargs)


def run_sql(db: str | Path, sql: str, max_rows: int, timeout_s: float):
    """The guarded engine of `solu sql` (index.sqlguard.run_query): (DataFrame, truncated)."""
    from index.sqlguard import run_query

    with _GATE.hold("sql"):
        return run_query(db, sql, max_rows, timeout_s)


def close() -> None:
    """Close the shared connection now (tests, shutdown)."""
    with _GATE.hold("write"):
        pass
