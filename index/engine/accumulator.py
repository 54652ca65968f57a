"""Everything the index keeps about a model's neurons, updated batch by batch.

All sites are handled together, as one list of sites x d_mlp neurons (site-major). The
unit of ranking and sampling is a segment of a document, named by its unit id
(index.engine.batching).

Per batch, the work over every token for the pools is one max per block of about
sqrt(n_ctx) columns of each row (the hook outputs are read in place, no copy); each
unit's max per neuron, the max over its rows, becomes a candidate for the three pools.
A unit that runs on from the previous batch is a candidate again only if its max went
up, and its new entry replaces the old one, so a pool always holds each unit once, at
its max so far. Positions (through the block maxima) and windows (cut once per batch,
whichever pools take the unit) are looked up only for the candidates a pool takes in.

The token-level stats (mean, std, kurtosis, fraction active, histogram, min, max) take
every indexed token, read in place. The padding of short rows is overwritten with a
copy of the row's first activation, so maxima need no mask; on a CPU the stats are two
compiled loops over the real tokens only (index.engine.kernels), elsewhere tensor ops
in float32 buffers reused from batch to batch, which take the copies out again.

Everything random is chosen by hashes, never by stream order, so any batching or
sharding of the documents gives the same lists: the random units are the lowest
priorities (a hash of (seed, neuron, unit)) of all units; the interval samples
(equal-width intervals of (0, max]) are drawn when streaming is over, against the final
max, from a reservoir of the lowest-priority active units and the top-K (see
Rules.intervals). With the GPU in mind, the work per batch is tensor ops on the device;
the data-dependent shapes of the gated pool updates (nonzero) are the host
synchronisations left.

What streaming gathers (Gathered) is a plain value: a shard hands it back, Rules.merge
folds two together, and Rules.sites draws the interval samples and splits it by site.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from index.engine.batching import Batch
from index.engine.pools import Candidates, Pool, pack_tokens
from index.engine.stats import Duplicates, RowsOf, RunningStats, Workspace
from index.engine.topk import NO_SAMPLE, sample_groups, sample_key, top_k, top_key, unit_priority, value_bands
from index.engine.windows import Edge, Span, WindowCache, block_maxima, by_site, first_col, first_row, token_at

SEED_INTERVALS, SEED_RANDOM = 0, 1  # added to the run's seed
INTERVAL_BLOCK = 4096  # neurons whose interval samples are drawn at once


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
    tokens: torch.dtype = torch.int32  # the window arenas' token dtype (pools.token_dtype)

    @property
    def reservoir(self) -> int:
        """Units kept per neuron for the interval samples (0 without them)."""
        return max(self.band_candidates, self.per_band) if self.bands * self.per_band else 0

    @property
    def width(self) -> int:
        return self.before + 1 + self.after


@dataclass
class SiteResult:
    """One site's slice of what was gathered, with its interval samples drawn."""

    stats: RunningStats
    top: Pool
    intervals: Pool  # stored as kind 'interval'
    random: Pool
    keys: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.keys)


@dataclass
class Gathered:
    """What an accumulator has gathered over its tokens: the stats and the three pools
    kept while streaming. All of it merges (Rules.merge), and it is all a shard hands
    back; nothing else of an accumulator outlives its stream."""

    stats: RunningStats
    top: Pool
    reservoir: Pool  # the interval samples are drawn from it (and the top-K) at the end
    random: Pool

    @classmethod
    def empty(cls, n: int, shape: PoolShape, device) -> "Gathered":
        w = shape.width
        return cls(RunningStats.empty(n, device), *(Pool.empty(n, size, w, device, shape.tokens)
                                                    for size in (shape.top_k, shape.reservoir, shape.random)))

    def to(self, device) -> "Gathered":
        return Gathered(self.stats.to(device), self.top.to(device), self.reservoir.to(device), self.random.to(device))


class Rules:
    """Which units each neuron keeps in each pool: the selection rules and the gates
    (the neurons where some candidate could enter) of a run, a function of its pool
    shape and its neurons' keys."""

    def __init__(self, shape: PoolShape, keys: torch.Tensor):
        self.shape, self.keys = shape, keys

    @classmethod
    def for_run(cls, shape: PoolShape, sites, d_mlp: int, device) -> "Rules":
        """A neuron's samples depend on its layer and index, not its site: both SoLU sites
        draw the same random units."""
        keys = torch.cat([torch.arange(d_mlp) + s.layer * d_mlp for s in sites])
        return cls(shape, keys.to(device))

    def streaming(self):
        """(name, selection rule, gate) of the pools kept while streaming."""
        return (("top", self.select_top, self.gate_top), ("reservoir", self.select_reservoir, self.gate_reservoir),
                ("random", self.select_random, self.gate_random))

    def select_top(self, value, unit, valid, rows):
        return top_k(value, unit, valid, self.shape.top_k)

    def select_reservoir(self, value, unit, valid, rows):
        prio = unit_priority(unit, self.keys[rows], self.shape.seed + SEED_INTERVALS)
        return sample_groups(torch.zeros_like(unit), prio, unit, valid & (value > 0), 1, self.shape.reservoir)

    def select_random(self, value, unit, valid, rows):
        prio = unit_priority(unit, self.keys[rows], self.shape.seed + SEED_RANDOM)
        return sample_groups(torch.zeros_like(unit), prio, unit, valid, 1, self.shape.random)

    def select_interval(self, max_act: torch.Tensor):
        """The rule of the interval samples, against each neuron's final max."""
        def select(value, unit, valid, rows):
            interval = value_bands(value, max_act[rows], self.shape.bands)
            prio = unit_priority(unit, self.keys[rows], self.shape.seed + SEED_INTERVALS)
            return sample_groups(interval.clamp_min(0), prio, unit, valid & (interval >= 0), self.shape.bands,
                                 self.shape.per_band)
        return select

    # gates: [n] bool, the neurons where some candidate could enter pool

    def gate_top(self, pool: Pool, cand: Candidates) -> torch.Tensor:
        last = top_key(pool.value[:, -1:], pool.unit[:, -1:], pool.valid[:, -1:])
        return (top_key(cand.value, cand.unit, cand.valid) > last).any(1)

    def gate_random(self, pool: Pool, cand: Candidates) -> torch.Tensor:
        return (cand.valid & self._below_last(pool, cand, SEED_RANDOM)).any(1)

    def gate_reservoir(self, pool: Pool, cand: Candidates) -> torch.Tensor:
        return (cand.valid & (cand.value > 0) & self._below_last(pool, cand, SEED_INTERVALS)).any(1)

    def _below_last(self, pool: Pool, cand: Candidates, offset: int) -> torch.Tensor:
        """[n, C]: candidates whose sample key is below the pool's last entry's."""
        last_unit = pool.unit[:, -1:]
        last = torch.where(pool.valid[:, -1:], sample_key(0, self._prio(last_unit, offset), last_unit), NO_SAMPLE)
        return sample_key(0, self._prio(cand.unit, offset), cand.unit) < last

    def _prio(self, unit: torch.Tensor, offset: int) -> torch.Tensor:
        return unit_priority(unit, self.keys, self.shape.seed + offset)

    # ------------------------------------------------------------ after streaming

    def merge(self, a: Gathered, b: Gathered) -> Gathered:
        """What both token sets gathered; their units must be disjoint (shards)."""
        pools = {name: getattr(a, name).merge(getattr(b, name), select) if getattr(a, name).size else getattr(a, name)
                 for name, select, _ in self.streaming()}
        return Gathered(a.stats.merge(b.stats), **pools)

    def intervals(self, g: Gathered) -> Pool:
        """The interval samples, drawn once streaming is over: in each equal-width
        interval of (0, final max], the units of lowest priority among the reservoir (the
        `reservoir` active units of lowest priority) and the top-K. Where an interval
        holds per_band units below the reservoir's priority cut, this is the
        lowest-priority sample of all of its units; sparse (high) intervals draw on the
        top-K too. A function of the set of units only, so shards merge exactly."""
        nb, per, n = self.shape.bands, self.shape.per_band, len(self.keys)
        pool = Pool.empty(n, nb * per, self.shape.width, self.keys.device, self.shape.tokens)
        if pool.size:
            select = self.select_interval(g.stats.max)
            for start in range(0, n, INTERVAL_BLOCK):  # a block of neurons at a time: rows() copies their pools
                block = slice(start, min(start + INTERVAL_BLOCK, n))
                part, reservoir, top = pool.rows(block), g.reservoir.rows(block), g.top.rows(block)
                rows = torch.arange(block.stop - start, device=self.keys.device)
                chosen = lambda value, unit, valid, r, start=start: select(value, unit, valid, r + start)  # noqa: E731
                part.absorb(reservoir.candidates(), chosen, rows)
                in_reservoir = (top.unit[:, :, None] == reservoir.unit[:, None, :]).any(2)
                part.absorb(top.candidates(top.valid & ~in_reservoir), chosen, rows)
        return pool

    def sites(self, g: Gathered, n_sites: int) -> list[SiteResult]:
        """Each site's final results, the interval samples drawn."""
        intervals, d_mlp = self.intervals(g), len(self.keys) // n_sites
        out = []
        for s in range(n_sites):
            rows = slice(s * d_mlp, (s + 1) * d_mlp)
            out.append(SiteResult(g.stats.rows(rows), g.top.rows(rows), intervals.rows(rows), g.random.rows(rows),
                                  self.keys[rows]))
        return out


def activation_limit(max_act: torch.Tensor, n_sites: int, threshold: float) -> torch.Tensor:
    """[sites, d_mlp]: the activation above which a token enters the activations table,
    threshold x the neuron's max (nothing enters for a max <= 0)."""
    mx = max_act.view(n_sites, -1)
    return torch.where(mx > 0, mx * threshold, torch.inf)


@dataclass
class Maxima:
    """One batch's maxima per neuron, as _unit_maxima finds them: each block's
    [sites, B, blocks, d] and each row's [sites, B, d] (read by the stats and _locate)."""

    blocks: torch.Tensor
    rows: torch.Tensor


class Accumulator:
    """Gathers, batch by batch, the stats and pools of every neuron of a run's sites."""

    def __init__(self, rules: Rules, n_sites: int):
        self.rules, self.n_sites = rules, n_sites
        self.d_mlp = len(rules.keys) // n_sites
        device = rules.keys.device
        self.gathered = Gathered.empty(len(rules.keys), rules.shape, device)
        self.open_max: torch.Tensor | None = None  # [n] max so far of the unit running on into the next batch
        self.work = Workspace()
        self.compiled = torch.device(device).type == "cpu"  # stats by index.engine.kernels, else tensor ops

    def update(self, span: Span, batch: Batch) -> None:
        g = self.gathered
        dup = self._fill_padding(span, batch)
        value, maxima = self._unit_maxima(span, batch)  # [n, D]
        self._take_stats(span, batch, dup, maxima)
        valid = torch.ones_like(value, dtype=torch.bool)
        replaced = None
        if batch.continues_prev and self.open_max is not None:
            valid[:, 0] = value[:, 0] > self.open_max
            value[:, 0] = torch.maximum(value[:, 0], self.open_max)
            replaced = batch.first_unit
        self.open_max = value[:, -1].clone() if batch.continues_next else None
        unit = batch.unit_ids[None, :].expand_as(value)
        found = torch.full_like(unit, -1)
        windows = WindowCache(span, self.rules.shape.before, self.rules.shape.after, value.shape)
        cand = Candidates(value, unit, valid, lambda n, c: self._locate(span, batch, maxima, value, found, n, c),
                          windows.get)
        stale = (self._holds(replaced) & valid[:, 0]) if replaced is not None else None
        for name, select, gate in self.rules.streaming():
            pool = getattr(g, name)
            if pool.size:
                open_rows = gate(pool, cand) if stale is None else gate(pool, cand) | stale
                pool.absorb(cand, select, open_rows.nonzero().squeeze(1), replaced)

    def open_windows(self, batch: Batch) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """After update: the kept windows that reach past this batch's end, of the unit
        running on into the next batch, as (pool, neuron, arena slot, head index of the
        window's first slot) (fill_windows completes them)."""
        if not batch.continues_next:
            return []
        first, count = batch.last_span
        last, shape = int(batch.unit_ids[-1]), self.rules.shape
        out = []
        for name, _, _ in self.rules.streaming():
            pool = getattr(self.gathered, name)
            n, c = ((pool.unit == last) & (pool.pos - first + shape.after >= count)).nonzero(as_tuple=True)
            if len(n):
                out.append((name, n, pool.slot[n, c], pool.pos[n, c] - first - count - shape.before))
        return out

    def fill_windows(self, windows: list, head: Edge) -> None:
        """Write open_windows' head positions: head is the next batch's first positions
        of that unit (index.engine.windows.head_of), read before the batch is taken in."""
        acts, tokens = head
        steps = torch.arange(self.rules.shape.width, device=tokens.device)
        for name, n, slot, start in windows if len(tokens) else ():
            pool = getattr(self.gathered, name)
            h = start[:, None] + steps  # [E, W] index into the head
            ok = (h >= 0) & (h < len(tokens))
            h, site, j = h.clamp(0, len(tokens) - 1), n // self.d_mlp, n % self.d_mlp
            pool.win_acts[n, slot] = torch.where(ok, acts[site[:, None], h, j[:, None]], pool.win_acts[n, slot])
            pool.win_tokens[n, slot] = torch.where(ok, pack_tokens(tokens[h], pool.win_tokens.dtype),
                                                   pool.win_tokens[n, slot])

    def _holds(self, unit: int) -> torch.Tensor:
        g = self.gathered
        return (g.top.unit == unit).any(1) | (g.reservoir.unit == unit).any(1) | (g.random.unit == unit).any(1)

    def _unit_maxima(self, span: Span, batch: Batch) -> tuple[torch.Tensor, Maxima]:
        """[n, D]: each unit's max in this batch, per neuron (padding holds copies of
        real activations, see _fill_padding, so a plain max over the row is right); and
        the block and row maxima it was taken from."""
        blocks = torch.stack([block_maxima(a) for a in span.acts])  # [sites, B, blocks, d]
        row_max = blocks.amax(2)  # [sites, B, d]
        n_units = len(batch.unit_ids)
        row_unit = torch.repeat_interleave(torch.arange(n_units, device=row_max.device), batch.unit_rows,
                                           output_size=len(batch.row_len))
        unit_max = row_max.new_full((self.n_sites, n_units, self.d_mlp), -torch.inf)
        unit_max.scatter_reduce_(1, row_unit.view(1, -1, 1).expand_as(row_max), row_max, "amax")
        return unit_max.transpose(1, 2).reshape(self.n_sites * self.d_mlp, -1), Maxima(blocks, row_max)

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

    def _take_stats(self, span: Span, batch: Batch, dup: Duplicates | None, maxima: Maxima) -> None:
        """Every indexed token counts: the stats read the hook outputs in place, BOS
        excluded; the compiled loops skip the padding, the tensor ops count its
        duplicates out."""
        hi = maxima.rows.amax(1).reshape(-1)
        self.gathered.stats.add([a[:, 1:] for a in span.acts], batch.n_tokens, self.work, dup, hi,
                                RowsOf(span.acts, batch.row_len) if self.compiled else None)

    def _locate(self, span: Span, batch: Batch, maxima: Maxima, value: torch.Tensor, found: torch.Tensor,
                neuron: torch.Tensor, c: torch.Tensor):
        """Position and token of the first max of unit c for each neuron (neurons
        ascending). found [n, D] caches positions across the pools (-1: not yet)."""
        todo = found[neuron, c] < 0
        n, d = neuron[todo], c[todo]
        target = value[n, d]
        site, j = n // self.d_mlp, n % self.d_mlp
        row0 = torch.cumsum(batch.unit_rows, 0) - batch.unit_rows
        r = row0[d] + first_row(maxima.rows, site, row0[d], batch.unit_rows[d], j, target)
        t = torch.zeros_like(r)
        for s, part in by_site(site, self.n_sites):
            t[part] = first_col(span.acts[s], maxima.blocks[s], r[part], j[part], target[part])
        found[n, d] = batch.row_start[r] + t
        pos = found[neuron, c]
        return pos, token_at(span, c, pos)
