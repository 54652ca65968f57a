"""All indexed neurons in one sortable, filterable table; a click opens the neuron."""
import streamlit as st

from explorer import data, nav, numbers, render
from explorer.nav import Address
from index.measure import verdict
from index.store.queries import SORTS

PAGE_SIZE = 100
SORT_NAMES = {"max_act": "max activation", "density": "density", "mean_act": "mean activation",
              "neuron": "model, layer, neuron", "labeled_at": "label time", "auto_score": "auto score",
              "heldout_score": "held-out score"}
LABEL_NAMES = {"any": "all", "labeled": "labeled", "unlabeled": "unlabeled", "suggested": "with suggestion"}


def filters(sites) -> dict:
    models = list(dict.fromkeys(sites.model_id))
    a, b, c, d = st.columns([3, 2, 2, 3])
    chosen = a.multiselect("Models", models, placeholder="all models")
    n_layers = int(sites[sites.model_id.isin(chosen or models)].n_layers.max())
    layers = b.multiselect("Layers", list(range(n_layers)), placeholder="all layers")
    all_sites = sorted(set(sites[sites.model_id.isin(chosen or models)].site))
    site_pick = c.multiselect("Sites", all_sites, placeholder="primary sites")
    search = d.text_input("Search labels", placeholder="e.g. base64, number, python")
    e, f, g, h = st.columns([3, 2, 1, 2], vertical_alignment="bottom")
    labeled = e.segmented_control("Labels", list(LABEL_NAMES), format_func=LABEL_NAMES.get, default="any") or "any"
    sort = f.selectbox("Sort by", list(SORTS), format_func=SORT_NAMES.get)
    descending = g.toggle("Descending", value=sort != "neuron")
    concept = concept_filter(h)
    interpretable = st.toggle(f"Interpretable only (explanation at >= {verdict.TOP_SHARE:.0%} of the top examples, "
                              f"held-out score >= {verdict.SCORE:g})", key="interpretable",
                              help="neurons whose explanation, chosen on half of their records, holds at most of "
                                   "their top examples and predicts the other half's activations with this "
                                   "correlation or more (`solu autolabel`)")
    return dict(models=chosen, layers=layers, sites=site_pick, primary_only=not site_pick, search=search,
                labeled=labeled, concept=concept, verdict=(verdict.TOP_SHARE, verdict.SCORE) if interpretable else None, sort=sort,
                descending=descending)


def concept_filter(column) -> str | None:
    """A choice of the concepts that label neurons automatically (`solu autolabel`)."""
    concepts = data.query("auto_concepts")
    counts = dict(zip(concepts.concept, concepts.neurons))
    return column.selectbox("Concept", list(counts), index=None, placeholder="any concept", key="concept",
                            format_func=lambda c: f"{c} ({counts[c]})",
                            help="neurons whose automatic label is this concept")


def table(rows):
    view = numbers.blank_missing(rows.drop(columns=["total"]), ["label", "auto_label", "explanation"]).assign(
        open=[Address(r.model_id, int(r.layer), int(r.neuron), r.site).url for r in rows.itertuples()],
        top_token=rows.top_token.map(lambda t: repr(t) if isinstance(t, str) else ""))
    config = {
        "open": st.column_config.LinkColumn("link", display_text="open ↗", width="small"),
        "max_act": st.column_config.NumberColumn("max", format="%.3f"),
        "density": st.column_config.NumberColumn("density", format="%.4f"),
        "mean_act": st.column_config.NumberColumn("mean", format="%.3f"),
        "auto_score": st.column_config.NumberColumn("auto score", format="%.2f"),
        "auto_label": st.column_config.TextColumn("automatic label"),
        "top_token": st.column_config.TextColumn("peak token"),
        "explanation": st.column_config.TextColumn("explanation"),
        "explained_top_share": st.column_config.NumberColumn("top share", format="%.2f",
                                                             help="share of the top examples the explanation holds at"),
        "heldout_score": st.column_config.NumberColumn("held-out score", format="%.2f"),
    }
    return st.dataframe(view, hide_index=True, column_config=config, on_select="rerun",
                        selection_mode="single-row", key="neuron_table", height=min(38 + 35 * len(view), 740))


def page() -> None:
    data.require_db()
    st.title("Neurons")
    sites = data.query("sites")
    if sites.empty:
        st.info("This index has no neurons yet.")
        return
    args = filters(sites)
    total = data.query("neuron_table", **args, limit=1).total
    total = int(total.iloc[0]) if len(total) else 0
    n_pages = max(1, -(-total // PAGE_SIZE))
    if st.session_state.get("neuron_page", 1) > n_pages:
        st.session_state["neuron_page"] = n_pages
    page_no = st.session_state.get("neuron_page", 1)
    rows = data.query("neuron_table", **args, limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE)
    st.caption(f"{total:,} neurons match · page {page_no} of {n_pages} · click a row to open the neuron")
    if rows.empty:
        st.info("No neuron matches these filters.")
        return
    event = table(rows)
    if n_pages > 1:
        st.pagination(n_pages, key="neuron_page")
    picked = event.selection.rows if event is not None else []
    if picked:
        r = rows.iloc[picked[0]]
        nav.open_neuron(Address(r.model_id, int(r.layer), int(r.neuron), r.site))


page()
