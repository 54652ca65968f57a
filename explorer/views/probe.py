"""Text probe: run a model live on your text and read its neurons."""
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from explorer import data, nav, numbers, render, text_probe
from explorer.nav import Address
from solu.checkpoint import CONFIG
from solu.errors import UserError

SAMPLE = 'def encode(data):\n    """Return the base64 of data."""\n    return "SGVsbG8gd29ybGQ="\n'


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def checkpoint(source: str, revision: str | None, version: float):
    return text_probe.load(source, revision)


@st.cache_data(max_entries=64, show_spinner=False)
def run_probe(source: str, revision: str | None, version: float, text: str) -> text_probe.Probe:
    return text_probe.probe(checkpoint(source, revision, version), text)


def source_version(source: str, revision: str | None) -> float:
    """A local model's config.json time (a retrained checkpoint reloads); 0 for a hub
    model, which is pinned by its revision."""
    if revision or not source.startswith(("/", ".", "~")):
        return 0.0
    try:
        return (Path(source) / CONFIG).stat().st_mtime
    except OSError:
        raise UserError(f"the checkpoint of this model is gone ({source}); the probe needs it to run the "
                        f"model live (the rest of the explorer works without it)") from None


def neuron_table(model_id: str, site: str, rows: list[dict]):
    if not rows:
        return
    df = pd.DataFrame(rows)
    known = data.fresh("neuron_labels", [(r["layer"], r["neuron"]) for r in rows], model_id, site)
    df = df.merge(known, on=["layer", "neuron"], how="left")
    df["of_max"] = df.act / df.max_act.where(df.max_act > 0)
    df["token"] = df.token.map(repr)
    df["open"] = [Address(model_id, int(r.layer), int(r.neuron), site).url for r in df.itertuples()]
    df = numbers.blank_missing(df, ["label", "auto_label"])
    st.dataframe(df[["layer", "neuron", "act", "of_max", "token", "label", "auto_label", "open"]], hide_index=True,
                 column_config={"act": st.column_config.NumberColumn(format="%.4g"),
                                "auto_label": st.column_config.TextColumn("automatic label"),
                                "of_max": st.column_config.ProgressColumn("of indexed max", min_value=0, max_value=1,
                                                                          format="percent"),
                                "open": st.column_config.LinkColumn("link", display_text="open ↗")})


def token_chart(tokens: list[str], acts) -> alt.Chart:
    """Each token's activation as a bar, in text order."""
    df = pd.DataFrame({"position": range(len(tokens)), "token": [repr(t) for t in tokens], "activation": acts})
    return alt.Chart(df).mark_bar(color="#ff6a00").encode(
        x=alt.X("position:O", title="token", axis=alt.Axis(labelExpr="datum.value % 5 ? '' : datum.value")),
        y=alt.Y("activation:Q"), tooltip=["position", "token", alt.Tooltip("activation:Q", format=".4g")],
    ).properties(height=140)


def controls(sites, models) -> tuple[Address, str]:
    """Model, site, layer and neuron pickers, started at the URL's neuron (or the nearest
    one that exists, with a message saying so), and the text."""
    start = nav.nearest(st.query_params, sites)
    _, problem = nav.parse(st.query_params, sites)
    note = st.container()
    names = list(models.model_id)
    a, b, c, d = st.columns([3, 2, 1, 1])
    model_id = a.selectbox("Model", names, index=names.index(start.model_id))
    model_sites = list(sites[sites.model_id == model_id].site)
    site = start.site if start.site in model_sites else nav.primary_site(sites, model_id)
    site = b.selectbox("Site", model_sites, index=model_sites.index(site))
    row = sites[(sites.model_id == model_id) & (sites.site == site)].iloc[0]
    layer = c.number_input("Layer", 0, int(row.n_layers) - 1, min(start.layer, int(row.n_layers) - 1))
    neuron = d.number_input("Neuron", 0, int(row.d_mlp) - 1, min(start.neuron, int(row.d_mlp) - 1))
    addr = Address(model_id, int(layer), int(neuron), site)
    if problem and addr == start:  # until another neuron is picked
        note.warning(f"{render.md_escape(problem)} The pickers start at the nearest neuron there is.")
    text = st.text_area("Text", value=st.session_state.get("probe_text", SAMPLE), height=150,
                        placeholder="type or paste text")
    st.session_state["probe_text"] = text
    return addr, text


def show(addr: Address, result: text_probe.Probe) -> None:
    acts = result.acts[(addr.layer, addr.site)][:, addr.neuron]
    stats = data.query("neuron", addr.model_id, addr.layer, addr.neuron, addr.site)
    indexed_max = float(stats.max_act.iloc[0]) if not stats.empty else 0.0
    best = int(acts.argmax())
    st.subheader(f"{render.md_escape(addr.title)} on your text")
    relative = st.segmented_control("Colours relative to", ["indexed max", "this text"], default="indexed max")
    text_max = float(abs(acts).max(initial=0.0))
    scale = max(text_max if relative == "this text" else max(indexed_max, text_max), 1e-9)
    st.caption(f"max {acts[best]:.4g} at token {best} ({render.md_escape(repr(result.tokens[best]))}); "
               f"the neuron's max over the indexed text is {indexed_max:.4g}.")
    st.html(render.heatmap(result.tokens, acts.tolist(), scale, best))
    st.altair_chart(token_chart(result.tokens, acts), width="stretch")
    st.page_link("views/neuron.py", label="Open this neuron", icon=":material/neurology:", query_params=addr.params())
    st.subheader("Neurons that fire most on this text")
    neuron_table(addr.model_id, addr.site, text_probe.top_neurons(result, addr.site))
    st.subheader("…or on one token")
    pos = st.selectbox("Token", range(len(result.tokens)), index=best,
                       format_func=lambda i: f"{i}: {result.tokens[i]!r}")
    neuron_table(addr.model_id, addr.site, text_probe.top_neurons(result, addr.site, position=pos))


def page() -> None:
    data.require_db()
    st.title("Text probe")
    st.caption("Runs the model on your text, live, and shows what each neuron does with it.")
    models, sites = data.query("models"), data.query("sites")
    if models.empty:
        st.info("This index has no models.")
        return
    addr, text = controls(sites, models)
    row = models.set_index("model_id").loc[addr.model_id]
    source = str(row.get("source") or "")
    revision = row.get("revision") if isinstance(row.get("revision"), str) else None
    try:
        result = run_probe(source, revision, source_version(source, revision), text)
    except UserError as e:
        st.error(render.md_escape(str(e)))
        return
    if not result.tokens:
        st.info("Type some text to probe.")
        return
    if result.truncated:
        st.warning(f"The text was cut to the model's context of {len(result.tokens)} tokens.")
    show(addr, result)


page()
