"""Neuron addresses and the URL query parameters that carry them.

A neuron page's URL is its address: `neuron?model=M&layer=L&neuron=N&site=S`. Missing
parts take defaults (the first model, its primary site, layer 0, neuron 0); parts that
are wrong give a message for the page, never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

NEURON_PAGE, NEURON_PATH = "views/neuron.py", "neuron"  # the page file and its URL path


@dataclass(frozen=True)
class Address:
    model_id: str
    layer: int
    neuron: int
    site: str

    def params(self) -> dict:
        return {"model": self.model_id, "layer": str(self.layer), "neuron": str(self.neuron), "site": self.site}

    @property
    def url(self) -> str:
        """The shareable address of this neuron's page, relative to the app's root."""
        return f"{NEURON_PATH}?{urlencode(self.params())}"

    @property
    def title(self) -> str:
        return f"{self.model_id} · L{self.layer} · N{self.neuron} · {self.site}"

    @property
    def key(self) -> str:
        return f"{self.model_id}|{self.layer}|{self.neuron}|{self.site}"


def primary_site(sites: pd.DataFrame, model_id: str) -> str:
    rows = sites[sites.model_id == model_id].sort_values("is_primary", ascending=False)
    return str(rows.site.iloc[0])


def _int_param(params, name: str) -> int:
    value = params.get(name, "0")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a whole number, got {value!r}") from None


def parse(params, sites: pd.DataFrame) -> tuple[Address | None, str | None]:
    """(address, None), or (None, message) when the parameters name no indexed neuron."""
    models = list(dict.fromkeys(sites.model_id))
    if not models:
        return None, "This index has no neurons yet."
    model_id = params.get("model", models[0])
    if model_id not in models:
        return None, f"No model {model_id!r} in this index. Indexed models: {', '.join(models)}."
    site = params.get("site") or primary_site(sites, model_id)
    row = sites[(sites.model_id == model_id) & (sites.site == site)]
    if row.empty:
        known = ", ".join(sites[sites.model_id == model_id].site)
        return None, f"Model {model_id!r} has no site {site!r}. Its sites: {known}."
    try:
        layer, neuron = _int_param(params, "layer"), _int_param(params, "neuron")
    except ValueError as e:
        return None, str(e)
    n_layers, d_mlp = int(row.n_layers.iloc[0]), int(row.d_mlp.iloc[0])
    if not (0 <= layer < n_layers and 0 <= neuron < d_mlp):
        return None, (f"No neuron L{layer} N{neuron} in {model_id!r}: it has layers 0-{n_layers - 1} "
                      f"and neurons 0-{d_mlp - 1}.")
    return Address(model_id, layer, neuron, site), None


def go(address: Address) -> None:
    """Show another neuron on the neuron page (rewrites the URL)."""
    st.query_params.from_dict(address.params())
    st.rerun()


def open_neuron(address: Address) -> None:
    """Switch to the neuron page at this address (from another page)."""
    st.switch_page(NEURON_PAGE, query_params=address.params())
