"""The indexer: exactness against a full activation dump, shard merges, stats against
numpy, the database it writes, and every kind of bad input."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import duckdb
import numpy as np
import pytest
import torch

from index.engine.hooks import Recorder, index_sites, site_key
from index.engine.config import IndexConfig
from index.store.rows import model_tables
from index.engine.batching import (MAX_SEGMENTS, SEGMENT_BITS, Tally, document_tokens, make_batches, segment_length,
                                   segments)
from index.engine.accumulator import Accumulator
from index.engine.indexer import Indexer, Layout
from index.engine.pipeline import Execution, finish, index_model, run_shard
from index.engine.sample import ActivationSample, sample_hash
from index.engine.stats import FINE, RunningStats
from index.engine.topk import unit_priority
from solu.sources import load_model
from solu.cli import main
from helpers.corpora import read_plan
from helpers.db_files import digest, plain_frame, query

TOKENS = 3000
CFG = dict(top_k=6, window_before=32, window_after=8, bands=4, per_band=2, random=3, seed=0)


# ------------------------------------------------------------------ helpers

def batches_of(ckpt, corpus, tokens=TOKENS, rows=3, docs=None):
    if docs is None:
        docs = list(document_tokens(str(corpus), "text", ckpt.tokenizer, tokens, Tally()))
    return list(make_batches(iter(docs), ckpt.model_cfg.n_ctx, rows, ckpt.bos_id))


def dump(ckpt, batches) -> dict[str, dict[int, np.ndarray]]:
    """site -> doc_id -> [unit_len, n] activations, from the same forward passes."""
    sites = index_sites(ckpt)
    out = {site_key(s): {} for s in sites}
    with torch.inference_mode(), Recorder(ckpt.model, sites) as rec:
        for batch in batches:
            acts = rec.run(batch.tokens)
            flat_index = batch.flat_index()
            doc, pos = batch.flat_positions()
            for key, a in acts.items():
                flat = a.reshape(-1, a.shape[-1])[flat_index].numpy()
                for d in np.unique(doc.numpy()):
                    rows = doc.numpy() == d
                    out[key].setdefault(int(d), []).append((pos.numpy()[rows], flat[rows]))
    for key in out:
        for d, parts in out[key].items():
            pos = np.concatenate([p for p, _ in parts])
            assert np.array_equal(pos, np.arange(len(pos)))
            out[key][d] = np.concatenate([a for _, a in parts])
    return out


def doc_tokens_of(ckpt, batches) -> dict[int, np.ndarray]:
    toks: dict[int, list] = {}
    for batch in batches:
        doc, _ = batch.flat_positions()
        flat = batch.tokens.view(-1)[batch.flat_index()]
        for d in np.unique(doc.numpy()):
            toks.setdefault(int(d), []).append(flat.numpy()[doc.numpy() == d])
    return {d: np.concatenate(v) for d, v in toks.items()}


def run_indexer(ckpt, batches, **overrides) -> Indexer:
    cfg = IndexConfig(**{**CFG, **overrides})
    indexer = Indexer(ckpt, cfg, torch.device("cpu"), Layout.of(ckpt, cfg))
    indexer.run(batches)
    return indexer


@pytest.fixture(scope="module")
def solu(tiny_checkpoints):
    return load_model(str(tiny_checkpoints["solu_ln"]))


@pytest.fixture(scope="module")
def indexed(solu, tiny_corpus):
    batches = batches_of(solu, tiny_corpus)
    return solu, batches, run_indexer(solu, batches), dump(solu, batches), doc_tokens_of(solu, batches)


# ------------------------------------------------------------------ exactness

def test_batches_split_documents_across_batches(indexed):
    _, batches, _, _, _ = indexed
    assert sum(b.n_tokens for b in batches) == TOKENS
    assert any(b.continues_next for b in batches) and any(b.continues_prev for b in batches)


def test_recorder_matches_a_full_forward_and_solu_is_x_softmax_x(solu, indexed):
    """The Recorder stops early and keeps references; a full forward that clones every
    site (and hook_pre) must see the same activations."""
    _, batches, _, _, _ = indexed
    tokens = batches[0].tokens
    sites = index_sites(solu)
    saved = {}

    def save(name):
        def hook(x, hook):
            saved[name] = x.clone()
        return hook

    with torch.inference_mode():
        with Recorder(solu.model, sites) as rec:
            got = rec.run(tokens)
        names = [s.hook for s in sites] + ["blocks.0.mlp.hook_pre"]
        logits = solu.model.run_with_hooks(tokens, fwd_hooks=[(n, save(n)) for n in names])
    assert logits.shape[-1] == solu.model_cfg.d_vocab  # that one ran to the end
    for s in sites:
        torch.testing.assert_close(got[site_key(s)], saved[s.hook], rtol=0, atol=0)
    pre = saved["blocks.0.mlp.hook_pre"]
    torch.testing.assert_close(got["0.pre_ln"], pre * torch.softmax(pre, dim=-1))


def test_top_k_equals_brute_force(indexed):
    _, _, indexer, acts, toks = indexed
    g = indexer.acc.gathered
    assert {p.win_tokens.dtype for p in (g.top, g.reservoir, g.random)} == {torch.int16}  # the vocabulary fits 16 bits
    assert_top_k_exact(indexer, acts, toks)


def test_top_k_over_segments_equals_brute_force(solu, tiny_corpus):
    """Long documents ranked as segments of two rows: the segment is the unit, and
    windows stop at its edges."""
    docs = list(document_tokens(str(tiny_corpus), "text", solu.tokenizer, TOKENS, Tally()))
    units = list(segments(docs, segment_length(70, solu.model_cfg.n_ctx)))
    assert len(units) > 1.5 * len(docs)
    batches = batches_of(solu, tiny_corpus, docs=units)
    indexer = run_indexer(solu, batches)
    acts = dump(solu, batches)
    assert_top_k_exact(indexer, acts, doc_tokens_of(solu, batches))
    segs = {int(u) & (MAX_SEGMENTS - 1) for u in indexer.by_site()["0.pre_ln"].top.unit.flatten().tolist() if u >= 0}
    assert len(segs) > 1  # later segments reach the top lists


def test_windows_running_into_the_next_batch_are_filled_from_it(solu, tiny_corpus, monkeypatch):
    """One row a batch: a window whose max lies near a batch's end is completed from the
    next batch (the indexer holds one batch); the kept windows still equal brute force."""
    filled = set()
    fill = Accumulator.fill_windows

    def record(self, windows, head):
        top = self.gathered.top
        for name, n, slot, _ in windows:
            if name == "top":
                unit = top.unit[n, (top.slot[n] == slot[:, None]).int().argmax(1)]
                filled.update(zip(n.tolist(), slot.tolist(), unit.tolist()))
        fill(self, windows, head)

    monkeypatch.setattr(Accumulator, "fill_windows", record)
    batches = batches_of(solu, tiny_corpus, rows=1)
    indexer = run_indexer(solu, batches)
    assert_top_k_exact(indexer, dump(solu, batches), doc_tokens_of(solu, batches))
    top = indexer.acc.gathered.top
    n, c = top.valid.nonzero(as_tuple=True)
    kept = set(zip(n.tolist(), top.slot[n, c].tolist(), top.unit[n, c].tolist()))
    assert len(kept & filled) > 10  # filled windows that the check above read


def assert_top_k_exact(indexer, acts, toks):
    k, before, after = CFG["top_k"], CFG["window_before"], CFG["window_after"]
    for key, acc in indexer.by_site().items():
        docs = sorted(acts[key])
        doc_max = np.stack([acts[key][d].max(0) for d in docs])  # [docs, n]
        doc_arg = np.stack([acts[key][d].argmax(0) for d in docs])
        win_acts, win_tokens = acc.top.windows()
        for j in range(acc.n):
            order = sorted(range(len(docs)), key=lambda i: (-doc_max[i, j], docs[i]))[:k]
            assert acc.top.unit[j, :k].tolist() == [docs[i] for i in order], (key, j)
            assert acc.top.value[j, :k].tolist() == [float(doc_max[i, j]) for i in order]
            for slot, i in enumerate(order):
                d, p = docs[i], int(doc_arg[i, j])
                assert int(acc.top.pos[j, slot]) == p
                lo, hi = max(0, p - before), min(len(acts[key][d]), p + after + 1)
                got_acts = win_acts[j, slot].numpy()
                got_toks = win_tokens[j, slot].numpy()
                inside = got_toks >= 0
                assert np.array_equal(got_acts[inside], acts[key][d][lo:hi, j])
                assert np.array_equal(got_toks[inside], toks[d][lo:hi])
                assert int(np.argmax(inside)) == lo - (p - before)


def test_ties_are_broken_by_doc_id(indexed):
    """Documents that start with the same token tie at position 0; the brute-force test
    above covers them only if such ties reach a top list, which this checks."""
    _, _, indexer, _, _ = indexed
    top = indexer.by_site()["0.pre_ln"].top
    v, d = top.value[:, :CFG["top_k"]], top.unit[:, :CFG["top_k"]]
    ties = (v[:, 1:] == v[:, :-1]) & (d[:, 1:] >= 0)
    assert bool(ties.any())
    assert bool((d[:, 1:][ties] > d[:, :-1][ties]).all())


def test_samples_lie_in_their_bands_and_random_is_exact(indexed):
    _, _, indexer, acts, _ = indexed
    nb, per = CFG["bands"], CFG["per_band"]
    for key, acc in indexer.by_site().items():
        docs = sorted(acts[key])
        doc_max = {d: acts[key][d].max(0) for d in docs}
        mx = acc.stats.max.numpy().astype(np.float64)
        for j in range(acc.n):
            seen = set()
            for slot in range(nb * per):
                d = int(acc.intervals.unit[j, slot])
                if d < 0:
                    continue
                b, v = slot // per, float(acc.intervals.value[j, slot])
                assert v == float(doc_max[d][j])  # the document's true max
                assert b * mx[j] / nb < v <= (b + 1) * mx[j] / nb * (1 + 1e-6)
                assert d not in seen
                seen.add(d)
            prio = unit_priority(torch.tensor([docs]), torch.tensor([acc.keys[j]]), CFG["seed"] + 1)[0]
            want = [docs[i] for i in sorted(range(len(docs)), key=lambda i: (int(prio[i]), docs[i]))[:CFG["random"]]]
            assert acc.random.unit[j].tolist() == want


def test_every_nonempty_band_gets_samples(indexed):
    """With no more active segments than --band-candidates, the reservoir holds them all,
    so every band of the final max that has a segment gets samples."""
    _, _, indexer, acts, _ = indexed
    acc, key = indexer.by_site()["1.post_ln"], "1.post_ln"
    mx = acc.stats.max.numpy()
    docs = sorted(acts[key])
    assert len(docs) <= indexer.cfg.band_candidates
    for j in range(acc.n):
        bands = {min(int(np.ceil(acts[key][d][:, j].max() / mx[j] * CFG["bands"])) - 1, CFG["bands"] - 1)
                 for d in docs if acts[key][d][:, j].max() > 0}
        filled = {slot // CFG["per_band"] for slot in range(CFG["bands"] * CFG["per_band"]) if acc.intervals.unit[j, slot] >= 0}
        assert filled == bands


def test_stats_equal_numpy(indexed):
    _, _, indexer, acts, _ = indexed
    for key, acc in indexer.by_site().items():
        x = np.concatenate([acts[key][d] for d in sorted(acts[key])]).astype(np.float64)
        s = acc.stats.summary(0.2, 16)
        np.testing.assert_array_equal(s["max_act"], x.max(0))
        np.testing.assert_array_equal(s["min_act"], x.min(0))
        np.testing.assert_allclose(s["mean_act"], x.mean(0), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(s["std_act"], x.std(0), rtol=1e-4, atol=1e-9)
        centred = x - x.mean(0)
        kurt = (centred ** 4).mean(0) / (centred ** 2).mean(0) ** 2
        np.testing.assert_allclose(s["kurtosis"], kurt, rtol=1e-3)
        np.testing.assert_array_equal(s["frac_active"], (x > 0).mean(0))
        for j in range(acc.n):
            counts = s["hist_counts"][j]
            edges = np.linspace(s["hist_lo"][j], s["hist_hi"][j], len(counts) + 1)
            want = np.bincount(np.searchsorted(edges, x[:, j], side="left") - 1, minlength=len(counts))
            assert len(counts) <= 16 and counts.sum() == len(x)
            np.testing.assert_array_equal(counts, want[:len(counts)])
            width = 2.0 ** int(acc.stats.exp[j]) / FINE
            exact = (x[:, j] > 0.2 * x[:, j].max()).sum() if x[:, j].max() > 0 else 0
            straddling = ((x[:, j] > 0.2 * x[:, j].max() - width) & (x[:, j] <= 0.2 * x[:, j].max() + width)).sum()
            assert abs(s["frac_active_rel"][j] * len(x) - exact) <= straddling + 1e-6


@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_stats_equal_the_tensor_ops(solu, indexed, threads):
    """On a CPU the stats come from index.engine.kernels; the tensor ops (the GPU's
    path) must give the same histogram, min and max, and the same moments up to
    summation order, with short rows, padding and one or two threads."""
    _, batches, compiled, _, _ = indexed
    assert compiled.acc.compiled and any(b.short_rows.numel() for b in batches)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        layout = Layout.of(solu, compiled.cfg)
        again = Indexer(solu, compiled.cfg, torch.device("cpu"), layout)
        tensor_ops = Indexer(solu, compiled.cfg, torch.device("cpu"), layout)
        tensor_ops.acc.compiled = False
        again.run(batches)
        tensor_ops.run(batches)
    finally:
        torch.set_num_threads(before)
    for a, b in ((compiled.acc.gathered.stats, again.acc.gathered.stats), (compiled.acc.gathered.stats, tensor_ops.acc.gathered.stats)):
        assert a.count == b.count
        for name in ("hist", "exp", "min", "max"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        for name in ("mean", "m2", "m3", "m4"):
            torch.testing.assert_close(getattr(a.moments, name), getattr(b.moments, name), rtol=1e-5, atol=1e-9)


def test_first_max_column_among_ties():
    """first_col finds the first column holding a row's max, through the block maxima,
    for rows whose length is not a multiple of the block width and with many ties."""
    from index.engine.windows import block_maxima, first_col

    rng = np.random.default_rng(1)
    for n_ctx in (2, 3, 17, 32, 128, 130):
        acts = torch.tensor(rng.integers(0, 3, size=(4, n_ctx, 5)), dtype=torch.float32)  # values 0..2: ties
        blocks = block_maxima(acts)
        row, unit = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
        row, unit = row.reshape(-1), unit.reshape(-1)
        target = acts[:, 1:].amax(1)[row, unit]
        got = first_col(acts, blocks, row, unit, target, chunk=7)
        want = acts[:, 1:].numpy().argmax(1)[row.numpy(), unit.numpy()]  # numpy: the first of equal maxima
        assert got.tolist() == want.tolist(), n_ctx


@pytest.mark.parametrize("vocab, dtype", [(4096, torch.int16), (50_257, torch.int16), (65_535, torch.int16),
                                          (65_536, torch.int32), (128_256, torch.int32)])
def test_window_token_ids_round_trip_through_the_arena(vocab, dtype):
    """The window arena keeps token ids in 16 bits where the vocabulary fits: ids from
    32,768 (stored negative) and -1 (outside the unit) read back as written, through a
    pool's absorb, its windows and a merge; a larger vocabulary keeps 32 bits."""
    from index.engine.pools import Candidates, Pool, token_dtype
    from index.engine.topk import top_k

    assert token_dtype(vocab) == dtype
    ids = torch.tensor([0, 1, 32_767, 32_768, 50_256, vocab - 1, -1], dtype=torch.int32)
    windows = torch.stack([ids, ids.flip(0)])  # [neurons, W]: one window each
    n, width = windows.shape

    def select(value, unit, valid, rows):
        return top_k(value, unit, valid, 1)

    def offered(unit: int, windows: torch.Tensor) -> Candidates:
        zeros = lambda r: torch.zeros(len(r), dtype=torch.int32)  # noqa: E731
        return Candidates(torch.full((n, 1), float(unit + 1)), torch.full((n, 1), unit),
                          torch.ones(n, 1, dtype=torch.bool), lambda r, c: (zeros(r), zeros(r)),
                          lambda r, c, p: (torch.zeros(len(r), width), windows[r]))

    pool = Pool.empty(n, 1, width, "cpu", dtype)
    pool.absorb(offered(0, windows), select, torch.arange(n))
    assert pool.win_tokens.dtype == dtype
    assert torch.equal(pool.windows()[1][:, 0], windows)
    other = Pool.empty(n, 1, width, "cpu", dtype)
    other.absorb(offered(1, windows.flip(0)), select, torch.arange(n))  # ranks above: the merge takes it
    assert torch.equal(pool.merge(other, select).windows()[1][:, 0], windows.flip(0))


def test_histogram_regrids_without_losing_counts():
    stats = RunningStats.empty(2, "cpu")
    rng = np.random.default_rng(0)
    parts = [rng.normal(0, scale, size=(500, 2)).astype(np.float32) for scale in (0.01, 1.0, 40.0)]
    for p in parts:
        stats.update(torch.tensor(p))
    x = np.concatenate(parts)
    width = 2.0 ** stats.exp.numpy() / FINE
    for j in range(2):
        k = np.ceil(x[:, j] / width[j]) - 1
        want = np.bincount((k + FINE).astype(int), minlength=2 * FINE)
        np.testing.assert_array_equal(stats.hist[j].numpy(), want)


def test_segments_cut_long_documents():
    docs = [(0, list(range(10))), (1, list(range(3))), (2, list(range(4 * (MAX_SEGMENTS + 2))))]
    units = list(segments(docs, 4))
    assert units[:4] == [(0, [0, 1, 2, 3]), (1, [4, 5, 6, 7]), (2, [8, 9]), (1 << SEGMENT_BITS, [0, 1, 2])]
    last = units[-1]
    assert last[0] == (2 << SEGMENT_BITS) | (MAX_SEGMENTS - 1) and len(last[1]) == 12  # the rest stays in the last
    assert sum(len(ids) for _, ids in units) == sum(len(ids) for _, ids in docs)
    assert segment_length(1024, 128) == 8 * 127 and segment_length(10, 128) == 127


def brute_sample(units, budget, seed):
    """The rule, written out: hash order, take while the budget holds, cut the first misfit."""
    out, total = [], 0
    for u, ids in sorted(units, key=lambda x: (sample_hash(x[0], seed), x[0])):
        if total + len(ids) > budget:
            if budget > total:
                out.append((u, ids[:budget - total]))
            break
        out.append((u, ids))
        total += len(ids)
    return sorted(out)


def test_activation_sample_ignores_order():
    """The plan draws the sample once per run (sharding cannot change it); in any order
    of arrival it is the rule's brute-force choice."""
    rng = np.random.default_rng(0)
    units = [(int(u), list(range(int(n)))) for u, n in zip(rng.permutation(5000)[:300], rng.integers(1, 60, 300))]
    for budget in (0, 50, 700, 3000, 10 ** 6):
        want = brute_sample(units, budget, seed=4)
        for trial in range(3):
            sample = ActivationSample(budget, 4)
            for i in rng.permutation(len(units)):
                sample.add(*units[i])
            assert sample.segments() == want, (budget, trial)


@pytest.mark.parametrize("sample_rows", [2**25, 700])  # the budget binds nowhere / almost everywhere
def test_sample_follows_the_rule_and_activations_equal_brute_force(solu, tiny_corpus, sample_rows):
    cfg = IndexConfig(dataset=str(tiny_corpus), tokens=900, sample_tokens=300, segment_tokens=62, batch_size=4,
                      top_k=3, threshold=0.3, device="cpu", sample_rows=sample_rows)
    result = index_model(solu.ref, cfg, progress=False)
    assert result.ckpt.model is None  # the run's own copy of the weights is let go once read
    docs = list(document_tokens(str(tiny_corpus), "text", solu.tokenizer, 900, Tally()))
    units = list(segments(docs, result.segment_len))
    want = brute_sample(units, 300, cfg.seed)
    assert result.sample.segments() == want and result.sample.tokens == 300
    starts = dict(zip((u for u, _ in units), np.cumsum([0] + [len(t) for _, t in units])))
    assert max(starts[u] for u, _ in want) > 450  # spread over the run, not its first 300 tokens
    batches = batches_of(solu, tiny_corpus, docs=want, rows=4)
    acts = dump(solu, batches)
    chunks = list(result.activations.columns())
    a = {c: np.concatenate([ch[c] for ch in chunks]) for c in chunks[0]}
    sample_cut = result.activations.sample_cut()
    keys = [site_key(s) for s in result.sites]
    keep = max(1, sample_rows // (len(keys) * solu.model_cfg.d_mlp))
    bound = 0
    for k, (key, per_unit) in enumerate(acts.items()):
        assert keys[k] == key
        mx = result.by_site[key].stats.max.numpy()
        d = len(mx)
        above = {}  # neuron -> [(act, doc, seg, pos)] above threshold x max
        for u, x in per_unit.items():
            doc, seg = u >> SEGMENT_BITS, u & (MAX_SEGMENTS - 1)
            for p, j in zip(*np.nonzero((x > 0.3 * mx) & (x > 0) & (mx > 0))):
                above.setdefault(int(j), []).append((float(x[p, j]), doc, seg, int(p) + seg * result.segment_len))
        want_rows, want_cut = set(), 0.3 * mx.copy()
        for j, rows in above.items():
            rows.sort(key=lambda r: (-r[0], r[1], r[3]))  # highest first; ties to the lower (doc_id, pos)
            want_rows.update((j, doc, seg, pos) for _, doc, seg, pos in rows[:keep])
            if len(rows) >= keep:
                want_cut[j], bound = rows[keep - 1][0], bound + (len(rows) > keep)
        want_cut[mx <= 0] = np.inf
        rows = a["site"] == k
        got = set(zip(a["neuron"][rows].tolist(), a["doc_id"][rows].tolist(), a["segment"][rows].tolist(),
                      a["pos"][rows].tolist()))
        assert got == want_rows and got
        np.testing.assert_allclose(sample_cut[k * d:(k + 1) * d].numpy(), want_cut, rtol=1e-6)
    assert (bound > 0) == (sample_rows < 2**25)


def test_stats_with_default_flags_equal_numpy_over_every_token(solu, tiny_corpus):
    result = index_model(solu.ref, IndexConfig(dataset=str(tiny_corpus), tokens=TOKENS, device="cpu"),
                              progress=False)
    docs = list(document_tokens(str(tiny_corpus), "text", solu.tokenizer, TOKENS, Tally()))
    acts = dump(solu, batches_of(solu, tiny_corpus, docs=docs, rows=7))
    for key, acc in result.by_site.items():
        x = np.concatenate([acts[key][d] for d in sorted(acts[key])]).astype(np.float64)
        assert acc.stats.count == len(x) == TOKENS
        s = acc.stats.summary(result.cfg.threshold, result.cfg.hist_bins)
        np.testing.assert_array_equal(s["max_act"], x.max(0))
        np.testing.assert_array_equal(s["min_act"], x.min(0))
        np.testing.assert_allclose(s["mean_act"], x.mean(0), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(s["std_act"], x.std(0), rtol=1e-4, atol=1e-8)
        np.testing.assert_array_equal(s["frac_active"], (x > 0).mean(0))
        for j in range(acc.n):
            counts = s["hist_counts"][j]
            edges = np.linspace(s["hist_lo"][j], s["hist_hi"][j], len(counts) + 1)
            want = np.bincount(np.searchsorted(edges, x[:, j], side="left") - 1, minlength=len(counts))
            np.testing.assert_array_equal(counts, want[:len(counts)])


def shard_index(solu, cfg, docs, shards: int):
    """Index docs split into shards by doc_id (as Ray workers would), merge, finish."""
    layout = Layout.of(solu, cfg)
    plan = read_plan(cfg, solu.tokenizer, shards, layout.segment_len)
    parts = []
    for i in range(shards):
        part = run_shard(solu, cfg, torch.device("cpu"), layout, i, iter([d for d in docs if d[0] % shards == i]),
                         lambda: [s for s in plan.sample.segments() if (s[0] >> SEGMENT_BITS) % shards == i])
        parts.append(pickle.loads(pickle.dumps(part)))  # as a worker's result travels
    return finish(solu, cfg, list(layout.sites), plan, Execution(parts, "cpu"), datetime.now(timezone.utc), time.perf_counter())


# float32 power sums per batch, merged in float64 (index.engine.stats): equal up to float32 rounding
STAT_COLUMNS = ("mean_act", "std_act", "kurtosis")


@pytest.mark.parametrize("sample_rows", [2**25, 700])
def test_two_shards_merge_to_the_single_pass_table_by_table(solu, tiny_corpus, sample_rows):
    cfg = IndexConfig(dataset=str(tiny_corpus), tokens=1500, sample_tokens=400, segment_tokens=62, batch_size=3,
                      top_k=6, bands=4, per_band=2, band_candidates=5, random=3, device="cpu", ablation=True,
                      sample_rows=sample_rows)
    docs = list(document_tokens(str(tiny_corpus), "text", solu.tokenizer, 1500, Tally()))
    whole, merged = ({name: plain_frame(t) for name, t in model_tables(shard_index(solu, cfg, docs, n)).items()}
                     for n in (1, 2))
    assert set(whole) == set(merged)
    for name, table in whole.items():
        a, b = table, merged[name]
        keys = [c for c in a.columns if a[c].map(lambda v: isinstance(v, (str, int, np.integer))).all()]
        a, b = (t.sort_values(keys).reset_index(drop=True) for t in (a, b))
        assert len(a) == len(b) and len(a) > 0, name
        for col in a.columns:
            if col in STAT_COLUMNS:
                np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-9, err_msg=f"{name}.{col}")
            elif (name, col) == ("ablations", "delta_mean"):  # the ablation holds the neuron at that mean
                np.testing.assert_allclose(b[col], a[col], rtol=0, atol=1e-5, err_msg=f"{name}.{col}")
            else:
                assert a[col].map(repr).tolist() == b[col].map(repr).tolist(), f"{name}.{col}"
    kinds = set(whole["examples"]["kind"])
    assert kinds == {"top", "interval", "random"}


@pytest.mark.parametrize("candidates", [32, 3])
def test_band_samples_follow_their_rule(solu, indexed, candidates):
    """Per band of the final max, the lowest priorities among the reservoir (the
    lowest-priority active documents) and the top-K. With 3 candidates the reservoir
    holds fewer segments than are active, so bands draw on the top-K too."""
    _, batches, indexer, acts, _ = indexed
    if candidates != indexer.cfg.band_candidates:
        indexer = run_indexer(solu, batches, band_candidates=candidates)
    acc = indexer.by_site()["0.pre_ln"]
    nb, per, c = CFG["bands"], CFG["per_band"], candidates
    docs = sorted(acts["0.pre_ln"])
    prio = unit_priority(torch.tensor([docs] * acc.n), acc.keys, CFG["seed"])
    from_top = 0
    for j in range(acc.n):
        doc_max = {d: float(acts["0.pre_ln"][d][:, j].max()) for d in docs}
        order = sorted(docs, key=lambda d: (int(prio[j, docs.index(d)]), d & 0xFFFFFF))
        reservoir = [d for d in order if doc_max[d] > 0][:c]
        top = sorted(docs, key=lambda d: (-doc_max[d], d))[:CFG["top_k"]]
        pool = [d for d in order if d in set(reservoir) | set(top) and doc_max[d] > 0]
        mx = float(acc.stats.max[j])
        for b in range(nb):
            members = [d for d in pool if min(int(np.ceil(doc_max[d] / mx * nb)) - 1, nb - 1) == b][:per]
            got = [int(d) for d in acc.intervals.unit[j, b * per:(b + 1) * per].tolist() if d >= 0]
            assert got == members, (j, b)
            from_top += sum(d not in reservoir for d in members)
    assert (from_top > 0) == (c < len(docs))


# ------------------------------------------------------------------ the database

@pytest.fixture(scope="module")
def built_db(tmp_path_factory, tiny_checkpoints, tiny_corpus):
    db = tmp_path_factory.mktemp("db") / "index.duckdb"
    args = ["index", str(tiny_checkpoints["gelu"]), str(tiny_checkpoints["solu_ln"]), "--db", str(db),
            "--dataset", str(tiny_corpus), "--tokens", "2000", "--top-k", "5", "--batch-size", "4",
            "--sample-tokens", "500", "--no-progress"]
    assert main(args) == 0
    return db


def test_database_holds_every_table(built_db):
    models = dict(query(built_db, "SELECT model_id, act_fn FROM models"))
    assert models == {"gelu-tiny": "gelu", "solu_ln-tiny": "solu_ln"}
    sites = dict(query(built_db, "SELECT model_id, list(DISTINCT site ORDER BY site) FROM neurons GROUP BY 1"))
    assert sites == {"gelu-tiny": ["post"], "solu_ln-tiny": ["post_ln", "pre_ln"]}
    assert query(built_db, "SELECT count(*) FROM neurons")[0][0] == 2 * 64 + 4 * 64
    assert query(built_db, "SELECT count(*) FROM neurons WHERE is_primary")[0][0] == 2 * 64 + 2 * 64
    # every top example: rank 1..5, tokens and acts aligned, the max at max_pos
    bad = query(built_db, """SELECT count(*) FROM examples
        WHERE len(tokens) != len(acts) OR acts[max_pos + 1] != max_act OR list_max(acts) != max_act
           OR rank < 1 OR (kind = 'top' AND rank > 5)""")
    assert bad[0][0] == 0
    assert query(built_db, "SELECT count(*) FROM examples WHERE kind = 'top'")[0][0] == 5 * (2 * 64 + 4 * 64)
    details = query(built_db, "SELECT d.tokens_requested, d.stats_every, json_extract(d.config, '$.top_k') "
                              "FROM index_details d JOIN index_runs r USING (run_id)")
    assert details == [(2000, 1, "5")] * 2
    peaks = query(built_db, "SELECT CAST(json_extract(timings, '$.shard_peak_rss_mib') AS DOUBLE) FROM index_details")
    assert all(100 < p < 24 * 1024 for (p,) in peaks)  # MiB of a process that imported torch, on a 24 GB machine
    runs = query(built_db, "SELECT model_id, tokens, top_k, sites, band_kind FROM index_runs ORDER BY 1")
    assert runs == [("gelu-tiny", 2000, 5, ["post"], "interval"), ("solu_ln-tiny", 2000, 5, ["pre_ln", "post_ln"], "interval")]
    assert query(built_db, "SELECT count(*) FROM logits WHERE model_id = 'gelu-tiny'")[0][0] == 2 * 64 * 2 * 10
    curve = json.loads(query(built_db, "SELECT loss_curve FROM models WHERE model_id = 'gelu-tiny'")[0][0])
    assert curve and "eval_loss" in curve[0]
    # the activations sample joins its tokens
    orphans = query(built_db, """SELECT count(*) FROM activations a ANTI JOIN tokens t
        ON a.model_id = t.model_id AND a.doc_id = t.doc_id AND a.pos = t.pos""")
    assert orphans[0][0] == 0 and query(built_db, "SELECT count(*) FROM tokens")[0][0] == 2 * 500
    # the view: one row per (example, token), positions consecutive from start_pos
    view = query(built_db, """SELECT count(*) FROM example_tokens e JOIN tokens t
        ON e.model_id = t.model_id AND e.doc_id = t.doc_id AND e.pos = t.pos WHERE e.token != t.token""")
    assert view[0][0] == 0


def test_reindexing_replaces_rows_and_keeps_labels(built_db, tiny_checkpoints, tiny_corpus, tmp_path):
    from index.store.labels import append_label

    db = tmp_path / "copy.duckdb"
    shutil.copy(built_db, db)
    append_label(db, "gelu-tiny", 0, 3, "base64", "a note")
    before = query(db, "SELECT count(*) FROM examples WHERE model_id = 'solu_ln-tiny'")[0][0]
    assert main(["index", str(tiny_checkpoints["gelu"]), "--db", str(db), "--dataset", str(tiny_corpus),
                 "--tokens", "1000", "--top-k", "3", "--batch-size", "4", "--sample-tokens", "100", "--no-progress"]) == 0
    assert query(db, "SELECT label, note FROM labels") == [("base64", "a note")]
    assert query(db, "SELECT max(rank) FROM examples WHERE model_id = 'gelu-tiny' AND kind = 'top'")[0][0] == 3
    assert query(db, "SELECT count(*) FROM examples WHERE model_id = 'solu_ln-tiny'")[0][0] == before
    assert query(db, "SELECT tokens FROM index_runs WHERE model_id = 'gelu-tiny'") == [(1000,)]
    assert not list(tmp_path.glob(".copy.duckdb.*"))


# ------------------------------------------------------------------ bad input

def run_cli(args, capsys) -> tuple[int, list[str]]:
    code = main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def bad_run(db, model, corpus, **flags):
    args = ["index", str(model), "--db", str(db), "--dataset", str(corpus), "--tokens", "500", "--no-progress"]
    for k, v in flags.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


@pytest.fixture
def previous(built_db, tmp_path):
    db = tmp_path / "prev.duckdb"
    shutil.copy(built_db, db)
    return db


@pytest.mark.parametrize("flags, message", [
    ({"top_k": 0}, "--top-k must be a positive integer"),
    ({"top_k": -3}, "--top-k must not be negative"),  # solu.flags.check_values, before the config
    ({"tokens": 0}, "--tokens must be a positive integer"),
    ({"tokens": -1}, "--tokens must not be negative"),
])
def test_bad_numbers(previous, tiny_checkpoints, tiny_corpus, capsys, flags, message):
    before = digest(previous)
    code, err = run_cli(bad_run(previous, tiny_checkpoints["gelu"], tiny_corpus, **flags), capsys)
    assert code == 2 and len(err) == 1 and message in err[0]
    assert digest(previous) == before


def test_missing_and_garbage_checkpoints(previous, tiny_corpus, tmp_path, capsys):
    before = digest(previous)
    code, err = run_cli(bad_run(previous, tmp_path / "nope", tiny_corpus), capsys)
    assert code == 2 and len(err) == 1 and "not found" in err[0]
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{not json")
    code, err = run_cli(bad_run(previous, garbage, tiny_corpus), capsys)
    assert code == 2 and len(err) == 1 and "not valid JSON" in err[0]
    (garbage / "config.json").write_text(json.dumps({"format": "solu-checkpoint", "model": {"act_fn": "gelu"}}))
    code, err = run_cli(bad_run(previous, garbage, tiny_corpus), capsys)
    assert code == 2 and len(err) == 1
    assert digest(previous) == before


def test_db_that_is_not_duckdb_or_newer(previous, tiny_checkpoints, tiny_corpus, tmp_path, capsys):
    text = tmp_path / "notes.duckdb"
    text.write_text("just some text, not a database\n" * 50)
    code, err = run_cli(bad_run(text, tiny_checkpoints["gelu"], tiny_corpus), capsys)
    assert code == 2 and len(err) == 1 and "not a DuckDB database" in err[0]
    assert text.read_text().startswith("just some text")
    con = duckdb.connect(str(previous))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    before = digest(previous)
    code, err = run_cli(bad_run(previous, tiny_checkpoints["gelu"], tiny_corpus), capsys)
    assert code == 2 and len(err) == 1 and "newer" in err[0]
    assert digest(previous) == before


def test_empty_dataset(previous, tiny_checkpoints, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    before = digest(previous)
    code, err = run_cli(bad_run(previous, tiny_checkpoints["gelu"], empty), capsys)
    assert code == 2 and len(err) == 1 and "contains no usable text" in err[0]
    assert digest(previous) == before


def test_dataset_shorter_than_asked(tiny_checkpoints, tmp_path, capsys):
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x + {i}\n"}) + "\n" for i in range(20)))
    db = tmp_path / "short.duckdb"
    code, err = run_cli(bad_run(db, tiny_checkpoints["gelu"], short, tokens=100_000), capsys)
    assert code == 0 and len(err) == 1 and "holds only" in err[0] and "indexed all of them" in err[0]
    n = query(db, "SELECT tokens FROM index_runs")[0][0]
    assert 0 < n < 100_000 and str(f"{n:,}") in err[0]


def test_ctrl_c_leaves_the_database_and_no_temp_file(previous, tiny_checkpoints, tiny_corpus, capsys, monkeypatch):
    calls = []

    def interrupt(self, *batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return None, []  # no tail, no open windows

    monkeypatch.setattr(Indexer, "_absorb", interrupt)
    before = digest(previous)
    code, err = run_cli(bad_run(previous, tiny_checkpoints["gelu"], tiny_corpus, batch_size=1), capsys)
    assert code == 2 and len(err) == 1 and "interrupted" in err[0] and str(previous) in err[0]
    assert digest(previous) == before
    assert [p.name for p in previous.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_kill_mid_run_leaves_the_previous_database(previous, tiny_checkpoints, tmp_path, sig):
    from helpers.corpora import make_corpus

    corpus = make_corpus(tmp_path / "big.jsonl", n_docs=3000, seed=1)
    before = digest(previous)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "solu.cli", *bad_run(previous, tiny_checkpoints["solu_ln"], corpus,
                                                                       tokens=10_000_000, batch_size=1)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".prev.duckdb.*.indexing")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert digest(previous) == before
    assert query(previous, "SELECT count(*) FROM models")[0][0] == 2
    temps = list(tmp_path.glob(".prev.duckdb.*.indexing"))
    if sig == signal.SIGTERM:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "interrupted" in lines[0], err
        assert temps == []
    else:
        from index.store.writer import remove_stale_temps

        assert len(temps) == 1  # a SIGKILL cannot clean up; the next run does
        remove_stale_temps(previous)
        assert list(tmp_path.glob(".prev.duckdb.*.indexing")) == []


def test_config_round_trip():
    cfg = IndexConfig(dataset="x.jsonl", tokens=5, top_k=3, threshold=0.5)
    assert IndexConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="threshold"):
        IndexConfig(threshold=1.5)


# ------------------------------------------------------------------ the activation sample spans the run

def test_a_concept_only_after_the_first_90_percent_still_gets_a_score(tiny_checkpoints, tmp_path):
    """base64 only in the last documents, past 90% of the run's tokens: the old rule
    (the first documents) never sampled it; the hash-chosen segments do, so autolabel
    can score it."""
    import base64
    import random

    from index.measure.autolabel import autolabel, resolve_concepts
    from index.measure.concepts import find_base64

    rng = random.Random(0)
    plain = [f"def f{i}(x, y):\n    return x * {i} + y  # the sum of the parts\n" * 2 for i in range(60)]
    encoded = [base64.b64encode(bytes(rng.randrange(256) for _ in range(90))).decode() + "\n" for _ in range(3)]
    corpus = tmp_path / "late.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in plain + encoded))
    ckpt = load_model(str(tiny_checkpoints["gelu"]))
    docs = list(document_tokens(str(corpus), "text", ckpt.tokenizer, 10 ** 6, Tally()))
    total = sum(len(t) for _, t in docs)
    first_b64 = sum(len(t) for _, t in docs[:len(plain)])
    assert first_b64 > 0.9 * total and not any(find_base64(t) for t in plain) and all(find_base64(t) for t in encoded)
    db = tmp_path / "late.duckdb"
    assert main(["index", str(tiny_checkpoints["gelu"]), "--db", str(db), "--dataset", str(corpus),
                 "--tokens", str(total), "--sample-tokens", str(total // 5), "--segment-tokens", "62",
                 "--batch-size", "4", "--no-progress"]) == 0
    assert query(db, "SELECT max(pos) FROM tokens WHERE doc_id >= ?", [len(plain)])[0][0] is not None
    summary = autolabel(db, concepts=resolve_concepts(["base64"]))
    row = summary.iloc[0]
    assert row.in_sample > 0 and np.isfinite(row.best_auroc)
    scored = query(db, "SELECT count(*) FROM concept_scores WHERE concept = 'base64' AND auroc IS NOT NULL "
                       "AND NOT isnan(auroc)")[0][0]
    assert scored == 2 * 64


@pytest.mark.parametrize("module, block", [("accumulator", "INTERVAL_BLOCK"), ("pools", "ABSORB_ROWS")])
def test_work_in_blocks_of_neurons_gives_the_same_examples(solu, tiny_corpus, monkeypatch, module, block):
    """Rules.intervals draws the interval samples a block of neurons at a time (its
    candidates copy windows), and a pool takes in a batch's candidates a block of
    neurons at a time: blocks of 7 neurons give the examples of one block."""
    import importlib

    cfg = IndexConfig(dataset=str(tiny_corpus), tokens=900, segment_tokens=62, batch_size=4, device="cpu")
    whole = plain_frame(model_tables(index_model(solu.ref, cfg, progress=False))["examples"])
    monkeypatch.setattr(importlib.import_module(f"index.engine.{module}"), block, 7)
    blocks = plain_frame(model_tables(index_model(solu.ref, cfg, progress=False))["examples"])
    for t in (whole, blocks):
        t["tokens"] = t["tokens"].astype(str)
    whole, blocks = (t.drop(columns=["acts"]).reset_index(drop=True) for t in (whole, blocks))
    assert (whole.kind == "interval").sum() > 50 and whole.equals(blocks)
