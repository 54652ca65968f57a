"""What a run reads, found by reading the dataset once: the plan.

The run's documents are the dataset's, in its order (with --shuffle, the seeded order
of the shuffle buffer, which only the plan reads through), tokenized one by one, until
the token budget (the last document cut to fit). Reading them, the plan notes where the
budget ends (the last document and its cut length), the tally, each shard's tokens and
documents and their places in the dataset's file order, and the activation sample's
segments (index.engine.sample: chosen by a hash, so the same whatever the shards). A
document belongs to one shard, by a hash of its id.

The plan fills as its documents are read (planned). A one-shard run in process
indexes them as they are read; other runs read the plan to its end first, and each
shard then reads its own documents again in file order (shard_documents), picking them
by their places and skipping the others' before tokenizing them, so the order is
decided once, by the plan, however many shards there are.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from index.engine.batching import Tally, budgeted, doc_of, encoded, segments
from index.engine.config import IndexConfig
from index.engine.sample import ActivationSample
from solu.corpus import Document, ReadStats, iter_documents


def shard_of(doc_id: int, n_shards: int) -> int:
    """The shard of a document: a hash of its id, so the split is deterministic and even."""
    digest = hashlib.blake2b(int(doc_id).to_bytes(8, "little", signed=True), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_shards


@dataclass
class Plan:
    """What the run reads, and per shard what it holds. The places of the documents take
    16 bytes each (a run holds at most 2**24 documents: batching.MAX_DOCUMENTS)."""

    n_shards: int
    segment_len: int
    sample: ActivationSample  # the whole activation sample, as one run draws it
    tally: Tally = field(default_factory=Tally)
    last_doc: int = -1  # id of the run's last document (-1: none)
    last_len: int = 0  # its indexed tokens (the budget may cut it)
    tokens: list[int] = field(default_factory=list)  # per shard
    documents: list[int] = field(default_factory=list)  # per shard
    places: list[array] = field(default_factory=list)  # per shard: file position, doc id, ... of its documents

    def __post_init__(self):
        self.tokens = self.tokens or [0] * self.n_shards
        self.documents = self.documents or [0] * self.n_shards
        self.places = self.places or [array("q") for _ in range(self.n_shards)]

    @property
    def stop(self) -> tuple[int, int]:
        """(last_doc, last_len): where a shard's reading ends."""
        return self.last_doc, self.last_len

    def add(self, doc: Document, ids: list[int]) -> None:
        shard = shard_of(doc.id, self.n_shards)
        self.tokens[shard] += len(ids)
        self.documents[shard] += 1
        self.places[shard].extend((doc.position, doc.id))
        self.last_doc, self.last_len = doc.id, len(ids)
        for unit, part in segments([(doc.id, ids)], self.segment_len):
            self.sample.add(unit, part)

    def places_of(self, shard: int) -> np.ndarray:
        """[documents, 2]: (file position, doc id) of this shard's documents, by file position."""
        places = np.array(self.places[shard], dtype=np.int64).reshape(-1, 2)
        return places[np.argsort(places[:, 0])]

    def sample_of(self, shard: int) -> list[tuple[int, list[int]]]:
        """(unit, token ids) of the activation sample's segments in this shard."""
        return [(u, ids) for u, ids in self.sample.segments() if shard_of(doc_of(u), self.n_shards) == shard]


def planned(plan: Plan, cfg: IndexConfig, tokenizer) -> Iterator[tuple[int, list[int]]]:
    """The run's (doc_id, token ids), each added to the plan as it is read."""
    docs = iter_documents(cfg.dataset, cfg.text_column, plan.tally.read, cfg.seed, cfg.shuffle)
    for doc, ids in budgeted(docs, tokenizer, cfg.tokens, plan.tally):
        plan.add(doc, ids)
        yield doc.id, ids


def shard_documents(cfg: IndexConfig, tokenizer, places: np.ndarray,
                    stop: tuple[int, int]) -> Iterator[tuple[int, list[int]]]:
    """(doc_id, token ids) of a shard's documents, at their places (Plan.places_of), the
    last one of the run cut as planned (stop). The dataset is read in file order, up to
    the shard's last place, so the shard yields its documents in that order (what it
    gathers does not depend on it: index.engine.topk); other shards' documents are
    skipped before they are tokenized."""
    last_doc, last_len = stop
    read = iter_documents(cfg.dataset, cfg.text_column, ReadStats(), cfg.seed)
    for doc, ids in encoded(_at(read, places), tokenizer):
        yield doc.id, ids[:last_len] if doc.id == last_doc else ids


def _at(docs: Iterator[Document], places: np.ndarray) -> Iterator[Document]:
    """The documents of a file-order reading at `places` (ascending), under their run's ids."""
    for position, doc_id in places.tolist():
        doc = next((d for d in docs if d.position == position), None)
        if doc is None:
            return  # the dataset ended early: the shard's count differs from the plan's (check_counts)
        yield replace(doc, id=doc_id)
