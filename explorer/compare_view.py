"""The interpretability comparison of two models, as `solu compare --db` reports it, for
the Models page: `compare_view.show()` draws it where it is called."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from explorer import data, db
from index.measure import compare
from index.measure.autolabel import RULE_SHARE
from index.measure.explain import INTERPRETABLE

PERCENT = st.column_config.NumberColumn(format="percent")


def pick_models(models: pd.DataFrame) -> list[list[str]] | None:
    """Groups A and B: one model each, or several training seeds each (default: the GELU
    models against the SoLU ones; otherwise the first two models)."""
    ids = list(models.model_id)
    if len(ids) < 2:
        st.caption("Index two models to compare them.")
        return None
    gelu = [m for m, a in zip(models.model_id, models.act_fn) if a == "gelu"]
    solu = [m for m, a in zip(models.model_id, models.act_fn) if a == "solu_ln"]
    first, second = (gelu, solu) if gelu and solu else ([ids[0]], [ids[1]])  # other activations: pick by hand
    a, b, c = st.columns([2, 2, 1])
    group_a = a.multiselect("Group A", ids, default=first, key="compare-a",
                            help="one model, or several training seeds of one recipe")
    group_b = b.multiselect("Group B", ids, default=second, key="compare-b")
    c.number_input("Rule: share of top examples", 0.0, 1.0, RULE_SHARE, 0.05, key="compare-rule")
    if not group_a or not group_b:
        st.caption("Pick at least one model per group.")
        return None
    if set(group_a) & set(group_b):
        st.caption("A model can be in one group only.")
        return None
    return [group_a, group_b]


def rule_chart(by_layer: pd.DataFrame, title: str = "fraction passing the rule") -> alt.LayerChart:
    """Per layer and model, the fraction passing a measure, with its 95% interval."""
    base = alt.Chart(by_layer).encode(x=alt.X("layer:O"), xOffset="model_id:N")
    bars = base.mark_bar().encode(
        y=alt.Y("frac_passing:Q", scale=alt.Scale(domain=[0, 1]), title=title),
        color="model_id:N", tooltip=["model_id", "layer", "passing", "neurons",
                                     alt.Tooltip("frac_passing:Q", format=".1%"),
                                     alt.Tooltip("ci_low:Q", format=".1%"), alt.Tooltip("ci_high:Q", format=".1%")])
    return (bars + base.mark_errorbar().encode(y="ci_low:Q", y2="ci_high:Q")).properties(height=220)


def share_histogram(best: pd.DataFrame) -> alt.Chart:
    return alt.Chart(best).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=alt.X("top_share:Q", bin=alt.Bin(extent=[0, 1], step=0.05), title="best concept's share of the top examples"),
        y=alt.Y("count():Q", stack=None, title="neurons"), color="model_id:N").properties(height=220)


def show() -> None:
    st.subheader("Interpretability: the paper's claim, measured")
    models = data.query("models")
    groups = pick_models(models)
    if groups is None:
        return
    rule = float(st.session_state.get("compare-rule", RULE_SHARE))
    tables = db.read(data.db_path(), compare.compare_tables, groups, rule)
    st.dataframe(compare.headline(tables), hide_index=True, column_config={
        "frac_rule": PERCENT, "rule_ci_low": PERCENT, "rule_ci_high": PERCENT, "frac_heldout": PERCENT,
        "heldout_ci_low": PERCENT, "heldout_ci_high": PERCENT, "frac_human_labeled": PERCENT})
    st.caption(f"frac_rule: neurons whose top examples peak on one concept at least {rule:.0%} of the time "
               f"(the paper's rule, automated by `solu autolabel`); frac_heldout: neurons whose explanation "
               f"scores at least {INTERPRETABLE:g} on held-out records across their whole range. 95% Wilson "
               "intervals.")
    diff = tables["group_difference"]
    if not diff.empty:
        st.caption("Group B minus group A, with a 95% hierarchical bootstrap interval (training runs, then "
                   "neurons, resampled)" + (": one model per group shows neuron-to-neuron variation only; "
                   "compare several seeds per group." if all(len(g) == 1 for g in groups) else "."))
        st.dataframe(diff, hide_index=True)
        sentence = tables["disagreement"].sentence.iloc[0]
        if sentence:
            st.warning(sentence)
    if tables["best"].empty:
        st.info("No concept scores yet: run `solu autolabel --db FILE`.")
    else:
        st.altair_chart(rule_chart(tables["rule_by_layer"]), width="stretch")
        if not tables["rule_difference"].empty:
            st.caption(f"{groups[1][0]} minus {groups[0][0]}: 95% Newcombe interval, exact two-sided "
                       "permutation p-value.")
            st.dataframe(tables["rule_difference"], hide_index=True)
        st.altair_chart(share_histogram(tables["best"]), width="stretch")
        st.dataframe(tables["concepts"], hide_index=True)
    if not tables["explanations"].empty:
        st.altair_chart(rule_chart(tables["heldout_by_layer"], f"held-out score >= {INTERPRETABLE:g}"),
                        width="stretch")
    if not tables["relations"].empty:
        st.caption("Neuron relations per model: connections by virtual weight, the loss change of zeroing a "
                   "neuron at its top examples' max token, best matches in other models, and SoLU's LayerNorm "
                   "caveat (median overlap and rank correlation of the pre-LN and post-LN top-K).")
        st.dataframe(tables["relations"], hide_index=True)
    st.dataframe(tables["sparsity"], hide_index=True)
    st.dataframe(tables["labels"], hide_index=True, column_config={"frac_human_labeled": PERCENT})
    if tables["study"].empty:
        st.caption("No blinded study covers these models yet (see the Study page).")
    else:
        st.caption("Blinded study, unblinded: fraction of answers 'yes', with a 95% Wilson interval.")
        st.dataframe(tables["study"], hide_index=True, column_config={
            "frac_interpretable": PERCENT, "ci_low": PERCENT, "ci_high": PERCENT})
