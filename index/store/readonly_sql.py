"""Read-only SQL over an index, for `solu sql` and the explorer's SQL page.

Following datasette, and then a process boundary: every query runs in a child process
of its own (index.store.sql_sandbox), an in-memory DuckDB that attaches the index
READ_ONLY, has no temp directory, no file or network access and no extensions, and
whose configuration is locked. Only one statement, a query (SELECT, WITH, VALUES,
DESCRIBE, SHOW, SUMMARIZE, or EXPLAIN of one), is accepted.

The limits hold for any query because the operating system enforces them on that
process: an address-space limit (RLIMIT_AS, `memory_bytes`) and a wall-clock limit
(`timeout_s`: the child is killed). Which limit stopped a query is reported
(QueryStopped.limit). Rows come back in chunks through a bounded queue, so memory here
stays bounded whatever `max_rows` is: `open_query` streams them, `run_query` collects
at most `max_rows` into a DataFrame with a flag saying whether more were left.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from index.store.connection import LOCK_WAIT_S, open_read  # LOCK_WAIT_S: how long a query waits for a writer
from index.store.sql_sandbox import peak_rss
from solu.errors import UserError

GB = 2**30
MAX_TIMEOUT_S = 24 * 3600.0
MAX_ROWS_LIMIT = 10**9  # rows one query prints; more would fill a disk with its output
STARTUP_S = 30.0  # a child gets this long (plus the lock wait) to start and attach the database
ROOT = Path(__file__).resolve().parents[2]


class QueryStopped(UserError):
    """A query stopped by a limit: `limit` is "time" or "memory"; `stats` what it used."""

    def __init__(self, message: str, limit: str, stats: "QueryStats"):
        super().__init__(message)
        self.limit, self.stats = limit, stats


@dataclass(frozen=True)
class SqlLimits:
    max_rows: int = 1000
    timeout_s: float = 10.0
    memory_bytes: int = GB
    threads: int = 2

    def __post_init__(self):
        if not isinstance(self.max_rows, int) or not 0 <= self.max_rows <= MAX_ROWS_LIMIT:
            raise ValueError(f"--max-rows must be a whole number from 0 to {MAX_ROWS_LIMIT:,}, got {self.max_rows:,}")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s)
                and 0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise ValueError(f"the time limit must be above 0 and at most {MAX_TIMEOUT_S:g} seconds, "
                             f"got {self.timeout_s}")
        if not 256 * 2**20 <= self.memory_bytes <= 1024 * GB:
            raise ValueError(f"the memory limit must be from 256 MB to 1 TB, got {self.memory_bytes} bytes")
        if not 1 <= self.threads <= 256:
            raise ValueError(f"threads must be from 1 to 256, got {self.threads}")


@dataclass
class QueryStats:
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    stopped_by: str | None = None


@dataclass
class Query:
    """An open query: `columns`, then `chunks()` of row tuples; `truncated` once read."""

    proc: subprocess.Popen
    limits: SqlLimits
    started: float
    messages: queue.Queue
    reader: threading.Thread
    columns: list[str] = field(default_factory=list)
    truncated: bool = False
    stats: QueryStats = field(default_factory=QueryStats)
    deadline: float = 0.0
    done: bool = False

    def chunks(self) -> Iterator[list[tuple]]:
        while not self.done:
            message = self._next()
            if message[0] == "rows":
                yield message[1]
            elif message[0] == "end":
                self.truncated = bool(message[1])
                self.stats.peak_rss_bytes = message[2]
                self._finish(kill=False)
            else:
                self._fail(message)

    def _next(self):
        try:
            message = self.messages.get(timeout=max(0.0, self.deadline - time.monotonic()))
        except queue.Empty:
            self._finish(kill=True, stopped_by="time")
            raise QueryStopped(f"the query took longer than {self.limits.timeout_s:g}s and was stopped "
                               f"by the time limit", "time", self.stats) from None
        if message is None:  # the child ended without a last word: killed by the kernel or crashed
            self.proc.wait()
            if self.proc.returncode == -signal.SIGALRM:  # its own alarm, when this process was too slow to kill it
                self._finish(kill=False, stopped_by="time")
                raise QueryStopped(f"the query took longer than {self.limits.timeout_s:g}s and was stopped "
                                   f"by the time limit", "time", self.stats)
            self._finish(kill=False, stopped_by="memory")
            code = self.proc.returncode
            how = f"signal {-code}" if code and code < 0 else f"exit status {code}"
            raise QueryStopped(f"the query process died ({how}), most likely at the "
                               f"{_size(self.limits.memory_bytes)} memory limit", "memory", self.stats)
        return message

    def _fail(self, message) -> None:
        _, kind, text, self.stats.peak_rss_bytes = message
        self._finish(kill=True, stopped_by="memory" if kind == "memory" else None)
        if kind == "memory":
            raise QueryStopped(f"the query needed more than the {_size(self.limits.memory_bytes)} memory limit "
                               f"and was stopped ({text})", "memory", self.stats)
        raise UserError(text)

    def _finish(self, kill: bool, stopped_by: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        if kill and self.proc.poll() is None:
            self.stats.peak_rss_bytes = max(self.stats.peak_rss_bytes, peak_rss(self.proc.pid))
            self.proc.kill()
        self.proc.wait()
        while self.reader.is_alive():  # let the reader see the end of the pipe
            try:
                self.messages.get(timeout=0.1)
            except queue.Empty:
                pass
        self.proc.stdout.close()
        self.stats.seconds = time.monotonic() - self.started
        self.stats.stopped_by = stopped_by

    def close(self) -> None:
        self._finish(kill=True)

    def __enter__(self) -> "Query":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_query(db: str | Path, sql: str, limits: SqlLimits = SqlLimits()) -> Query:
    """Start one read-only query; raises UserError for a refused statement, bad SQL, a
    missing or busy database. Use as a context manager and read `chunks()`."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"database {db} not found (build one with 'solu index')")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("the query is not valid UTF-8 text") from None
    _refuse_early(sql)
    open_read(db).close()  # ours, and its tables, views and columns those of its version
    request = {"db": str(db.resolve()), "sql": sql, "max_rows": limits.max_rows, "threads": limits.threads,
               "memory_bytes": limits.memory_bytes, "lock_wait_s": LOCK_WAIT_S, "startup_s": STARTUP_S,
               "timeout_s": limits.timeout_s, "parent_pid": os.getpid()}
    proc = subprocess.Popen([sys.executable, "-m", "index.store.sql_sandbox"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/", env=_child_env())
    proc.stdin.write(json.dumps(request).encode() + b"\n")
    proc.stdin.close()
    messages: queue.Queue = queue.Queue(maxsize=4)
    reader = threading.Thread(target=_read, args=(proc.stdout, messages), daemon=True, name="solu-sql-reader")
    reader.start()
    query = Query(proc, limits, time.monotonic(), messages, reader)
    query.deadline = query.started + STARTUP_S + LOCK_WAIT_S
    try:
        try:
            message = query._next()
        except QueryStopped as e:
            if e.limit != "time":
                raise
            raise UserError(f"the query process did not start within {STARTUP_S + LOCK_WAIT_S:g}s; "
                            f"the machine is overloaded or {db} is busy") from None
        if message[0] != "ready":
            query._fail(message)
        query.deadline = time.monotonic() + limits.timeout_s
        message = query._next()
        if message[0] != "columns":
            query._fail(message)
    except BaseException:
        query.close()
        raise
    query.columns = _unique(message[1])
    return query


def run_query(db: str | Path, sql: str, max_rows: int = 1000, timeout_s: float = 10.0,
              memory_bytes: int = GB):
    """Run one read-only query; returns (rows as a DataFrame, truncated)."""
    import pandas as pd

    limits = sql_limits(max_rows=max_rows, timeout_s=timeout_s, memory_bytes=memory_bytes)
    rows: list[tuple] = []
    with open_query(db, sql, limits) as q:
        for chunk in q.chunks():
            rows.extend(chunk)
    return pd.DataFrame(rows, columns=q.columns), q.truncated


def _refuse_early(sql: str) -> None:
    """The statement check, here too (it only parses), so a refused statement costs no
    process; the child checks again before it runs anything."""
    import duckdb

    from index.store.sql_sandbox import Refused, check_statement

    con = duckdb.connect(":memory:")
    try:
        check_statement(con, sql)
    except Refused as e:
        raise UserError(str(e)) from None
    finally:
        con.close()


def sql_limits(**kwargs) -> SqlLimits:
    """SqlLimits, with a bad value as a UserError."""
    try:
        return SqlLimits(**kwargs)
    except ValueError as e:
        raise UserError(str(e)) from None


def _read(stream, messages: queue.Queue) -> None:
    try:
        while True:
            messages.put(pickle.load(stream))
    except EOFError:
        pass
    except Exception as e:  # noqa: BLE001 - a torn message from a child that was killed mid-write
        messages.put(("error", "user", f"the query process sent a broken answer ({type(e).__name__})", 0))
    messages.put(None)


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUCKDB", "MALLOC"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["MALLOC_ARENA_MAX"] = "2"  # glibc reserves 64 MB of address space per arena otherwise
    return env


def _size(n: int) -> str:
    return f"{n / GB:g} GB" if n >= GB else f"{n / 2**20:g} MB"


def _unique(columns: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for c in columns:
        seen[c] = seen.get(c, 0) + 1
        out.append(c if seen[c] == 1 else f"{c}_{seen[c]}")
    return out
