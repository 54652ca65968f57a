"""Run a model just far enough to read its neuron sites.

`index_sites` is the one function that picks the hooks the index reads (through
solu.model.neuron_sites). A Recorder hooks only those sites, keeps a reference to each
activation (no cache of anything else), and stops the forward pass, by raising
TransformerLens's StopAtLayerException, as soon as the last of them has fired: the
rest of that layer, later layers and the unembedding never run.
"""
from __future__ import annotations

import contextlib

import torch
from transformer_lens.model_bridge.exceptions import StopAtLayerException

from solu.config import ModelConfig
from solu.model import Site, neuron_sites


def index_sites(cfg: ModelConfig) -> list[Site]:
    """Every neuron site of the model: SoLU pre-LN (primary) and post-LN; GELU post."""
    return neuron_sites(cfg)


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
            self.acts[key] = x
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
