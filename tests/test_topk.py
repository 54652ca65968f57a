"""The selection functions of index.engine.topk against brute force, ties included."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from index.engine.topk import (EMPTY, unit_priority, sample_groups, top_k, value_bands)


def brute_top(values: np.ndarray, docs: np.ndarray, valid: np.ndarray, k: int) -> list[list[int]]:
    """Per row, candidate indices sorted by (value desc, doc asc), first k."""
    out = []
    for v, d, ok in zip(values, docs, valid):
        idx = [i for i in range(len(v)) if ok[i]]
        idx.sort(key=lambda i: (-float(v[i]), int(d[i])))
        out.append(idx[:k] + [EMPTY] * (k - len(idx[:k])))
    return out


def tied_candidates(n: int, c: int, seed: int):
    """Values from a handful of levels (many ties, negatives and -0.0 included)."""
    rng = np.random.default_rng(seed)
    values = rng.choice(np.array([-1.5, -0.0, 0.0, 0.25, 0.25, 1.0, 3.0], np.float32), size=(n, c))
    docs = np.stack([rng.permutation(10 * c)[:c] for _ in range(n)]).astype(np.int64)
    valid = rng.random((n, c)) > 0.2
    return values, docs, valid


@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_matches_brute_force_with_ties(k):
    values, docs, valid = tied_candidates(16, 30, seed=k)
    got = top_k(torch.tensor(values), torch.tensor(docs), torch.tensor(valid), k)
    assert got.tolist() == brute_top(values, docs, valid, k)


def test_top_k_streamed_equals_one_shot_in_any_order():
    """Merging a kept list with new candidates, chunk by chunk and in either order of
    two shards, gives the one-shot result: the property streaming and sharding rest on."""
    values, docs, valid = tied_candidates(8, 120, seed=1)
    k = 7
    full = top_k(torch.tensor(values), torch.tensor(docs), torch.tensor(valid), k)
    want = [[(float(values[r, i]), int(docs[r, i])) if i >= 0 else None for i in row] for r, row in enumerate(full.tolist())]

    def stream(order):
        kv = torch.zeros(8, k)
        kd = torch.full((8, k), EMPTY, dtype=torch.long)
        for chunk in np.array_split(order, 9):
            v = torch.cat([kv, torch.tensor(values[:, chunk])], 1)
            d = torch.cat([kd, torch.tensor(docs[:, chunk])], 1)
            ok = torch.cat([kd != EMPTY, torch.tensor(valid[:, chunk])], 1)
            idx = top_k(v, d, ok, k)
            kv = v.gather(1, idx.clamp_min(0))
            kd = torch.where(idx == EMPTY, EMPTY, d.gather(1, idx.clamp_min(0)))
        return [[(float(a), int(b)) if b != EMPTY else None for a, b in zip(rv, rd)]
                for rv, rd in zip(kv.tolist(), kd.tolist())]

    assert stream(np.arange(120)) == want
    assert stream(np.concatenate([np.arange(60, 120), np.arange(60)])) == want
    assert stream(np.random.default_rng(0).permutation(120)) == want


def test_sample_groups_keeps_lowest_priorities_per_group():
    rng = np.random.default_rng(3)
    n, c, groups, per = 6, 50, 4, 3
    group = rng.integers(0, groups, size=(n, c))
    prio = rng.integers(0, 2**32, size=(n, c))
    prio[:, :10] = 7  # ties in priority are broken by doc id
    docs = np.stack([rng.permutation(1000)[:c] for _ in range(n)])
    valid = rng.random((n, c)) > 0.3
    got = sample_groups(torch.tensor(group), torch.tensor(prio), torch.tensor(docs), torch.tensor(valid), groups, per)
    for r in range(n):
        for g in range(groups):
            members = sorted((i for i in range(c) if valid[r, i] and group[r, i] == g),
                             key=lambda i: (prio[r, i], docs[r, i] & 0xFFFFFF))
            want = members[:per] + [EMPTY] * (per - len(members[:per]))
            assert got[r, g * per:(g + 1) * per].tolist() == want


def test_value_bands_are_right_closed_equal_width():
    max_act = torch.tensor([4.0])
    values = torch.tensor([[4.0, 3.0, 2.5, 1.0, 0.5, 0.0, -1.0, 1e-9]])
    assert value_bands(values, max_act, 4).tolist() == [[3, 2, 2, 0, 0, -1, -1, 0]]


def test_unit_priority_is_a_deterministic_32_bit_hash():
    docs = torch.arange(1000).repeat(3, 1)
    keys = torch.tensor([0, 1, 2])
    p = unit_priority(docs, keys, seed=0)
    assert torch.equal(p, unit_priority(docs, keys, seed=0))
    assert not torch.equal(p, unit_priority(docs, keys, seed=1))
    assert not torch.equal(p[0], p[1])  # neurons draw different samples
    assert int(p.min()) >= 0 and int(p.max()) < 2**32
    assert len(set(p[0].tolist())) == 1000
    # roughly uniform: each quarter of the range holds about a quarter of the docs
    counts = np.bincount((p[0].numpy() >> 30), minlength=4)
    assert counts.min() > 200
