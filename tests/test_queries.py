"""Query functions the explorer reads through, on a synthetic index with both SoLU sites."""
import duckdb

from index.store import queries
from index.store.connection import open_read
from synthetic_index import build_synthetic_index


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
