"""Run a model just far enough to read its neuron sites.

`index_sites` picks, of the sites solu.model.neuron_sites read off the loaded model,
those of the layers being indexed. A Recorder hooks only those sites, copies each
activation into one float32 buffer [sites, B, T, d_mlp] that every batch reuses (no
cache of anything else), and stops the forward pass, by raising TransformerLens's
StopAtLayerException, as soon as the last of them has fired: the rest of that layer,
later layers and the unembedding never run.

Why a buffer rather than references to the hook outputs: on a CPU, glibc serves blocks
of a site's size (25 MB on solu-12l) from its heap, and outputs held across the rest of
the forward pass, interleaved with its temporaries, leave the heap fragmented (about
600 MB more resident on solu-12l). The copy costs one pass over the activations.
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
    """with Recorder(model, sites) as rec: acts = rec.run(tokens)  # {site_key: [B, T, d_mlp]}

    A run's activations are views of the recorder's buffer: the next run overwrites
    them, so take them in first."""

    def __init__(self, model, sites: list[Site]):
        self.model, self.sites = model, sites
        self.acts: dict[str, torch.Tensor] = {}
        self.buffer: torch.Tensor | None = None
        self._stack = contextlib.ExitStack()

    def _hook(self, key: str, index: int):
        def save(x, hook):
            self.acts[key] = self._keep(index, x)
            if len(self.acts) == len(self.sites):
                raise StopAtLayerException(x)
            return x
        return save

    def _keep(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """x, copied (as float32) into site `index`'s part of the buffer."""
        b = self.buffer
        if b is None or b.shape[2:] != x.shape[1:] or b.shape[1] < len(x) or b.device != x.device:
            b = self.buffer = torch.empty((len(self.sites), *x.shape), dtype=torch.float32, device=x.device)
        return b[index, :len(x)].copy_(x)

    def __enter__(self) -> "Recorder":
        hooks = [(s.hook, self._hook(site_key(s), i)) for i, s in enumerate(self.sites)]
        self._stack.enter_context(self.model.hooks(fwd_hooks=hooks))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self.buffer = None

    def run(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        self.acts = {}
        self.model(tokens)
        if len(self.acts) != len(self.sites):
            missing = sorted({site_key(s) for s in self.sites} - set(self.acts))
            raise RuntimeError(f"hooks did not fire: {', '.join(missing)}")
        acts, self.acts = self.acts, {}
        return acts
