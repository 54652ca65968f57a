"""The example queries of the SQL page, `solu sql`'s docs and its tests, kept in one file:
sql_examples.sql, one query per block (blocks apart by a blank line), each opening with
a `-- ` line that says what it finds."""
from __future__ import annotations

from pathlib import Path

EXAMPLES_SQL = Path(__file__).with_name("sql_examples.sql")


def examples() -> dict[str, str]:
    """{what it finds: the query, its comment line included}, in the file's order."""
    blocks = [b.strip() for b in EXAMPLES_SQL.read_text().split("\n\n") if b.strip()]
    return {b.splitlines()[0].removeprefix("--").strip(): b for b in blocks}
