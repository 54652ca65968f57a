"""Run a model on text and read every neuron site: the text probe's engine.

No Streamlit here; the page caches the loaded model and the results.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from solu.sources import LoadedModel, load_model
from solu.tokenizer import token_strings


@dataclass
class Probe:
    tokens: list[str]
    acts: dict[tuple[int, str], np.ndarray]  # (layer, site) -> [position, neuron]
    truncated: bool


def load(source: str, revision: str | None = None) -> LoadedModel:
    """The model an index was built from, by its recorded source and revision (raises
    UserError if it is gone, broken, or not in the cache offline)."""
    return load_model(source, device="cpu", revision=revision)


@torch.inference_mode()
def probe(ckpt: LoadedModel, text: str) -> Probe:
    """Every neuron's activation at every token of `text` (cut to the model's context).
    Like the indexer and training, the row starts with the end-of-text token, whose
    activations are dropped, so values compare with the indexed ones."""
    ids = ckpt.tokenizer.encode(text, add_special_tokens=False).ids
    room = ckpt.model_cfg.n_ctx - 1
    truncated = len(ids) > room
    ids = ids[:room]
    sites = ckpt.sites
    if not ids:
        return Probe([], {(s.layer, s.name): np.zeros((0, ckpt.model_cfg.d_mlp), np.float32) for s in sites}, False)
    row = torch.tensor([[ckpt.bos_id] + ids])
    _, cache = ckpt.model.run_with_cache(row, names_filter=[s.hook for s in sites])
    acts = {(s.layer, s.name): cache[s.hook][0, 1:].float().cpu().numpy() for s in sites}
    return Probe(token_strings(ckpt.tokenizer, ids), acts, truncated)


def top_neurons(p: Probe, site: str, k: int = 20, position: int | None = None) -> list[dict]:
    """The k (layer, neuron) pairs with the highest activation on the text (its max over
    tokens), or at one token position."""
    rows = []
    for (layer, name), acts in p.acts.items():
        if name != site or acts.shape[0] == 0:
            continue
        values = acts[position] if position is not None else acts.max(axis=0)
        where = np.full(acts.shape[1], position) if position is not None else acts.argmax(axis=0)
        for n in np.argsort(-values)[:k]:
            rows.append({"layer": layer, "neuron": int(n), "act": float(values[n]), "pos": int(where[n]),
                         "token": p.tokens[int(where[n])]})
    return sorted(rows, key=lambda r: -r["act"])[:k]
