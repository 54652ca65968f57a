"""schema.sql is today's schema: a new database is created from it, and a version-1
database migrated step by step ends exactly there (tables, columns in order with their
types and defaults, keys, views)."""
from __future__ import annotations

import duckdb
import pytest

from index.store.schema import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version


def shape(con: duckdb.DuckDBPyConnection) -> dict:
    """Everything about a database's schema that a reader or writer could notice."""
    columns = con.execute(
        "SELECT table_name, ordinal_position, column_name, data_type, column_default, is_nullable "
        "FROM information_schema.columns ORDER BY table_name, ordinal_position").fetchall()
    kinds = con.execute("SELECT table_name, table_type FROM information_schema.tables ORDER BY 1").fetchall()
    keys = con.execute("SELECT table_name, constraint_type, constraint_column_names FROM duckdb_constraints() "
                       "ORDER BY 1, 2, 3").fetchall()
    views = con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()
    return {"columns": columns, "kinds": kinds, "keys": keys, "views": views}


def version_1_migrated() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute(MIGRATIONS[0])
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    assert migrate(con) == 1
    return con


def test_a_migrated_version_1_database_is_exactly_schema_sql():
    fresh = duckdb.connect(":memory:")
    assert migrate(fresh) == 0
    old = version_1_migrated()
    assert schema_version(fresh) == schema_version(old) == SCHEMA_VERSION
    want, got = shape(fresh), shape(old)
    assert len(want["kinds"]) >= 24 and want["views"]  # 17 tables and 7 views: the comparison sees them all
    for part in want:
        assert got[part] == want[part], part


def test_the_comparison_sees_a_difference():
    """A column out of place, or a view that reads otherwise, is caught."""
    base = shape(version_1_migrated())
    moved = version_1_migrated()
    moved.execute("ALTER TABLE tokens DROP COLUMN segment")
    moved.execute("ALTER TABLE tokens ADD COLUMN segment BIGINT")
    assert shape(moved)["columns"] != base["columns"]
    view = version_1_migrated()
    view.execute("CREATE OR REPLACE VIEW latest_runs AS SELECT * FROM index_runs")
    assert shape(view)["views"] != base["views"]


@pytest.mark.parametrize("start", range(1, SCHEMA_VERSION))
def test_every_version_reaches_today(start):
    """A database at any earlier version (built by the steps up to it) migrates to schema.sql."""
    con = duckdb.connect(":memory:")
    con.execute(MIGRATIONS[0])
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    for number in range(1, start):
        con.execute(MIGRATIONS[number])
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(start)])
    assert migrate(con) == start
    fresh = duckdb.connect(":memory:")
    migrate(fresh)
    assert shape(con) == shape(fresh)
