"""The blinded study: a fixed sample, a private order per rater, nothing that names the
model in what a rater sees, answers per rater, and the unblinded summary with its CI."""
from __future__ import annotations

import duckdb
import pytest

from index.measure import study
from index.measure.intervals import wilson
from helpers.measure_db import build_measure_db
from solu.errors import UserError


@pytest.fixture()
def db(tmp_path):
    path = build_measure_db(tmp_path / "s.duckdb")
    study.create_study(path, "pilot", ["gelu-m", "solu-m"], per_model=5, seed=7, snippets=3)
    return path


def read(db, fn, *args):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return fn(con, *args)
    finally:
        con.close()


def test_wilson_interval():
    lo, hi = wilson(6, 10)
    assert lo == pytest.approx(0.3127, abs=1e-4) and hi == pytest.approx(0.8318, abs=1e-4)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    assert all(v != v for v in wilson(0, 0))  # NaN without answers


def test_sample_is_fixed_and_orders_differ_per_rater(db):
    items = read(db, study.study_items, "pilot")
    assert len(items) == 10 and items.model_id.value_counts().to_dict() == {"gelu-m": 5, "solu-m": 5}
    assert items.equals(read(db, study.study_items, "pilot"))
    ana = read(db, study.rater_queue, "pilot", "ana")
    ben = read(db, study.rater_queue, "pilot", "ben")
    assert list(ana.item) == list(range(1, 11))
    key = ["model_id", "layer", "neuron"]
    assert sorted(map(tuple, ana[key].values)) == sorted(map(tuple, ben[key].values))
    assert list(map(tuple, ana[key].values)) != list(map(tuple, ben[key].values))
    assert ana.model_id.iloc[:5].nunique() == 2  # models are interleaved, not in blocks


def test_snippets_are_blinded(db):
    item = read(db, study.next_item, "pilot", "ana")
    snippets = read(db, study.blinded_snippets, item, 3)
    assert len(snippets) == 3 and list(snippets.columns) == ["rank", "tokens", "acts", "max_pos", "start_pos"]
    assert max(max(a) for a in snippets.acts) == pytest.approx(1.0)


def test_answers_progress_and_summary(db):
    for i in range(10):
        item = read(db, study.next_item, "pilot", "ana")
        answer = "yes" if item["model_id"] == "solu-m" or i % 2 else "no"
        study.record_answer(db, "pilot", "ana", item, answer, label="x" if answer == "yes" else "", seconds=3.0)
    assert read(db, study.next_item, "pilot", "ana") is None
    first = read(db, study.next_item, "pilot", "ben")
    study.record_answer(db, "pilot", "ben", first, "unsure")
    study.record_answer(db, "pilot", "ben", first, "yes")  # a changed mind: the latest counts
    summary = read(db, study.summary, "pilot").set_index("model_id")
    solu = summary.loc["solu-m"]
    assert solu.act_fn == "solu_ln"
    ben_solu = first["model_id"] == "solu-m"
    assert solu.answers == 5 + ben_solu and solu.yes == 5 + ben_solu and solu.frac_interpretable == 1.0
    gelu = summary.loc["gelu-m"]
    lo, hi = map(float, wilson(int(gelu.yes), int(gelu.answers)))
    assert (gelu.ci_low, gelu.ci_high) == (lo, hi) and gelu.no == 5 - (gelu.yes - (not ben_solu))
    assert summary.raters.sum() == 3 and summary.unsure.sum() == 0


def test_errors(db):
    item = read(db, study.next_item, "pilot", "ana")
    with pytest.raises(UserError, match="answer must be"):
        study.record_answer(db, "pilot", "ana", item, "maybe")
    with pytest.raises(UserError, match="rater"):
        study.record_answer(db, "pilot", "  ", item, "yes")
    with pytest.raises(UserError, match="not part of"):
        study.record_answer(db, "pilot", "ana", {**item, "neuron": 99}, "yes")
    with pytest.raises(UserError, match="two or more"):
        study.create_study(db, "solo", ["gelu-m"])
    with pytest.raises(UserError, match="other settings"):
        study.create_study(db, "pilot", ["gelu-m", "solu-m"], per_model=6, seed=7, snippets=3)
    study.create_study(db, "pilot", ["solu-m", "gelu-m"], per_model=5, seed=7, snippets=3)  # same: a no-op
    with pytest.raises(UserError, match="not in the index"):
        study.create_study(db, "other", ["gelu-m", "nope"])
    with pytest.raises(UserError, match="no study"):
        read(db, study.summary, "nope")


def test_reindex_keeps_studies_and_answers(db, tmp_path):
    from index.store.connection import replace_database

    item = read(db, study.next_item, "pilot", "ana")
    study.record_answer(db, "pilot", "ana", item, "yes")
    fresh = build_measure_db(tmp_path / "fresh.duckdb")  # a new index: no studies, no answers
    replace_database(fresh, db)
    assert read(db, study.studies).study.tolist() == ["pilot"]
    assert len(read(db, study.latest_answers, "pilot")) == 1


def test_a_sheet_shows_every_kind_of_window_and_nothing_that_names_the_model(db, tmp_path, capsys):
    from solu.cli import main

    out = tmp_path / "ana.md"
    assert main(["study", "sheet", "--db", str(db), "pilot", "--rater", "ana", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("## Neuron ") == 10 and "Top examples:" in text and "|10]" in text
    for secret in ("gelu", "solu", "layer", "L0", "L1"):
        assert secret not in text.lower().replace("layernorm", ""), secret
    assert main(["study", "sheet", "--db", str(db), "pilot", "--rater", "ana", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_answers_from_a_csv_follow_the_raters_sheet_order(db, tmp_path, capsys):
    from solu.cli import main

    queue = read(db, study.rater_queue, "pilot", "ana")
    rows = ["item,answer,label"] + [f"{i},{'yes' if m == 'solu-m' else 'no'},r{i}"
                                    for i, m in zip(queue.item, queue.model_id)]
    answers = tmp_path / "a.csv"
    answers.write_text("\n".join(rows) + "\n")
    assert main(["study", "answer", "--db", str(db), "pilot", "--rater", "ana", "--file", str(answers)]) == 0
    summary = read(db, study.summary, "pilot").set_index("model_id")
    assert summary.yes.to_dict() == {"gelu-m": 0, "solu-m": 5}
    bad = tmp_path / "bad.csv"
    bad.write_text("item,answer\n1,yes\n99,no\n")
    assert main(["study", "answer", "--db", str(db), "pilot", "--rater", "ben", "--file", str(bad)]) == 2
    assert "no item 99" in capsys.readouterr().err
    assert read(db, study.latest_answers, "pilot").rater.tolist().count("ben") == 0  # nothing half-recorded


def test_summary_and_compare_calibrate_on_answers_that_follow_a_rule(tmp_path, capsys):
    """A rater who says yes exactly where the held-out score is at least 0.5 (and the
    explanation holds at the top): summary reports the agreement, and compare uses the
    calibrated cut and says so."""
    from index.measure.autolabel import autolabel
    from index.measure.verdict import interpretable
    from solu.cli import main

    path = build_measure_db(tmp_path / "cal.duckdb", top_k=20, d_mlp=16)
    autolabel(path)
    study.create_study(path, "cal", ["gelu-m", "solu-m"], per_model=32, seed=1)
    expl = read(path, lambda con: con.execute("SELECT model_id, layer, neuron, top_share, score "
                                              "FROM explanations").df()).set_index(["model_id", "layer", "neuron"])
    while (item := read(path, study.next_item, "cal", "ana")) is not None:
        row = expl.loc[(item["model_id"], item["layer"], item["neuron"])]
        yes = bool(interpretable(row.top_share, row.score, 0.5))
        study.record_answer(path, "cal", "ana", item, "yes" if yes else "no")
    assert main(["study", "summary", "--db", str(path), "cal"]) == 0
    out = capsys.readouterr().out
    assert "agreement with the automated measures over 64 answers" in out and "kappa 1.000" in out
    report = tmp_path / "r"
    assert main(["compare", "--db", str(path), "gelu-m", "solu-m", "--out", str(report)]) == 0
    text = (report / "report.md").read_text()
    assert "calibrated on the blinded study's answers" in text and "## Calibration against the blinded study" in text
