"""How a sharded run (`solu index --workers N`) is spread over worker processes on this
machine, or over a Ray cluster: options that do not change what is built, so they live
apart from IndexConfig. Light: no torch, no Ray."""
from __future__ import annotations

from dataclasses import dataclass

from solu.config import check_int, option

SHARD_FLAGS = {"address": "ray_address"}  # field -> flag name


@dataclass(frozen=True)
class ShardOptions:
    workers: int = option(2, "spread each model's documents over this many worker processes on this machine "
                             "(they talk over pipes: nothing listens on the network); the index is the same as "
                             "without")
    address: str = option("", "with --workers: run the workers on this Ray cluster (host:port or ray://host:port; "
                              "needs the 'ray' extra) instead. Ray has no authentication by default: use a "
                              "cluster you started and trust")
    threads: int = option(1, "torch threads (and Ray CPUs) per worker")

    def __post_init__(self):
        for name in ("workers", "threads"):
            check_int(getattr(self, name), f"--{name}")
        if self.address != self.address.strip():
            raise ValueError(f"--ray-address must not have surrounding spaces, got {self.address!r}")
