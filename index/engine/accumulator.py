"""Everything the index keeps about a model's neurons, updated batch by batch.

All sites are handled together, as one list of sites x d_mlp neurons (site-major).

Per batch, the work over every token is one max per row (the hook outputs are read in
place, no copy); each document's max per neuron, the max over its rows, becomes a
candidate for the three pools. A document that runs on from the previous batch is a
candidate again only if its max went up, and its new entry replaces the old one, so a
pool always holds each document once, at its max so far. Positions and windows are
looked up only for the candidates a pool takes in.

The token-level stats (mean, std, kurtosis, fraction active, histogram, min) are taken
over a fixed sample of rows, one in `stats_every`, chosen by a hash of (document, row)
so any batching or sharding picks the same rows; max is exact over every token. With
stats_every = 1 every token counts.

Activation bands are equal-width intervals of (0, max]. The max is not known until the
end, so bands are drawn against the running max: each batch re-sorts the kept samples
and the new documents into the bands of the max so far and keeps the lowest-priority
documents per band. Every kept sample lies in its band of the final max; the sample is
exactly uniform within each band when the max is reached early (it usually is, within
the first batches), and close to it otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from index.engine.batching import Batch
from index.engine.pools import Candidates, Pool
from index.engine.stats import RunningStats
from index.engine.topk import NO_SAMPLE, doc_priority, mix32, sample_groups, sample_key, top_k, top_key, value_bands
from index.engine.windows import Span, by_site, capture, positions_of, token_at

SEED_BANDS, SEED_RANDOM, SEED_STATS = 0, 1, 2  # added to the run's seed


@dataclass(frozen=True)
class PoolShape:
    top_k: int
    bands: int
    per_band: int
    random: int
    before: int
    after: int
    seed: int
    stats_every: int = 1

    @property
    def width(self) -> int:
        return self.before + 1 + self.after


@dataclass
class SiteResult:
    """One site's slice of an Accumulator."""

    stats: RunningStats
    top: Pool
    bands: Pool
    random: Pool
    keys: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.keys)


class Accumulator:
    def __init__(self, n_sites: int, d_mlp: int, neuron_keys: torch.Tensor, shape: PoolShape, device):
        self.n_sites, self.d_mlp, self.shape = n_sites, d_mlp, shape
        self.keys = neuron_keys.to(device)
        n = n_sites * d_mlp
        self.stats = RunningStats.empty(n, device)
        self.max = torch.full((n,), -torch.inf, device=device)  # exact, over every token
        w = shape.width
        self.top = Pool.empty(n, shape.top_k, w, device)
        self.bands = Pool.empty(n, shape.bands * shape.per_band, w, device)
        self.random = Pool.empty(n, shape.random, w, device)
        self.open_max: torch.Tensor | None = None  # [n] max so far of the document running on

    # ------------------------------------------------------------ selection rules

    def select_top(self, value, doc, valid, rows):
        return top_k(value, doc, valid, self.shape.top_k)

    def select_bands(self, value, doc, valid, rows):
        band = value_bands(value, self.max[rows], self.shape.bands)
        prio = doc_priority(doc, self.keys[rows], self.shape.seed + SEED_BANDS)
        return sample_groups(band.clamp_min(0), prio, doc, valid & (band >= 0), self.shape.bands, self.shape.per_band)

    def select_random(self, value, doc, valid, rows):
        prio = doc_priority(doc, self.keys[rows], self.shape.seed + SEED_RANDOM)
        return sample_groups(torch.zeros_like(doc), prio, doc, valid, 1, self.shape.random)

    # gates: [n] bool, the neurons where some candidate could enter

    def gate_top(self, cand: Candidates) -> torch.Tensor:
        last = top_key(self.top.value[:, -1:], self.top.doc[:, -1:], self.top.valid[:, -1:])
        return (top_key(cand.value, cand.doc, cand.valid) > last).any(1)

    def gate_random(self, cand: Candidates) -> torch.Tensor:
        pool = self.random
        last = torch.where(pool.valid[:, -1:], sample_key(0, self._prio(pool.doc[:, -1:], SEED_RANDOM), pool.doc[:, -1:]),
                           NO_SAMPLE)
        return (cand.valid & (sample_key(0, self._prio(cand.doc, SEED_RANDOM), cand.doc) < last)).any(1)

    def gate_bands(self, cand: Candidates, max_grew: torch.Tensor) -> torch.Tensor:
        pool, nb, per = self.bands, self.shape.bands, self.shape.per_band
        last = pool.doc.view(-1, nb, per)[:, :, -1]
        last_key = torch.where(last >= 0, sample_key(0, self._prio(last, SEED_BANDS), last), NO_SAMPLE)
        band = value_bands(cand.value, self.max, nb)
        key = sample_key(0, self._prio(cand.doc, SEED_BANDS), cand.doc)
        enters = cand.valid & (band >= 0) & (key < last_key.gather(1, band.clamp_min(0)))
        return enters.any(1) | max_grew

    def _prio(self, doc: torch.Tensor, offset: int) -> torch.Tensor:
        return doc_priority(doc, self.keys, self.shape.seed + offset)

    # ------------------------------------------------------------ streaming

    def update(self, span: Span, batch: Batch) -> None:
        value = self._document_maxima(span, batch)  # [n, D]
        self._take_stats(span, batch)
        max_grew = value.amax(1) > self.max
        self.max = torch.maximum(self.max, value.amax(1))
        valid = torch.ones_like(value, dtype=torch.bool)
        replaced = None
        if batch.continues_prev and self.open_max is not None:
            valid[:, 0] = value[:, 0] > self.open_max
            value[:, 0] = torch.maximum(value[:, 0], self.open_max)
            replaced = int(batch.doc_ids[0])
        self.open_max = value[:, -1].clone() if batch.continues_next else None
        doc = batch.doc_ids[None, :].expand_as(value)
        found = torch.full_like(doc, -1)
        cand = Candidates(value, doc, valid, lambda n, c: self._locate(span, batch, value, found, n, c),
                          lambda n, c, p: capture(span, n, c, p, self.shape.before, self.shape.after))
        stale = (self._holds(replaced) & valid[:, 0]) if replaced is not None else torch.zeros_like(max_grew)
        gates = {"top": self.gate_top(cand), "bands": self.gate_bands(cand, max_grew) if self.bands.size else None,
                 "random": self.gate_random(cand) if self.random.size else None}
        for name, select in (("top", self.select_top), ("bands", self.select_bands), ("random", self.select_random)):
            pool = getattr(self, name)
            if pool.size:
                rows = (gates[name] | stale).nonzero().squeeze(1)
                pool.absorb(cand, select, rows, replaced)

    def _holds(self, doc_id: int) -> torch.Tensor:
        return ((self.top.doc == doc_id).any(1) | (self.bands.doc == doc_id).any(1)
                | (self.random.doc == doc_id).any(1))

    def _document_maxima(self, span: Span, batch: Batch) -> torch.Tensor:
        """[n, D]: each document's max in this batch, per neuron."""
        row_max = torch.stack([a[:, 1:].amax(dim=1) for a in span.acts])  # [sites, B, d]: pads included
        short = (batch.row_len < span.acts[0].shape[1] - 1).nonzero().squeeze(1)
        if len(short):
            cols = torch.arange(span.acts[0].shape[1] - 1, device=short.device)
            pad = (cols[None, :] >= batch.row_len[short, None])[:, :, None]
            for s, a in enumerate(span.acts):
                row_max[s, short] = a[short, 1:].masked_fill(pad, -torch.inf).amax(dim=1)
        self._row_max = row_max
        n_docs = len(batch.doc_ids)
        row_doc = torch.repeat_interleave(torch.arange(n_docs, device=row_max.device), batch.doc_rows)
        doc_max = row_max.new_full((self.n_sites, n_docs, self.d_mlp), -torch.inf)
        doc_max.scatter_reduce_(1, row_doc.view(1, -1, 1).expand_as(row_max), row_max, "amax")
        return doc_max.transpose(1, 2).reshape(self.n_sites * self.d_mlp, -1)

    def _take_stats(self, span: Span, batch: Batch) -> None:
        rows = stats_rows(batch, self.shape.stats_every, self.shape.seed).nonzero().squeeze(1)
        if len(rows) == 0:
            return
        index = positions_of(span, rows)
        d = self.d_mlp
        sample = torch.empty(self.n_sites, len(index), d, dtype=span.acts[0].dtype, device=index.device)
        for s, a in enumerate(span.acts):
            torch.index_select(a.reshape(-1, d), 0, index, out=sample[s])
        self.stats.update(sample)

    def _locate(self, span: Span, batch: Batch, value: torch.Tensor, found: torch.Tensor,
                neuron: torch.Tensor, c: torch.Tensor):
        """Position and token of the first max of document c for each neuron (neurons
        ascending). found [n, D] caches positions across the pools (-1: not yet)."""
        todo = found[neuron, c] < 0
        if bool(todo.any()):
            n, d = neuron[todo], c[todo]
            target = value[n, d]
            site, unit = n // self.d_mlp, n % self.d_mlp
            row0 = torch.cumsum(batch.doc_rows, 0) - batch.doc_rows
            r = row0[d] + _first_row(self._row_max, site, row0[d], batch.doc_rows[d], unit, target)
            t = torch.zeros_like(r)
            for s, part in by_site(site, self.n_sites):
                t[part] = _first_col(span.acts[s], r[part], batch.row_len[r[part]], unit[part], target[part])
            found[n, d] = batch.row_start[r] + t
        pos = found[neuron, c]
        return pos, token_at(span, c, pos)

    def merge(self, other: "Accumulator") -> "Accumulator":
        """The accumulator of both token sets; documents must be disjoint (shards)."""
        out = Accumulator.__new__(Accumulator)
        out.n_sites, out.d_mlp, out.shape, out.keys, out.open_max = self.n_sites, self.d_mlp, self.shape, self.keys, None
        out.stats = self.stats.merge(other.stats)
        out.max = torch.maximum(self.max, other.max)
        for name, select in (("top", out.select_top), ("bands", out.select_bands), ("random", out.select_random)):
            mine = getattr(self, name)
            setattr(out, name, mine.merge(getattr(other, name), select) if mine.size else mine)
        return out

    def site(self, s: int) -> SiteResult:
        rows = slice(s * self.d_mlp, (s + 1) * self.d_mlp)
        stats = self.stats.rows(rows)
        stats.max = self.max[rows]  # the exact max, not the sample's
        return SiteResult(stats, self.top.rows(rows), self.bands.rows(rows), self.random.rows(rows), self.keys[rows])


def stats_rows(batch: Batch, every: int, seed: int) -> torch.Tensor:
    """[B] bool: the rows whose tokens the stats take, one in `every`, by a hash of
    (doc_id, the row's first position), so batching and sharding do not change them."""
    if every == 1:
        return torch.ones_like(batch.row_len, dtype=torch.bool)
    row_doc = torch.repeat_interleave(batch.doc_ids, batch.doc_rows)
    h = mix32(mix32(row_doc) ^ mix32(batch.row_start + seed + SEED_STATS))
    return h % every == 0


def _first_row(row_max, site, start, length, unit, target) -> torch.Tensor:
    """For each entry, the first i < length with row_max[site, start + i, unit] == target."""
    steps = torch.arange(int(length.max()), device=row_max.device)
    rows = (start[:, None] + steps[None, :]).clamp(max=row_max.shape[1] - 1)
    hit = (steps[None, :] < length[:, None]) & (row_max[site[:, None], rows, unit[:, None]] == target[:, None])
    return hit.to(torch.int8).argmax(1)


def _first_col(acts, row, length, unit, target) -> torch.Tensor:
    """For each entry, the first t < length with acts[row, 1 + t, unit] == target.
    Entries are taken a row at a time: one contiguous read of the row serves them all."""
    t = torch.zeros_like(row)
    order = torch.argsort(row, stable=True)
    rows, counts = torch.unique_consecutive(row[order], return_counts=True)
    lengths = length[order][torch.cumsum(counts, 0) - counts]
    start = 0
    for r, c, n in zip(rows.tolist(), counts.tolist(), lengths.tolist()):
        idx = order[start:start + c]
        start += c
        block = acts[r, 1:1 + n].index_select(1, unit[idx])  # [n, c]
        t[idx] = (block == target[idx][None, :]).to(torch.int8).argmax(0)
    return t
