"""Every page of the explorer, driven by Streamlit's AppTest on a synthetic index."""
from __future__ import annotations

import html
import json
import re

import duckdb

import pytest

from helpers.explorer_fixtures import (GELU, IMG_PATTERNS, SOLU, app_at, hostile_snippet, html_text,
                                       labels_of, no_exception)
from helpers.synthetic_index import HOSTILE_TOKENS


def visible_text(body: str) -> str:
    """What a reader sees of an HTML block: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def unescape_md(text: str) -> str:
    """Markdown text as displayed: backslash escapes removed."""
    return re.sub(r"\\(.)", r"\1", text)


def test_neurons_page_lists_and_filters(synth_db):
    at = app_at()
    no_exception(at)
    assert at.title[0].value == "Neurons"
    table = at.dataframe[0].value
    assert len(table) == 100 and table.max_act.is_monotonic_decreasing
    assert "256 neurons match" in at.caption[0].value
    text = table[["label", "auto_label", "explanation"]]
    assert text.notna().all().all() and (table.label == "").any()  # an unlabeled neuron: empty, not "None"
    at.text_input[0].input("BASE64").run()
    table = at.dataframe[0].value
    assert list(table.label) == ["base64 (padding)"] and table.neuron.tolist() == [1]
    assert table.open.iloc[0] == f"neuron?model={GELU}&layer=0&neuron=1&site=post"


def test_neurons_page_sorts_and_shows_suggestions(synth_db):
    at = app_at()
    at.selectbox[0].select("neuron").run()
    at.toggle[0].set_value(False).run()
    table = at.dataframe[0].value
    assert table[["model_id", "layer", "neuron"]].iloc[0].tolist() == [GELU, 0, 0]
    at.segmented_control[0].set_value("suggested").run()
    table = at.dataframe[0].value
    assert table.auto_label.tolist() == ["Python keyword 'def'"]


def test_neuron_page_shows_everything(synth_db):
    at = app_at("neuron", model=GELU, layer=0, neuron=1, site="post")
    no_exception(at)
    body = html_text(at)
    assert f"{GELU} · L0 · N1 · post" in body and "base64 (padding)" in body
    assert {m.label for m in at.metric} == {"Max activation", "Density", "Mean", "Std"}
    assert any(s.value.startswith("Top 10") for s in at.subheader)
    assert "Across the activation range" in [s.value for s in at.subheader]
    assert body.count('class="snippet"') == 20
    logit_tables = [d.value for d in at.dataframe if list(d.value.columns) == ["token", "weight"]]
    assert len(logit_tables) == 2  # boosted, then suppressed logit tokens
    assert (logit_tables[0].weight > 0).all() and (logit_tables[1].weight < 0).all()
    assert at.text_input[0].value == "base64 (padding)"  # the label editor holds the current label


def test_hostile_tokens_are_escaped(synth_db):
    at = app_at("neuron", model=GELU, layer=0, neuron=0, site="post")
    no_exception(at)
    body = html_text(at)
    assert "<script>" not in body and "<img" not in body
    assert "&lt;script&gt;alert(&#x27;xss&#x27;)&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    max_span = re.search(r'<span class="tok" data-act="9.0000"[^>]*>', body).group(0)
    assert "outline:2px" in max_span  # the max token is marked
    assert "**bold**" in visible_text(body) and "$x^2$" in visible_text(body)


@pytest.mark.parametrize("params, message", [
    (dict(model="nope", layer=0, neuron=0), "No model 'nope'"),
    (dict(model=GELU, layer=0, neuron=99999), "No neuron L0 N99999"),
    (dict(model=GELU, layer="x", neuron=0), "`layer` must be a whole number"),
    (dict(model=GELU, layer=0, neuron=0, site="pre_ln"), "has no site 'pre_ln'"),
])
def test_unknown_neuron_is_a_message(synth_db, params, message):
    at = app_at("neuron", **params)
    no_exception(at)
    assert any(message in unescape_md(w.value) for w in at.warning), [w.value for w in at.warning]


@pytest.mark.parametrize("page", ["neuron", "probe"])
def test_a_bad_address_keeps_what_exists_and_says_so(synth_db, page):
    at = app_at(page, model=SOLU, layer=99, neuron=5)
    no_exception(at)
    assert [w for w in at.warning if "No neuron L99 N5" in unescape_md(w.value)], [w.value for w in at.warning]
    picked = {w.label: w.value for w in [*at.selectbox, *at.number_input]}
    assert (picked["Model"], picked["Site"], picked["Layer"], picked["Neuron"]) == (SOLU, "pre_ln", 1, 5)
    at = app_at(page, model="nope")
    assert [w for w in at.warning if "No model 'nope'" in unescape_md(w.value)]


def test_address_messages_count_in_words():
    import pandas as pd

    from explorer import nav

    sites = pd.DataFrame({"model_id": ["m"], "site": ["post"], "is_primary": [True], "n_layers": [1], "d_mlp": [8]})
    _, problem = nav.parse({"model": "m", "layer": "1"}, sites)
    assert "it has layer 0 and neurons 0-7." in problem
    _, problem = nav.parse({"model": "m", "layer": "5"}, sites.assign(n_layers=3, d_mlp=1))
    assert "it has layers 0-2 and neuron 0." in problem


def test_neuron_page_defaults_to_first_neuron(synth_db):
    at = app_at("neuron")
    no_exception(at)
    assert f"{GELU} · L0 · N0 · post" in html_text(at)


def test_next_previous_and_random(synth_db):
    at = app_at("neuron", model=GELU, layer=0, neuron=63, site="post")
    next_button = [b for b in at.button if b.label == "Next"][0]
    next_button.click().run()
    assert f"{GELU} · L1 · N0 · post" in html_text(at)  # wraps into the next layer
    [b for b in at.button if b.label == "Prev"][0].click().run()
    assert f"{GELU} · L0 · N63 · post" in html_text(at)
    [b for b in at.button if b.label == "Random"][0].click().run()
    no_exception(at)
    assert GELU in html_text(at)


def test_label_editor_appends(synth_db):
    at = app_at("neuron", model=SOLU, layer=1, neuron=7, site="pre_ln")
    at.text_input[0].input("people counts")
    at.text_area[0].input("fires on 'three people'")
    at.text_input[1].input("tester")
    [b for b in at.button if b.label == "Save label"][0].click().run()
    no_exception(at)
    assert labels_of(synth_db, SOLU, 1, 7) == [("human", "people counts", "fires on 'three people'", "tester", None)]
    assert "people counts" in html_text(at)
    at.text_input[0].input("people counts (plural)")
    [b for b in at.button if b.label == "Save label"][0].click().run()
    rows = labels_of(synth_db, SOLU, 1, 7)
    assert [r[1] for r in rows] == ["people counts", "people counts (plural)"]  # history kept
    assert any(e.label.startswith("History (2 changes)") for e in at.expander)
    history = next(d.value for d in at.dataframe if "created_at" in d.value.columns)
    assert history.notna().all().all() and (history.score == "").all()  # a human label has no score: no NaN


def test_label_editor_strips_nul_and_control_characters(synth_db):
    at = app_at("neuron", model=SOLU, layer=1, neuron=8, site="pre_ln")
    at.text_input[0].input("nul\x00 here\x07")
    at.text_area[0].input("line one\nline\x1b two")
    [b for b in at.button if b.label == "Save label"][0].click().run()
    no_exception(at)
    assert labels_of(synth_db, SOLU, 1, 8)[0][1:3] == ("nul here", "line one\nline two")


@pytest.mark.parametrize("how", ["read-only folder", "read-only file"])
def test_a_refused_label_save_is_a_message_not_a_traceback(synth_db, how):
    before = synth_db.read_bytes()
    target = synth_db.parent if how == "read-only folder" else synth_db
    target.chmod(0o555 if how == "read-only folder" else 0o444)
    try:
        at = app_at("neuron", model=SOLU, layer=1, neuron=9, site="pre_ln")
        at.text_input[0].input("will not be saved")
        [b for b in at.button if b.label == "Save label"][0].click().run()
        no_exception(at)
        assert any("read-only" in e.value.replace("\\", "") for e in at.error)
    finally:
        target.chmod(0o755 if how == "read-only folder" else 0o644)
    assert synth_db.read_bytes() == before and not (synth_db.parent / "index.duckdb.lock").exists()


def test_accept_and_reject_suggestions(synth_db):
    at = app_at("neuron", model=SOLU, layer=0, neuron=3, site="pre_ln")
    assert any("Suggested label" in i.value for i in at.info)
    [b for b in at.button if b.label == "Accept"][0].click().run()
    assert labels_of(synth_db, SOLU, 0, 3)[-1][:2] == ("human", "Python keyword 'def'")
    assert not any("Suggested label" in i.value for i in at.info)

    from explorer import db
    db.write_label(synth_db, SOLU, 0, 4, "Python keyword 'class'", "", source="auto", score=0.7)
    at = app_at("neuron", model=SOLU, layer=0, neuron=4, site="pre_ln")
    [b for b in at.button if b.label == "Reject"][0].click().run()
    assert labels_of(synth_db, SOLU, 0, 4)[-1] == ("auto", "Python keyword 'class'", "", None, "rejected")
    assert not any("Suggested label" in i.value for i in at.info)


def test_models_page(synth_db):
    at = app_at("models")
    no_exception(at)
    assert [s.value for s in at.subheader][:3] == ["Loss curves", "GELU and SoLU side by side",
                                                   "Interpretability: the paper's claim, measured"]
    assert [unescape_md(m.label) for m in at.metric] == [f"{GELU} eval loss", f"{SOLU} eval loss"]
    assert at.metric[1].value == "4.9500"
    summary = at.dataframe[1].value
    assert summary.set_index("model_id").labeled.to_dict() == {GELU: 1, SOLU: 1}
    con = duckdb.connect(str(synth_db), read_only=True)
    rel = dict(con.execute("SELECT model_id, median(frac_active_rel) FROM neurons WHERE is_primary "
                           "GROUP BY ALL").fetchall())
    threshold = con.execute("SELECT any_value(activation_threshold) FROM index_runs").fetchone()[0]
    con.close()
    assert summary.set_index("model_id").median_density.to_dict() == pytest.approx(rel)  # the index's threshold
    assert any(f"above {threshold:.0%} of its own max" in c.value for c in at.caption)


def axis_titles(spec: dict, channel: str) -> set:
    """The titles a chart's layers give one channel (a field name where a layer gives none)."""
    layers = spec.get("layer", [spec])
    encodings = [layer.get("encoding", {}).get(channel) for layer in layers]
    return {e.get("title", e.get("field")) for e in encodings if e and "field" in e}


def test_models_page_charts_have_one_clean_title_per_axis(synth_db, monkeypatch):
    from index.measure.autolabel import autolabel
    from helpers.measure_db import build_measure_db

    db = build_measure_db(synth_db.with_name("scored.duckdb"), top_k=20)
    autolabel(db)
    monkeypatch.setenv("SOLU_DB", str(db))
    at = app_at("models")
    no_exception(at)
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert len(specs) >= 8
    for spec in specs:
        for channel in ("x", "y"):
            titles = axis_titles(spec, channel)
            assert len(titles) <= 1, titles  # Vega-Lite would join them: "share, ci_low"
    shares = [s for s in specs if axis_titles(s, "y") == {"labeled"}]
    assert len(shares) == 1 and shares[0]["layer"][0]["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert shares[0]["layer"][0]["encoding"]["y"]["axis"]["format"].endswith("%")  # not 0.000000 when none is


def test_probe_runs_the_model(probe_db):
    at = app_at("probe", model="solu-tiny", layer=1, neuron=5, site="pre_ln")
    no_exception(at)
    assert unescape_md(at.subheader[0].value) == "solu-tiny · L1 · N5 · pre_ln on your text"
    assert 'class="heatmap"' in html_text(at)
    top = at.dataframe[0].value
    assert len(top) == 20 and top.act.is_monotonic_decreasing
    at.text_area[0].input("three people went home").run()
    no_exception(at)
    assert visible_text(html_text(at)) == "three people went home"
    token_box = [s for s in at.selectbox if s.label == "Token"][0]
    token_box.select(0).run()
    first = token_box.options[0].split(": ", 1)[1]
    assert set(at.dataframe[1].value.token) == {first}


def test_probe_without_checkpoint_says_so(synth_db):
    at = app_at("probe", model=GELU)
    no_exception(at)
    assert any("checkpoint of this model is gone" in unescape_md(e.value) for e in at.error)


def test_sql_page_runs_and_refuses(synth_db):
    at = app_at("sql")
    no_exception(at)
    at.text_area[0].input("SELECT model_id, count(*) AS n FROM neurons GROUP BY 1 ORDER BY 1")
    [b for b in at.button if b.label == "Run query"][0].click().run()
    no_exception(at)
    assert at.dataframe[0].value.n.tolist() == [128, 128]
    assert at.get("download_button")
    at.text_area[0].input("SELECT * FROM neurons")
    [b for b in at.number_input if b.label == "Rows at most"][0].set_value(10)
    [b for b in at.button if b.label == "Run query"][0].click().run()
    assert len(at.dataframe[0].value) == 10 and "truncated" in at.caption[-1].value + at.warning[0].value
    at.text_area[0].input("DELETE FROM labels")
    [b for b in at.button if b.label == "Run query"][0].click().run()
    assert at.error and labels_of(synth_db, GELU, 0, 1)
    at.text_area[0].input("SELECT * FROM read_csv('/etc/passwd')")
    [b for b in at.button if b.label == "Run query"][0].click().run()
    assert at.error and "passwd" not in str(at.dataframe)
    at.text_area[0].input("SELECT count(*) FROM range(100000000000) a")
    [b for b in at.number_input if b.label == "Seconds at most"][0].set_value(0.2)
    [b for b in at.button if b.label == "Run query"][0].click().run()
    assert "longer than 0.2s" in unescape_md(at.error[0].value)
    at.text_area[0].input("SELEC nonsense")
    [b for b in at.button if b.label == "Run query"][0].click().run()
    assert "syntax error" in unescape_md(at.error[0].value).lower() and len(at.error[0].value.splitlines()) == 1


def test_sql_page_lists_every_table_and_view_and_the_shared_examples(synth_db):
    from explorer.sql_examples import examples

    con = duckdb.connect(str(synth_db), read_only=True)
    tables = con.execute("SELECT table_name, table_type FROM information_schema.tables").fetchall()
    con.close()
    at = app_at("sql")
    no_exception(at)
    caption = unescape_md(at.caption[0].value)
    listed = {kind: caption.split(f"{kind}: ")[1].split(".")[0].split(", ") for kind in ("Tables", "Views")}
    assert sorted(listed["Tables"]) == sorted(name for name, kind in tables if kind == "BASE TABLE")
    assert sorted(listed["Views"]) == sorted(name for name, kind in tables if kind == "VIEW")
    assert {"explanations", "connections", "ablations", "neuron_matches", "concept_scores"} <= set(listed["Tables"])
    assert "ln_agreement" in listed["Views"]
    shown = at.selectbox[0].options[1:]
    assert shown == list(examples())
    at.selectbox[0].select(shown[0]).run()
    assert at.text_area[0].value == examples()[shown[0]]


def test_missing_database_is_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLU_DB", str(tmp_path / "gone.duckdb"))
    at = app_at()
    no_exception(at)
    assert "not found" in unescape_md(at.error[0].value)


def test_every_page_on_a_real_index(real_index, monkeypatch):
    """The pages on `solu index` output (tiny checkpoints), not the synthetic index."""
    monkeypatch.setenv("SOLU_DB", str(real_index))
    snippet = hostile_snippet(real_index, IMG_PATTERNS)
    at = app_at("neuron", model=snippet["model_id"], layer=snippet["layer"], neuron=snippet["neuron"],
                site=snippet["site"])
    no_exception(at)
    top_block = next(h.value for h in at.html if 'class="snippets"' in h.value)
    rows = re.findall(r'<div class="heatmap"[^>]*>(.*?)</div>', top_block, re.S)
    shown = visible_text(rows[snippet["position"]]).replace("↵", "").replace("⇥", "")
    assert shown == "".join(snippet["tokens"])
    for page in ("neurons", "models", "probe", "sql"):
        at = app_at(page)
        no_exception(at)
        assert not at.error, [e.value for e in at.error]
