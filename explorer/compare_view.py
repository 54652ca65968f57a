"""The interpretability comparison of two models, as `solu compare --db` reports it, for
the Models page: `compare_view.show()` draws it where it is called."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from explorer import data, numbers
from index.measure import compare
from index.measure.autolabel import RULE_SHARE


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


def rule_chart(by_layer: pd.DataFrame, title: str = "share passing the rule") -> alt.LayerChart:
    """Per layer and model, the share passing a measure, with its 95% interval."""
    base = alt.Chart(by_layer).encode(x=alt.X("layer:O", axis=alt.Axis(labelAngle=0)), xOffset="model_id:N")
    y = alt.Y("frac_passing:Q", scale=alt.Scale(domain=[0, 1]), title=title,
              axis=alt.Axis(format=numbers.PERCENT_AXIS))
    bars = base.mark_bar().encode(
        y=y, color=alt.Color("model_id:N", title="model"),
        tooltip=[alt.Tooltip("model_id:N", title="model"), "layer", "passing", "neurons",
                 alt.Tooltip("frac_passing:Q", title=title, format=numbers.PERCENT),
                 alt.Tooltip("ci_low:Q", title="95% interval from", format=numbers.PERCENT),
                 alt.Tooltip("ci_high:Q", title="to", format=numbers.PERCENT)])
    # the interval's layer shares the bars' axis: titled like it, not after its own fields
    interval = base.mark_errorbar().encode(y=alt.Y("ci_low:Q", title=title), y2="ci_high:Q")
    return (bars + interval).properties(height=220)


def curve_chart(curves: pd.DataFrame) -> alt.LayerChart:
    """Each group's share of neurons with held-out score >= c, with its band, per view."""
    title = "share with held-out score >= c"
    y = dict(title=title, axis=alt.Axis(format=numbers.PERCENT_AXIS))
    base = alt.Chart(curves).encode(x=alt.X("cut:Q", title="score cut c"), color=alt.Color("group:N", title="group"),
                                    strokeDash=alt.StrokeDash("view:N", title="view"))
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("low:Q", **y), y2="high:Q")
    line = base.mark_line().encode(y=alt.Y("share:Q", **y), tooltip=[
        "group", "view", "cut", alt.Tooltip("share:Q", title="share", format=numbers.PERCENT),
        alt.Tooltip("low:Q", title="95% band from", format=numbers.PERCENT),
        alt.Tooltip("high:Q", title="to", format=numbers.PERCENT)])
    return (band + line).properties(height=260)


def difference_chart(diff: pd.DataFrame) -> alt.LayerChart:
    y = dict(title="B minus A (share)", axis=alt.Axis(format=numbers.PERCENT_AXIS))
    base = alt.Chart(diff).encode(x=alt.X("cut:Q", title="score cut c"), color=alt.Color("view:N", title="view"))
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("low:Q", **y), y2="high:Q")
    zero = alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(color="black").encode(y=alt.Y("y:Q", **y))
    return (band + base.mark_line().encode(y=alt.Y("difference:Q", **y)) + zero).properties(height=220)


SHARE_STEP = 0.05  # the share histogram's bins over [0, 1]


def share_bins(best: pd.DataFrame) -> pd.DataFrame:
    """Per model, its neurons whose best concept's top share falls in each bin of SHARE_STEP
    (a share of 1 in the last bin, as Vega-Lite bins): (model_id, lo, hi, neurons). The
    page sends these rows, not one per neuron (73,728 rows, 7 MB, on a GPT-2-small index)."""
    n_bins = round(1 / SHARE_STEP)
    rows = best.dropna(subset=["top_share"])
    at = np.clip(np.floor(rows.top_share.to_numpy(np.float64) / SHARE_STEP + 1e-9), 0, n_bins - 1).astype(int)
    counts = rows.assign(bin=at).groupby(["model_id", "bin"], sort=False).size().rename("neurons").reset_index()
    return counts.assign(lo=counts["bin"] * SHARE_STEP, hi=(counts["bin"] + 1) * SHARE_STEP)[
        ["model_id", "lo", "hi", "neurons"]]


def share_histogram(best: pd.DataFrame) -> alt.Chart:
    return alt.Chart(share_bins(best)).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=alt.X("lo:Q", bin="binned", title="best concept's share of the top examples",
                scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format=numbers.PERCENT_AXIS)),
        x2="hi:Q", y=alt.Y("neurons:Q", stack=None, title="neurons"), color=alt.Color("model_id:N", title="model"),
        tooltip=[alt.Tooltip("model_id:N", title="model"), "neurons:Q",
                 alt.Tooltip("lo:Q", title="from", format=numbers.PERCENT),
                 alt.Tooltip("hi:Q", title="to", format=numbers.PERCENT)],
    ).properties(height=220)


def show() -> None:
    st.subheader("Interpretability: the paper's claim, measured")
    models = data.query("models")
    groups = pick_models(models)
    if groups is None:
        return
    rule = float(st.session_state.get("compare-rule", RULE_SHARE))
    tables = data.computed(compare.compare_tables, groups, rule)
    cut = tables["verdict_cut"].iloc[0]
    numbers.table(compare.headline(tables), mean_score=st.column_config.NumberColumn(format="%.3f"),
                  median_density=st.column_config.NumberColumn("median density (> 0)", format="percent"),
                  median_density_rel=st.column_config.NumberColumn("median density (> threshold)",
                                                                   format="percent"))
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
        numbers.table(tables["mean_score"])
    diff = tables["group_difference"]
    if not diff.empty:
        st.caption("Group B minus group A, with a 95% hierarchical bootstrap interval (training runs, then "
                   "neurons, resampled)" + (": one model per group shows neuron-to-neuron variation only; "
                   "compare several seeds per group." if all(len(g) == 1 for g in groups) else "."))
        numbers.table(diff)
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
            numbers.table(tables["rule_difference"])
        st.altair_chart(share_histogram(tables["best"]), width="stretch")
        numbers.table(tables["concepts"])
    if not tables["explanations"].empty:
        st.altair_chart(rule_chart(tables["verdict_by_layer"], "share interpretable (verdict)"), width="stretch")
    if not tables["calibration"].empty:
        st.caption("Agreement of the raters' answers with the automated measures: the held-out score's AUROC, "
                   "Cohen's kappa of the verdict, and the score cut that agrees best, with its 95% interval.")
        numbers.table(tables["calibration"])
    if not tables["relations"].empty:
        st.caption("Neuron relations per model: connections by virtual weight, the loss change of zeroing a "
                   "neuron at its top examples' max token, best matches in other models, and SoLU's LayerNorm "
                   "caveat (median overlap and rank correlation of the pre-LN and post-LN top-K).")
        numbers.table(tables["relations"])
    numbers.table(tables["sparsity"])
    numbers.table(tables["labels"])
    if tables["study"].empty:
        st.caption("No blinded study covers these models yet (see the Study page).")
    else:
        st.caption("Blinded study, unblinded: fraction of answers 'yes', with a 95% Wilson interval.")
        numbers.table(tables["study"])
