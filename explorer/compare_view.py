"""The interpretability comparison of two models, as `solu compare --db` reports it, for
the Models page: `compare_view.show()` draws it where it is called."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from explorer import data, db
from index.measure import compare

PERCENT = st.column_config.NumberColumn(format="percent")


def pick_models(models: pd.DataFrame) -> list[str] | None:
    ids = list(models.model_id)
    if len(ids) < 2:
        st.caption("Index two models to compare them.")
        return None
    gelu = [m for m, a in zip(models.model_id, models.act_fn) if a == "gelu"]
    solu = [m for m, a in zip(models.model_id, models.act_fn) if a != "gelu"]
    first, second = (gelu[0], solu[0]) if gelu and solu else (ids[0], ids[1])
    a, b, c = st.columns([2, 2, 1])
    model_a = a.selectbox("Model A", ids, index=ids.index(first), key="compare-a")
    model_b = b.selectbox("Model B", ids, index=ids.index(second), key="compare-b")
    st.session_state["compare-threshold"] = c.number_input("Score threshold", 0.0, 1.0, 0.5, 0.05)
    if model_a == model_b:
        st.caption("Pick two different models.")
        return None
    return [model_a, model_b]


def layer_chart(by_layer: pd.DataFrame) -> alt.Chart:
    long = by_layer.melt(id_vars=["model_id", "layer"], value_vars=["frac_above", "frac_rule80"],
                         var_name="measure", value_name="fraction")
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("layer:O"), xOffset="model_id:N", y=alt.Y("fraction:Q", scale=alt.Scale(domain=[0, 1])),
        color="model_id:N", column=alt.Column("measure:N", title=None),
        tooltip=["model_id", "layer", "measure", alt.Tooltip("fraction:Q", format=".1%")]).properties(height=200)


def score_histogram(best: pd.DataFrame) -> alt.Chart:
    return alt.Chart(best).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=alt.X("score:Q", bin=alt.Bin(extent=[0, 1], step=0.04), title="best concept score"),
        y=alt.Y("count():Q", stack=None, title="neurons"), color="model_id:N").properties(height=220)


def show() -> None:
    st.subheader("Interpretability: the paper's claim, measured")
    models = data.query("models")
    chosen = pick_models(models)
    if chosen is None:
        return
    threshold = float(st.session_state.get("compare-threshold", compare.DEFAULT_THRESHOLD))
    tables = db.read(data.db_path(), compare.compare_tables, chosen, threshold)
    st.dataframe(compare.headline(tables, chosen), hide_index=True, column_config={
        "frac_selective": PERCENT, "frac_rule80": PERCENT, "frac_human_labeled": PERCENT})
    st.caption(f"frac_selective: best concept score >= {threshold:g} (sqrt(top-K share x (2 AUROC - 1)), "
               "from `solu autolabel`); frac_rule80: one concept explains >= 80% of the top examples.")
    if tables["best"].empty:
        st.info("No concept scores yet: run `solu autolabel --db FILE`.")
    else:
        st.altair_chart(layer_chart(tables["frac_above_by_layer"]))
        st.altair_chart(score_histogram(tables["best"]), width="stretch")
        st.dataframe(tables["concepts"], hide_index=True)
    st.dataframe(tables["sparsity"], hide_index=True)
    st.dataframe(tables["labels"], hide_index=True, column_config={"frac_human_labeled": PERCENT})
    if tables["study"].empty:
        st.caption("No blinded study covers these models yet (see the Study page).")
    else:
        st.caption("Blinded study, unblinded: fraction of answers 'yes', with a 95% Wilson interval.")
        st.dataframe(tables["study"], hide_index=True, column_config={
            "frac_interpretable": PERCENT, "ci_low": PERCENT, "ci_high": PERCENT})
