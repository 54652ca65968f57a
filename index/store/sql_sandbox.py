"""The child process that runs one read-only query for index.store.readonly_sql.

It is started fresh for every query (`python -m index.store.sql_sandbox`), reads its
request as one JSON line on stdin and answers with pickled messages on stdout:
("ready",), ("columns", names), ("rows", [tuple, ...]) as often as needed, then
("end", truncated, peak) or ("error", kind, message, peak) with kind "user" or
"memory" and peak this process's peak resident memory in bytes (VmHWM).

Before DuckDB is imported the process caps its own address space (RLIMIT_AS), so no
allocation, tracked by DuckDB's memory_limit or not, takes it past `memory_bytes`.
The engine is an in-memory DuckDB with the index attached READ_ONLY, no temp
directory (nothing spills), every file and network access and every extension switched
off, the local file system disabled once the index is open (no file, not even a
neighbour of the database, can be opened by a query), and its configuration locked.
The parent enforces the wall-clock limit by killing this process; this process also
dies with its parent (the kernel's parent-death signal) and at its own alarm just after
the limit, so a query whose parent was killed never runs on.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import resource
import signal
import sys
import time

from solu.errors import first_line

CHUNK_ROWS = 256
MAX_CHUNK_BYTES = 64 * 2**20
_EXPLAIN = re.compile(r"^\s*EXPLAIN(\s+ANALYZE)?\b", re.IGNORECASE)
# Once the index is attached, no file may be opened at all: DuckDB's own allow-list for a
# database with external access off still names the database and its sidecars
# (.wal.recovery, ...), which whoever can write the folder could make links to any file;
# with the local file system disabled, queries read the attached index through the
# handle it is open on, and nothing else.
LOCKED_SETTINGS = ("SET enable_progress_bar = false", "SET enable_external_access = false", "SET allow_community_extensions = false",
                   "SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false",
                   "SET max_temp_directory_size = '0KB'", "SET disabled_filesystems = 'LocalFileSystem'",
                   "SET lock_configuration = true")


class Refused(Exception):
    """A query or database the user must change: sent back as a "user" error."""


def connect(db: str, memory_bytes: int, threads: int, lock_wait_s: float):
    """The locked-down in-memory engine with `db` attached read-only as `idx`."""
    import duckdb

    from index.store.schema import check_version
    from index.store.connection import is_lock_conflict, sql_path, wait_for_writers
    from pathlib import Path
    from solu.errors import UserError

    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False, "autoload_known_extensions": False, "temp_directory": "",
        "threads": threads, "memory_limit": f"{max(64, memory_bytes * 6 // 10 // 2**20)}MB"})
    attach = f"ATTACH '{sql_path(Path(db))}' AS idx (READ_ONLY)"
    deadline = time.monotonic() + lock_wait_s
    try:
        wait_for_writers(db, lock_wait_s)
    except UserError as e:
        raise Refused(str(e)) from None
    while True:
        try:
            con.execute(attach)
            break
        except duckdb.Error as e:
            if not is_lock_conflict(e):
                raise Refused(f"{db} is not a DuckDB database") from None
            if time.monotonic() >= deadline:
                raise Refused(f"{db} is busy: another process kept writing it for {lock_wait_s:g}s; "
                              f"try again") from None
            time.sleep(0.05)
    con.execute("USE idx")
    try:  # the parent checked the tables (open_query); a second DuckDB here would not fit the address-space cap
        if check_version(con, tables=False) == 0:
            raise Refused(f"{db} is an empty DuckDB file, not a solu index")
    except UserError as e:
        raise Refused(str(e)) from None
    for statement in LOCKED_SETTINGS:
        con.execute(statement)
    return con


def check_statement(con, sql: str) -> None:
    """Refuse anything but one query (or EXPLAIN of one)."""
    import duckdb

    if not sql.strip():
        raise Refused("the query is empty")
    inner = _EXPLAIN.sub("", sql, count=1) if _EXPLAIN.match(sql) else sql
    try:
        statements = con.extract_statements(inner)
    except duckdb.Error as e:
        raise Refused(first_line(e)) from None
    if len(statements) != 1:
        raise Refused(f"one statement at a time, got {len(statements)}")
    try:
        kind = statements[0].type
    except ValueError:  # a statement type this duckdb's Python enum does not know (UPDATE EXTENSIONS)
        raise Refused("only queries are allowed (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW); this is not one") from None
    if kind != duckdb.StatementType.SELECT:
        name = getattr(kind, "name", str(kind))
        raise Refused(f"only queries are allowed (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW); this is a {name} statement")


def stream(con, sql: str, max_rows: int, send) -> None:
    """Run the query and send its columns, then rows in chunks, at most max_rows."""
    result = con.execute(sql)
    send(("columns", [d[0] for d in result.description or []]))
    left = max_rows
    while left > 0:
        rows = result.fetchmany(min(CHUNK_ROWS, left))
        if not rows:
            send(("end", False, peak_rss()))
            return
        send(("rows", rows))
        left -= len(rows)
    send(("end", bool(result.fetchmany(1)), peak_rss()))


def peak_rss(pid: int | str = "self") -> int:
    """The peak resident memory of a live process in bytes (Linux VmHWM; 0 if unknown)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0



def _is_memory_error(e: BaseException) -> bool:
    import duckdb

    text = str(e).lower()
    return (isinstance(e, (MemoryError, duckdb.OutOfMemoryException))
            or "bad_alloc" in text or "out of memory" in text or "memory limit" in text)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux prctl
    PR_SET_PDEATHSIG), and leave at once if the parent is already gone."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the alarm below still bounds the run
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


ALARM_MARGIN_S = 5  # the parent kills at the limit; this process's own alarm comes after


def alarm_after(seconds: float) -> None:
    """SIGALRM, whose default action ends the process, once `seconds` (rounded up) and
    ALARM_MARGIN_S have passed: the limit holds even if the parent cannot enforce it."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(int(math.ceil(seconds)) + ALARM_MARGIN_S)


def main() -> int:
    request = json.loads(sys.stdin.readline())
    die_with_parent(int(request["parent_pid"]))
    alarm_after(float(request["startup_s"]) + float(request["lock_wait_s"]))
    memory = int(request["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    out = sys.stdout.buffer

    def send(message) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > MAX_CHUNK_BYTES:
            raise Refused(f"{CHUNK_ROWS} result rows take more than {MAX_CHUNK_BYTES // 2**20} MB; "
                          f"select fewer or shorter columns")
        left = signal.alarm(0)  # time blocked on a slow reader is the parent's to judge, not this alarm's
        out.write(data)
        out.flush()
        if left:
            signal.alarm(left)

    try:
        con = connect(request["db"], memory, int(request["threads"]), float(request["lock_wait_s"]))
        check_statement(con, request["sql"])
        alarm_after(float(request["timeout_s"]))
        send(("ready",))
        stream(con, request["sql"], int(request["max_rows"]), send)
    except Refused as e:
        send(("error", "user", str(e), peak_rss()))
    except BaseException as e:  # noqa: BLE001 - everything becomes one message for the parent
        send(("error", "memory" if _is_memory_error(e) else "user", first_line(e), peak_rss()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
