"""The compare report and the measuring commands, end to end on a small known index."""
from __future__ import annotations

import math

import duckdb
import pytest

from index.measure import study
from index.measure.autolabel import autolabel
from index.measure.compare import compare_tables
from index.measure.report import markdown_table
from index.store.connection import open_read
from helpers.measure_db import build_measure_db
from solu.cli import main


@pytest.fixture()
def db(tmp_path):
    path = build_measure_db(tmp_path / "c.duckdb", top_k=20)
    return path


def test_report_before_autolabel_says_what_to_do(db, tmp_path, capsys):
    assert main(["compare", "--db", str(db), "gelu-m", "solu-m", "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "run `solu autolabel" in text and "No blinded study" in text
    assert (tmp_path / "r" / "sparsity.png").stat().st_size > 1000
    assert not (tmp_path / "r" / "rule_by_layer.png").exists()


def wilson95(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval, written out once more for the test."""
    z, p = 1.959964, k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def test_report_numbers_match_the_database(db, tmp_path, capsys):
    assert main(["autolabel", "--db", str(db), "--threshold", "0.6"]) == 0
    assert "people_count" in capsys.readouterr().out
    study.create_study(db, "pilot", ["gelu-m", "solu-m"], per_model=4, seed=1)
    for i in range(8):
        con = open_read(db)
        item = study.next_item(con, "pilot", "ana")
        con.close()
        study.record_answer(db, "pilot", "ana", item, "yes" if item["model_id"] == "solu-m" or i == 0 else "no")
    out = tmp_path / "report"
    assert main(["compare", "--db", str(db), "gelu-m", "solu-m", "--out", str(out), "--threshold", "0.6"]) == 0
    for name in ("report.md", "sparsity.png", "rule_by_layer.png", "best_share.png", "study.png"):
        assert (out / name).stat().st_size > 200
    text = (out / "report.md").read_text()
    con = duckdb.connect(str(db), read_only=True)
    passing = con.execute("""SELECT model_id, layer, count(*) FILTER (WHERE s >= 0.6), count(*) FROM (
        SELECT model_id, layer, neuron, max(top_share) AS s FROM concept_scores GROUP BY ALL) GROUP BY ALL
        ORDER BY ALL""").fetchall()
    loss = dict(con.execute("SELECT model_id, eval_loss FROM models").fetchall())
    con.close()
    for model_id, layer, k, n in passing:
        low, high = wilson95(k, n)
        assert f"| {model_id} | {layer} | {n} | {k} | {k / n:.3f} | {low:.3f} | {high:.3f} |" in text
    assert f"| gelu-m | gelu | {loss['gelu-m']:.3f} | 1.000 |" in text
    assert "| pilot | solu-m | solu_ln | 1 | 4 | 4 | 4 | 0 | 0 | 1.000 |" in text
    assert "solu-m minus gelu-m" in text and "| all |" in text
    assert "report written to" in capsys.readouterr().out


def test_compare_tables_for_the_app(db):
    autolabel(db)
    con = open_read(db)
    try:
        tables = compare_tables(con, [["solu-m"], ["gelu-m"]])
    finally:
        con.close()
    assert list(tables["loss"].model_id) == ["solu-m", "gelu-m"] and tables["loss"].loss_ratio.iloc[0] == 1.0
    assert set(tables["concepts"].concept) == {"base64", "people_count"}
    assert tables["labels"].auto_suggested.tolist() == [4, 4]
    assert tables["study"].empty
    con = duckdb.connect(str(db), read_only=True)
    rule = dict(con.execute("SELECT model_id, avg((s >= 0.8)::INT) FROM (SELECT model_id, layer, neuron, "
                            "max(top_share) AS s FROM concept_scores GROUP BY ALL) GROUP BY model_id").fetchall())
    con.close()
    assert tables["rule"].set_index("model_id").frac_passing.to_dict() == pytest.approx(rule)
    diff = tables["rule_difference"].set_index("layer")
    assert list(diff.index) == ["0", "1", "all"]
    assert diff.loc["all", "difference"] == pytest.approx(rule["gelu-m"] - rule["solu-m"])
    assert diff.loc["all", "diff_low"] <= diff.loc["all", "difference"] <= diff.loc["all", "diff_high"]
    assert 0 < diff.loc["all", "p_value"] <= 1


def test_markdown_table_escapes_pipes():
    import pandas as pd

    assert "a\\|b" in markdown_table(pd.DataFrame({"x": ["a|b"]}))


@pytest.mark.parametrize("argv,message", [
    (["compare", "--db", "{db}", "gelu-m"], "two model ids"),
    (["compare", "--db", "{db}", "gelu-m", "gelu-m"], "two different models"),
    (["compare", "--db", "{db}", "gelu-m", "nope"], "not in the index"),
    (["compare", "a", "--out", "x"], "--out needs --db"),
    (["autolabel", "--db", "{db}", "--concepts", "nosuch"], "unknown concept"),
    (["autolabel"], "--db is required"),
    (["study", "summary", "--db", "{db}", "nope"], "no study"),
])
def test_user_errors_exit_2(db, argv, message, capsys):
    assert main([a.replace("{db}", str(db)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
