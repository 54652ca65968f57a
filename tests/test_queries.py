"""Query functions the explorer reads through: on a synthetic index with both SoLU sites, and on the
measuring index (latest runs, model checks, the concept filter)."""
import duckdb
import pytest

from index.store import queries
from index.store.connection import open_read
from index.store.labels import append_label
from solu.errors import UserError
from helpers.synthetic_index import build_synthetic_index


def test_neuron_labels_reads_the_max_of_the_chosen_site(tmp_path):
    db = build_synthetic_index(tmp_path / "index.duckdb", post_ln=True)
    with duckdb.connect(str(db)) as con:  # the synthetic sites share a max; make them differ
        con.execute("UPDATE neurons SET max_act = 2 * max_act + 1 WHERE site = 'post_ln'")
    con = open_read(db)
    try:
        model = con.execute("SELECT model_id FROM models WHERE act_fn = 'solu_ln'").fetchall()[0][0]
        expected = dict(con.execute(
            "SELECT site, max_act FROM neurons WHERE model_id = ? AND layer = 1 AND neuron = 5", [model]).fetchall())
        assert set(expected) == {"pre_ln", "post_ln"} and expected["pre_ln"] != expected["post_ln"]
        for site in ("pre_ln", "post_ln"):
            got = queries.neuron_labels(con, [(1, 5)], model, site)
            assert got.max_act.tolist() == [expected[site]]
        assert queries.neuron_labels(con, [(1, 5)], model).max_act.tolist() == [expected["pre_ln"]]
    finally:
        con.close()


def test_latest_runs_is_the_one_latest_run_per_model(tmp_path):
    from helpers.measure_db import build_measure_db

    db = build_measure_db(tmp_path / "runs.duckdb")
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO index_runs (run_id, model_id, dataset, started_at) VALUES "
                    "('old', 'gelu-m', 'a', TIMESTAMP '2026-01-01'), ('new', 'gelu-m', 'b', TIMESTAMP '2026-02-01'), "
                    "('only', 'solu-m', 'c', TIMESTAMP '2025-01-01')")
    con = open_read(db)
    try:
        assert queries.latest_run(con, "gelu-m") == "new" and queries.latest_run(con, "solu-m") == "only"
        assert queries.latest_run(con, "nope") is None
        models = queries.models(con).set_index("model_id")
        assert models.index_dataset.to_dict() == {"gelu-m": "b", "solu-m": "c"}
        assert queries.require_models(con, ["solu-m"]) == ["gelu-m", "solu-m"]
        with pytest.raises(UserError, match="model 'nope' is not in the index"):
            queries.require_models(con, ["gelu-m", "nope"])
    finally:
        con.close()


def test_neuron_table_filters_by_automatic_concept(tmp_path):
    from index.measure.autolabel import autolabel
    from helpers.measure_db import build_measure_db

    db = build_measure_db(tmp_path / "concepts.duckdb", top_k=20)
    autolabel(db)
    append_label(db, "solu-m", 1, 0, "base64", source="auto", author="ana", status="rejected")
    con = open_read(db)
    try:
        assert queries.auto_concepts(con).values.tolist() == [["people_count", 4], ["base64", 3]]
        rows = queries.neuron_table(con, concept="base64", sort="neuron", descending=False)
        assert rows[["model_id", "layer", "neuron"]].values.tolist() == [["gelu-m", 0, 0], ["gelu-m", 1, 0],
                                                                         ["solu-m", 0, 0]]
        assert (rows.auto_label == "base64").all() and rows.total.iloc[0] == 3
        assert queries.neuron_table(con, concept="people_count").total.iloc[0] == 4
    finally:
        con.close()
