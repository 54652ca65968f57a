"""Token windows around a unit's max, cut from activations still in memory.

A unit (a segment of a document: index.engine.batching) enters a neuron's lists only
while its batch is in memory, so its window (the tokens around its max and the
neuron's activation on each) is cut right then, straight from the hook outputs;
nothing else of the batch is kept. Units can run from one batch into the next, so a
window may need positions on either side of it:

    tail | this batch's positions | head

tail: the last `before` positions of the unit that ran in from the previous batch
(kept from it: `before` x neurons floats). head: the first `after` positions of the unit
that runs on into the next batch; they are not known yet, so a window is cut without
them (NaN, token -1) and the accumulator fills them in when the next batch's forward
pass is done (Accumulator.open_windows, fill_windows), before that batch is taken in. So
the indexer holds one batch of activations at a time, plus the kept windows, however
long the documents or the dataset. The alternative, re-running the units that entered
a list in a second pass, would cost a forward pass over up to neurons x K units.

Neurons of all sites are numbered site-major: neuron i is neuron j = i % d_mlp of site
i // d_mlp. Inside a batch a unit is named by its index u there (0..D-1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from index.engine.batching import Batch


Edge = tuple[torch.Tensor, torch.Tensor]  # a tail or head: acts [sites, L, d_mlp] and token ids [L]


@dataclass
class Span:
    acts: list[torch.Tensor]  # per site, the hook output [B, T, d_mlp]
    batch: Batch
    tail: torch.Tensor  # [sites, Lt, d_mlp]: the positions just before unit 0's first here
    tail_tokens: torch.Tensor  # [Lt]


def build_span(acts: list[torch.Tensor], batch: Batch, tail: Edge | None = None) -> Span:
    empty = (acts[0].new_zeros(len(acts), 0, acts[0].shape[-1]), batch.tokens.new_zeros(0))
    return Span(acts, batch, *(tail or empty))


def _locate(span: Span, u: torch.Tensor, q: torch.Tensor):
    """Where position q (before this batch's end) of unit u lives: (from_tail, row,
    col, tail index): the tail, or row and column of the batch."""
    b = span.batch
    width = span.acts[0].shape[1] - 1
    row0 = (torch.cumsum(b.unit_rows, 0) - b.unit_rows)[u]
    local = q - b.unit_first[u]
    row = row0 + local.clamp(0, None) // width
    col = 1 + local.clamp(0, None) % width
    return local < 0, row, col, span.tail.shape[1] + local


def token_at(span: Span, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Token ids at positions `pos` (inside this batch) of units `u`."""
    _, row, col, _ = _locate(span, u, pos)
    return span.batch.tokens[row, col]


def capture(span: Span, neuron: torch.Tensor, u: torch.Tensor, pos: torch.Tensor,
            before: int, after: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows for entries (neuron, u, pos) [E], neurons in ascending order: acts
    [E, W] (NaN outside the unit) and token ids [E, W] (-1 outside),
    W = before + 1 + after, slot `before` holding the max. Positions in the next batch
    (the head) are left NaN and -1: Accumulator.fill_windows writes them from that batch."""
    b = span.batch
    t = span.acts[0].shape[1]
    d_mlp = span.acts[0].shape[-1]
    first, count = b.unit_first[u][:, None], b.unit_count[u][:, None]
    row0 = (torch.cumsum(b.unit_rows, 0) - b.unit_rows)[u][:, None]
    q = (pos[:, None] - first) + torch.arange(-before, after + 1, device=pos.device)  # position - first here
    inside = (q + first >= 0) & (q < count)  # the unit's positions up to this batch's end
    local = torch.minimum(q.clamp_min(0), count - 1)
    flat = row0 * t + local + local // (t - 1) + 1  # index into [B * T]; rows start with BOS
    site, j = neuron // d_mlp, (neuron % d_mlp)[:, None]
    acts = torch.empty(q.shape, dtype=span.acts[0].dtype, device=q.device)
    for s, part in by_site(site, len(span.acts)):
        acts[part] = take(span.acts[s], flat[part] * d_mlp + j[part])
    tokens = b.tokens.reshape(-1)[flat]
    rows = ((q < 0) & inside).any(1).nonzero().squeeze(1)  # windows reaching into the tail
    if len(rows):
        i = (q[rows] + span.tail.shape[1]).clamp(0, span.tail.shape[1] - 1)
        o = q[rows] < 0
        acts[rows] = torch.where(o, span.tail[site[rows, None], i, j[rows]], acts[rows])
        tokens[rows] = torch.where(o, span.tail_tokens[i], tokens[rows])
    acts = torch.where(inside, acts, torch.nan)
    return acts, torch.where(inside, tokens, -1).to(torch.int32)


def take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t.reshape(-1)[index], shaped like index: one flat gather (on a CPU about twice as
    fast as indexing with several index tensors). A non-contiguous t is copied first."""
    return t.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)


def by_site(site: torch.Tensor, n_sites: int):
    """(site, slice) of each site's run of entries; entries must be sorted by site."""
    bounds = torch.searchsorted(site, torch.arange(n_sites + 1, device=site.device)).tolist()
    for s in range(n_sites):
        if bounds[s + 1] > bounds[s]:
            yield s, slice(bounds[s], bounds[s + 1])


def edge_positions(span: Span, u: int, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every neuron's activations [sites, len(q), d_mlp] and token ids at positions q of
    unit `u`, from the tail, the batch or the head."""
    d = torch.full_like(q, u)
    from_tail, row, col, tail_idx = _locate(span, d, q)
    acts = torch.stack([a[row.clamp(0, len(span.batch.row_len) - 1), col] for a in span.acts])
    tokens = span.batch.tokens[row.clamp(0, len(span.batch.row_len) - 1), col]
    if span.tail.shape[1]:  # positions before this batch come from the tail (no branch on the data)
        i = tail_idx.clamp(0, span.tail.shape[1] - 1)
        acts = torch.where(from_tail[None, :, None], span.tail[:, i], acts)
        tokens = torch.where(from_tail, span.tail_tokens[i], tokens)
    return acts, tokens


def next_tail(span: Span, before: int) -> Edge | None:
    """The last `before` positions of the unit that goes on into the next batch
    (acts [sites, L, d_mlp], token ids [L]), or None."""
    b = span.batch
    if not b.continues_next:
        return None
    last = len(b.unit_ids) - 1
    first, count = b.last_span
    end = first + count
    start = max(end - before, first - span.tail.shape[1] if last == 0 else first)
    return edge_positions(span, last, torch.arange(start, end, device=b.tokens.device))


def head_of(span: Span, after: int) -> Edge | None:
    """The first `after` positions of this batch's first unit, when it ran on from
    the previous batch: the previous batch's head."""
    b = span.batch
    if not b.continues_prev:
        return None
    first, count = b.first_span
    q = torch.arange(first, first + min(after, count), device=b.tokens.device)
    return edge_positions(span, 0, q)


class WindowCache:
    """The windows cut from one batch, by (neuron, candidate): a unit that enters
    two or three pools of a neuron is cut once (in the first batches most do)."""

    def __init__(self, span: Span, before: int, after: int, n_cand: tuple[int, int]):
        self.span, self.before, self.after = span, before, after
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


def first_row(row_max, site, start, length, j, target) -> torch.Tensor:
    """For each entry, the first i < length with row_max[site, start + i, j] == target
    (no unit has more rows than the batch: no host sync for the bound)."""
    n_rows, d = row_max.shape[1], row_max.shape[2]
    steps = torch.arange(n_rows, device=row_max.device)
    rows = (start[:, None] + steps[None, :]).clamp(max=n_rows - 1)
    at = take(row_max, (site[:, None] * n_rows + rows) * d + j[:, None])
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


def first_col(acts, blocks, row, j, target, chunk: int = 65536) -> torch.Tensor:
    """For each entry, the first t with acts[row, 1 + t, j] == target, target being
    that row's max: the first block whose max is the target holds it; then the first
    column of that block that is (padding repeats a real activation that comes earlier
    in its row, so it is never the first). A chunk of entries at a time."""
    t_cols, d = acts.shape[1], acts.shape[2]
    width, n_blocks = block_width(t_cols), blocks.shape[1]
    steps = torch.arange(max(width, n_blocks), device=row.device)
    t = torch.empty_like(row)
    for start in range(0, len(row), chunk):
        part = slice(start, start + chunk)
        r, u, want = row[part, None], j[part, None], target[part, None]
        k = _first_true(take(blocks, (r * n_blocks + steps[None, :n_blocks]) * d + u) == want)[:, None] * width
        col = (1 + k + steps[None, :width]).clamp(max=t_cols - 1)  # a short last block repeats its last column
        t[part] = k.squeeze(1) + _first_true(take(acts, (r * t_cols + col) * d + u) == want)
    return t


def _first_true(hit: torch.Tensor) -> torch.Tensor:
    """[c] the first True column of each row of hit [c, m] (0 where none is)."""
    return hit.to(torch.int8).argmax(1)
