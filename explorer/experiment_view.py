"""The experiment of `solu experiment` (index.measure.experiment_report), for the Models
page: `experiment_view.show()` draws it where it is called, when the index holds one."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from explorer import data, numbers
from index.measure.experiment_report import MEASURES, experiment_tables
from index.store.queries import has_table


COLOURS = alt.Scale(domain=["gelu", "solu_ln"], range=["#1f77b4", "#ff6a00"])


def size_chart(size: pd.DataFrame, measure: str, title: str) -> alt.LayerChart:
    """One measure against the number of layers, GELU and SoLU, with seed-level intervals."""
    base = alt.Chart(size).encode(x=alt.X("n_layers:O", title="layers", axis=alt.Axis(labelAngle=0)),
                                  color=alt.Color("act_fn:N", title=None, scale=COLOURS))
    y = alt.Y(f"{measure}:Q", title=None, scale=alt.Scale(zero=False))
    line = base.mark_line(point=True).encode(y=y, tooltip=["act_fn", "n_layers", "seeds",
                                                           alt.Tooltip(f"{measure}:Q", format=".3f", title=title)])
    bars = base.mark_errorbar(ticks=True).encode(y=alt.Y(f"{measure}_low:Q", title=None), y2=f"{measure}_high:Q")
    return (line + bars).properties(width=230, height=220, title=title)


def tables(con) -> dict:
    return experiment_tables(con) if has_table(con, "experiment_cells") else {}


def show() -> None:
    found = data.computed(tables)
    if not found:
        return
    st.subheader("The experiment: GELU vs SoLU across sizes and seeds")
    st.info(found["summary"].sentence.iloc[0])
    size = found["by_size"]
    loss = size.rename(columns={"eval_loss": "loss"})
    charts = [size_chart(size, m, t) for m, t in MEASURES.items()] + [size_chart(loss, "loss", "eval loss")]
    st.altair_chart(alt.hconcat(*charts), width="stretch")
    st.caption("95% intervals: seeds resampled, then neurons (hierarchical bootstrap); eval loss over seeds.")
    numbers.table(found["difference"])
    st.caption("SoLU minus GELU per size; loss_ratio is SoLU's eval loss over GELU's, seed by seed.")
    numbers.table(found["by_layer"])
    numbers.table(found["cells"])
