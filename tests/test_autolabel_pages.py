"""What autolabel shows in the app: the Neurons page filtered to one concept."""
from __future__ import annotations

from explorer_fixtures import app_at, no_exception
from index.measure.autolabel import autolabel
from measure_db import build_measure_db


def test_neurons_page_filters_to_a_concept(tmp_path, monkeypatch):
    db = build_measure_db(tmp_path / "pages.duckdb", top_k=20)
    autolabel(db)
    monkeypatch.setenv("SOLU_DB", str(db))
    at = app_at()
    no_exception(at)
    concept = next(s for s in at.selectbox if s.label == "Concept")
    assert concept.options == ["base64 (4)", "people_count (4)"]  # most neurons first, then by name
    concept.select("base64").run()
    no_exception(at)
    table = at.dataframe[0].value
    assert sorted(zip(table.model_id, table.layer, table.neuron)) == [
        ("gelu-m", 0, 0), ("gelu-m", 1, 0), ("solu-m", 0, 0), ("solu-m", 1, 0)]
    assert (table.auto_label == "base64").all() and "4 neurons match" in at.caption[0].value
