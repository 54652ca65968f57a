"""Everything the index keeps about a model's neurons, updated batch by batch.

All sites are handled together, as one list of sites x d_mlp neurons (site-major).

Per batch, the work over every token for the pools is one max per block of about
sqrt(n_ctx) columns of each row (the hook outputs are read in place, no copy); each
document's max per neuron, the max over its rows, becomes a candidate for the three
pools. A document that runs on from the previous batch is a candidate again only if its
max went up, and its new entry replaces the old one, so a pool always holds each
document once, at its max so far. Positions (through the block maxima) and windows (cut
once per batch, whichever pools take the document) are looked up only for the
candidates a pool takes in.

The token-level stats (mean, std, kurtosis, fraction active, histogram, min, max) take
every indexed token, read in place. The padding of short rows is overwritten with a
copy of the row's first activation, so maxima need no mask; on a CPU the stats are two
compiled loops over the real tokens only (index.engine.kernels), elsewhere tensor ops
in float32 buffers reused from batch to batch, which take the copies out again.

Everything random is chosen by hashes, never by stream order, so any batching or
sharding of the documents gives the same lists: the random documents are the lowest
priorities (a hash of (seed, neuron, document)) of all documents; the band samples
(equal-width intervals of (0, max]) are drawn when streaming is over, against the
final max, from a reservoir of the lowest-priority active documents and the top-K
(see Accumulator.bands). With the GPU in mind, the work per batch is tensor ops on
the device; the data-dependent shapes of the gated pool updates (nonzero) are the
host synchronisations left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from index.engine.batching import Batch
from index.engine.pools import Candidates, Pool
from index.engine.stats import Duplicates, RowsOf, RunningStats, Workspace
from index.engine.topk import NO_SAMPLE, doc_priority, sample_groups, sample_key, top_k, top_key, value_bands
from index.engine.windows import Span, by_site, capture, take, token_at

SEED_BANDS, SEED_RANDOM = 0, 1  # added to the run's seed


@dataclass(frozen=True)
class PoolShape:
    top_k: int
    bands: int
    per_band: int
    random: int
    before: int
    after: int
    seed: int
    band_candidates: int = 32

    @property
    def reservoir(self) -> int:
        """Documents kept per neuron for the band samples (0 without bands)."""
        return max(self.band_candidates, self.per_band) if self.bands * self.per_band else 0

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
        w = shape.width
        self.top = Pool.empty(n, shape.top_k, w, device)
        self.reservoir = Pool.empty(n, shape.reservoir, w, device)  # bands are drawn from it at the end
        self.random = Pool.empty(n, shape.random, w, device)
        self.open_max: torch.Tensor | None = None  # [n] max so far of the document running on
        self.work = Workspace()
        self.compiled = torch.device(device).type == "cpu"  # stats by index.engine.kernels, else tensor ops
        self._bands: Pool | None = None

    @property
    def max(self) -> torch.Tensor:
        """[n] each neuron's max so far, over every token (the stats keep it)."""
        return self.stats.max

    def activation_limit(self, threshold: float) -> torch.Tensor:
        """[sites, d_mlp]: the activation above which a token enters the activations
        table, threshold x the neuron's max (nothing enters for a max <= 0)."""
        mx = self.max.view(self.n_sites, self.d_mlp)
        return torch.where(mx > 0, mx * threshold, torch.inf)

    # ------------------------------------------------------------ selection rules

    def select_top(self, value, doc, valid, rows):
        return top_k(value, doc, valid, self.shape.top_k)

    def select_bands(self, value, doc, valid, rows):
        band = value_bands(value, self.max[rows], self.shape.bands)
        prio = doc_priority(doc, self.keys[rows], self.shape.seed + SEED_BANDS)
        return sample_groups(band.clamp_min(0), prio, doc, valid & (band >= 0), self.shape.bands, self.shape.per_band)

    def select_reservoir(self, value, doc, valid, rows):
        prio = doc_priority(doc, self.keys[rows], self.shape.seed + SEED_BANDS)
        return sample_groups(torch.zeros_like(doc), prio, doc, valid & (value > 0), 1, self.shape.reservoir)

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

    def gate_reservoir(self, cand: Candidates) -> torch.Tensor:
        pool = self.reservoir
        last_doc = pool.doc[:, -1:]
        last = torch.where(pool.valid[:, -1:], sample_key(0, self._prio(last_doc, SEED_BANDS), last_doc), NO_SAMPLE)
        key = sample_key(0, self._prio(cand.doc, SEED_BANDS), cand.doc)
        return (cand.valid & (cand.value > 0) & (key < last)).any(1)

    def _prio(self, doc: torch.Tensor, offset: int) -> torch.Tensor:
        return doc_priority(doc, self.keys, self.shape.seed + offset)

    # ------------------------------------------------------------ streaming

    def update(self, span: Span, batch: Batch) -> None:
        self._bands = None
        dup = self._fill_padding(span, batch)
        value = self._document_maxima(span, batch)  # [n, D]
        self._take_stats(span, batch, dup)
        valid = torch.ones_like(value, dtype=torch.bool)
        replaced = None
        if batch.continues_prev and self.open_max is not None:
            valid[:, 0] = value[:, 0] > self.open_max
            value[:, 0] = torch.maximum(value[:, 0], self.open_max)
            replaced = batch.first_doc
        self.open_max = value[:, -1].clone() if batch.continues_next else None
        doc = batch.doc_ids[None, :].expand_as(value)
        found = torch.full_like(doc, -1)
        windows = _Windows(span, self.shape, value.shape)
        cand = Candidates(value, doc, valid, lambda n, c: self._locate(span, batch, value, found, n, c), windows.get)
        stale = (self._holds(replaced) & valid[:, 0]) if replaced is not None else None
        for name, select, gate in self._pools():
            pool = getattr(self, name)
            if pool.size:
                open_rows = gate(cand) if stale is None else gate(cand) | stale
                pool.absorb(cand, select, open_rows.nonzero().squeeze(1), replaced)
        self._row_max = self._blocks = None  # this batch's, for _locate only

    def _pools(self):
        """(name, selection rule, gate) of the pools kept while streaming."""
        return (("top", self.select_top, self.gate_top), ("reservoir", self.select_reservoir, self.gate_reservoir),
                ("random", self.select_random, self.gate_random))

    def _holds(self, doc_id: int) -> torch.Tensor:
        return ((self.top.doc == doc_id).any(1) | (self.reservoir.doc == doc_id).any(1)
                | (self.random.doc == doc_id).any(1))

    def _document_maxima(self, span: Span, batch: Batch) -> torch.Tensor:
        """[n, D]: each document's max in this batch, per neuron (padding holds copies
        of real activations, see _fill_padding, so a plain max over the row is right).
        On the way it keeps the max of each block of columns, which _locate reads."""
        self._blocks = torch.stack([block_maxima(a) for a in span.acts])  # [sites, B, blocks, d]
        row_max = self._blocks.amax(2)  # [sites, B, d]
        self._row_max = row_max
        n_docs = len(batch.doc_ids)
        row_doc = torch.repeat_interleave(torch.arange(n_docs, device=row_max.device), batch.doc_rows,
                                          output_size=len(batch.row_len))
        doc_max = row_max.new_full((self.n_sites, n_docs, self.d_mlp), -torch.inf)
        doc_max.scatter_reduce_(1, row_doc.view(1, -1, 1).expand_as(row_max), row_max, "amax")
        return doc_max.transpose(1, 2).reshape(self.n_sites * self.d_mlp, -1)

    def _fill_padding(self, span: Span, batch: Batch) -> Duplicates | None:
        """Overwrite the padding of short rows with the row's first activation, in place
        (the forward pass is over), and say what was duplicated so the tensor-op stats
        take it out (the compiled ones skip the padding)."""
        if batch.short_rows.numel() == 0:
            return None
        short = batch.short_rows
        width = span.acts[0].shape[1] - 1
        pad = (torch.arange(width, device=short.device)[None, :] >= batch.row_len[short, None])[:, :, None]
        for a in span.acts:
            a[short, 1:] = torch.where(pad, a[short, 1:2], a[short, 1:])
        if self.compiled:
            return None
        return Duplicates(torch.stack([a[short, 1] for a in span.acts]), width - batch.row_len[short])

    def _take_stats(self, span: Span, batch: Batch, dup: Duplicates | None) -> None:
        """Every indexed token counts: the stats read the hook outputs in place, BOS
        excluded; the compiled loops skip the padding, the tensor ops count its
        duplicates out."""
        hi = self._row_max.amax(1).reshape(-1)
        self.stats.add([a[:, 1:] for a in span.acts], batch.n_tokens, self.work, dup, hi,
                       RowsOf(span.acts, batch.row_len) if self.compiled else None)

    def _locate(self, span: Span, batch: Batch, value: torch.Tensor, found: torch.Tensor,
                neuron: torch.Tensor, c: torch.Tensor):
        """Position and token of the first max of document c for each neuron (neurons
        ascending). found [n, D] caches positions across the pools (-1: not yet)."""
        todo = found[neuron, c] < 0
        n, d = neuron[todo], c[todo]
        target = value[n, d]
        site, unit = n // self.d_mlp, n % self.d_mlp
        row0 = torch.cumsum(batch.doc_rows, 0) - batch.doc_rows
        r = row0[d] + _first_row(self._row_max, site, row0[d], batch.doc_rows[d], unit, target)
        t = torch.zeros_like(r)
        for s, part in by_site(site, self.n_sites):
            t[part] = _first_col(span.acts[s], self._blocks[s], r[part], unit[part], target[part])
        found[n, d] = batch.row_start[r] + t
        pos = found[neuron, c]
        return pos, token_at(span, c, pos)

    def merge(self, other: "Accumulator") -> "Accumulator":
        """The accumulator of both token sets; documents must be disjoint (shards)."""
        out = Accumulator.__new__(Accumulator)
        out.n_sites, out.d_mlp, out.shape, out.keys, out.open_max = self.n_sites, self.d_mlp, self.shape, self.keys, None
        out.stats = self.stats.merge(other.stats)
        out.work, out._bands, out.compiled = Workspace(), None, self.compiled
        for name, select, _ in out._pools():
            mine = getattr(self, name)
            setattr(out, name, mine.merge(getattr(other, name), select) if mine.size else mine)
        return out

    @property
    def bands(self) -> Pool:
        """The band samples, drawn once streaming is over: in each equal-width band of
        (0, final max], the documents of lowest priority among the reservoir (the
        `reservoir` active documents of lowest priority) and the top-K. Where a band
        holds per_band documents below the reservoir's priority cut, this is the
        lowest-priority sample of all of its documents; sparse (high) bands draw on the
        top-K too. A function of the set of documents only, so shards merge exactly."""
        if self._bands is None:
            nb, per = self.shape.bands, self.shape.per_band
            pool = Pool.empty(len(self.keys), nb * per, self.shape.width, self.keys.device)
            if pool.size:
                rows = torch.arange(len(self.keys), device=self.keys.device)
                pool.absorb(self.reservoir.candidates(), self.select_bands, rows)
                in_reservoir = (self.top.doc[:, :, None] == self.reservoir.doc[:, None, :]).any(2)
                pool.absorb(self.top.candidates(self.top.valid & ~in_reservoir), self.select_bands, rows)
            self._bands = pool
        return self._bands

    def site(self, s: int) -> SiteResult:
        rows = slice(s * self.d_mlp, (s + 1) * self.d_mlp)
        return SiteResult(self.stats.rows(rows), self.top.rows(rows), self.bands.rows(rows), self.random.rows(rows), self.keys[rows])


class _Windows:
    """The windows cut from one batch, by (neuron, candidate): a document that enters
    two or three pools of a neuron is cut once (in the first batches most do)."""

    def __init__(self, span: Span, shape: PoolShape, n_cand: tuple[int, int]):
        self.span, self.before, self.after = span, shape.before, shape.after
        self.slot = torch.full(n_cand, -1, dtype=torch.long, device=span.batch.tokens.device)
        self.acts: torch.Tensor | None = None
        self.tokens: torch.Tensor | None = None

    def get(self, neuron: torch.Tensor, c: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """capture's windows for entries (neuron, candidate, position), neurons ascending."""
        todo = (self.slot[neuron, c] < 0).nonzero().squeeze(1)
        if len(todo):
            acts, tokens = capture(self.span, neuron[todo], c[todo], pos[todo], self.before, self.after)
            start = 0 if self.acts is None else len(self.acts)
            self.slot[neuron[todo], c[todo]] = torch.arange(start, start + len(todo), device=todo.device)
            self.acts = acts if self.acts is None else torch.cat([self.acts, acts])
            self.tokens = tokens if self.tokens is None else torch.cat([self.tokens, tokens])
        at = self.slot[neuron, c]
        return self.acts[at], self.tokens[at]


def _first_row(row_max, site, start, length, unit, target) -> torch.Tensor:
    """For each entry, the first i < length with row_max[site, start + i, unit] == target
    (no document has more rows than the batch: no host sync for the bound)."""
    n_rows, d = row_max.shape[1], row_max.shape[2]
    steps = torch.arange(n_rows, device=row_max.device)
    rows = (start[:, None] + steps[None, :]).clamp(max=n_rows - 1)
    at = take(row_max, (site[:, None] * n_rows + rows) * d + unit[:, None])
    return _first_true((steps[None, :] < length[:, None]) & (at == target[:, None]))


def block_width(n_ctx: int) -> int:
    """Columns per block of block_maxima: about the square root of a row's, so finding
    the first max costs a read of the row's blocks and of one block."""
    return max(1, round(math.sqrt(n_ctx - 1)))


def block_maxima(acts: torch.Tensor) -> torch.Tensor:
    """[B, blocks, d]: the max of each run of block_width columns of each row of a hook
    output [B, T, d], BOS (column 0) left out; the last block may be shorter."""
    b, t, d = acts.shape
    width = block_width(t)
    full = (t - 1) // width
    parts = [acts[:, 1:1 + full * width].reshape(b, full, width, d).amax(2)] if full else []
    if full * width < t - 1:
        parts.append(acts[:, 1 + full * width:].amax(1, keepdim=True))
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _first_col(acts, blocks, row, unit, target, chunk: int = 65536) -> torch.Tensor:
    """For each entry, the first t with acts[row, 1 + t, unit] == target, target being
    that row's max: the first block whose max is the target holds it; then the first
    column of that block that is (padding repeats a real activation that comes earlier
    in its row, so it is never the first). A chunk of entries at a time."""
    t_cols, d = acts.shape[1], acts.shape[2]
    width, n_blocks = block_width(t_cols), blocks.shape[1]
    steps = torch.arange(max(width, n_blocks), device=row.device)
    t = torch.empty_like(row)
    for start in range(0, len(row), chunk):
        part = slice(start, start + chunk)
        r, u, want = row[part, None], unit[part, None], target[part, None]
        k = _first_true(take(blocks, (r * n_blocks + steps[None, :n_blocks]) * d + u) == want)[:, None] * width
        col = (1 + k + steps[None, :width]).clamp(max=t_cols - 1)  # a short last block repeats its last column
        t[part] = k.squeeze(1) + _first_true(take(acts, (r * t_cols + col) * d + u) == want)
    return t


def _first_true(hit: torch.Tensor) -> torch.Tensor:
    """[c] the first True column of each row of hit [c, m] (0 where none is)."""
    return hit.to(torch.int8).argmax(1)
