"""A pool: the documents one list keeps for every neuron of a site, with their windows.

Three pools per site: the top documents by max activation, samples from activation
bands, and random documents. A pool absorbs a batch's candidate documents (or another
pool, when shards merge) through a selection function from index.topk; the first
`windowed` slots also keep a window of tokens and activations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from index.topk import EMPTY

Select = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Candidates:
    """A batch's documents as candidates for one site: [n, D] each."""

    value: torch.Tensor
    doc: torch.Tensor
    valid: torch.Tensor
    # (neuron [E], candidate [E]) -> (position, token id) of the document's first max
    locate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    # (neuron, candidate, position) -> (window acts [E, W], window tokens [E, W])
    capture: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Pool:
    value: torch.Tensor  # [n, S] max activation of each kept document
    doc: torch.Tensor  # [n, S] doc_id, EMPTY where the slot is free
    pos: torch.Tensor  # [n, S] position of the max
    token: torch.Tensor  # [n, S] token id at the max
    win_acts: torch.Tensor  # [n, windowed, W]
    win_tokens: torch.Tensor  # [n, windowed, W] int32, -1 outside the document

    @classmethod
    def empty(cls, n: int, slots: int, windowed: int, width: int, device) -> "Pool":
        long = dict(dtype=torch.long, device=device)
        return cls(torch.zeros(n, slots, device=device), torch.full((n, slots), EMPTY, **long),
                   torch.zeros(n, slots, **long), torch.zeros(n, slots, **long),
                   torch.full((n, windowed, width), torch.nan, device=device),
                   torch.full((n, windowed, width), -1, dtype=torch.int32, device=device))

    @property
    def valid(self) -> torch.Tensor:
        return self.doc != EMPTY

    @property
    def windowed(self) -> int:
        return self.win_acts.shape[1]

    def absorb(self, cand: Candidates, select: Select, replaced_doc: int | None = None) -> "Pool":
        """Keep the best of this pool and a batch's candidates. replaced_doc: the document
        of candidate column 0 when it ran on from the previous batch; where that candidate
        is valid (its max went up) it supersedes the document's kept entry."""
        old_valid = self.valid
        if replaced_doc is not None:
            old_valid = old_valid & ~((self.doc == replaced_doc) & cand.valid[:, :1])
        idx = select(torch.cat([self.value, cand.value], 1), torch.cat([self.doc, cand.doc], 1),
                     torch.cat([old_valid, cand.valid], 1))
        return self._assemble(idx, cand)

    def merge(self, other: "Pool", select: Select) -> "Pool":
        """Keep the best of two pools over disjoint documents (shards of a dataset)."""
        def locate(neuron, c):
            return other.pos[neuron, c], other.token[neuron, c]

        def capture(neuron, c, pos):
            if bool((c >= other.windowed).any()):
                raise AssertionError("an entry without a window moved into a windowed slot")
            return other.win_acts[neuron, c], other.win_tokens[neuron, c]

        cand = Candidates(other.value, other.doc, other.valid, locate, capture)
        idx = select(torch.cat([self.value, other.value], 1), torch.cat([self.doc, other.doc], 1),
                     torch.cat([self.valid, other.valid], 1))
        return self._assemble(idx, cand)

    def _assemble(self, idx: torch.Tensor, cand: Candidates) -> "Pool":
        slots = self.value.shape[1]
        empty = idx == EMPTY
        fresh = idx >= slots
        old = idx.clamp(0, slots - 1)
        new = (idx - slots).clamp(0, cand.value.shape[1] - 1)
        pick = lambda mine, theirs: torch.where(fresh, theirs.gather(1, new), mine.gather(1, old))  # noqa: E731
        value = torch.where(empty, 0.0, pick(self.value, cand.value))
        doc = torch.where(empty, EMPTY, pick(self.doc, cand.doc))
        pos = torch.where(empty, 0, self.pos.gather(1, old))
        token = torch.where(empty, 0, self.token.gather(1, old))
        rows, cols = fresh.nonzero(as_tuple=True)
        if len(rows):
            pos[rows, cols], token[rows, cols] = cand.locate(rows, new[rows, cols])
        win_acts, win_tokens = self._carry_windows(idx[:, :self.windowed])
        rows, cols = fresh[:, :self.windowed].nonzero(as_tuple=True)
        if len(rows):
            win_acts[rows, cols], win_tokens[rows, cols] = cand.capture(rows, new[rows, cols], pos[rows, cols])
        return Pool(value, doc, pos, token, win_acts, win_tokens)

    def _carry_windows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows of the entries that stay, moved to their new slots."""
        kept = (idx >= 0) & (idx < self.value.shape[1])
        if bool((kept & (idx >= self.windowed)).any()):
            raise AssertionError("an entry without a window moved into a windowed slot")
        src = idx.clamp(0, self.windowed - 1)[:, :, None].expand(-1, -1, self.win_acts.shape[2])
        acts = torch.where(kept[:, :, None], self.win_acts.gather(1, src), torch.nan)
        tokens = torch.where(kept[:, :, None], self.win_tokens.gather(1, src), -1)
        return acts, tokens
