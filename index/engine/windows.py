"""Token windows around a unit's max, cut from activations still in memory.

A unit (a segment of a document: index.engine.batching) enters a neuron's lists only
while its batch is in memory, so its window (the tokens around its max and the
neuron's activation on each) is cut right then, straight from the hook outputs;
nothing else of the batch is kept. Units can run from one batch into the next, so a
window may need positions on either side of it:

    tail | this batch's positions | head

tail: the last `before` positions of the unit that ran in from the previous batch
(kept from it: `before` x neurons floats); head: the first `after` positions of the
unit that runs on into the next batch (the indexer holds a batch's activations until
the next batch's forward pass is done, then cuts them). Memory stays two batches of
activations plus the kept windows, however long the documents or the dataset. The
alternative, re-running the units that entered a list in a second pass, would cost a
forward pass over up to neurons x K units.

Neurons of all sites are numbered site-major: neuron i is neuron j = i % d_mlp of site
i // d_mlp. Inside a batch a unit is named by its index u there (0..D-1).
"""
from __future__ import annotations

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
    head: torch.Tensor  # [sites, Lh, d_mlp]: the positions just after the last unit's last here
    head_tokens: torch.Tensor  # [Lh]


def build_span(acts: list[torch.Tensor], batch: Batch, tail: Edge | None = None, head: Edge | None = None) -> Span:
    empty = (acts[0].new_zeros(len(acts), 0, acts[0].shape[-1]), batch.tokens.new_zeros(0))
    return Span(acts, batch, *(tail or empty), *(head or empty))


def _locate(span: Span, u: torch.Tensor, q: torch.Tensor):
    """Where position q of unit u lives: (where, a, b) with where 0 for
    the tail (index a), 1 for the batch (row a, column b), 2 for the head (index a)."""
    b = span.batch
    width = span.acts[0].shape[1] - 1
    row0 = (torch.cumsum(b.unit_rows, 0) - b.unit_rows)[u]
    local = q - b.unit_first[u]
    end = b.unit_count[u]
    where = torch.where(local < 0, 0, torch.where(local >= end, 2, 1))
    row = row0 + local.clamp(0, None) // width
    col = 1 + local.clamp(0, None) % width
    tail_idx = span.tail.shape[1] + local
    head_idx = local - end
    return where, row, col, tail_idx, head_idx


def token_at(span: Span, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Token ids at positions `pos` (inside this batch) of units `u`."""
    _, row, col, _, _ = _locate(span, u, pos)
    return span.batch.tokens[row, col]


def capture(span: Span, neuron: torch.Tensor, u: torch.Tensor, pos: torch.Tensor,
            before: int, after: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows for entries (neuron, u, pos) [E], neurons in ascending order: acts
    [E, W] (NaN outside the unit) and token ids [E, W] (-1 outside),
    W = before + 1 + after, slot `before` holding the max."""
    b = span.batch
    t = span.acts[0].shape[1]
    d_mlp = span.acts[0].shape[-1]
    first, count = b.unit_first[u][:, None], b.unit_count[u][:, None]
    row0 = (torch.cumsum(b.unit_rows, 0) - b.unit_rows)[u][:, None]
    q = (pos[:, None] - first) + torch.arange(-before, after + 1, device=pos.device)  # position - first here
    inside = (q + first >= 0) & (q + first < b.unit_len[u][:, None])
    local = torch.minimum(q.clamp_min(0), count - 1)
    flat = row0 * t + local + local // (t - 1) + 1  # index into [B * T]; rows start with BOS
    site, j = neuron // d_mlp, (neuron % d_mlp)[:, None]
    acts = torch.empty(q.shape, dtype=span.acts[0].dtype, device=q.device)
    for s, part in by_site(site, len(span.acts)):
        acts[part] = take(span.acts[s], flat[part] * d_mlp + j[part])
    tokens = b.tokens.reshape(-1)[flat]
    edges = ((span.tail, span.tail_tokens, q < 0, q + span.tail.shape[1]),
             (span.head, span.head_tokens, q >= count, q - count))
    for edge, edge_tokens, outside, idx in edges:
        rows = (outside & inside).any(1).nonzero().squeeze(1)
        if len(rows):
            i = idx[rows].clamp(0, edge.shape[1] - 1)
            o = outside[rows]
            acts[rows] = torch.where(o, edge[site[rows, None], i, j[rows]], acts[rows])
            tokens[rows] = torch.where(o, edge_tokens[i], tokens[rows])
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
    where, row, col, tail_idx, _ = _locate(span, d, q)
    acts = torch.stack([a[row.clamp(0, len(span.batch.row_len) - 1), col] for a in span.acts])
    tokens = span.batch.tokens[row.clamp(0, len(span.batch.row_len) - 1), col]
    if span.tail.shape[1]:  # positions before this batch come from the tail (no branch on the data)
        from_tail = where == 0
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
