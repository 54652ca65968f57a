"""Read-only SQL over an index, for `solu sql` and the explorer's SQL page.

Following datasette: the query runs on an in-memory DuckDB connection that attaches
the index READ_ONLY and then switches off every file and network access
(enable_external_access = false, extensions neither installed nor loaded) and locks
its configuration, so no statement can turn them back on. On top of that, one
statement is allowed, and only a query: SELECT (with WITH, VALUES, FROM-first,
DESCRIBE, SHOW, SUMMARIZE, which DuckDB parses as SELECT) or EXPLAIN of one. A timer
interrupts the query after `timeout_s`, and at most `max_rows` rows come back, with a
flag saying whether more were left.

(The connection is in-memory rather than a read-only connection to the file itself
because DuckDB refuses a second connection to a file with a different configuration
in the same process, which the explorer, holding ordinary read connections, would hit.)
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import duckdb
import pandas as pd

from index.store.schema import check_version
from index.store.connection import sql_path
from solu.errors import UserError

ALLOWED = {duckdb.StatementType.SELECT}
_EXPLAIN = re.compile(r"^\s*EXPLAIN(\s+ANALYZE)?\b", re.IGNORECASE)
SETTINGS = ("SET enable_external_access = false", "SET allow_community_extensions = false",
            "SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false",
            "SET memory_limit = '1GB'", "SET threads = 2", "SET max_temp_directory_size = '0KB'",
            "SET lock_configuration = true")


def run_query(db: str | Path, sql: str, max_rows: int = 1000, timeout_s: float = 10.0) -> tuple[pd.DataFrame, bool]:
    """Run one read-only query; returns (rows as a DataFrame, truncated). Raises
    UserError for a refused statement, bad SQL, a missing database or a timeout."""
    if max_rows < 0 or timeout_s <= 0:
        raise UserError("max_rows must be >= 0 and the time limit positive")
    con = _connect(Path(db))
    try:
        check_statement(con, sql)
    except BaseException:
        con.close()
        raise
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        result = con.execute(sql)
        columns = [d[0] for d in result.description or []]
        rows = result.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        raise UserError(f"the query took longer than {timeout_s:g}s and was stopped") from None
    except duckdb.Error as e:
        raise UserError(_first_line(e)) from None
    finally:
        timer.cancel()
        con.close()
    truncated = len(rows) > max_rows
    return pd.DataFrame(rows[:max_rows], columns=_unique(columns)), truncated


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one query (or EXPLAIN of one)."""
    if not sql.strip():
        raise UserError("the query is empty")
    inner = _EXPLAIN.sub("", sql, count=1) if _EXPLAIN.match(sql) else sql
    try:
        statements = con.extract_statements(inner)
    except duckdb.Error as e:
        raise UserError(_first_line(e)) from None
    if len(statements) != 1:
        raise UserError(f"one statement at a time, got {len(statements)}")
    kind = statements[0].type
    if kind not in ALLOWED:
        name = getattr(kind, "name", str(kind))
        raise UserError(f"only queries are allowed (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW); this is a {name} statement")


def _connect(db: Path) -> duckdb.DuckDBPyConnection:
    if not db.is_file():
        raise UserError(f"database {db} not found (build one with 'solu index')")
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    try:
        try:
            con.execute(f"ATTACH '{sql_path(db)}' AS idx (READ_ONLY)")
        except duckdb.Error as e:
            text = str(e).lower()
            if "lock" in text:
                raise UserError(f"{db} is busy (another process is writing it); try again") from None
            raise UserError(f"{db} is not a DuckDB database") from None
        con.execute("USE idx")
        if check_version(con) == 0:
            raise UserError(f"{db} is an empty DuckDB file, not a solu index")
        for statement in SETTINGS:
            con.execute(statement)
    except BaseException:
        con.close()
        raise
    return con


def _unique(columns: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for c in columns:
        seen[c] = seen.get(c, 0) + 1
        out.append(c if seen[c] == 1 else f"{c}_{seen[c]}")
    return out


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
