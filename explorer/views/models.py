"""The indexed models: configs, loss curves, and GELU and SoLU side by side."""
import json

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from explorer import compare_view, data, experiment_view, numbers
from explorer.render import md_escape
from index.measure import compare

PALETTES = {"gelu": ["#1f77b4", "#6baed6", "#08519c", "#9ecae1"],
            "solu_ln": ["#ff6a00", "#fdae6b", "#a63603", "#fd8d3c"]}
CONFIG_COLUMNS = ["model_id", "act_fn", "n_layers", "d_model", "d_mlp", "n_heads", "n_ctx", "d_vocab", "n_params",
                  "tokens_trained", "eval_loss", "index_dataset", "index_tokens", "top_k", "source_kind", "source",
                  "revision"]
SOURCE_KINDS = {"checkpoint": "trained here (solu train)", "tl-legacy": "TransformerLens pretrained",
                "hf": "Hugging Face"}
BINS = 40  # histogram bins


def loss_curves(models: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for m in models.itertuples():
        try:
            curve = json.loads(m.loss_curve) if isinstance(m.loss_curve, str) else (m.loss_curve or [])
        except json.JSONDecodeError:
            curve = []
        for point in curve if isinstance(curve, list) else []:
            for key in ("train_loss", "eval_loss"):
                if isinstance(point, dict) and point.get(key) is not None:
                    rows.append({"model": m.model_id, "act_fn": m.act_fn,
                                 "tokens": point.get("tokens", point.get("step")),
                                 "loss": point[key], "kind": key.replace("_", " ")})
    return pd.DataFrame(rows)


def model_colours(models: pd.DataFrame) -> alt.Scale:
    """GELU models in blues, SoLU models in oranges, the same on every chart."""
    seen: dict[str, int] = {}
    colours = []
    for act in models.act_fn:
        palette = PALETTES.get(act, ["#7f7f7f"])
        colours.append(palette[seen.get(act, 0) % len(palette)])
        seen[act] = seen.get(act, 0) + 1
    return alt.Scale(domain=list(models.model_id), range=colours)


def curve_chart(curves: pd.DataFrame, colours: alt.Scale) -> alt.Chart:
    return alt.Chart(curves).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X("tokens:Q", title="training tokens"),
        y=alt.Y("loss:Q", title="loss (nats)", scale=alt.Scale(zero=False)),
        color=alt.Color("model:N", scale=colours), strokeDash=alt.StrokeDash("kind:N"),
        tooltip=["model", "kind", "tokens", alt.Tooltip("loss:Q", format=".4f")]).properties(height=280)


def bar(df: pd.DataFrame, y: str, title: str, colours: alt.Scale) -> alt.Chart:
    """One bar per model of a fraction (0 to 100%), labelled with its value."""
    base = alt.Chart(df).encode(x=alt.X("model_id:N", title=None, sort=None, axis=alt.Axis(labelAngle=0)),
                                y=alt.Y(f"{y}:Q", title=title, scale=alt.Scale(domain=[0, 1]),
                                        axis=alt.Axis(format=numbers.PERCENT_AXIS)))
    bars = base.mark_bar().encode(color=alt.Color("model_id:N", scale=colours, legend=None),
                                  tooltip=[alt.Tooltip("model_id:N", title="model"),
                                           alt.Tooltip(f"{y}:Q", title=title, format=numbers.PERCENT)])
    return (bars + base.mark_text(dy=-8).encode(text=alt.Text(f"{y}:Q", format=numbers.PERCENT))).properties(
        height=220)


def binned(values: pd.DataFrame, column: str, edges) -> pd.DataFrame:
    """Per model, its neurons whose `column` falls in each bin of `edges`: (model_id, lo, hi, neurons)."""
    rows = []
    for model_id, group in values.groupby("model_id", sort=False):
        counts, _ = np.histogram(group[column], bins=edges)
        rows += [{"model_id": model_id, "lo": lo, "hi": hi, "neurons": int(n)}
                 for lo, hi, n in zip(edges[:-1], edges[1:], counts) if n]
    return pd.DataFrame(rows, columns=["model_id", "lo", "hi", "neurons"])


def hist_chart(df: pd.DataFrame, title: str, colours: alt.Scale, log: bool = False, fmt: str = ".3~g",
               legend: bool = True) -> alt.Chart:
    x = alt.X("lo:Q", bin="binned", title=title, scale=alt.Scale(type="log") if log else alt.Undefined,
              axis=alt.Axis(format=fmt))
    return alt.Chart(df).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=x, x2="hi:Q", y=alt.Y("neurons:Q", stack=None, title="neurons"),
        color=alt.Color("model_id:N", scale=colours, title="model", legend=alt.Undefined if legend else None),
        tooltip=[alt.Tooltip("model_id:N", title="model"), alt.Tooltip("neurons:Q", title="neurons"),
                 alt.Tooltip("lo:Q", title="from", format=fmt), alt.Tooltip("hi:Q", title="to", format=fmt)],
    ).properties(height=220)


def threshold_text(stats: pd.DataFrame) -> str:
    found = sorted(set(stats.activation_threshold.dropna()))
    return f"{' or '.join(f'{t:.0%}' for t in found)} of its own max" if found else "the index's threshold"


def density_chart(stats: pd.DataFrame, colours: alt.Scale) -> None:
    """Density at the index's threshold (frac_active_rel), shared log-spaced bins: a fraction
    of tokens means the same for every model."""
    active = stats[stats.frac_active_rel > 0]
    st.caption(f"Density: the share of tokens on which a neuron is above {threshold_text(stats)} "
               "(the threshold the index uses; above 0 would make SoLU look dense, since x·softmax(x) is "
               "positive wherever x is). One axis for all models, log scale."
               + (f" {len(stats) - len(active):,} neurons never above it are left out." if len(active) < len(stats)
                  else ""))
    if active.empty:
        return
    lo, hi = active.frac_active_rel.min(), active.frac_active_rel.max()
    edges = np.geomspace(lo, hi if hi > lo else lo * 1.01, BINS + 1)
    st.altair_chart(hist_chart(binned(active, "frac_active_rel", edges), "share of tokens active", colours,
                               log=True, fmt=numbers.PERCENT_AXIS), width="stretch")


def max_act_charts(stats: pd.DataFrame, models: pd.DataFrame, colours: alt.Scale) -> None:
    """Each model's max activations in a panel of its own, on its own axes."""
    st.caption("Each neuron's maximum activation, one panel per model with its own axes: a GELU's output and "
               "SoLU's x·softmax(x) before its LayerNorm are on different scales, so compare the shape of each "
               "distribution, not positions across panels.")
    shown = [m for m in models.itertuples() if (stats.model_id == m.model_id).any()]
    for col, m in zip(st.columns(len(shown)), shown):
        mine = stats[(stats.model_id == m.model_id) & stats.max_act.notna()]
        col.altair_chart(hist_chart(binned(mine, "max_act", np.histogram_bin_edges(mine.max_act, BINS)),
                                    f"max activation ({m.act_fn})", colours, legend=False).properties(
                                        title=m.model_id),
                         width="stretch")


def loss_metrics(summary: pd.DataFrame) -> None:
    """Each model's eval loss, SoLU ones compared with the first GELU model."""
    gelu = summary[summary.act_fn == "gelu"].eval_loss
    baseline = float(gelu.iloc[0]) if len(gelu) and pd.notna(gelu.iloc[0]) else None
    for col, m in zip(st.columns(len(summary)), summary.itertuples()):
        delta = (f"{m.eval_loss - baseline:+.4f} vs GELU" if baseline is not None and m.act_fn != "gelu"
                 and pd.notna(m.eval_loss) else None)
        col.metric(f"{md_escape(m.model_id)} eval loss", f"{m.eval_loss:.4f}" if pd.notna(m.eval_loss) else "-",
                   delta=delta, delta_color="inverse", border=True)


def side_by_side(summary: pd.DataFrame, models: pd.DataFrame, colours: alt.Scale) -> None:
    st.subheader("GELU and SoLU side by side")
    loss_metrics(summary)
    stats = data.computed(compare.neuron_stats, list(models.model_id))
    a, b = st.columns(2)
    a.caption("Share of neurons with a human label")
    a.altair_chart(bar(summary, "frac_labeled", "labeled", colours), width="stretch")
    b.caption("Neurons that ever fired (max activation > 0)")
    b.altair_chart(bar(summary.assign(frac_fired=summary.fired / summary.neurons), "frac_fired", "fired", colours),
                   width="stretch")
    density_chart(stats, colours)
    max_act_charts(stats, models, colours)
    st.caption("Every chart counts the primary site of each model (SoLU before its LayerNorm, GELU after the GELU).")
    numbers.table(summary,
                  eval_loss=st.column_config.NumberColumn("eval loss", format="%.4f"),
                  frac_labeled=st.column_config.NumberColumn("share labeled", format="percent"),
                  median_density=st.column_config.NumberColumn(
                      "median density", format="percent", help=f"share of tokens above {threshold_text(stats)}"))


def page() -> None:
    data.require_db()
    st.title("Models")
    models = data.query("models")
    if models.empty:
        st.info("This index has no models.")
        return
    shown = models.assign(source_kind=models.source_kind.map(SOURCE_KINDS)) if "source_kind" in models else models
    st.dataframe(shown[[c for c in CONFIG_COLUMNS if c in shown]], hide_index=True,
                 column_config={"eval_loss": st.column_config.NumberColumn("eval loss", format="%.4f"),
                                "source_kind": st.column_config.TextColumn("from"),
                                "revision": st.column_config.TextColumn("revision (hub commit)")})
    colours = model_colours(models)
    curves = loss_curves(models)
    if not curves.empty:
        st.subheader("Loss curves")
        st.altair_chart(curve_chart(curves, colours), width="stretch")
    side_by_side(data.query("model_summary"), models, colours)
    experiment_view.show()
    compare_view.show()
    with st.expander("Full configs"):
        for m in models.itertuples():
            st.caption(md_escape(m.model_id))
            st.json(json.loads(m.config) if isinstance(m.config, str) else m.config, expanded=False)


page()
