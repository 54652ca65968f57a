"""`solu compare` with groups of models (training seeds as the unit) and both measures:
the paper's rule and the held-out score."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from index.measure.compare import disagreement, group_difference, hierarchical_interval
from helpers.measure_db import build_measure_db
from solu.cli import main


def test_runs_that_differ_widen_the_interval():
    """Three runs of 1,000 neurons each: identical runs give a narrow interval, runs that
    pass 10%, 30% and 50% give one several times wider around the same 30%."""
    same = [np.arange(1000) < 300] * 3
    spread = [np.arange(1000) < k for k in (100, 300, 500)]
    width = {name: np.subtract(*np.percentile(hierarchical_interval(runs), [97.5, 2.5]))
             for name, runs in (("same", same), ("spread", spread))}
    assert width["spread"] > 4 * width["same"]
    assert abs(np.median(hierarchical_interval(spread)) - 0.3) < 0.03


def test_one_run_each_varies_neurons_only():
    draws = hierarchical_interval([np.arange(400) < 100])
    assert abs(draws.std() - np.sqrt(0.25 * 0.75 / 400)) < 0.004


def test_group_difference_per_layer_and_overall():
    rows = []
    for m, frac in (("a1", 0.2), ("a2", 0.3), ("b1", 0.6), ("b2", 0.5)):
        for layer in (0, 1):
            for n in range(100):
                passes = n < frac * 100
                rows.append({"model_id": m, "layer": layer, "neuron": n, "top_share": 0.9 if passes else 0.78,
                             "score": 0.0 if passes else 0.9})
    df = pd.DataFrame(rows)
    diff = group_difference(df, df, [["a1", "a2"], ["b1", "b2"]], 0.8).set_index(["measure", "layer"])
    assert list(diff.index.get_level_values(1).unique()) == ["0", "1", "all"]
    rule, held = diff.loc[("paper's rule", "all")], diff.loc[("verdict", "all")]
    assert rule.difference == pytest.approx(0.3) and rule.diff_low > 0 and (rule.runs_a, rule.runs_b) == (2, 2)
    assert held.difference == pytest.approx(-0.3) and held.diff_high < 0
    assert "disagree" in disagreement(diff.reset_index())
    agreeing = diff.reset_index().assign(difference=lambda d: d.difference.abs(), diff_low=0.1, diff_high=0.5)
    assert disagreement(agreeing) == ""


def test_compare_groups_end_to_end(tmp_path, capsys):
    models = [("gelu-a", "gelu"), ("gelu-b", "gelu"), ("solu-a", "solu_ln"), ("solu-b", "solu_ln")]
    db = build_measure_db(tmp_path / "g.duckdb", models=models, top_k=20)
    assert main(["autolabel", "--db", str(db)]) == 0
    out = tmp_path / "report"
    assert main(["compare", "--db", str(db), "gelu-a,gelu-b", "solu-a,solu-b", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "# gelu-a, gelu-b vs solu-a, solu-b" in text and "hierarchical bootstrap" in text
    section = text[text.index("## The difference between the groups"):text.index("## Loss")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "| all |" in line]
    assert len(rows) == 2 and {r.split(" | ")[0][2:] for r in rows} == {"paper's rule", "verdict"}
    assert all(r.split(" | ")[2:4] == ["2", "2"] for r in rows)  # two runs per group
    assert (out / "heldout_scores.png").stat().st_size > 1000 and (out / "verdict_by_layer.png").exists()
    assert (out / "score_curves.png").stat().st_size > 1000 and "### The whole curve" in text
    assert "primary: " in text and "output: " in text  # a sentence on each view's curves
    assert main(["compare", "--db", str(db), "gelu-a,gelu-b", "solu-a,gelu-a", "--out", str(tmp_path / "x")]) == 2
    assert "appears twice" in capsys.readouterr().err


def test_an_index_from_before_explanations_compares_with_none():
    """compare reads an index from schema 7 (not migrated: it is opened read-only)."""
    import duckdb

    from index.measure.compare import compare_tables
    from index.store.schema import MIGRATIONS

    con = duckdb.connect(":memory:")
    for step in MIGRATIONS[:7]:
        con.execute(step)
    con.execute("INSERT INTO meta VALUES ('schema_version', '7')")
    con.execute("INSERT INTO models (model_id, act_fn) VALUES ('a', 'gelu'), ('b', 'solu_ln')")
    tables = compare_tables(con, [["a"], ["b"]])
    assert tables["explanations"].empty and tables["verdict"].empty and tables["relations"].empty
    assert tables["curves"].empty and tables["calibration"].empty
