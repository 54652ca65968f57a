"""The blinded study: a fixed sample, a private order per rater, nothing that names the
model in what a rater sees, answers per rater, and the unblinded summary with its CI."""
from __future__ import annotations

import duckdb
import pytest

from index.measure import study
from index.measure.intervals import wilson
from measure_db import build_measure_db
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
