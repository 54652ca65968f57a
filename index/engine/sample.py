"""The activation sample: which segments feed the `activations` and `tokens` tables.

The rule: order every segment of the run by a 32-bit hash of (seed, doc_id, segment),
then take segments in that order while their tokens add up to at most `budget`,
stopping at the first one that does not fit. The choice depends only on the set of
segments and the seed, not on the order they arrive in, so the sample is spread over
the whole run (a concept that appears only in its last documents is sampled as often
as one at the start) and indexing the documents in shards gives the same sample.

The plan (index.engine.plan) draws it once per run, whatever the shards. Streaming
keeps the chosen prefix (their token ids, at most `budget`) and the first segment that
did not fit (its hash and length only). The sample fills the budget to within one
segment: it stops at a misfit, after more than budget - segment length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from index.engine.topk import mix32

SEED_SAMPLE = 3  # added to the run's seed (0 and 1: the accumulator's interval and random samples)


def sample_hash(unit: int, seed: int) -> int:
    """The 32-bit hash that orders segments (unit ids, see index.engine.batching)."""
    return mix32(mix32(unit) ^ mix32((seed + SEED_SAMPLE) * 0x9E3779B9 + 0x7F4A7C15))


@dataclass
class ActivationSample:
    budget: int
    seed: int
    kept: list[tuple[int, int]] = field(default_factory=list)  # (hash, unit) of the prefix, ascending
    overflow: tuple[int, int] | None = None  # (hash, unit) of the first segment that did not fit
    ids: dict[int, list[int]] = field(default_factory=dict)  # unit -> token ids, kept and overflow

    @property
    def tokens(self) -> int:
        return sum(len(ids) for _, ids in self.segments())

    def add(self, unit: int, ids: list[int]) -> None:
        key = (sample_hash(unit, self.seed), unit)
        if self.overflow is not None and key > self.overflow:
            return
        self.kept.append(key)
        self.ids[unit] = list(ids)
        self._cut()

    def _cut(self) -> None:
        """Keep the prefix that fits; the first that does not becomes the overflow."""
        entries = sorted(self.kept + ([self.overflow] if self.overflow else []))
        total, keep = 0, 0
        for _, u in entries:
            if total + len(self.ids[u]) > self.budget:
                break
            total, keep = total + len(self.ids[u]), keep + 1
        self.kept = entries[:keep]
        self.overflow = entries[keep] if keep < len(entries) else None
        for _, u in entries[keep + 1:]:
            del self.ids[u]

    def segments(self) -> list[tuple[int, list[int]]]:
        """(unit, token ids) of the sample, by unit id (document order): the prefix and
        the start of the overflow segment, cut to fill the budget exactly."""
        out = [(u, self.ids[u]) for _, u in self.kept]
        room = self.budget - sum(len(ids) for _, ids in out)
        if self.overflow is not None and room > 0:
            out.append((self.overflow[1], self.ids[self.overflow[1]][:room]))
        return sorted(out)

    def rule(self) -> str:
        return (f"segments in order of a hash of (seed {self.seed}, doc_id, segment), up to {self.budget:,} "
                "tokens (the first that does not fit is cut to fill them)")
