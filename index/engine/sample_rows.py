"""The rows of the `activations` table: each neuron's highest activations over the
activation sample, within a fixed budget of rows.

The rule. A (site, neuron) keeps the sample's tokens whose activation is above
threshold x its max (and above 0), its highest `per_neuron` of them at most, where
per_neuron = sample_rows // (sites x d_mlp); ties at the cut go to the lower
(doc_id, pos). A neuron with fewer tokens above the threshold keeps all of them, so on a
model whose neurons x sample tokens is small the budget never binds and the table is
exactly "every sample token above the threshold". Its `sample_cut` (the neurons table)
says where the rows stop: the lowest activation kept when the budget bound, the
threshold otherwise.

How it stays within memory. The sample pass cannot hold every token above the threshold
(on GPT-2 small, 36,864 neurons x 65,536 tokens x ~20% is half a billion rows), and the
cut is known only at the end. Each neuron has a histogram of its kept activations over
HIST_BINS equal intervals of (threshold x max, max] (the max is known: the streaming
pass found it). The floor bin is the highest bin at or above which per_neuron tokens
have been seen; a token below it can never be among the neuron's top per_neuron, since
counts only grow, so it is never stored, and what was stored below a rising floor is
dropped whenever the store passes its bound. What is held is the histograms and about
per_neuron rows per neuron: sample_rows x (1 + one bin's share), 12 bytes a row. The
histogram counts only tokens at or above the floor, which are all the counts the floor
reads.

Shards merge exactly: histograms add, stores concatenate, and the final selection
(finish) is a function of the union of the shards' rows, so a sharded run keeps the
same rows as a single pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from index.engine.match_sample import MatchRows

HIST_BINS = 256  # intervals of (threshold x max, max] per neuron
CHUNK_POSITIONS = 256  # sample positions compared against the floor at a time (bounds the candidate list)
CHUNK_ROWS = 1 << 22  # stored rows handled at a time when the store is cut or selected


def per_neuron(sample_rows: int, n: int) -> int:
    """Rows each of n (site, neuron) pairs may keep (at least one)."""
    return max(1, sample_rows // max(n, 1))


@dataclass
class SampleRows:
    """The sample's activation rows kept so far by one shard (or merged). Positions are
    indexes into the position table (doc_id, segment, pos), one entry per sample token
    this object saw, in the order it saw them."""

    limit: torch.Tensor  # [n] threshold x max (inf where max <= 0); site-major neurons
    top: torch.Tensor  # [n] the neuron's max
    keep: int  # per_neuron
    d_mlp: int
    hist: torch.Tensor  # [n, HIST_BINS] int32: stored activations per bin
    neuron: list[torch.Tensor]  # int32 chunks
    where: list[torch.Tensor]  # int32 chunks: index into the position table
    act: list[torch.Tensor]  # float32 chunks
    doc_id: list[np.ndarray]  # the position table, chunk by chunk
    segment: list[np.ndarray]
    pos: list[np.ndarray]
    stored: int = 0
    positions: int = 0
    selected: bool = False  # the rows are exactly the rule's, sorted (select)
    match: MatchRows | None = None  # the match sample's activations (index.engine.match_sample)

    @classmethod
    def empty(cls, limit: torch.Tensor, top: torch.Tensor, keep: int, d_mlp: int) -> "SampleRows":
        limit, top = limit.reshape(-1).float().cpu(), top.reshape(-1).float().cpu()
        return cls(limit, top, keep, d_mlp, torch.zeros(len(limit), HIST_BINS, dtype=torch.int32), [], [], [], [], [], [])

    @property
    def n(self) -> int:
        return len(self.limit)

    @property
    def bound(self) -> int:
        """Rows stored before the store is cut back to the floor."""
        return self.keep * self.n * 5 // 4 + 1024

    # ------------------------------------------------------------ the floor

    def bins(self, neuron: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The histogram bin of each (neuron, activation above its limit), int32."""
        lo, hi = self.limit[neuron], self.top[neuron]
        b = ((act - lo) / (hi - lo).clamp_min(1e-30) * HIST_BINS).floor_()
        return b.clamp_(0, HIST_BINS - 1).int()

    def count(self, neuron: torch.Tensor, b: torch.Tensor) -> None:
        self.hist.view(-1).index_add_(0, neuron.long() * HIST_BINS + b, torch.ones_like(b))

    def at_or_above(self, rows: slice = slice(None)) -> torch.Tensor:
        """[n, HIST_BINS + 1] int32 (or of `rows`): stored activations in bin b or above
        (column HIST_BINS: none)."""
        counts = self.hist[rows].flip(1).cumsum(1, dtype=torch.int32).flip(1)
        return torch.cat([counts, counts.new_zeros(len(counts), 1)], 1)

    def floor_bin(self, rows: slice = slice(None), at_or_above: torch.Tensor | None = None) -> torch.Tensor:
        """[n] int32 (or of `rows`): the highest bin at or above which `keep` activations
        are stored (-1: fewer than `keep` so far, everything above the limit may still be
        needed)."""
        counts = self.at_or_above(rows) if at_or_above is None else at_or_above
        return (counts[:, :HIST_BINS] >= self.keep).sum(1, dtype=torch.int32) - 1

    def floor_value(self, floor_bin: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """[n] (or of `rows`) a value at or below the floor bin's lower edge (the limit at
        bin -1): what is below it is out of the floor bin by any rounding."""
        limit, top = self.limit[rows], self.top[rows]
        edge = limit + (top - limit) * floor_bin.clamp_min(0).float() / HIST_BINS
        return torch.where(floor_bin > 0, edge - edge.abs() * 1e-6, limit)

    # ------------------------------------------------------------ streaming

    def add(self, acts, doc_id: np.ndarray, segment: np.ndarray, pos: np.ndarray) -> None:
        """Take a batch's sample tokens at (doc_id, segment, pos): acts yields each site's
        [P, d_mlp] activations in site order (one site is held at a time)."""
        base = self.positions
        self.doc_id.append(doc_id), self.segment.append(segment), self.pos.append(pos)
        self.positions += len(doc_id)
        d = self.d_mlp
        for site, x in enumerate(acts):
            rows = slice(site * d, (site + 1) * d)
            floor_bin = self.floor_bin(rows)
            admit = self.floor_value(floor_bin, rows).to(x.device)
            fresh = 0  # rows stored since the floor was last read
            for p0 in range(0, len(x), CHUNK_POSITIONS):
                part = x[p0:p0 + CHUNK_POSITIONS]
                p, j = (part > admit).nonzero(as_tuple=True)
                act = part[p, j].float().cpu()
                j = j.int().cpu()
                neuron = j + site * d
                b = self.bins(neuron, act)
                ok = b >= floor_bin[j]
                neuron, act, b = neuron[ok], act[ok], b[ok]
                self.count(neuron, b)
                self.neuron.append(neuron), self.act.append(act)
                self.where.append((p[ok].cpu() + (p0 + base)).int())
                self.stored += len(act)
                fresh += len(act)
                if self.stored > self.bound:
                    self.cut()
                if fresh >= d:
                    floor_bin, fresh = self.floor_bin(rows), 0
                    admit = self.floor_value(floor_bin, rows).to(x.device)

    def cut(self) -> None:
        """Drop what is stored below each neuron's floor bin."""
        floor_bin = self.floor_bin()
        self.filter(lambda n, w, a: self.bins(n, a) >= floor_bin[n])

    def filter(self, test) -> None:
        """Keep the stored rows where test(neuron, where, act) holds, chunk by chunk (the
        store never doubles)."""
        for i, (n, w, a) in enumerate(zip(self.neuron, self.where, self.act)):
            ok = test(n, w, a)
            if not ok.all():
                self.neuron[i], self.where[i], self.act[i] = n[ok], w[ok], a[ok]
        self.stored = sum(len(a) for a in self.act)

    # ------------------------------------------------------------ merge and finish

    def merge(self, other: "SampleRows", limit: torch.Tensor, top: torch.Tensor) -> "SampleRows":
        """Both shards' rows (their sample tokens are disjoint), cut to the final rule:
        limit and top are the merged ones. Each shard kept its own top rows above its own
        limit (never above the merged one), and the merged top rows are among them."""
        # self's limit, top and histogram: a lower bound of the merged floor (select starts afresh)
        merged = SampleRows(self.limit, self.top, self.keep, self.d_mlp, self.hist,
                            self.neuron + other.neuron, self.where + [w + self.positions for w in other.where],
                            self.act + other.act, self.doc_id + other.doc_id, self.segment + other.segment,
                            self.pos + other.pos, self.stored + other.stored, self.positions + other.positions,
                            match=self.match.merge(other.match) if self.match and other.match else None)
        return merged.select(limit, top)

    def select(self, limit: torch.Tensor, top: torch.Tensor) -> "SampleRows":
        """Exactly the rule's rows among those stored, under `limit` and `top` (the
        run's final ones): above the limit, each neuron's `keep` highest, ties to the
        lower (doc_id, pos); grouped by neuron (a stable sort: within a neuron the rows
        above its floor bin come in the order seen, then those ranked in it)."""
        limit, top = limit.reshape(-1).float().cpu(), top.reshape(-1).float().cpu()
        same = torch.equal(limit, self.limit) and torch.equal(top, self.top)
        if same and self.selected:
            return self
        if same:
            self.cut()  # the floor is this rule's: what lies below it cannot be selected
        out = SampleRows(limit, top, self.keep, self.d_mlp, torch.zeros(self.n, HIST_BINS, dtype=torch.int32),
                         self.neuron, self.where, self.act, self.doc_id, self.segment, self.pos, self.stored,
                         self.positions, match=self.match)
        self.neuron, self.where, self.act = [], [], []
        out.filter(lambda n, w, a: a > limit[n])
        for n, a in zip(out.neuron, out.act):
            out.count(n, out.bins(n, a))
        above = out.at_or_above()
        floor_bin = out.floor_bin(at_or_above=above)
        rows = torch.arange(self.n)
        fb = floor_bin.clamp_min(0).long()
        room = (self.keep - above[rows, fb + 1]).numpy()  # what the floor bin adds to the bins above it
        over = (floor_bin >= 0) & (above[rows, fb] > self.keep)
        # the floor bin of a neuron that has more there than it may keep: ranked apart
        tied = [[], [], []]

        def keep(n, w, a):
            b, f = out.bins(n, a), floor_bin[n]
            split = (b == f) & over[n]
            for k, t in enumerate((n, w, a)):
                tied[k].append(t[split])
            return (b > f) | ((b == f) & ~over[n])
        out.filter(keep)
        n, w, a = (torch.cat(t).numpy() if t else np.zeros(0) for t in tied)
        if len(a):
            rank = out.position_rank()
            order = np.lexsort((rank[w], -a, n))  # by neuron; act desc; (doc_id, pos)
            n, w, a = n[order], w[order], a[order]
            take = np.arange(len(n)) - np.searchsorted(n, n, side="left") < room[n]
            for k, t in enumerate((n, w, a)):
                getattr(out, ("neuron", "where", "act")[k]).append(torch.as_tensor(t[take]))
        out.group_by_neuron()
        out.selected = True
        return out

    def group_by_neuron(self) -> None:
        """The store as one chunk, grouped by neuron, in the order stored within each: a
        counting sort that lets each chunk go once placed (no full-size index array)."""
        total = self.stored = sum(len(a) for a in self.act)
        counts = np.zeros(self.n, np.int64)
        for n in self.neuron:
            counts += np.bincount(n.numpy(), minlength=self.n)
        starts = np.cumsum(counts) - counts
        out = [np.empty(total, np.int32), np.empty(total, np.int32), np.empty(total, np.float32)]
        for chunks in (self.neuron, self.where, self.act):
            chunks.reverse()  # pop() from the end takes them in stored order
        while self.act:
            n, w, a = self.neuron.pop().numpy(), self.where.pop().numpy(), self.act.pop().numpy()
            order = np.argsort(n, kind="stable")
            n = n[order]
            dest = starts[n] + np.arange(len(n)) - np.searchsorted(n, n, side="left")
            out[0][dest], out[1][dest], out[2][dest] = n, w[order], a[order]
            starts += np.bincount(n, minlength=self.n)
        self.neuron, self.where, self.act = ([torch.from_numpy(t)] for t in out)

    def position_rank(self) -> np.ndarray:
        """Each position's rank in (doc_id, pos) order."""
        doc, _, pos = self.position_table()
        rank = np.empty(len(doc), np.int64)
        rank[np.lexsort((pos, doc))] = np.arange(len(doc))
        return rank

    def position_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.concatenate(c) if c else np.zeros(0, t)
                     for c, t in ((self.doc_id, np.int64), (self.segment, np.int32), (self.pos, np.int32)))

    def sample_cut(self) -> torch.Tensor:
        """[n] where each neuron's rows stop (after select): the lowest activation it kept
        where it kept its whole budget, else its limit."""
        assert self.selected, "sample_cut() reads select()'s rows"
        neuron, act = (self.neuron[0].numpy(), self.act[0].numpy()) if self.act else (np.zeros(0, np.int32),) * 2
        low = np.full(self.n, np.inf, np.float32)
        if len(act):
            starts = np.flatnonzero(np.r_[True, neuron[1:] != neuron[:-1]])
            low[neuron[starts]] = np.minimum.reduceat(act, starts)
        full = torch.as_tensor(np.bincount(neuron, minlength=self.n) >= self.keep)
        return torch.where(full, torch.as_tensor(low), self.limit)

    def columns(self, chunk: int = CHUNK_ROWS):
        """The rows (after select), `chunk` rows at a time, in select's order: dicts of
        arrays site (an index into the run's sites), neuron, doc_id, segment, pos, act."""
        assert self.selected, "columns() reads select()'s rows"
        doc, seg, pos = self.position_table()
        for neuron, where, act in zip(self.neuron, self.where, self.act):
            for i in range(0, len(act), chunk):
                n, w = neuron[i:i + chunk].numpy(), where[i:i + chunk].numpy()
                yield {"site": (n // self.d_mlp).astype(np.int32), "neuron": (n % self.d_mlp).astype(np.int32),
                       "doc_id": doc[w], "segment": seg[w], "pos": pos[w], "act": act[i:i + chunk].numpy()}
