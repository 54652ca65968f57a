"""Run a model just far enough to read its neuron sites.

`index_sites` picks, of the sites solu.model.neuron_sites read off the loaded model,
those of the layers being indexed. A Recorder hooks only those sites, keeps a reference to each
activation (no cache of anything else; a float32 copy for a model run in bfloat16 or
float16), and stops the forward pass, by raising
TransformerLens's StopAtLayerException, as soon as the last of them has fired: the
rest of that layer, later layers and the unembedding never run.
"""
from __future__ import annotations

import contextlib

import torch
from transformer_lens.model_bridge.exceptions import StopAtLayerException

from solu.model import Site


def index_sites(loaded, layers: list[int] | None = None) -> list[Site]:
    """The loaded model's neuron sites (SoLU pre-LN, primary, and post-LN; others after
    the activation) in `layers` (default all)."""
    return [s for s in loaded.sites if layers is None or s.layer in layers]


def site_key(site: Site) -> str:
    return f"{site.layer}.{site.name}"


class Recorder:
    """with Recorder(model, sites) as rec: acts = rec.run(tokens)  # {site_key: [B, T, d_mlp]}"""

    def __init__(self, model, sites: list[Site]):
        self.model, self.sites = model, sites
        self.acts: dict[str, torch.Tensor] = {}
        self._stack = contextlib.ExitStack()

    def _hook(self, key: str):
        def save(x, hook):
            self.acts[key] = x if x.dtype == torch.float32 else x.float()
            if len(self.acts) == len(self.sites):
                raise StopAtLayerException(x)
            return x
        return save

    def __enter__(self) -> "Recorder":
        hooks = [(s.hook, self._hook(site_key(s))) for s in self.sites]
        self._stack.enter_context(self.model.hooks(fwd_hooks=hooks))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def run(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        self.acts = {}
        self.model(tokens)
        if len(self.acts) != len(self.sites):
            missing = sorted({site_key(s) for s in self.sites} - set(self.acts))
            raise RuntimeError(f"hooks did not fire: {', '.join(missing)}")
        acts, self.acts = self.acts, {}
        return acts
