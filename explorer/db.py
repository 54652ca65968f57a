"""Database access for the explorer process: short reads, label writes, guarded SQL.

DuckDB refuses, inside one process, a second connection to a file with a different
configuration (read-only next to read-write), and across processes a reader blocks a
writer. So every access here goes through one gate with two modes: any number of
'read's together, one 'write' alone. Guarded SQL needs no place in it: each query runs
in a child process of its own (index.store.readonly_sql), a reader like any other.

Reads share one read-only connection, which is let go of
- after IDLE_S seconds without use,
- before this process writes,
- as soon as another process (`solu label`, the indexer) holds the write lock: readers
  wait for it through index.store.connection.wait_for_writers, which lets go first,
- when the file is replaced (a re-index moves a new file into place),
so other writers wait on the app for one query at most.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from index.store.connection import open_read, wait_for_writers
from index.store.labels import append_label

IDLE_S = 1.0


class _Gate:
    def __init__(self):
        self.cond = threading.Condition()
        self._mode: str | None = None
        self._count = 0

    @contextlib.contextmanager
    def hold(self, mode: str):
        with self.cond:
            while self._count and (self._mode != mode or mode == "write"):
                self.cond.wait()
            if mode != "read":
                _POOL.close_all()
            self._mode, self._count = mode, self._count + 1
        try:
            yield
        finally:
            with self.cond:
                self._count -= 1
                self.cond.notify_all()


class _Shared:
    """A pooled connection and how many readers use it now."""

    def __init__(self, con, ident: tuple):
        self.con, self.ident, self.users, self.used, self.retired = con, ident, 0, time.monotonic(), False


class _Pool:
    """One shared read-only connection per database file, used under the gate's 'read'."""

    def __init__(self):
        self._lock = threading.Lock()
        self._shared: dict[str, _Shared] = {}
        self._reaper: threading.Thread | None = None

    def acquire(self, db: Path) -> _Shared:
        key, ident = str(db), _identity(db)
        with self._lock:
            entry = self._shared.get(key)
            if entry and entry.ident != ident:
                self._retire(key)
                entry = None
            if entry is None:
                entry = self._shared[key] = _Shared(open_read(db), ident)
            entry.users += 1
            self._start_reaper()
            return entry

    def release(self, entry: _Shared) -> None:
        with self._lock:
            entry.users -= 1
            entry.used = time.monotonic()
            if entry.retired and entry.users == 0:
                entry.con.close()

    def retire(self, db: Path) -> None:
        """Stop handing out db's connection; it closes when its last reader is done."""
        with self._lock:
            self._retire(str(db))

    def _retire(self, key: str) -> None:
        entry = self._shared.pop(key, None)
        if entry:
            entry.retired = True
            if entry.users == 0:
                entry.con.close()

    def close_all(self) -> None:
        with self._lock:
            for key in list(self._shared):
                self._retire(key)

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="solu-db-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            time.sleep(IDLE_S / 4)
            with self._lock:
                now = time.monotonic()
                for key, entry in list(self._shared.items()):
                    if entry.users == 0 and now - entry.used > IDLE_S:
                        self._retire(key)
                if not self._shared:
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
    db = Path(db)
    with _GATE.hold("read"):
        wait_for_writers(db, on_wait=lambda: _POOL.retire(db))
        entry = _POOL.acquire(db)
        try:
            cur = entry.con.cursor()
            try:
                return fn(cur, *args, **kwargs)
            finally:
                cur.close()
        finally:
            _POOL.release(entry)


def write_label(db: str | Path, *args, **kwargs) -> None:
    """index.store.labels.append_label, with every read connection of this process closed first."""
    with _GATE.hold("write"):
        append_label(db, *args, **kwargs)


def write(db: str | Path, fn, *args, **kwargs):
    """fn(db, *args, **kwargs) for a writer that opens its own connection (index.store.connection's
    open_write), with every read connection of this process closed first."""
    with _GATE.hold("write"):
        return fn(db, *args, **kwargs)


def close() -> None:
    """Close the shared connections now (tests, shutdown)."""
    with _GATE.hold("write"):
        pass
