"""The Ray actor that sums the tokens every shard worker has done, for the one progress
bar of a sharded run. Apart from ray_shards.py so its process starts without torch."""
from __future__ import annotations

from collections import defaultdict


class TokenCounter:
    """Tokens done per run (one run per model), summed over the workers that report them."""

    def __init__(self):
        self.tokens: dict[int, int] = defaultdict(int)

    def add(self, run: int, n: int) -> None:
        self.tokens[run] += n

    def total(self, run: int) -> int:
        return self.tokens[run]
