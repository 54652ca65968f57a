"""Sharded indexing on Ray: `solu index ... --workers N`.

The run's documents are the same as without workers: the driver first reads and
tokenizes the dataset once (the plan) to find where the token budget ends (the last
document and its cut length), the run's tally and the activation sample's segments (drawn by the same hash rule as one run).
Each document then belongs to one shard, by a hash of its id, and is read whole by that
shard's worker, which skips the other shards' documents before tokenizing them.

Each worker (a Ray actor: one CPU, or one GPU where the cluster has them) loads the
checkpoint, runs the ordinary Indexer over its documents and returns its partial result:
the accumulator (stats, max, top-K, band and random pools with their windows) and the
sparse activations of its sample documents, taken against its own max, which is at most
the run's, so they are a superset. The driver merges the accumulators (exact for the
pools, float summation order for the stats), keeps the activations above the threshold
of the merged max, and returns the same ModelIndex as index_checkpoint, which the
writer puts in place with its atomic replace. One progress bar counts every worker's
tokens; a worker that dies or fails ends the run with one line naming its shard, before
anything is written.

Workers must see the checkpoint and the dataset at the same paths as the driver (a
shared filesystem on a multi-node cluster); a shard whose token count disagrees with the
plan fails the run. Ray is imported only here, only when --workers is given.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Iterator

import numpy as np
import torch

from index.engine.accumulator import Accumulator
from index.engine.batching import ENCODE_GROUP, Tally, doc_of, document_tokens, make_batches, segment_length, segments
from index.engine.config import IndexConfig
from index.engine.hooks import site_key
from index.engine.index_model import (Indexer, ModelIndex, _check_window, _progress, direct_logits, fit_batch_size,
                                      run_sites, sample_activations)
from index.engine.sample import ActivationSample
from index.engine.shard_config import ShardOptions
from index.engine.shard_progress import TokenCounter
from solu.corpus import ReadStats, iter_documents
from solu.errors import UserError, first_line
from solu.sources import ModelRef, load_model
from solu.tokenizer import token_strings

PROGRESS_EVERY_S = 0.25  # how often a worker reports its tokens


def shard_of(doc_id: int, n_shards: int) -> int:
    """The shard of a document: a hash of its id, so the split is deterministic and even."""
    digest = hashlib.blake2b(int(doc_id).to_bytes(8, "little", signed=True), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_shards


# ------------------------------------------------------------------ the plan (driver)

@dataclass
class Plan:
    """What the unsharded run would read: where it stops, and per shard what it holds."""

    last_doc: int  # id of the run's last document (-1: none)
    last_len: int  # its indexed tokens (the budget may cut it)
    tokens: list[int]  # per shard
    documents: list[int]  # per shard
    sample: list[list[tuple[int, list[int]]]]  # per shard: the activation sample's segments (unit ids)
    tally: Tally
    activation_sample: ActivationSample  # the whole sample, as one run would draw it


def make_plan(cfg: IndexConfig, tokenizer, n_shards: int, segment_len: int) -> Plan:
    """Read and tokenize the run's documents once, as index_checkpoint would; the
    activation sample is drawn here, over every segment, by the same hash rule."""
    tally, sample = Tally(), ActivationSample(cfg.sample_tokens, cfg.seed)
    plan = Plan(-1, 0, [0] * n_shards, [0] * n_shards, [[] for _ in range(n_shards)], tally, sample)
    docs = document_tokens(cfg.dataset, cfg.text_column, tokenizer, cfg.tokens, tally, cfg.seed)
    for doc_id, ids in docs:
        shard = shard_of(doc_id, n_shards)
        plan.tokens[shard] += len(ids)
        plan.documents[shard] += 1
        plan.last_doc, plan.last_len = doc_id, len(ids)
        for unit, part in segments([(doc_id, ids)], segment_len):
            sample.add(unit, part)
    for unit, ids in sample.segments():
        plan.sample[shard_of(doc_of(unit), n_shards)].append((unit, ids))
    return plan


# ------------------------------------------------------------------ a worker's documents

def shard_documents(cfg: IndexConfig, tokenizer, shard: int, n_shards: int, last_doc: int,
                    last_len: int) -> Iterator[tuple[int, list[int]]]:
    """(doc_id, token ids) of this shard's documents up to the plan's last one; other
    shards' documents are skipped before they are tokenized."""
    group: list = []
    for doc in iter_documents(cfg.dataset, cfg.text_column, ReadStats(), cfg.seed):
        if doc.id > last_doc:
            break
        if shard_of(doc.id, n_shards) != shard:
            continue
        group.append(doc)
        if len(group) == ENCODE_GROUP:
            yield from _encode(group, tokenizer, last_doc, last_len)
            group = []
    yield from _encode(group, tokenizer, last_doc, last_len)


def _encode(group: list, tokenizer, last_doc: int, last_len: int) -> Iterator[tuple[int, list[int]]]:
    if not group:
        return
    for doc, enc in zip(group, tokenizer.encode_batch([d.text for d in group], add_special_tokens=False)):
        ids = enc.ids[:last_len] if doc.id == last_doc else enc.ids
        if ids:
            yield doc.id, ids


# ------------------------------------------------------------------ a worker's result

@dataclass
class ShardResult:
    shard: int
    tokens: int
    documents: int
    acc: Accumulator
    activations: dict[str, np.ndarray]
    logits: dict[str, np.ndarray] | None  # shard 0 only: from the weights, on the worker's device
    timings: dict[str, float]


def index_shard(ckpt, cfg: IndexConfig, device: torch.device, shard: int, n_shards: int, plan_stop: tuple[int, int],
                sample: list[tuple[int, list[int]]], on_tokens=lambda n: None) -> ShardResult:
    """Index one shard with the ordinary Indexer; the result holds CPU tensors only."""
    t0 = time.perf_counter()
    docs, counted = _counting(shard_documents(cfg, ckpt.tokenizer, shard, n_shards, *plan_stop))
    indexer = Indexer(ckpt, cfg, device)
    units = segments(docs, indexer.segment_len)
    indexer.run(make_batches(units, ckpt.model_cfg.n_ctx, cfg.batch_size, ckpt.bos_id), on_tokens)
    stream_s = time.perf_counter() - t0
    activations = sample_activations(indexer, sample, ckpt.model_cfg.n_ctx, ckpt.bos_id)
    layers = sorted({s.layer for s in indexer.sites})
    logits = direct_logits(ckpt, cfg.logit_k, ckpt.tokenizer.get_vocab_size(), layers) if shard == 0 else None
    timings = {"stream_s": stream_s, "forward_s": indexer.forward_s, "accumulate_s": indexer.accumulate_s,
               "sample_pass_s": time.perf_counter() - t0 - stream_s}
    return ShardResult(shard, counted["tokens"], counted["documents"], to_cpu(indexer.acc), activations, logits, timings)


def _counting(docs: Iterator[tuple[int, list[int]]]):
    counted = {"tokens": 0, "documents": 0}

    def gen():
        for doc_id, ids in docs:
            counted["tokens"] += len(ids)
            counted["documents"] += 1
            yield doc_id, ids

    return gen(), counted


def to_cpu(obj):
    """A copy of an accumulator (or any of its parts) with every tensor on the CPU and
    its scratch and caches (attributes named _x) emptied, ready to be pickled back."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith("index.engine."):
        out = object.__new__(type(obj))
        out.__dict__.update({k: None if k.startswith("_") else to_cpu(v) for k, v in vars(obj).items()})
        return out
    return obj


# ------------------------------------------------------------------ merging (driver)

def merge_results(results: list[ShardResult]) -> Accumulator:
    """The accumulator of all shards, merged in shard order."""
    results = sorted(results, key=lambda r: r.shard)
    acc = results[0].acc
    for r in results[1:]:
        acc = acc.merge(r.acc)
    return acc


def merge_activations(parts: list[dict[str, np.ndarray]], acc: Accumulator, keys: list[str],
                      threshold: float) -> dict[str, np.ndarray]:
    """The shards' activation rows above threshold x the merged max, as sample_activations
    keeps them against the max of one run (each shard's rows were kept against its own
    max, never above the merged one, so none is missing)."""
    parts = [p for p in parts if len(p["act"])]
    names = ("site", "neuron", "doc_id", "segment", "pos", "act")
    if not parts:
        return {k: np.zeros(0) for k in names}
    cat = {k: np.concatenate([p[k] for p in parts]) for k in names}
    site_index = {key: i for i, key in enumerate(keys)}
    s = torch.as_tensor(np.array([site_index[x] for x in cat["site"]], dtype=np.int64))
    limit = acc.activation_limit(threshold)
    act = torch.as_tensor(cat["act"])
    keep = (act > limit[s, torch.as_tensor(cat["neuron"]).long()]).numpy()
    return {k: v[keep] for k, v in cat.items()}


def assemble(ckpt, cfg: IndexConfig, plan: Plan, results: list[ShardResult], started_at: datetime,
             stream_s: float) -> ModelIndex:
    """The ModelIndex of a whole run from its shards' results (the driver's part)."""
    t0 = time.perf_counter()
    acc = merge_results(results)
    sites = run_sites(ckpt, cfg)
    keys = [site_key(s) for s in sites]
    activations = merge_activations([r.activations for r in results], acc, keys, cfg.threshold)
    vocab = token_strings(ckpt.tokenizer, range(ckpt.tokenizer.get_vocab_size()))
    logits = next(r.logits for r in results if r.logits is not None)
    timings = {"stream_s": stream_s, "merge_s": time.perf_counter() - t0,
               **{k: sum(r.timings[k] for r in results) for k in ("forward_s", "accumulate_s", "sample_pass_s")}}
    return ModelIndex(ckpt, cfg, sites, {k: acc.site(i) for i, k in enumerate(keys)},
                      plan.tally, vocab, plan.activation_sample, segment_length(cfg.segment_tokens, ckpt.model_cfg.n_ctx),
                      activations, logits, started_at, "cpu", timings)


# ------------------------------------------------------------------ Ray

def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("--workers needs Ray: pip install 'solu-neuron-explorer[ray]'") from None
    return ray


class ShardWorker:
    """A Ray actor: loads a checkpoint on its device, then indexes one shard of it."""

    def __init__(self, threads: int):
        torch.set_num_threads(threads)
        self.ckpt = self.cfg = self.device = None

    def load(self, ref: ModelRef, cfg: IndexConfig) -> dict:
        import ray

        from solu.model import resolve_device

        self.cfg, self.device = cfg, resolve_device(cfg.device)
        self.ckpt = load_model(ref, self.device, cfg.dtype)
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "device": str(self.device)}

    def run(self, shard: int, n_shards: int, plan_stop: tuple[int, int], sample: list, counter,
            run_no: int) -> ShardResult:
        pending, last = [0], [time.monotonic()]

        def report(n: int, final: bool = False) -> None:
            pending[0] += n
            if final or time.monotonic() - last[0] >= PROGRESS_EVERY_S:
                counter.add.remote(run_no, pending[0])
                pending[0], last[0] = 0, time.monotonic()

        result = index_shard(self.ckpt, self.cfg, self.device, shard, n_shards, plan_stop, sample, report)
        report(0, final=True)
        self.ckpt = None  # the next model's turn
        return result


class RaySession:
    """with RaySession(options) as session: session.index_checkpoint(path, cfg) ...
    Starts (or joins) Ray once; its workers serve every model of the build in turn."""

    def __init__(self, options: ShardOptions):
        self.options = options
        self.ray = None
        self.started = False
        self.start_s = 0.0  # ray.init
        self.workers: list = []
        self.counter = None  # a shard_progress.TokenCounter actor
        self.runs = 0  # models indexed so far: the counter's key
        self.gpus = 0

    def __enter__(self) -> "RaySession":
        ray = self.ray = _ray()
        t0 = time.perf_counter()
        if not ray.is_initialized():
            opts = self.options
            local = {} if opts.address else {"num_cpus": max(os.cpu_count() or 1, opts.workers * opts.threads)}
            try:
                ray.init(address=opts.address or None, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False, **local)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UserError(f"cannot start or join Ray at {opts.address or 'a local cluster'}: "
                                f"{first_line(e)[:300]}") from None
            self.started = True
        self.start_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc) -> None:
        self._stop_workers()
        if self.started:
            self.ray.shutdown()

    def index_checkpoint(self, spec: str | ModelRef, cfg: IndexConfig, progress: bool = True, name: str | None = None,
                         position: str = "") -> ModelIndex:
        """index_model.index_checkpoint, spread over the session's workers."""
        started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
        n = self.options.workers
        ckpt = load_model(spec if isinstance(spec, ModelRef) else str(spec), "cpu", name=name)  # tokenizer, models row
        if cfg.batch_size == 0:
            cfg = replace(cfg, batch_size=fit_batch_size(ckpt.model_cfg, len(run_sites(ckpt, cfg))))
        _check_window(cfg, ckpt)
        ref = ckpt.ref if ckpt.ref.path is None else replace(ckpt.ref, path=ckpt.ref.path.resolve())
        try:
            workers = self._start_workers(cfg)
            loading = [w.load.remote(ref, cfg) for w in workers]  # while the driver plans
            plan = make_plan(cfg, ckpt.tokenizer, n, segment_length(cfg.segment_tokens, ckpt.model_cfg.n_ctx))
            if plan.tally.tokens == 0:
                raise UserError(f"dataset {cfg.dataset!r} has no text to index")
            plan_s = time.perf_counter() - t0
            info = [self._get(ref, k, n, None) for k, ref in enumerate(loading)]
            t1 = time.perf_counter()
            ready_s = t1 - t0
            if progress:
                print(f"solu index: {ckpt.name}{position}: {n} Ray workers ({', '.join(i['device'] for i in info)}), "
                      f"{cfg.batch_size} rows x {ckpt.model_cfg.n_ctx} tokens per batch, {cfg.dtype}", file=sys.stderr)
            results = self._run(workers, info, plan, ckpt.name, progress)
            stream_s = time.perf_counter() - t1
        except BaseException:
            self._stop_workers()  # a failed run leaves no worker busy
            raise
        self._check_counts(results, plan)
        result = assemble(ckpt, cfg, plan, results, started_at, stream_s)
        result.device = ", ".join(sorted({i["device"] for i in info}))
        result.timings.update(plan_s=plan_s, ready_s=ready_s, ray_start_s=self.start_s, workers=n,
                              total_s=time.perf_counter() - t0)
        return result

    def _start_workers(self, cfg: IndexConfig) -> list:
        ray, opts = self.ray, self.options
        gpus = self._gpus_per_worker(cfg)
        if self.workers and gpus == self.gpus:
            return self.workers
        self._stop_workers()
        cpus = ray.cluster_resources().get("CPU", 0)
        if opts.workers * opts.threads > cpus:
            raise UserError(f"--workers {opts.workers} x --threads {opts.threads} needs that many CPUs; "
                            f"the Ray cluster has {cpus:g}")
        actor = ray.remote(ShardWorker).options(num_cpus=opts.threads, num_gpus=gpus, max_restarts=0)
        self.workers, self.gpus = [actor.remote(opts.threads) for _ in range(opts.workers)], gpus
        self.counter = ray.remote(TokenCounter).options(num_cpus=0).remote()
        return self.workers

    def _stop_workers(self) -> None:
        for w in self.workers + ([self.counter] if self.counter is not None else []):
            self.ray.kill(w)
        self.workers, self.counter = [], None

    def _gpus_per_worker(self, cfg: IndexConfig) -> int:
        if cfg.device == "cpu":
            return 0
        have, n = int(self.ray.cluster_resources().get("GPU", 0)), self.options.workers
        if have >= n:
            return 1
        if cfg.device == "cuda" or have:
            raise UserError(f"--workers {n} on {cfg.device}: the Ray cluster has {have} GPU(s), one per worker is "
                            f"needed (use --workers {max(have, 1)} or --device cpu)")
        return 0

    def _run(self, workers: list, info: list[dict], plan: Plan, name: str, progress: bool) -> list[ShardResult]:
        """Run every shard; the bar follows the counter without ever waiting on it."""
        ray, n, counter = self.ray, len(workers), self.counter
        self.runs += 1
        stop = (plan.last_doc, plan.last_len)
        refs = {workers[k].run.remote(k, n, stop, plan.sample[k], counter, self.runs): k for k in range(n)}
        results, pending, asked = [], list(refs), None
        bar = _progress(progress, plan.tally.tokens, f"{name} ({n} workers)")
        try:
            while pending:
                done, pending = ray.wait(pending, timeout=0.2)
                results += [self._get(ref, refs[ref], n, info[refs[ref]]) for ref in done]
                asked = asked or counter.total.remote(self.runs)
                if ray.wait([asked], timeout=0)[0]:
                    bar.update(ray.get(asked) - bar.n)
                    asked = None
            bar.update(sum(r.tokens for r in results) - bar.n)
        finally:
            bar.close()
        return results

    def _get(self, ref, shard: int, n: int, info: dict | None):
        """ray.get, with a dead or failed worker turned into one line naming its shard."""
        ray = self.ray
        where = f" (pid {info['pid']} on {info['node']})" if info else ""
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError:
            raise UserError(f"shard {shard} of {n}: its Ray worker{where} died before finishing "
                            "(killed, out of memory, crashed or its node lost); nothing was written") from None
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError):
                raise UserError(f"shard {shard} of {n}: {e.cause}") from None
            raise

    @staticmethod
    def _check_counts(results: list[ShardResult], plan: Plan) -> None:
        for r in results:
            if (r.tokens, r.documents) != (plan.tokens[r.shard], plan.documents[r.shard]):
                raise UserError(f"shard {r.shard}: its worker read {r.tokens:,} tokens of {r.documents:,} documents, "
                                f"the plan {plan.tokens[r.shard]:,} of {plan.documents[r.shard]:,}: does every node "
                                "see the same dataset and checkpoint?")

