"""`solu sql` and index.store.readonly_sql.run_query: read-only, no file or network access, one
query at a time, a time limit, a row cap; and the example queries of the SQL page and the docs."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from explorer.sql_examples import examples
from index.store.readonly_sql import run_query
from index.store.sql_sandbox import connect
from solu.cli import main
from solu.errors import UserError

EXAMPLES = examples()  # the SQL page's and docs/sql.md's example queries
ALWAYS_ROWS = ("GELU vs SoLU", "the heatmap of one example", "neurons whose direct effect",
               "the tokens that most often")  # over tables every `solu index` fills


@pytest.fixture(scope="module")
def db(tmp_path_factory, tiny_checkpoints, tiny_corpus):
    path = tmp_path_factory.mktemp("sql") / "index.duckdb"
    assert main(["index", str(tiny_checkpoints["gelu"]), str(tiny_checkpoints["solu_ln"]), "--db", str(path),
                 "--dataset", str(tiny_corpus), "--tokens", "1200", "--top-k", "5", "--batch-size", "8",
                 "--sample-tokens", "600", "--no-progress"]) == 0
    return path


def test_query_returns_rows_and_a_truncated_flag(db):
    df, truncated = run_query(db, "SELECT model_id, count(*) AS n FROM neurons GROUP BY 1 ORDER BY 1")
    assert df.to_dict("records") == [{"model_id": "gelu-tiny", "n": 128}, {"model_id": "solu_ln-tiny", "n": 256}]
    assert truncated is False
    df, truncated = run_query(db, "SELECT * FROM examples", max_rows=7)
    assert len(df) == 7 and truncated is True
    df, truncated = run_query(db, "SELECT * FROM range(7)", max_rows=7)
    assert len(df) == 7 and truncated is False


@pytest.mark.parametrize("sql", [
    "INSERT INTO labels (label_id, model_id, layer, neuron, label) VALUES (1, 'm', 0, 0, 'x')",
    "UPDATE neurons SET max_act = 0", "DELETE FROM examples", "DROP TABLE neurons",
    "CREATE TABLE t AS SELECT 1", "COPY neurons TO '/tmp/solu-sql-test.csv'", "ATTACH '/tmp/other.duckdb'",
    "INSTALL httpfs", "LOAD httpfs", "SET enable_external_access = true", "PRAGMA version",
    "CALL pragma_version()", "SELECT 1; SELECT 2", "EXPLAIN ANALYZE DELETE FROM examples", "",
])
def test_refused_statements(db, sql):
    with pytest.raises(UserError):
        run_query(db, sql)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('{path}')", "SELECT * FROM '{path}'", "SELECT * FROM read_text('{path}')",
    "SELECT * FROM read_blob('{path}')", "SELECT * FROM glob('{dir}/*')", "SELECT * FROM read_json('{path}')",
    "SELECT * FROM read_parquet('{path}')", "SELECT * FROM query('SELECT * FROM read_text(''{path}'')')",
    "SELECT * FROM 'https://example.com/data.csv'",
])
def test_no_file_or_network_access(db, tmp_path, sql):
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="(?i)permission|disabled|access"):
        run_query(db, sql.format(path=secret, dir=tmp_path))


@pytest.mark.parametrize("sidecar", [".wal", ".wal.recovery", ".wal.checkpoint", ".tmp"])
def test_a_sidecar_link_beside_the_database_is_not_read(db, tmp_path, capsys, sidecar):
    """Whoever can write the database's folder may put a link where DuckDB looks for its
    sidecars; a query cannot read the file it points to, nor the database file itself."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret\n")
    copy = tmp_path / "index.duckdb"
    copy.write_bytes(db.read_bytes())
    link = tmp_path / f"index.duckdb{sidecar}"
    for target in (copy, link):
        link.unlink(missing_ok=True)
        link.symlink_to(secret)
        code = main(["sql", "--db", str(copy), f"SELECT content FROM read_text('{target}')"])
        out, err = capsys.readouterr()
        assert code == 2 and "the secret" not in out + err and len(err.strip().splitlines()) == 1, (out, err)
        assert "permission" in err.lower() or "disabled" in err.lower(), err
    assert main(["sql", "--db", str(copy), "SELECT count(*) AS n FROM neurons"]) == 0  # the index itself reads


def test_a_write_on_the_connection_itself_fails(db):
    """Below the allow-list the index is attached read-only."""
    con = connect(str(db), memory_bytes=2**30, threads=1, lock_wait_s=1.0)
    try:
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("INSERT INTO labels (label_id, model_id, layer, neuron, label) VALUES (1, 'm', 0, 0, 'x')")
        with pytest.raises(duckdb.Error):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()


def test_explain_describe_show_are_queries(db):
    for sql in ("EXPLAIN SELECT * FROM neurons", "DESCRIBE neurons", "SHOW TABLES", "SUMMARIZE logits"):
        df, _ = run_query(db, sql)
        assert len(df) > 0


def test_a_slow_query_times_out(db):
    with pytest.raises(UserError, match="longer than 0.5s"):
        run_query(db, "SELECT count(*) FROM range(100000000000) a, range(10) b", timeout_s=0.5)


def test_bad_sql_and_bad_files_are_one_line_errors(db, tmp_path):
    with pytest.raises(UserError) as e:
        run_query(db, "SELEC nonsense")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        run_query(tmp_path / "missing.duckdb", "SELECT 1")
    junk = tmp_path / "junk.duckdb"
    junk.write_text("not a database")
    with pytest.raises(UserError, match="not a DuckDB database"):
        run_query(junk, "SELECT 1")


def test_works_beside_an_open_read_connection(db):
    """The explorer keeps ordinary read-only connections open in the same process."""
    from index.store.connection import open_read

    con = open_read(db)
    try:
        df, _ = run_query(db, "SELECT count(*) AS n FROM models")
        assert df.n[0] == 2
    finally:
        con.close()


def test_cli_formats_and_errors(db, capsys):
    sql = "SELECT model_id, act_fn, n_layers FROM models ORDER BY model_id"
    assert main(["sql", "--db", str(db), sql]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["model_id", "act_fn", "n_layers"] and "(2 rows)" in out
    assert main(["sql", "--db", str(db), "--format", "csv", sql]) == 0
    assert capsys.readouterr().out.splitlines() == ["model_id,act_fn,n_layers", "gelu-tiny,gelu,2", "solu_ln-tiny,solu_ln,2"]
    assert main(["sql", "--db", str(db), "--format", "json", sql]) == 0
    assert json.loads(capsys.readouterr().out)[1] == {"model_id": "solu_ln-tiny", "act_fn": "solu_ln", "n_layers": 2}
    assert main(["sql", "--db", str(db), "--max-rows", "3", "SELECT * FROM neurons"]) == 0
    captured = capsys.readouterr()
    assert "(3 rows)" in captured.out and "truncated" in captured.err
    assert main(["sql", "--db", str(db), "DELETE FROM neurons"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("solu sql: error: only queries")


@pytest.mark.parametrize("title", list(EXAMPLES))
def test_example_queries_run(db, title):
    df, truncated = run_query(db, EXAMPLES[title])
    assert not truncated
    if title.startswith(ALWAYS_ROWS):
        assert len(df) > 0


def test_the_docs_show_the_example_file_itself():
    """docs/sql.md includes explorer/sql_examples.sql (pymdownx.snippets) instead of a copy
    that could drift; tests/test_docs.py runs every SQL block of the docs."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "sql.md").read_text()
    assert '--8<-- "explorer/sql_examples.sql"' in page


VIEW_FORMS = {  # two examples as they read the example_tokens view, which unnests every example first
    "the tokens that most often carry": """
        SELECT model_id, token, count(*) AS top_examples, count(DISTINCT (layer, neuron)) AS neurons
        FROM example_tokens WHERE kind = 'top' AND window_pos = max_pos
        GROUP BY ALL ORDER BY top_examples DESC, model_id, token LIMIT 10""",
    "the heatmap of one example": """
        WITH best AS (SELECT model_id, layer, neuron, site FROM neurons WHERE site = 'post'
                      ORDER BY max_act DESC, model_id, layer, neuron LIMIT 1)
        SELECT e.window_pos, e.pos, e.token, round(e.act, 3) AS act
        FROM example_tokens e JOIN best USING (model_id, layer, neuron, site)
        WHERE e.kind = 'top' AND e.rank = 1 ORDER BY e.window_pos""",
}


@pytest.mark.parametrize("start", list(VIEW_FORMS))
def test_examples_that_unnest_one_list_answer_what_the_view_does(db, start):
    """These examples read `examples` directly (the view ran out of memory at GPT-2-small
    scale before schema step 13) and give the view's answer."""
    title = next(t for t in EXAMPLES if t.startswith(start))
    mine, _ = run_query(db, EXAMPLES[title])
    view, _ = run_query(db, VIEW_FORMS[start])
    assert len(mine) > 0 and mine.equals(view)


def test_the_co_firing_example_counts_the_tokens_shared_with_the_strongest_neuron(db):
    title = next(t for t in EXAMPLES if t.startswith("the neurons that fire on the same tokens as one neuron"))
    got, _ = run_query(db, EXAMPLES[title])
    con = duckdb.connect(str(db), read_only=True)
    model_id, layer, neuron, site = con.execute(
        "SELECT model_id, layer, neuron, site FROM neurons WHERE is_primary "
        "ORDER BY max_act DESC, model_id, layer, neuron LIMIT 1").fetchone()
    acts = con.execute("SELECT layer, neuron, doc_id, pos FROM activations WHERE model_id = ? AND site = ?",
                       [model_id, site]).fetchall()
    con.close()
    fired = {(d, p) for l_, n, d, p in acts if (l_, n) == (layer, neuron)}
    together: dict[tuple[int, int], int] = {}
    for l_, n, d, p in acts:
        if (l_, n) != (layer, neuron) and (d, p) in fired:
            together[l_, n] = together.get((l_, n), 0) + 1
    want = sorted(together.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert len(want) > 0
    assert got.values.tolist() == [[model_id, layer, neuron, l_, n, c] for (l_, n), c in want]
