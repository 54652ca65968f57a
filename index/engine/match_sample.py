"""The match sample: every primary-site neuron's activation at a few thousand tokens of the
activation sample, stored dense, so that `solu match` reads whole activations whatever
the activations table's budget of rows kept of them.

The rule. A token of the activation sample is in the match sample when a 32-bit hash of
(seed, doc_id, pos) is below `cut`, where cut / 2^32 is --match-tokens over the sample's
size as the flags give it (min(--sample-tokens, --tokens)): about --match-tokens tokens,
chosen one by one across the whole sample (whole segments would bring whole documents,
and a neuron's activations within a document move together). It depends only on the
position, the seed and the flags, so two models indexed with the same flags on the same
documents have the same match tokens, shards agree with one pass, and of two cuts the
smaller one's tokens are a subset of the larger's. When --match-tokens is at least the
sample, the match sample is the whole sample.

What is stored (the match_sample table): each (layer, neuron)'s activations at the match
tokens, in (doc_id, pos) order (tokens.match_index), as float16, with what the
activations table would record without its budget: the activation where it is above
threshold x the neuron's max, else 0. That is the quantity `solu match` always
correlated; it is now measured over these tokens rather than the activations table's
rows.

How it stays within memory. The sample pass hands over each batch's match tokens site by
site, and they go to a temporary file (in SOLU_CACHE, unlinked) as float16 blocks, not to
memory; the (doc_id, pos) of the tokens are kept (12 bytes a token). A shard's match
sample travels to the driver as bytes (pickled) and is spooled there again.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from index.engine.topk import mix32

SEED_MATCH = 4  # added to the run's seed (3: the activation sample)
FULL = 1 << 32  # a cut that takes every sample token
F16_MAX = float(np.finfo(np.float16).max)


def match_cut(match_tokens: int, sample_tokens: int, tokens: int) -> int:
    """The hash cut of a run's flags: 2^32 x match_tokens / min(sample_tokens, tokens), at most 2^32."""
    size = max(1, min(sample_tokens, tokens))
    return FULL if match_tokens >= size else (match_tokens * FULL) // size


def match_hash(doc_id: np.ndarray, pos: np.ndarray, seed: int) -> np.ndarray:
    """The 32-bit hash of each (doc_id, pos) that picks the match tokens (int64)."""
    doc = torch.from_numpy(np.array(doc_id, np.int64))  # a copy: the arrays may be read-only (Arrow's)
    p = torch.from_numpy(np.array(pos, np.int64))
    salt = mix32(torch.tensor((seed + SEED_MATCH) * 0x9E3779B9 + 0x632BE5AB))
    return mix32(mix32(mix32(doc & 0xFFFFFFFF) ^ (doc >> 32) ^ salt) ^ p).numpy()


def chosen(doc_id: np.ndarray, pos: np.ndarray, seed: int, cut: int) -> np.ndarray:
    """True where (doc_id, pos) is a match token under `cut`."""
    if cut >= FULL:
        return np.ones(len(doc_id), bool)
    return match_hash(doc_id, pos, seed) < cut


class MatchRows:
    """One shard's match tokens (or several shards', merged): their (doc_id, pos) in the
    order seen, and for each primary site its activations at them, float16, in blocks
    spooled to temporary files."""

    def __init__(self, cut: int, seed: int, n_sites: int, d_mlp: int):
        self.cut, self.seed, self.n_sites, self.d_mlp = cut, seed, n_sites, d_mlp
        self.doc_id: list[np.ndarray] = []
        self.pos: list[np.ndarray] = []
        self.files: list = []  # open temporary files (unlinked)
        self.blocks: list[list[tuple[int, int, int]]] = [[] for _ in range(n_sites)]  # (file, offset, rows)

    @property
    def n(self) -> int:
        return sum(len(d) for d in self.doc_id)

    def choose(self, doc_id: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Which of a batch's sample tokens are match tokens; records their positions."""
        mask = chosen(doc_id, pos, self.seed, self.cut)
        self.doc_id.append(np.asarray(doc_id, np.int64)[mask])
        self.pos.append(np.asarray(pos, np.int32)[mask])
        return mask

    def add(self, site: int, x: torch.Tensor) -> None:
        """Primary site number `site`'s activations [rows, d_mlp] at the batch's match tokens
        (the last choose()'s), in their order."""
        self._write(site, x.float().clamp(-F16_MAX, F16_MAX).to(torch.float16).cpu().numpy())

    def _write(self, site: int, data: np.ndarray) -> None:
        if not self.files:
            self.files.append(tempfile.TemporaryFile(dir=_spool_dir()))
        f = self.files[-1]
        f.seek(0, os.SEEK_END)
        offset = f.tell()
        f.write(data.tobytes())
        self.blocks[site].append((len(self.files) - 1, offset, data.size // self.d_mlp))

    def merge(self, other: "MatchRows") -> "MatchRows":
        """Both shards' match tokens (disjoint): other's blocks follow self's."""
        base = len(self.files)
        self.files += other.files
        for mine, theirs in zip(self.blocks, other.blocks):
            mine += [(f + base, offset, rows) for f, offset, rows in theirs]
        self.doc_id += other.doc_id
        self.pos += other.pos
        other.files, other.blocks = [], [[] for _ in range(other.n_sites)]
        return self

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(doc_id, pos) of the match tokens in the order stored."""
        return (np.concatenate(self.doc_id) if self.doc_id else np.zeros(0, np.int64),
                np.concatenate(self.pos) if self.pos else np.zeros(0, np.int32))

    def holds(self, doc_id: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Which of these (doc_id, pos) are match tokens (stored ones, not the rule applied again)."""
        key = lambda d, p: (np.asarray(d, np.int64) << 32) | np.asarray(p, np.int64)  # noqa: E731
        return np.isin(key(doc_id, pos), key(*self.positions()))

    def order(self) -> np.ndarray:
        """The stored order's permutation into (doc_id, pos) order."""
        doc, pos = self.positions()
        return np.lexsort((pos, doc))

    def site(self, site: int) -> np.ndarray:
        """[tokens, d_mlp] float16: primary site `site`'s activations, in the order stored."""
        out = np.empty((self.n, self.d_mlp), np.float16)
        row = 0
        for f, offset, rows in self.blocks[site]:
            if rows:
                self.files[f].seek(offset)
                out[row:row + rows] = np.frombuffer(self.files[f].read(rows * self.d_mlp * 2),
                                                    np.float16).reshape(rows, self.d_mlp)
            row += rows
        assert row == self.n, "a primary site's match rows do not cover the match tokens"
        return out

    def __getstate__(self) -> dict:
        """Pickled (a shard's result on its way to the driver): the blocks as bytes."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("files", "blocks")}
        state["data"] = [self.site(s).tobytes() for s in range(self.n_sites)]
        return state

    def __setstate__(self, state: dict) -> None:
        data = state.pop("data")
        self.__dict__.update(state)
        self.files, self.blocks = [], [[] for _ in range(self.n_sites)]
        for s, raw in enumerate(data):
            self._write(s, np.frombuffer(raw, np.float16))


def _spool_dir() -> str:
    from solu.corpus import cache_dir

    path = cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
