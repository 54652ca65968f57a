"""Token windows around a document's max, cut from activations still in memory.

A document enters a neuron's lists only while its batch is in memory, so its window
(the tokens around its max and the neuron's activation on each) is cut right then.
Nothing else of the batch is kept. Documents can run from one batch into the next, so
a batch's positions are laid out as a Span for each site:

    tail | this batch's positions | head

tail: the last `before` positions of the document that ran in from the previous
batch (kept from it, `before` x neurons floats per site); head: the first `after`
positions of the document that runs on into the next batch (the indexer holds a
batch's activations until the next batch's forward pass is done, then cuts them).
Every window is then one gather, and memory stays two batches of activations plus the
kept windows, however long the documents or the dataset. The alternative, re-running
the documents that entered a list in a second pass, would cost a forward pass over up
to neurons x K documents.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from index.docs import Batch


@dataclass
class Edge:
    """Positions of one document kept across a batch boundary: acts per site, tokens shared."""

    acts: dict[str, torch.Tensor]  # site key -> [L, n]
    tokens: torch.Tensor  # [L]


@dataclass
class Span:
    acts: torch.Tensor  # [tail + batch + head, n]
    tokens: torch.Tensor  # [tail + batch + head]
    doc_base: torch.Tensor  # [D] span index of each document's position 0
    doc_len: torch.Tensor  # [D]
    n_tail: int
    n_batch: int

    @property
    def flat(self) -> torch.Tensor:
        """This batch's positions, [tokens, n]."""
        return self.acts[self.n_tail:self.n_tail + self.n_batch]


def build_span(acts: torch.Tensor, batch: Batch, flat_index: torch.Tensor, flat_tokens: torch.Tensor,
               tail: torch.Tensor | None, tail_tokens: torch.Tensor | None,
               head: torch.Tensor | None, head_tokens: torch.Tensor | None) -> Span:
    """acts: [B, T, n] from the hook. tail/head: [L, n] or None."""
    n = acts.shape[-1]
    n_tail = 0 if tail is None else len(tail)
    n_head = 0 if head is None else len(head)
    n_batch = len(flat_index)
    out = torch.empty(n_tail + n_batch + n_head, n, dtype=acts.dtype, device=acts.device)
    torch.index_select(acts.reshape(-1, n), 0, flat_index, out=out[n_tail:n_tail + n_batch])
    parts = [flat_tokens]
    if n_tail:
        out[:n_tail] = tail
        parts.insert(0, tail_tokens)
    if n_head:
        out[n_tail + n_batch:] = head
        parts.append(head_tokens)
    base = n_tail + batch.doc_offset() - batch.doc_first
    return Span(out, torch.cat(parts), base, batch.doc_len, n_tail, n_batch)


def capture(span: Span, neuron: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor,
            before: int, after: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows for entries (neuron, doc, pos) [E]: acts [E, W] (NaN outside the
    document) and token ids [E, W] (-1 outside), W = before + 1 + after, slot `before`
    holding the max."""
    offsets = torch.arange(-before, after + 1, device=pos.device)
    q = pos[:, None] + offsets[None, :]
    inside = (q >= 0) & (q < span.doc_len[doc][:, None])
    idx = span.doc_base[doc][:, None] + q
    if bool(((idx < 0) | (idx >= len(span.tokens)))[inside].any()):
        raise AssertionError("window reaches outside the kept positions")
    idx = idx.clamp(0, len(span.tokens) - 1)
    acts = span.acts[idx, neuron[:, None]]
    acts = torch.where(inside, acts, torch.nan)
    tokens = torch.where(inside, span.tokens[idx], -1).to(torch.int32)
    return acts, tokens


def next_tail(span: Span, batch: Batch, before: int) -> tuple[int, int]:
    """(start, stop) in the span of the positions to keep for the next batch: the last
    `before` positions of the document that goes on, or an empty range."""
    if not batch.continues_next or before == 0:
        return 0, 0
    last = len(batch.doc_ids) - 1
    stop = span.n_tail + span.n_batch
    first_kept = int(batch.doc_first[last]) - (span.n_tail if last == 0 else 0)
    kept = int(batch.doc_first[last] + batch.doc_count[last]) - first_kept
    return stop - min(before, kept), stop


def head_positions(batch: Batch, after: int) -> torch.Tensor:
    """Indices into a batch's flat positions of its first document's first `after`
    positions: the head of the previous batch's last document."""
    if not batch.continues_prev:
        return torch.zeros(0, dtype=torch.long, device=batch.tokens.device)
    return torch.arange(min(after, int(batch.doc_count[0])), device=batch.tokens.device)
