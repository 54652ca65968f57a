"""Everything the index keeps about one neuron site, updated batch by batch.

Per batch and site: the stats take every token; each document's max per neuron (a
segment max over its rows, then over its rows' maxima) becomes a candidate for the
three pools. A document that runs on from the previous batch is a candidate again only
if its max went up, and its new entry replaces the old one, so a pool always holds
each document once, at its max so far. Positions and windows are looked up only for
the candidates a pool takes in.

Activation bands are equal-width intervals of (0, max]. The max is not known until the
end, so bands are drawn against the running max: each batch re-sorts the kept samples
and the new documents into the bands of the max so far and keeps the lowest-priority
documents per band. Every kept sample lies in its band of the final max; the sample is
exactly uniform within each band when the max is reached early (it usually is: within
the first batches), and close to it otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from index.docs import Batch
from index.pools import Candidates, Pool
from index.stats import RunningStats
from index.topk import doc_priority, sample_groups, top_k, value_bands
from index.windows import Span, capture

MAX_TOKEN_DOCS = 100  # the "tokens most often at the max" are counted over this many top documents


@dataclass(frozen=True)
class PoolShape:
    top_k: int
    bands: int
    per_band: int
    random: int
    before: int
    after: int
    seed: int

    @property
    def width(self) -> int:
        return self.before + 1 + self.after


class SiteAccumulator:
    def __init__(self, n: int, neuron_keys: torch.Tensor, shape: PoolShape, device):
        self.n, self.shape, self.keys = n, shape, neuron_keys.to(device)
        self.stats = RunningStats.empty(n, device)
        w = shape.width
        self.top = Pool.empty(n, max(shape.top_k, MAX_TOKEN_DOCS), shape.top_k, w, device)
        self.bands = Pool.empty(n, shape.bands * shape.per_band, shape.bands * shape.per_band, w, device)
        self.random = Pool.empty(n, shape.random, shape.random, w, device)
        self.open_max: torch.Tensor | None = None  # [n] max so far of the document running on

    # ------------------------------------------------------------ selection rules

    def select_top(self, value, doc, valid):
        return top_k(value, doc, valid, self.top.value.shape[1])

    def select_bands(self, value, doc, valid):
        band = value_bands(value, self.stats.max, self.shape.bands)
        prio = doc_priority(doc, self.keys, self.shape.seed)
        return sample_groups(band.clamp_min(0), prio, doc, valid & (band >= 0), self.shape.bands, self.shape.per_band)

    def select_random(self, value, doc, valid):
        prio = doc_priority(doc, self.keys, self.shape.seed + 1)
        return sample_groups(torch.zeros_like(doc), prio, doc, valid, 1, self.shape.random)

    def _pools(self):
        return [("top", self.select_top), ("bands", self.select_bands), ("random", self.select_random)]

    # ------------------------------------------------------------ streaming

    def update(self, span: Span, batch: Batch) -> None:
        flat = span.flat
        self.stats.update(flat)
        row_max = torch.segment_reduce(flat, "max", lengths=batch.row_len, axis=0)  # [B, n]
        doc_max = torch.segment_reduce(row_max, "max", lengths=batch.doc_rows, axis=0)  # [D, n]
        value = doc_max.T.contiguous()
        valid = torch.ones_like(value, dtype=torch.bool)
        replaced = None
        if batch.continues_prev and self.open_max is not None:
            valid[:, 0] = value[:, 0] > self.open_max
            value[:, 0] = torch.maximum(value[:, 0], self.open_max)
            replaced = int(batch.doc_ids[0])
        self.open_max = value[:, -1].clone() if batch.continues_next else None
        doc = batch.doc_ids[None, :].expand_as(value)
        cand = Candidates(value, doc, valid, self._locator(flat, row_max, value, batch, span),
                          lambda neuron, c, pos: capture(span, neuron, c, pos, self.shape.before, self.shape.after))
        for name, select in self._pools():
            pool = getattr(self, name)
            if pool.value.shape[1]:
                setattr(self, name, pool.absorb(cand, select, replaced))

    def _locator(self, flat, row_max, value, batch: Batch, span: Span):
        def locate(neuron: torch.Tensor, c: torch.Tensor):
            target = value[neuron, c]
            row0 = torch.cumsum(batch.doc_rows, 0) - batch.doc_rows
            r = row0[c] + _first(row_max, row0[c], batch.doc_rows[c], neuron, target)
            row_off = torch.cumsum(batch.row_len, 0) - batch.row_len
            t = _first(flat, row_off[r], batch.row_len[r], neuron, target)
            pos = batch.row_start[r] + t
            return pos, span.tokens[span.doc_base[c] + pos]
        return locate

    def merge(self, other: "SiteAccumulator") -> "SiteAccumulator":
        """The accumulator of both token sets; documents must be disjoint (shards)."""
        out = SiteAccumulator.__new__(SiteAccumulator)
        out.n, out.shape, out.keys, out.open_max = self.n, self.shape, self.keys, None
        out.stats = self.stats.merge(other.stats)
        out.top, out.bands, out.random = self.top, self.bands, self.random  # sizes for the selection rules
        for name, select in out._pools():
            mine = getattr(self, name)
            merged = mine.merge(getattr(other, name), select) if mine.value.shape[1] else mine
            setattr(out, name, merged)
        return out

    # ------------------------------------------------------------ results

    def pools_numpy(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: {k: v.cpu().numpy() for k, v in getattr(self, name).__dict__.items()}
                for name in ("top", "bands", "random")}


def _first(values: torch.Tensor, start: torch.Tensor, length: torch.Tensor, neuron: torch.Tensor,
           target: torch.Tensor) -> torch.Tensor:
    """For each entry, the first i < length with values[start + i, neuron] == target."""
    steps = torch.arange(int(length.max()), device=values.device)
    rows = (start[:, None] + steps[None, :]).clamp(max=values.shape[0] - 1)
    hit = (steps[None, :] < length[:, None]) & (values[rows, neuron[:, None]] == target[:, None])
    return hit.to(torch.int8).argmax(1)
