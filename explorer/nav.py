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
        return None, (f"No neuron L{layer} N{neuron} in {model_id!r}: it has {numbered('layer', n_layers)} "
                      f"and {numbered('neuron', d_mlp)}.")
    return Address(model_id, layer, neuron, site), None


def numbered(noun: str, n: int) -> str:
    """'layer 0' for one, 'layers 0-3' for four."""
    return f"{noun} 0" if n == 1 else f"{noun}s 0-{n - 1}"


def nearest(params, sites: pd.DataFrame) -> Address:
    """The indexed neuron nearest to what the parameters name: their model and site where
    those exist (else the first model, its primary site), layer and neuron brought into range."""
    models = list(dict.fromkeys(sites.model_id))
    model_id = params.get("model") if params.get("model") in models else models[0]
    mine = sites[sites.model_id == model_id]
    site = params.get("site") if params.get("site") in set(mine.site) else primary_site(sites, model_id)
    row = mine[mine.site == site].iloc[0]

    def within(name: str, n: int) -> int:
        try:
            return min(max(int(params.get(name, 0)), 0), n - 1)
        except (TypeError, ValueError):
            return 0

    return Address(model_id, within("layer", int(row.n_layers)), within("neuron", int(row.d_mlp)), site)


def go(address: Address) -> None:
    """Show another neuron on the neuron page (rewrites the URL)."""
    st.query_params.from_dict(address.params())
    st.rerun()


def open_neuron(address: Address) -> None:
    """Switch to the neuron page at this address (from another page)."""
    st.switch_page(NEURON_PAGE, query_params=address.params())
