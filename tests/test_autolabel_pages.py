"""What autolabel shows in the app: the Neurons page filtered to one concept."""
from __future__ import annotations

from helpers.explorer_fixtures import app_at, no_exception
from index.measure.autolabel import autolabel
from helpers.measure_db import build_measure_db


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


def test_neuron_page_shows_the_explanation_and_marks_held_out_disagreements(tmp_path, monkeypatch):
    from helpers.explorer_fixtures import html_text

    from index.measure import verdict

    db = build_measure_db(tmp_path / "explained.duckdb", top_k=20)
    autolabel(db)
    monkeypatch.setenv("SOLU_DB", str(db))
    at = app_at("neuron", model="gelu-m", layer=0, neuron=1, site="post")
    no_exception(at)
    text = "\n".join(m.value for m in at.markdown)
    assert "**people\\_count** (concept) · held-out score" in text and "**interpretable**" in text
    assert "paper's rule: top share 1.00" in text and "not interpretable" not in text
    snippets = html_text(at)
    # neuron 1 fires on half of the people-count tokens: held-out windows show where the rule holds and it stays quiet
    assert "border-bottom:3px dotted" in snippets
    # the Neurons page sorts by the held-out score and keeps the interpretable ones
    at = app_at()
    next(s for s in at.selectbox if s.label == "Sort by").select("heldout_score").run()
    at.toggle(key="interpretable").set_value(True).run()
    no_exception(at)
    table = at.dataframe[0].value
    assert len(table) >= 4 and (table.heldout_score >= verdict.SCORE).all()
    assert (table.explained_top_share >= verdict.TOP_SHARE).all()
    assert table.heldout_score.is_monotonic_decreasing
    assert set(table.explanation) <= {"base64", "people_count"}


def test_a_solu_post_ln_page_shows_its_own_explanation(tmp_path, monkeypatch):
    """autolabel explains both SoLU sites; the post_ln page shows the post_ln explanation
    (not "No explanation yet"), and compare reports the output view beside the primary."""
    import duckdb

    from index.measure.compare import compare_tables

    db = build_measure_db(tmp_path / "sites.duckdb", top_k=20)
    con = duckdb.connect(str(db))
    for table in ("neurons", "examples", "activations"):  # a post_ln site: the same neurons, half as strong
        scaled = {"neurons": "", "examples": ", list_transform(acts, lambda a: a / 2) AS acts",
                  "activations": ", act / 2 AS act"}[table]
        extra = ", false AS is_primary" if table == "neurons" else ""
        con.execute(f"INSERT INTO {table} SELECT * REPLACE ('post_ln' AS site{extra}{scaled}) FROM {table} "
                    "WHERE model_id = 'solu-m'")
    con.close()
    autolabel(db)
    con = duckdb.connect(str(db), read_only=True)
    sites = con.execute("SELECT site, count(*) FROM explanations WHERE model_id = 'solu-m' GROUP BY site "
                        "ORDER BY site").fetchall()
    tables = compare_tables(con, [["gelu-m"], ["solu-m"]])
    con.close()
    assert sites == [("post_ln", 16), ("pre_ln", 16)]
    assert set(tables["mean_score"].view) == {"primary", "output"}
    monkeypatch.setenv("SOLU_DB", str(db))
    at = app_at("neuron", model="solu-m", layer=0, neuron=0, site="post_ln")
    no_exception(at)
    text = "\n".join(m.value for m in at.markdown)
    assert "**base64** (concept) · held-out score" in text
    assert not any("No explanation yet" in c.value for c in at.caption)
