"""How the explorer shows numbers: every fraction as a percentage, the same in tables and
charts; and a missing value as an empty cell, never "None" or "NaN".

A column holds a fraction when its name says so (frac_*, *share*, *density*, overlap,
a rate, or the interval and difference of those); tables show such columns with
Streamlit's "percent" format ("12.30%"), charts with PERCENT, its d3 twin.
"""
from __future__ import annotations

import re

import pandas as pd
import streamlit as st

PERCENT = ".2%"  # d3 format of chart labels and tooltips: what the tables' "percent" shows
PERCENT_AXIS = ".2~%"  # axis ticks: the same without trailing zeros ("10%", "0.5%")
FRACTION = re.compile(r"^frac|share|density|overlap|rate$|ci_(low|high)$|^diff(erence|_low|_high)$|^top_(low|high)$")


def is_fraction(column: str) -> bool:
    return bool(FRACTION.search(str(column)))


def table(df: pd.DataFrame, container=st, **column_config) -> None:
    """st.dataframe without the index, fraction columns as percentages (column_config
    entries given here win)."""
    config = {c: st.column_config.NumberColumn(format="percent") for c in df.columns
              if is_fraction(c) and pd.api.types.is_numeric_dtype(df[c])}
    container.dataframe(df, hide_index=True, column_config={**config, **column_config})


def blank_missing(df: pd.DataFrame, columns: list[str], fmt: str = "{:.2f}") -> pd.DataFrame:
    """`columns` as text, an empty string where a value is missing (numbers written with fmt)."""
    def text(value) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        return value if isinstance(value, str) else fmt.format(value)

    return df.assign(**{c: df[c].map(text) for c in columns if c in df})
