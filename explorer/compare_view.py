"""The interpretability comparison of two models, as `solu compare --db` reports it, for
the Models page: `compare_view.show()` draws it where it is called."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from explorer import data, db
from index.measure import compare
from index.measure.autolabel import RULE_SHARE

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


def curve_chart(curves: pd.DataFrame) -> alt.LayerChart:
    """Each group's share of neurons with held-out score >= c, with its band, per view."""
    base = alt.Chart(curves).encode(x=alt.X("cut:Q", title="score cut c"), color=alt.Color("group:N", title="group"),
                                    strokeDash=alt.StrokeDash("view:N", title="view"))
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("low:Q", title="share with held-out score >= c"),
                                               y2="high:Q")
    line = base.mark_line().encode(y="share:Q", tooltip=["group", "view", "cut", alt.Tooltip("share:Q", format=".1%"),
                                                          alt.Tooltip("low:Q", format=".1%"),
                                                          alt.Tooltip("high:Q", format=".1%")])
    return (band + line).properties(height=260)


def difference_chart(diff: pd.DataFrame) -> alt.LayerChart:
    base = alt.Chart(diff).encode(x=alt.X("cut:Q", title="score cut c"), color=alt.Color("view:N", title="view"))
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("low:Q", title="B minus A"), y2="high:Q")
    zero = alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(color="black").encode(y="y:Q")
    return (band + base.mark_line().encode(y="difference:Q") + zero).properties(height=220)


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
    cut = tables["verdict_cut"].iloc[0]
    st.dataframe(compare.headline(tables), hide_index=True, column_config={
        "frac_rule": PERCENT, "rule_ci_low": PERCENT, "rule_ci_high": PERCENT, "frac_verdict": PERCENT,
        "verdict_ci_low": PERCENT, "verdict_ci_high": PERCENT, "frac_human_labeled": PERCENT,
        "mean_score": st.column_config.NumberColumn(format="%.3f")})
    st.caption(f"frac_rule: neurons whose top examples peak on one concept at least {rule:.0%} of the time "
               f"(the paper's rule, automated by `solu autolabel`); frac_verdict: neurons whose explanation holds "
               f"at {cut.top_share:.0%} or more of their top examples and scores at least {cut.score:g} on "
               f"held-out records across their whole range"
               + (" (score cut calibrated on the blinded study's answers)" if cut.calibrated else "")
               + "; mean_score: the mean held-out score. 95% Wilson intervals.")
    if not tables["curves"].empty:
        st.markdown("**The whole curve**: share of neurons with held-out score >= c for every c, with 95% "
                    "hierarchical bootstrap bands (primary: SoLU before its LayerNorm; output: what the MLP "
                    "writes out).")
        st.altair_chart(curve_chart(tables["curves"]), width="stretch")
        st.altair_chart(difference_chart(tables["curve_difference"]), width="stretch")
        for sentence in tables["crossing"].sentence:
            st.info(sentence)
        st.caption("Mean held-out score (no score counts 0), with the same bootstrap; the last row of each view "
                   "is B minus A.")
        st.dataframe(tables["mean_score"], hide_index=True)
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
        st.altair_chart(rule_chart(tables["verdict_by_layer"], "fraction interpretable (verdict)"), width="stretch")
    if not tables["calibration"].empty:
        st.caption("Agreement of the raters' answers with the automated measures: the held-out score's AUROC, "
                   "Cohen's kappa of the verdict, and the score cut that agrees best, with its 95% interval.")
        st.dataframe(tables["calibration"], hide_index=True)
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
