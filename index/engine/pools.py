"""A pool: the units (segments of documents) one list keeps for every neuron, with
their windows.

Three pools: the top units by max activation, samples from equal-width activation
intervals, and random units. A pool absorbs a batch's candidate units (or another pool,
when shards merge) through a selection function from index.engine.topk.

Windows live in an arena, [neurons, slots, width], and an entry points at its arena
slot; when entries move (a new unit ranks above them) only the small per-entry
arrays are permuted, and the arena is written only for units that enter. A batch
touches only the neurons where some candidate could enter (a gate says which), which
after the first batches is a minority.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from index.engine.topk import EMPTY

ABSORB_ROWS = 16_384  # neurons a pool takes candidates for at once
OUTSIDE = 0xFFFF  # a 16-bit window token slot outside the unit (read back as -1)
Select = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Candidates:
    """Units offered to every neuron: [n, D] each."""

    value: torch.Tensor
    unit: torch.Tensor
    valid: torch.Tensor
    # (neuron [E], candidate [E]) -> (position, token id) of the unit's first max
    locate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    # (neuron, candidate, position) -> (window acts [E, W], window tokens [E, W])
    capture: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

    def rows(self, rows: torch.Tensor) -> "Candidates":
        """The candidates of some neurons; locate and capture take global neuron indices."""
        return Candidates(self.value[rows], self.unit[rows], self.valid[rows],
                          lambda n, c: self.locate(rows[n], c), lambda n, c, p: self.capture(rows[n], c, p))


@dataclass
class Pool:
    value: torch.Tensor  # [n, S] max activation of each kept unit
    unit: torch.Tensor  # [n, S] unit id (index.engine.batching), EMPTY where the slot is free
    pos: torch.Tensor  # [n, S] int32 position of the max
    token: torch.Tensor  # [n, S] int32 token id at the max
    slot: torch.Tensor  # [n, S] int32 the entry's window in the arena
    win_acts: torch.Tensor  # [n, S, W] arena of windows
    win_tokens: torch.Tensor  # [n, S, W] token ids, -1 outside the unit: packed (pack_tokens)

    ENTRY = ("value", "unit", "pos", "token", "slot")

    @classmethod
    def empty(cls, n: int, slots: int, width: int, device, tokens: torch.dtype = torch.int32) -> "Pool":
        """tokens: the window arena's dtype (token_dtype of the vocabulary)."""
        int32 = dict(dtype=torch.int32, device=device)  # 12 bytes an entry less than int64 (100 MB on solu-12l)
        return cls(torch.zeros(n, slots, device=device), torch.full((n, slots), EMPTY, dtype=torch.long, device=device),
                   torch.zeros(n, slots, **int32), torch.zeros(n, slots, **int32),
                   torch.arange(slots, **int32).repeat(n, 1),
                   torch.full((n, slots, width), torch.nan, device=device),
                   torch.full((n, slots, width), -1, dtype=tokens, device=device))

    @property
    def size(self) -> int:
        return self.value.shape[1]

    @property
    def valid(self) -> torch.Tensor:
        return self.unit != EMPTY

    def rows(self, rows) -> "Pool":
        """The pool of some neurons only."""
        return Pool(*(getattr(self, f.name)[rows] for f in fields(self)))

    def to(self, device) -> "Pool":
        return Pool(*(getattr(self, f.name).to(device) for f in fields(self)))

    def entries(self, rows: torch.Tensor) -> "Pool":
        """The entries of some neurons, without their windows (the arena stays put)."""
        return Pool(*(getattr(self, name)[rows] for name in self.ENTRY), self.win_acts[:0], self.win_tokens[:0])

    def windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each entry's window, in entry order: [n, S, W] acts and int32 tokens (-1 outside)."""
        idx = self.slot[:, :, None].long().expand(-1, -1, self.win_acts.shape[2])
        return self.win_acts.gather(1, idx), unpack_tokens(self.win_tokens.gather(1, idx))

    def absorb(self, cand: Candidates, select: Select, rows: torch.Tensor, replaced: int | None = None) -> None:
        """Keep, for neurons `rows` (ascending), the best of this pool and the
        candidates, ABSORB_ROWS neurons at a time (the selection's work arrays are a few
        times the entries'). replaced: the unit of candidate column 0 when it ran on from
        the previous batch; where that candidate is valid (its max went up) it supersedes
        the unit's kept entry."""
        for start in range(0, len(rows), ABSORB_ROWS):
            self._absorb(cand, select, rows[start:start + ABSORB_ROWS], replaced)

    def _absorb(self, cand: Candidates, select: Select, rows: torch.Tensor, replaced: int | None) -> None:
        sub, cand = self.entries(rows), cand.rows(rows)
        old_valid = sub.valid
        if replaced is not None:
            old_valid = old_valid & ~((sub.unit == replaced) & cand.valid[:, :1])
        idx = select(torch.cat([sub.value, cand.value], 1), torch.cat([sub.unit, cand.unit], 1),
                     torch.cat([old_valid, cand.valid], 1), rows)
        self._assemble(rows, sub, idx, cand)

    def merge(self, other: "Pool", select: Select) -> "Pool":
        """Keep the best of two pools over disjoint units (shards of a dataset)."""
        out = Pool(*(getattr(self, f.name).clone() for f in fields(self)))
        rows = torch.arange(self.value.shape[0], device=self.value.device)
        out.absorb(other.candidates(), select, rows)
        return out

    def candidates(self, valid: torch.Tensor | None = None) -> Candidates:
        """This pool's entries offered to another pool (windows and all): a window is read
        off the arena when taken, so offering a pool copies none of its windows."""
        def capture(n, c, p):
            slot = self.slot[n, c].long()
            return self.win_acts[n, slot], unpack_tokens(self.win_tokens[n, slot])
        return Candidates(self.value, self.unit, self.valid if valid is None else valid,
                          lambda n, c: (self.pos[n, c], self.token[n, c]), capture)

    def _assemble(self, rows: torch.Tensor, sub: "Pool", idx: torch.Tensor, cand: Candidates) -> None:
        size = sub.size
        empty, fresh = idx == EMPTY, idx >= size
        old = idx.clamp(0, size - 1)
        new = (idx - size).clamp(0, cand.value.shape[1] - 1)
        keep = lambda t: t.gather(1, old)  # noqa: E731
        value = torch.where(fresh, cand.value.gather(1, new), keep(sub.value))
        unit = torch.where(fresh, cand.unit.gather(1, new), keep(sub.unit))
        pos, token, slot = keep(sub.pos), keep(sub.token), keep(sub.slot)
        slot = torch.where(fresh | empty, _free_slots(slot, ~(fresh | empty)).to(slot.dtype), slot)
        r, c = fresh.nonzero(as_tuple=True)
        if len(r):
            at, tok = cand.locate(r, new[r, c])
            pos[r, c], token[r, c] = at.to(pos.dtype), tok.to(token.dtype)
            acts, tokens = cand.capture(r, new[r, c], pos[r, c])
            self.win_acts[rows[r], slot[r, c]] = acts
            self.win_tokens[rows[r], slot[r, c]] = pack_tokens(tokens, self.win_tokens.dtype)
        for name, t in zip(self.ENTRY, (torch.where(empty, 0.0, value), torch.where(empty, EMPTY, unit),
                                        torch.where(empty, 0, pos), torch.where(empty, 0, token), slot)):
            getattr(self, name)[rows] = t


def token_dtype(vocab_size: int) -> torch.dtype:
    """The window arena's dtype: 16 bits where every token id of the vocabulary fits in
    them beside OUTSIDE (GPT-2's 50,257, Pythia's 50,304), else 32. The arena is the
    largest thing an index holds (solu-12l: 147,456 neurons x 57 windows x 41 tokens),
    and 16-bit ids take 690 MB off it there."""
    return torch.int16 if vocab_size <= OUTSIDE else torch.int32


def pack_tokens(tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Token ids (-1 outside) as the arena's dtype: to int16 an id keeps its low 16 bits
    (ids from 32,768 read negative there) and -1 becomes OUTSIDE."""
    return tokens.to(dtype)


def unpack_tokens(packed: torch.Tensor) -> torch.Tensor:
    """pack_tokens' inverse: int32 token ids, -1 outside."""
    if packed.dtype != torch.int16:
        return packed.int()
    ids = packed.int() & OUTSIDE
    return torch.where(ids == OUTSIDE, -1, ids)


def _free_slots(slot: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """For every entry not kept, an arena slot no kept entry uses, each used once per row."""
    n, size = slot.shape
    used = torch.zeros(n, size + 1, dtype=torch.bool, device=slot.device)
    used.scatter_(1, torch.where(kept, slot, size).long(), True)
    free = torch.sort(used[:, :size].to(torch.int8), dim=1, stable=True).indices  # free slots first, ascending
    rank = torch.cumsum(~kept, dim=1) - 1
    return free.gather(1, rank.clamp(0, size - 1))
