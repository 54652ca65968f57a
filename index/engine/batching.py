"""Documents in, token batches out.

Each document is tokenized on its own (no end-of-text joins) and cut into rows of
n_ctx - 1 tokens; every row starts with an end-of-text token standing in for BOS, whose
activation is not indexed. The last document is cut so the run indexes exactly the
tokens asked for, unless the dataset runs out first.

The unit of ranking is the segment: a document longer than the segment length (a
whole number of rows, see segment_length) is cut into segments, each ranked on its own
in every neuron's lists and sampled on its own, so one long file cannot stand for
thousands of tokens with a single entry. A segment is named by a unit id,
doc_id << SEGMENT_BITS | segment (segment_of / doc_of take it apart); a document's
segments past the last number (MAX_SEGMENTS - 1) stay in the last one. Inside the
indexer the unit is what is ranked and batched: positions count from the segment's
first token, and windows are clipped at its edges (the window of a max near a segment's edge is
shorter, never silently continued from the next segment). The database gets the
document id, the segment and document positions (segment_start + position).

Rows of one unit are consecutive and a unit may continue from one batch into the
next.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from tokenizers import Tokenizer

from solu.corpus import Document, ReadStats, iter_documents
from solu.errors import UserError

ENCODE_GROUP = 32  # documents per tokenizer call
SEGMENT_BITS = 8
MAX_SEGMENTS = 1 << SEGMENT_BITS
MAX_DOCUMENTS = 1 << (32 - SEGMENT_BITS)  # unit ids fit in 32 bits (topk's keys)


def segment_length(segment_tokens: int, n_ctx: int) -> int:
    """The segment length for a model: segment_tokens rounded down to whole rows of
    n_ctx - 1 tokens (at least one row), so rows never straddle two segments."""
    width = n_ctx - 1
    return max(1, segment_tokens // width) * width


def segments(docs: Iterable[tuple[int, list[int]]], length: int) -> Iterator[tuple[int, list[int]]]:
    """(unit id, token ids) of each segment of each document, in order."""
    for doc_id, ids in docs:
        if doc_id >= MAX_DOCUMENTS:
            raise UserError(f"the index holds at most {MAX_DOCUMENTS:,} documents per run; ask for fewer --tokens")
        n = len(ids)
        starts = list(range(0, n, length))[:MAX_SEGMENTS]
        for seg, start in enumerate(starts):
            end = n if seg == len(starts) - 1 else start + length
            yield doc_id << SEGMENT_BITS | seg, ids[start:end]


def doc_of(unit):
    return unit >> SEGMENT_BITS


def segment_of(unit):
    return unit & (MAX_SEGMENTS - 1)


def segment_start(unit, length: int):
    """The document position of a segment's first token."""
    return segment_of(unit) * length


@dataclass
class Tally:
    """What a run read, for the final report."""

    tokens: int = 0
    documents: int = 0
    exhausted: bool = False  # the dataset ended before the token budget
    read: ReadStats = field(default_factory=ReadStats)


def encoded(docs: Iterable, tok: Tokenizer) -> Iterator[tuple[object, list[int]]]:
    """(document, token ids) for each document, encoded ENCODE_GROUP at a time with the
    tokenizer's batch call: the one tokenizing loop of the indexer (its plan and each
    shard read the dataset through it)."""
    group: list = []
    for doc in docs:
        group.append(doc)
        if len(group) == ENCODE_GROUP:
            yield from _encode(group, tok)
            group = []
    yield from _encode(group, tok)


def _encode(group: list, tok: Tokenizer) -> Iterator[tuple[object, list[int]]]:
    if group:
        yield from zip(group, (e.ids for e in tok.encode_batch([d.text for d in group], add_special_tokens=False)))


def document_tokens(spec: str, text_column: str, tok: Tokenizer, budget: int, tally: Tally,
                    seed: int = 0, shuffle: bool = False) -> Iterator[tuple[int, list[int]]]:
    """(doc_id, token ids) until `budget` tokens, the last document cut to fit."""
    for doc, ids in budgeted(iter_documents(spec, text_column, tally.read, seed, shuffle), tok, budget, tally):
        yield doc.id, ids


def budgeted(docs: Iterable[Document], tok: Tokenizer, budget: int,
             tally: Tally) -> Iterator[tuple[Document, list[int]]]:
    """(document, token ids) of docs until `budget` tokens, the last document cut to fit."""
    for doc, ids in encoded(docs, tok):
        ids = ids[: budget - tally.tokens]
        if ids:
            tally.tokens += len(ids)
            tally.documents += 1
            yield doc, ids
        if tally.tokens >= budget:
            return
    tally.exhausted = tally.tokens < budget


@dataclass
class Batch:
    """Rows of units (segments: see the module docstring), D of them. Host-side fields
    (n_tokens, the flags) let the indexer decide without reading device memory."""

    tokens: torch.Tensor  # [B, T]: BOS, then up to T - 1 of a unit's tokens, right-padded
    row_len: torch.Tensor  # [B] the unit's tokens in each row
    row_start: torch.Tensor  # [B] unit position of each row's first token
    unit_ids: torch.Tensor  # [D]
    unit_len: torch.Tensor  # [D] the unit's full (indexed) length
    unit_first: torch.Tensor  # [D] its first position in this batch
    unit_count: torch.Tensor  # [D] its positions in this batch
    unit_rows: torch.Tensor  # [D] its rows in this batch
    continues_prev: bool  # unit 0 began in an earlier batch
    continues_next: bool  # unit D-1 goes on in the next batch
    n_tokens: int  # indexed positions (host int)
    first_unit: int  # unit_ids[0] (host int)
    first_span: tuple[int, int]  # (unit_first, unit_count) of unit 0 (host ints)
    last_span: tuple[int, int]  # and of unit D - 1
    short_rows: torch.Tensor  # [R] the rows with padding (row_len < T - 1)

    def flat_index(self) -> torch.Tensor:
        """Indices into tokens.view(-1) of the indexed positions, in order."""
        cols = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        mask = (cols[None, :] >= 1) & (cols[None, :] <= self.row_len[:, None])
        return mask.view(-1).nonzero().squeeze(1)

    def flat_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit id, position in the unit) of each indexed position, in order."""
        unit = torch.repeat_interleave(self.unit_ids, self.unit_count)
        row = torch.repeat_interleave(torch.arange(len(self.row_len), device=self.row_len.device), self.row_len)
        row_off = torch.cumsum(self.row_len, 0) - self.row_len
        pos = self.row_start[row] + torch.arange(len(row), device=row.device) - row_off[row]
        return unit, pos

    def to(self, device) -> "Batch":
        """On `device`; to CUDA from pinned host memory without blocking the host."""
        device = torch.device(device)
        cuda = device.type == "cuda"
        moved = {k: (v.pin_memory() if cuda else v).to(device, non_blocking=cuda) if isinstance(v, torch.Tensor) else v
                 for k, v in self.__dict__.items()}
        return Batch(**moved)


def make_batches(units: Iterable[tuple[int, list[int]]], n_ctx: int, rows: int, bos: int) -> Iterator[Batch]:
    """Cut (unit id, token ids) units into BOS-led rows and group `rows` of them per batch."""
    width = n_ctx - 1
    pending: list[tuple[int, int, list[int], int]] = []  # (unit id, start, tokens, unit length)
    for unit, ids in units:
        for start in range(0, len(ids), width):
            pending.append((unit, start, ids[start:start + width], len(ids)))
            if len(pending) == rows:
                yield _batch(pending, n_ctx, bos, pending_next=start + width < len(ids))
                pending = []
    if pending:
        yield _batch(pending, n_ctx, bos, pending_next=False)


def _batch(rows: list[tuple[int, int, list[int], int]], n_ctx: int, bos: int, pending_next: bool) -> Batch:
    tokens = torch.full((len(rows), n_ctx), bos, dtype=torch.long)
    for r, (_, _, ids, _) in enumerate(rows):
        tokens[r, 1:1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
    units: list[list] = []  # [unit id, length, first, count, n_rows]
    for unit, start, ids, length in rows:
        if units and units[-1][0] == unit:
            units[-1][3] += len(ids)
            units[-1][4] += 1
        else:
            units.append([unit, length, start, len(ids), 1])
    col = list(zip(*units))
    row_len = [len(r[2]) for r in rows]
    return Batch(
        tokens=tokens,
        row_len=torch.tensor(row_len),
        row_start=torch.tensor([r[1] for r in rows]),
        unit_ids=torch.tensor(col[0]), unit_len=torch.tensor(col[1]), unit_first=torch.tensor(col[2]),
        unit_count=torch.tensor(col[3]), unit_rows=torch.tensor(col[4]),
        continues_prev=rows[0][1] > 0, continues_next=pending_next,
        n_tokens=sum(row_len), first_unit=col[0][0], first_span=(col[2][0], col[3][0]),
        last_span=(col[2][-1], col[3][-1]),
        short_rows=torch.tensor([r for r, n in enumerate(row_len) if n < n_ctx - 1], dtype=torch.long),
    )
