"""The activation rows' budget (index.engine.sample_rows) against a brute force, on
planted activations with many ties, streamed in batches and merged from shards."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from index.engine import sample_rows
from index.engine.sample_rows import SampleRows


def planted(rng, sites=2, d=16, tokens=3000):
    """[sites, tokens, d] activations: dense, sparse, dead and quantised (ties) neurons."""
    x = rng.normal(size=(sites, tokens, d)).astype(np.float32)
    x[:, :, 1] = np.round(x[:, :, 1] * 2) / 2  # few distinct values: ties at every cut
    x[:, :, 2] = -np.abs(x[:, :, 2])  # never positive: nothing kept
    x[:, :, 3] = np.where(rng.random((sites, tokens)) < 0.01, 5.0, 0.0)  # sparse, equal values
    return torch.as_tensor(x)


def brute(x, doc, pos, threshold, keep):
    """{(site, neuron, doc, pos)} and the cuts, by sorting every token of every neuron."""
    sites, _, d = x.shape
    want, cut = set(), np.zeros(sites * d, np.float32)
    for s in range(sites):
        for j in range(d):
            a = x[s, :, j].numpy()
            mx = a.max()
            lim = threshold * mx if mx > 0 else np.inf
            idx = [i for i in np.nonzero(a > lim)[0]]
            idx.sort(key=lambda i: (-a[i], doc[i], pos[i]))
            want.update((s, j, int(doc[i]), int(pos[i])) for i in idx[:keep])
            cut[s * d + j] = a[idx[keep - 1]] if len(idx) >= keep else lim
    return want, cut


def stream(x, doc, pos, threshold, keep, shards=1, batch=300):
    sites, tokens, d = x.shape
    top = x.amax(1).reshape(-1)
    limit = torch.where(top > 0, top * threshold, torch.inf)
    parts = []
    for k in range(shards):
        mine = np.nonzero(doc % shards == k)[0]
        sx = x[:, mine]
        stop = sx.amax(1).reshape(-1) if len(mine) else torch.full((sites * d,), -torch.inf)
        slim = torch.where(stop > 0, stop * threshold, torch.inf)
        rows = SampleRows.empty(slim, stop, keep, d)
        for p0 in range(0, len(mine), batch):
            i = mine[p0:p0 + batch]
            rows.add(iter(sx[:, p0:p0 + batch]), doc[i], np.zeros(len(i), np.int32), pos[i])
            assert rows.stored <= rows.bound + sample_rows.CHUNK_POSITIONS * sites * d
        parts.append(rows.select(slim, stop))
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p, limit, top)
    kept = merged.select(limit, top)
    chunks = list(kept.columns(chunk=1000))
    return {c: np.concatenate([ch[c] for ch in chunks]) for c in chunks[0]}, kept.sample_cut()


@pytest.mark.parametrize("keep", [1, 7, 40, 10_000])
@pytest.mark.parametrize("shards", [1, 3])
def test_kept_rows_are_each_neurons_highest_above_the_threshold(keep, shards):
    rng = np.random.default_rng(keep + shards)
    x = planted(rng)
    tokens = x.shape[1]
    doc = np.repeat(np.arange(tokens // 50), 50).astype(np.int64)
    pos = np.tile(np.arange(50), tokens // 50).astype(np.int32)
    order = rng.permutation(tokens)  # the stream sees the positions in another order
    x, doc, pos = x[:, order], doc[order], pos[order]
    cols, cut = stream(x, doc, pos, 0.2, keep, shards)
    want, want_cut = brute(x, doc, pos, 0.2, keep)
    got = set(zip(cols["site"].tolist(), cols["neuron"].tolist(), cols["doc_id"].tolist(), cols["pos"].tolist()))
    assert got == want and len(got) == len(cols["act"])
    np.testing.assert_array_equal(cut.numpy(), want_cut)
    key = cols["site"].astype(np.int64) * 10**6 + cols["neuron"]
    assert (np.diff(key) >= 0).all()  # grouped by site and neuron


def test_the_store_stays_near_the_budget(monkeypatch):
    """A dense neuron's stream never holds much more than its budget, whatever the tokens."""
    monkeypatch.setattr(sample_rows, "CHUNK_POSITIONS", 64)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.random((1, 20_000, 8)).astype(np.float32))  # every token above the threshold
    top = x.amax(1).reshape(-1)
    rows = SampleRows.empty(top * 0.2, top, 50, 8)
    peak = 0
    for p0 in range(0, 20_000, 500):
        n = min(500, 20_000 - p0)
        rows.add(iter(x[:, p0:p0 + n]), np.arange(p0, p0 + n), np.zeros(n, np.int32), np.zeros(n, np.int32))
        peak = max(peak, rows.stored)
    assert rows.bound < 1600 and peak <= rows.bound + 64 * 8
