"""What a run reads, found by reading the dataset once: the plan.

The run's documents are the dataset's, tokenized one by one, until the token budget
(the last document cut to fit). Reading them, the plan notes where the budget ends (the
last document and its cut length), the tally, each shard's tokens and documents, and
the activation sample's segments (index.engine.sample: chosen by a hash, so the same
whatever the shards). A document belongs to one shard, by a hash of its id.

The plan fills as its documents are read (planned). A one-shard run in process
indexes them as they are read; other runs read the plan to its end first, and each
shard then reads its own documents again (shard_documents), skipping the others'
before tokenizing them.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Iterator

from index.engine.batching import Tally, doc_of, document_tokens, encoded, segments
from index.engine.config import IndexConfig
from index.engine.sample import ActivationSample
from solu.corpus import ReadStats, iter_documents


def shard_of(doc_id: int, n_shards: int) -> int:
    """The shard of a document: a hash of its id, so the split is deterministic and even."""
    digest = hashlib.blake2b(int(doc_id).to_bytes(8, "little", signed=True), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_shards


@dataclass
class Plan:
    """What the run reads, and per shard what it holds."""

    n_shards: int
    segment_len: int
    sample: ActivationSample  # the whole activation sample, as one run draws it
    tally: Tally = field(default_factory=Tally)
    last_doc: int = -1  # id of the run's last document (-1: none)
    last_len: int = 0  # its indexed tokens (the budget may cut it)
    tokens: list[int] = field(default_factory=list)  # per shard
    documents: list[int] = field(default_factory=list)  # per shard

    def __post_init__(self):
        self.tokens = self.tokens or [0] * self.n_shards
        self.documents = self.documents or [0] * self.n_shards

    @property
    def stop(self) -> tuple[int, int]:
        """(last_doc, last_len): where a shard's reading ends."""
        return self.last_doc, self.last_len

    def add(self, doc_id: int, ids: list[int]) -> None:
        shard = shard_of(doc_id, self.n_shards)
        self.tokens[shard] += len(ids)
        self.documents[shard] += 1
        self.last_doc, self.last_len = doc_id, len(ids)
        for unit, part in segments([(doc_id, ids)], self.segment_len):
            self.sample.add(unit, part)

    def sample_of(self, shard: int) -> list[tuple[int, list[int]]]:
        """(unit, token ids) of the activation sample's segments in this shard."""
        return [(u, ids) for u, ids in self.sample.segments() if shard_of(doc_of(u), self.n_shards) == shard]


def planned(plan: Plan, cfg: IndexConfig, tokenizer) -> Iterator[tuple[int, list[int]]]:
    """The run's (doc_id, token ids), each added to the plan as it is read."""
    for doc_id, ids in document_tokens(cfg.dataset, cfg.text_column, tokenizer, cfg.tokens, plan.tally, cfg.seed,
                                       cfg.shuffle):
        plan.add(doc_id, ids)
        yield doc_id, ids


def shard_documents(cfg: IndexConfig, tokenizer, shard: int, n_shards: int,
                    stop: tuple[int, int]) -> Iterator[tuple[int, list[int]]]:
    """(doc_id, token ids) of this shard's documents up to the plan's last one (stop);
    other shards' documents are skipped before they are tokenized."""
    last_doc, last_len = stop
    read = itertools.takewhile(lambda doc: doc.id <= last_doc,
                               iter_documents(cfg.dataset, cfg.text_column, ReadStats(), cfg.seed, cfg.shuffle))
    for doc, ids in encoded((doc for doc in read if shard_of(doc.id, n_shards) == shard), tokenizer):
        ids = ids[:last_len] if doc.id == last_doc else ids
        if ids:
            yield doc.id, ids
