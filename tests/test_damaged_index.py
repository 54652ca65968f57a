"""A damaged index, or one inconsistent with its version, gets one line (issue 30, causes
3 and 4): every command against every mutilated database (each table and view dropped,
a key column dropped, the version set lower, higher, to junk) exits 2 with one line that
says what is missing or unexpected, without a traceback, and leaves the file as it was."""
from __future__ import annotations

import shutil

import duckdb
import pytest

from index.store.schema import SCHEMA_VERSION, declared
from helpers.measure_db import build_measure_db
from solu.cli import main

COLUMNS = [("labels", "note"), ("examples", "tokens"), ("neurons", "frac_active_rel"), ("models", "act_fn"),
           ("explanations", "score"), ("studies", "snippets")]
VERSIONS = [str(SCHEMA_VERSION - 1), "1", str(SCHEMA_VERSION + 5), "-1", "junk"]


def mutilations():
    for name, (kind, _) in sorted(declared(SCHEMA_VERSION).items()):
        if name != "meta":
            yield f"drop-{name}", f"DROP {kind} {name}", f"no {kind.lower()} {name}"
    for table, column in COLUMNS:
        yield f"drop-{table}.{column}", f"ALTER TABLE {table} DROP COLUMN {column}", f"no column {table}.{column}"
    for version in VERSIONS:
        yield f"version-{version}", f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'", version
    yield "no-version", "DELETE FROM meta", "no schema version"


def commands(db, tmp):
    return [
        ["sql", "SELECT count(*) FROM neurons", "--db", db],
        ["label", "--db", db, "gelu-m", "0", "1", "a label"],
        ["label", "--db", db, "gelu-m", "0", "1"],
        ["labels", "export", "--db", db, "--out", f"{tmp}/labels.csv"],
        ["autolabel", "--db", db, "--workers", "1", "--no-progress"],
        ["match", "--db", db, "gelu-m", "solu-m", "--no-progress"],
        ["study", "create", "s", "--db", db, "--models", "gelu-m", "solu-m"],
        ["study", "summary", "s", "--db", db],
        ["compare", "--db", db, "gelu-m", "solu-m", "--out", f"{tmp}/report"],
        ["index", f"{tmp}/no-such-checkpoint", "--db", db, "--no-progress"],
        ["app", "--db", db],
    ]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return build_measure_db(tmp_path_factory.mktemp("damaged") / "good.duckdb")


@pytest.mark.parametrize("name,sql,needle", list(mutilations()), ids=[m[0] for m in mutilations()])
def test_every_command_refuses_a_mutilated_index_in_one_line(good, tmp_path, capsys, name, sql, needle):
    db = tmp_path / "index.duckdb"
    shutil.copyfile(good, db)
    con = duckdb.connect(str(db))
    con.execute(sql)
    con.close()
    before = db.read_bytes()
    for argv in commands(str(db), tmp_path):
        code = main(argv)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2, (argv, out, err)
        assert len(lines) == 1 and "Traceback" not in out + err, (argv, err)
        assert needle in lines[0] and ("restore it" in lines[0].lower() or "upgrade" in lines[0]), (argv, lines[0])
        assert db.read_bytes() == before, argv
    assert sorted(p.name for p in tmp_path.iterdir()) in (["index.duckdb"], ["index.duckdb", "index.duckdb.lock"])
