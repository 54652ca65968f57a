"""Sharded indexing: the shard split, two in-process shards merged equal one run, and on
a small local Ray cluster (2 CPUs, 1 torch thread per worker) an index built with
--workers 2 equals one built without, table by table; a killed worker leaves the
previous database as it was."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from index.engine import pipeline
from index.engine.batching import Tally, document_tokens, segment_length
from index.engine.config import IndexConfig
from index.engine.pipeline import InProcess, index_model
from index.engine.plan import shard_documents, shard_of
from index.engine.shard_config import ShardOptions
from index.store.rows import model_tables
from solu.sources import load_model, resolve
from solu.cli import main
from helpers.corpora import read_plan, shuffle_fills
from helpers.db_files import digest, plain_frame
from helpers.processes import descendants

CFG = dict(tokens=3000, top_k=5, bands=3, per_band=2, random=3, sample_tokens=900, batch_size=4, device="cpu")
# what sorts each table's rows into one order, whoever wrote them
TABLE_KEYS = {
    "models": ["model_id"],
    "neurons": ["model_id", "layer", "neuron", "site"],
    "examples": ["model_id", "layer", "neuron", "site", "kind", "band", "rank"],
    "logits": ["model_id", "layer", "neuron", "sign", "rank"],
    "activations": ["model_id", "layer", "neuron", "site", "doc_id", "pos"],
    "tokens": ["model_id", "doc_id", "pos"],
    "match_sample": ["model_id", "layer", "neuron", "site"],
}
# stats are sums in another order across shards: equal up to float rounding
STATS = ["mean_act", "std_act", "kurtosis", "frac_active_rel"]


# ------------------------------------------------------------------ helpers

def assert_tables_equal(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame], only=None) -> None:
    for name in only or TABLE_KEYS:
        g, w = (t[name].sort_values(TABLE_KEYS[name]).reset_index(drop=True) for t in (got, want))
        assert len(g) == len(w) and len(w) > 0, name
        assert list(g.columns) == list(w.columns), name
        for col in w.columns:
            if name == "neurons" and col in STATS:
                np.testing.assert_allclose(g[col].to_numpy(float), w[col].to_numpy(float), rtol=1e-4, atol=1e-6,
                                           err_msg=f"{name}.{col}")
            elif col in ("acts", "act", "max_act", "weight") and name != "match_sample":  # its acts: bytes
                np.testing.assert_array_equal(_floats(g[col]), _floats(w[col]), err_msg=f"{name}.{col}")
            else:
                assert [_plain(v) for v in g[col]] == [_plain(v) for v in w[col]], f"{name}.{col}"


def _floats(col: pd.Series) -> np.ndarray:
    if col.dtype == object:
        return np.concatenate([np.asarray(v, dtype=np.float32) for v in col]) if len(col) else np.zeros(0)
    return col.to_numpy(np.float32)


def _plain(v):
    if isinstance(v, (np.ndarray, list)):
        return tuple(np.asarray(v).tolist())
    return None if pd.isna(v) else v


def frames_of(result) -> dict[str, pd.DataFrame]:
    return {name: plain_frame(table) for name, table in model_tables(result).items()}


def frames_in(db: Path) -> dict[str, pd.DataFrame]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {name: con.execute(f"SELECT * FROM {name}").df() for name in TABLE_KEYS}
    finally:
        con.close()


# ------------------------------------------------------------------ the split (no Ray)

def test_shard_of_is_deterministic_and_even():
    shards = [shard_of(i, 4) for i in range(4000)]
    assert shards == [shard_of(i, 4) for i in range(4000)]
    counts = Counter(shards)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 900
    assert {shard_of(i, 1) for i in range(100)} == {0}


class CountingTokenizer:
    """A tokenizer that records which texts it was asked to encode."""

    def __init__(self, tok):
        self.tok, self.texts = tok, []

    def encode_batch(self, texts, add_special_tokens=False):
        self.texts += texts
        return self.tok.encode_batch(texts, add_special_tokens=add_special_tokens)


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_hold_the_run_documents_once_and_tokenize_only_their_own(tiny_checkpoints, tiny_corpus, shuffle,
                                                                         monkeypatch):
    tok = load_model(str(tiny_checkpoints["gelu"])).tokenizer
    cfg = IndexConfig(dataset=str(tiny_corpus), tokens=2500, sample_tokens=700, device="cpu", shuffle=shuffle)
    run = list(document_tokens(cfg.dataset, "text", tok, cfg.tokens, Tally(), cfg.seed, cfg.shuffle))
    plan = read_plan(cfg, tok, 3, segment_length(cfg.segment_tokens, 32))
    assert plan.tally.tokens == 2500 and sum(plan.tokens) == 2500 and plan.last_doc == run[-1][0]
    fills = shuffle_fills(monkeypatch)
    got, encoded = {}, 0
    for shard in range(3):
        counting = CountingTokenizer(tok)
        docs = list(shard_documents(cfg, counting, plan.places_of(shard), plan.stop))
        assert all(shard_of(d, 3) == shard for d, _ in docs)
        assert len(counting.texts) == len(docs)  # nothing of the other shards was tokenized
        assert sum(len(ids) for _, ids in docs) == plan.tokens[shard]
        encoded += len(counting.texts)
        got.update(docs)
    assert encoded == len(run) and got == dict(run)  # every document once, the last one cut as in one run
    assert fills == []  # the shards read the plan's order, not the shuffle buffer
    by_shard = [u for k in range(3) for u, _ in plan.sample_of(k)]
    assert by_shard and sorted(by_shard) == [u for u, _ in plan.sample.segments()]


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_shards_in_process_equal_one_run(tiny_checkpoints, tiny_corpus, shuffle, monkeypatch):
    """The shard logic without Ray: two shards run in process give the one-shard run's
    tables; with --shuffle the plan alone fills the shuffle buffer."""
    torch.set_num_threads(1)
    ref = resolve(str(tiny_checkpoints["solu_ln"]))
    cfg = IndexConfig(dataset=str(tiny_corpus), **CFG, shuffle=shuffle)
    whole = index_model(ref, cfg, progress=False)
    plan = read_plan(cfg, load_model(ref).tokenizer, 2, whole.segment_len)
    assert min(plan.tokens) > 0
    fills = shuffle_fills(monkeypatch)
    sharded = index_model(ref, cfg, InProcess(shards=2), progress=False)
    assert len(fills) == shuffle  # once per plan, none per shard
    assert sharded.tally.tokens == whole.tally.tokens and sharded.activations.stored > 0
    # interval samples too: drawn from hash-chosen candidates once the max is known, sharding does not change them
    assert (frames_of(whole)["examples"]["kind"] == "interval").any()
    assert_tables_equal(frames_of(sharded), frames_of(whole))


# ------------------------------------------------------------------ on Ray

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=100 * 1024 ** 2, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


def index_args(db: Path, models: list[Path], corpus: Path, *extra: str, **cfg) -> list[str]:
    cfg = {**CFG, **cfg}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()]
    return ["index", *map(str, models), "--db", str(db), "--dataset", str(corpus), *flags, "--no-progress", *extra]


def backend_flags(backend: str, request) -> list[str]:
    """--workers 2 in processes on this machine, or on the test's Ray cluster (--ray-address)."""
    if backend == "local":
        return ["--workers", "2", "--threads", "1"]
    ray = request.getfixturevalue("ray_cluster")
    return ["--workers", "2", "--threads", "1", "--ray-address", ray.get_runtime_context().gcs_address]


@pytest.fixture(scope="module")
def one_process(tiny_checkpoints, tiny_corpus, tmp_path_factory):
    db = tmp_path_factory.mktemp("one") / "one.duckdb"
    assert main(index_args(db, [tiny_checkpoints["gelu"], tiny_checkpoints["solu_ln"]], tiny_corpus)) == 0
    return db


@pytest.fixture(scope="module", params=["local", "ray"])
def built_both(request, one_process, tiny_checkpoints, tiny_corpus, tmp_path_factory):
    """The same index built in one process and with --workers 2 (local processes, or Ray)."""
    models = [tiny_checkpoints["gelu"], tiny_checkpoints["solu_ln"]]
    two = tmp_path_factory.mktemp("sharded") / "two.duckdb"
    bars, weights_held = [], []
    finish = pipeline.finish

    def merge_and_finish(ckpt, *args, **kwargs):
        weights_held.append(ckpt.model is not None)  # while the shards' parts arrive and merge
        return finish(ckpt, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "progress_bar", lambda enabled, total, name: bars.append(FakeBar(total, name)) or bars[-1])
        mp.setattr(pipeline, "finish", merge_and_finish)
        assert main(index_args(two, models, tiny_corpus, *backend_flags(request.param, request))) == 0
    assert weights_held == [False, False]  # the driver's copy of each model waited on disk (loaded again to finish)
    return frames_in(one_process), frames_in(two), runs_in(one_process), runs_in(two), bars


class FakeBar:
    """Records what the one progress bar of a sharded run was told."""

    def __init__(self, total: int, name: str):
        self.total, self.name, self.n, self.closed = total, name, 0, False

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def runs_in(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT model_id, tokens, documents, sample_documents, device FROM index_runs "
                           "ORDER BY 1").fetchall()
    finally:
        con.close()


@pytest.mark.integration
def test_workers_2_equal_one_process_table_by_table(built_both):
    """Top-K documents, values and windows, band and random samples, logits, activations
    and tokens exactly; stats within float tolerance."""
    one, two, runs_one, runs_two, _ = built_both
    assert (two["examples"]["kind"] == "interval").any()
    assert_tables_equal(two, one)
    assert runs_two == runs_one


@pytest.mark.integration
def test_one_progress_bar_counts_every_worker(built_both):
    *_, runs, bars = built_both
    assert [(b.name, b.total, b.n, b.closed) for b in bars] == \
        [(f"{model} (2 workers)", tokens, tokens, True) for model, tokens, *_ in runs]


def test_more_workers_than_cores_is_one_line(tiny_checkpoints, tiny_corpus, tmp_path, capsys):
    from solu.flags import cores

    too_many = str(cores() + 1)
    code = main(index_args(tmp_path / "x.duckdb", [tiny_checkpoints["gelu"]], tiny_corpus, "--workers", too_many))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"--workers must be from 1 to {cores()} (the cores" in err[0], err
    assert not (tmp_path / "x.duckdb").exists()


def _kill_first_worker(killed: list, stop: threading.Event, marker: bytes) -> None:
    """SIGKILL the first of this test's workers seen (on Ray: seen indexing a shard)."""
    while not stop.is_set():
        for pid in descendants(os.getpid(), marker):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_killed_worker_leaves_the_previous_database(backend, request, tiny_checkpoints, tmp_path, capsys):
    from helpers.corpora import make_corpus

    db = tmp_path / "prev.duckdb"
    corpus = make_corpus(tmp_path / "big.jsonl", n_docs=1000, seed=1)
    assert main(index_args(db, [tiny_checkpoints["gelu"]], corpus, tokens=500)) == 0
    capsys.readouterr()
    before = digest(db)
    killed, stop = [], threading.Event()
    marker = b"spawn_main" if backend == "local" else b"ray::ShardWorker.run"
    killer = threading.Thread(target=_kill_first_worker, args=(killed, stop, marker))
    killer.start()
    try:
        code = main(index_args(db, [tiny_checkpoints["solu_ln"]], corpus, *backend_flags(backend, request),
                               tokens=100_000, batch_size=1))
    finally:
        stop.set()
        killer.join()
    err = capsys.readouterr().err.strip().splitlines()
    assert killed, "no worker was seen running"
    assert code == 2 and len(err) == 1, err
    assert "shard" in err[0] and "died" in err[0], err
    assert backend == "local" or f"pid {killed[0]}" in err[0], err
    assert digest(db) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------ without --workers

def test_without_workers_nothing_imports_ray(tiny_checkpoints, tiny_corpus, tmp_path):
    db = tmp_path / "plain.duckdb"
    args = index_args(db, [tiny_checkpoints["gelu"]], tiny_corpus, tokens=300)
    code = ("import sys; from solu.cli import main; rc = main(%r); "
            "sys.exit(3 if 'ray' in sys.modules else rc)" % args)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert db.exists()


@pytest.mark.parametrize("flags, message", [
    (["--ray-address", "127.0.0.1:6379"], "--ray-address needs --workers"),
    (["--workers", "0"], "--workers must be from 1 to"),
])
def test_bad_shard_flags(tiny_checkpoints, tiny_corpus, tmp_path, capsys, flags, message):
    code = main(index_args(tmp_path / "x.duckdb", [tiny_checkpoints["gelu"]], tiny_corpus, *flags))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_shard_options_validate():
    with pytest.raises(ValueError):
        ShardOptions(workers=2, threads=0)
    with pytest.raises(ValueError):
        ShardOptions(workers=2, address=" 10.0.0.1:6379")


@pytest.mark.integration
def test_local_workers_listen_on_no_network_address(tiny_checkpoints, tmp_path, capsys):
    """While a 2-worker index runs on this machine, no process it starts listens on a
    network address (the workers talk over pipes; issue 30, cause 8)."""
    from helpers.corpora import make_corpus
    from helpers.processes import ListeningWatch

    corpus = make_corpus(tmp_path / "big.jsonl", n_docs=1000, seed=2)
    with ListeningWatch() as watch:
        assert main(index_args(tmp_path / "x.duckdb", [tiny_checkpoints["gelu"]], corpus, "--workers", "2",
                               "--threads", "1", tokens=20_000)) == 0
    assert len(watch.workers) >= 2  # the workers were there to be looked at
    assert watch.network == set(), watch.seen
