"""The comparison section the Models page embeds, on a small scored index."""
from __future__ import annotations

import pytest

from index.measure.autolabel import autolabel
from helpers.measure_db import build_measure_db


def section():
    from explorer import compare_view

    compare_view.show()


@pytest.fixture
def scored_db(tmp_path, monkeypatch):
    db = build_measure_db(tmp_path / "view.duckdb", top_k=20)
    autolabel(db)
    monkeypatch.setenv("SOLU_DB", str(db))
    return db


def test_compare_section_shows_the_report_tables(scored_db):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(section, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [s.value for s in at.multiselect] == [["gelu-m"], ["solu-m"]]
    headline = at.dataframe[0].value
    assert headline.model.tolist() == ["gelu-m", "solu-m"] and (headline.frac_rule == 0.25).all()
    assert headline.frac_verdict.between(0, 1).all() and headline.mean_score.between(-1, 1).all()
    groups = [d.value for d in at.dataframe if "runs_a" in d.value.columns]
    assert len(groups) == 1 and set(groups[0].measure) == {"paper's rule", "verdict"}
    assert any("leads at every cut" in i.value or "cross" in i.value for i in at.info)  # the curve's sentence
    assert any("neuron-to-neuron variation only" in c.value for c in at.caption)
    difference = [d.value for d in at.dataframe if "p_value" in d.value.columns]
    assert len(difference) == 1 and difference[0].layer.tolist() == ["0", "1", "all"]
    at.multiselect[1].select("gelu-m").run()
    assert any("one group only" in c.value for c in at.caption)


def test_the_comparison_is_computed_once_until_the_index_changes(scored_db, monkeypatch):
    """It takes seconds on a GPT-2-small index: a rerun of the page (coming back to it, another
    widget) reads it from the cache; a label save rewrites the file and computes it again."""
    import functools

    from streamlit.testing.v1 import AppTest

    from explorer import db as app_db
    from index.measure import compare

    calls = []

    @functools.wraps(compare.compare_tables)
    def counted(*args, **kwargs):
        calls.append(args[1:])
        return counted.__wrapped__(*args, **kwargs)

    monkeypatch.setattr(compare, "compare_tables", counted)
    at = AppTest.from_function(section, default_timeout=60).run()
    first = at.dataframe[0].value
    at.run()
    assert len(calls) == 1 and at.dataframe[0].value.equals(first)
    app_db.write_label(scored_db, "gelu-m", 0, 1, "a label")  # as the app saves one
    at.run()
    assert len(calls) == 2 and not at.exception
    assert at.dataframe[0].value.frac_human_labeled.tolist() == [1 / 16, 0.0]


def test_the_share_histogram_is_binned_before_it_is_sent():
    """One row per bin and model, as Vega-Lite's bin (step 0.05 over [0, 1]) would count the
    neurons: a share on a bin's edge starts that bin (3/20 is 0.15 in float), 1 is in the
    last bin, a neuron without top examples (NaN) in none."""
    import numpy as np
    import pandas as pd

    from explorer.compare_view import share_bins

    shares = [0.0, 0.04, 0.05, 3 / 20, 0.15, 0.999, 1.0, np.nan, 16 / 20]
    best = pd.DataFrame({"model_id": ["a"] * 6 + ["b"] * 3, "top_share": shares})
    got = share_bins(best).sort_values(["model_id", "lo"]).reset_index(drop=True)
    want = pd.DataFrame({"model_id": ["a", "a", "a", "a", "b", "b"], "lo": [0.0, 0.05, 0.15, 0.95, 0.8, 0.95],
                         "neurons": [2, 1, 2, 1, 1, 1]})
    assert got.model_id.tolist() == want.model_id.tolist() and got.neurons.tolist() == want.neurons.tolist()
    assert np.allclose(got.lo, want.lo) and np.allclose(got.hi - got.lo, 0.05)
