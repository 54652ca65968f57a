"""One indexing pipeline, whatever runs the shards.

    plan -> shards on an executor -> merge -> finish

- plan (index.engine.plan): the dataset is read and tokenized once, on this process,
  to find where the token budget ends, each shard's documents and the activation sample.
- shards: each shard streams its documents through an Indexer (stats and pools),
  then runs the sample pass over its part of the activation sample, and hands back a
  ShardResult. The executor runs them: InProcess, one after another in this process
  (a plain `solu index` is InProcess with one shard, which indexes the planned
  documents as they are read), or index.engine.ray_shards.RayShards, on Ray workers.
- merge: the shards' pools merge exactly, their stats up to float summation order,
  and their activation rows are selected again under the merged max
  (index.engine.sample_rows).
- finish: the interval samples are drawn against the final max, and the logit effects
  are read off the weights; the ModelIndex goes to the store (index.store.rows).

A one-shard run and a sharded one differ only in who runs the shards, so the sharded
index equals the unsharded one by construction. Memory does not grow with the dataset:
documents are read and tokenized a group at a time and the indexer keeps per neuron its
stats and pools (neurons x (K + samples) windows), plus one batch of activations
(BATCH_BYTES); the sample pass keeps about --sample-rows activation rows whatever the
sample's size, and they reach DuckDB a chunk at a time.
"""
from __future__ import annotations

import ctypes
import gc
import itertools
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from index.engine.accumulator import Gathered, Rules, SiteResult, activation_limit
from index.engine.batching import Tally
from index.engine.config import IndexConfig
from index.engine.hooks import site_key
from index.engine.indexer import Indexer, Layout, pool_shape
from index.engine.ablation import COLUMNS as ABLATION_COLUMNS, ablation_effects
from index.engine.virtual_weights import connections
from index.engine.logits import direct_logits
from index.engine.plan import Plan, planned, shard_documents
from index.engine.sample import ActivationSample
from index.engine.sample_rows import SampleRows
from solu.errors import UserError
from solu.model import Site, resolve_device
from solu.sources import LoadedModel, ModelRef, load_model
from solu.tokenizer import token_strings

BATCH_TOKENS = 4096  # tokens per forward pass when the batch size is chosen automatically
BATCH_BYTES = 1 << 28  # and at most this much float32 activation memory (one batch is held)
GPU_BATCH_TOKENS = 65_536  # on CUDA: a GPU idles on 4,096-token batches (issue 17's table)
GPU_MEMORY_SHARE = 8  # on CUDA: the batch held takes at most 1/8 of the device's free memory


@dataclass
class ShardResult:
    """What a shard hands back (CPU tensors and arrays only): all of it merges."""

    shard: int
    tokens: int
    documents: int
    gathered: Gathered
    activations: SampleRows  # the sample's rows, against this shard's own max
    timings: dict[str, float]  # stream_s, forward_s, accumulate_s, sample_pass_s; peak_rss_mib of its process


@dataclass
class Execution:
    """What an executor reports of a run: the shards' results, where they ran, its own timings."""

    results: list[ShardResult]
    device: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Progress:
    """What a run shows on stderr: a progress bar per model, and a line now and then."""

    enabled: bool

    def bar(self, total: int, label: str):
        return progress_bar(self.enabled, total, label)

    def say(self, line: str) -> None:
        if self.enabled:
            print(f"solu index: {line}", file=sys.stderr)


def run_shard(ckpt: LoadedModel, cfg: IndexConfig, device: torch.device, layout: Layout, shard: int,
              docs: Iterable[tuple[int, list[int]]], sample_of: Callable[[], list[tuple[int, list[int]]]],
              on_tokens: Callable[[int], None] = lambda n: None) -> ShardResult:
    """Index one shard's documents, then its part of the activation sample (sample_of()
    is read once the documents are: a streamed plan is complete only then)."""
    t0 = time.perf_counter()
    indexer = Indexer(ckpt, cfg, device, layout)
    counted = Count()
    indexer.index_documents(counted.through(docs), on_tokens)
    stream_s = time.perf_counter() - t0
    trim_heap()
    activations = indexer.sample_pass(sample_of())
    trim_heap()
    timings = {"stream_s": stream_s, "forward_s": indexer.forward_s, "accumulate_s": indexer.accumulate_s,
               "sample_pass_s": time.perf_counter() - t0 - stream_s, "peak_rss_mib": peak_rss_mib()}
    return ShardResult(shard, counted.tokens, counted.documents, indexer.acc.gathered.to("cpu"), activations, timings)


WORKER_REPORT_S = 0.25  # how often a shard worker sends its tokens to the one progress bar


def run_worker_shard(ckpt: LoadedModel, cfg: IndexConfig, device: torch.device, layout: Layout, shard: int,
                     places: np.ndarray, stop: tuple[int, int], sample: list,
                     send: Callable[[int], None]) -> ShardResult:
    """A worker's shard (local process or Ray actor): it reads the dataset itself, picking its
    documents by their places (Plan.places_of), and send()s its tokens done at most every
    WORKER_REPORT_S."""
    pending, last = [0], [time.monotonic()]

    def report(n: int, final: bool = False) -> None:
        pending[0] += n
        if final or time.monotonic() - last[0] >= WORKER_REPORT_S:
            send(pending[0])
            pending[0], last[0] = 0, time.monotonic()

    docs = shard_documents(cfg, ckpt.tokenizer, places, stop)
    result = run_shard(ckpt, cfg, device, layout, shard, docs, lambda: sample, report)
    report(0, final=True)
    return result


class Count:
    """Tokens and documents that passed through."""

    def __init__(self):
        self.tokens = self.documents = 0

    def through(self, docs: Iterable[tuple[int, list[int]]]) -> Iterator[tuple[int, list[int]]]:
        for doc_id, ids in docs:
            self.tokens += len(ids)
            self.documents += 1
            yield doc_id, ids


class InProcess:
    """Runs the shards one after another in this process, on the run's device. One shard
    (the default) is the plain local run: it indexes the planned documents as they are
    read, so the dataset is read once."""

    workers_load = False  # the shards run on the driver's own copy of the model

    def __init__(self, shards: int = 1):
        self.shards = shards

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def driver_device(self, cfg: IndexConfig) -> torch.device:
        return device_of(cfg)

    def run(self, ckpt: LoadedModel, cfg: IndexConfig, device: torch.device, layout: Layout, plan: Plan,
            stream: Iterator, progress: Progress) -> Execution:
        bar = progress.bar(cfg.tokens, ckpt.name)
        try:
            if self.shards == 1:
                results = [run_shard(ckpt, cfg, device, layout, 0, stream, lambda: plan.sample_of(0), bar.update)]
            else:
                for _ in stream:  # the whole plan first: a shard reads only its own documents
                    pass
                results = [run_shard(ckpt, cfg, device, layout, k,
                                     shard_documents(cfg, ckpt.tokenizer, plan.places_of(k), plan.stop),
                                     lambda k=k: plan.sample_of(k), bar.update) for k in range(self.shards)]
        finally:
            bar.close()
        return Execution(results, str(device), {"stream_s": sum(r.timings["stream_s"] for r in results)})


def device_of(cfg: IndexConfig) -> torch.device:
    try:
        return resolve_device(cfg.device)
    except ValueError as e:
        raise UserError(str(e)) from None


@dataclass
class ModelIndex:
    """Everything indexed for one model, ready to be written (index.store.rows)."""

    ckpt: LoadedModel
    cfg: IndexConfig  # as run: the batch size fitted
    sites: list[Site]
    by_site: dict[str, SiteResult]  # each site's results, by site key
    tally: Tally
    vocab: list[str]
    sample: ActivationSample  # its segments feed the activations and tokens tables
    segment_len: int  # tokens per segment, the unit of ranking
    activations: SampleRows  # the activations table's rows, selected (rows.activations_table streams them)
    logits: dict[str, np.ndarray]
    connections: dict[str, np.ndarray]  # index.engine.virtual_weights.COLUMNS
    ablations: dict[str, np.ndarray]  # index.engine.ablation.COLUMNS (empty without --ablation)
    started_at: datetime
    device: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.ckpt.name

    @property
    def stats_tokens(self) -> int:
        """Tokens the token-level stats were taken over."""
        return next(iter(self.by_site.values())).stats.count


def index_model(ref: ModelRef, cfg: IndexConfig, executor=None, progress: bool = True,
                position: str = "") -> ModelIndex:
    """Index one model (a resolved MODEL spec: solu.sources) with `executor` (default:
    InProcess, one shard). Raises UserError for bad input."""
    executor = executor or InProcess()
    started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
    device = executor.driver_device(cfg)
    ckpt = load_model(ref, device, cfg.dtype)
    layout = Layout.of(ckpt, cfg)  # once per run: every shard gets it
    sites = list(layout.sites)
    if cfg.batch_size == 0:
        cfg = replace(cfg, batch_size=fit_batch_size(ckpt.model_cfg, len(sites), device))
    check_window(cfg, ckpt)
    plan = Plan(executor.shards, layout.segment_len,
                ActivationSample(cfg.sample_tokens, cfg.seed))
    stream = planned(plan, cfg, ckpt.tokenizer)
    first = next(stream, None)  # a dataset that is missing or holds no text fails here, before any output
    if first is None:
        detail = plan.tally.read.summary()
        raise UserError(f"dataset {cfg.dataset!r} contains no usable text" + (f" ({detail})" if detail else ""))
    shown = Progress(progress)
    layers = sorted({s.layer for s in sites})
    shown.say(f"{ckpt.name}{position}: {_span(layers)} of {ckpt.model_cfg.n_layers}, "
              f"{ckpt.model_cfg.d_mlp} neurons each, sites {', '.join(sorted({s.name for s in sites}))}; "
              f"{cfg.batch_size} rows x {ckpt.model_cfg.n_ctx} tokens per batch, {cfg.dtype}")
    if executor.workers_load:  # each worker loads its own copy: the driver's waits on disk until finish
        drop_model(ckpt)
    run = executor.run(ckpt, cfg, device, layout, plan, itertools.chain([first], stream), shown)
    check_counts(run.results, plan)
    return finish(ckpt, cfg, sites, plan, run, started_at, t0, progress, release_model=True)


def drop_model(ckpt: LoadedModel) -> None:
    """Free the checkpoint's weights (its description stays: the tables read it)."""
    ckpt.model = None
    gc.collect()  # the bridge's modules refer to each other


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (a shard's, where a worker runs it)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system between phases (glibc's
    malloc_trim). glibc serves blocks below its mmap threshold, which rises to 32 MB as
    large blocks are freed, from its heap, and keeps what is freed there resident: after
    the sample pass on solu-12l (its rows' chunks, the forward's temporaries) about 600
    MB, which connections and the write would otherwise hold on top of their own."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim this way


def finish(ckpt: LoadedModel, cfg: IndexConfig, sites: list[Site], plan: Plan, run: Execution,
           started_at: datetime, begun: float, progress: bool = False, release_model: bool = False) -> ModelIndex:
    """Merge the shards' results, cut the activation rows at the merged max, draw the
    interval samples and read the logit effects off the weights (a sharded run's driver,
    which let its copy go while the workers ran, loads them again once the shards' parts
    are merged, so they are never held beside both). begun: the run's
    time.perf_counter() at its start, for total_s. release_model: the run loaded ckpt
    for itself, and its model is dropped once the last reader of the weights is done
    (before the interval samples are drawn, unless --ablation runs after them), so the
    weights are not held beside the samples and the tables."""
    t0 = time.perf_counter()
    rules = Rules.for_run(pool_shape(cfg, ckpt), sites, ckpt.model_cfg.d_mlp, "cpu")
    results = sorted(run.results, key=lambda r: r.shard)
    gathered, results[0].gathered = results[0].gathered, None
    for r in results[1:]:  # each shard's part is let go once merged
        gathered, r.gathered = rules.merge(gathered, r.gathered), None
    keys = [site_key(s) for s in sites]
    limit = activation_limit(gathered.stats.max, len(sites), cfg.threshold)
    kept, results[0].activations = results[0].activations, None
    for r in results[1:]:
        kept, r.activations = kept.merge(r.activations, limit, gathered.stats.max), None
    activations = kept.select(limit, gathered.stats.max)
    merge_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if ckpt.model is None:  # a sharded run's driver: the weights again, now that the shards' parts are merged
        ckpt.model = load_model(ckpt.ref, "cpu", cfg.dtype, ckpt.revision).model
    reload_s = time.perf_counter() - t1
    vocab = token_strings(ckpt.tokenizer, range(ckpt.tokenizer.get_vocab_size()))
    logits = direct_logits(ckpt, cfg.logit_k, len(vocab), sorted({s.layer for s in sites}), progress)
    t1 = time.perf_counter()
    linked = connections(ckpt, cfg.connection_k, sorted({s.layer for s in sites}))
    connections_s = time.perf_counter() - t1
    if release_model and not cfg.ablation:
        drop_model(ckpt)
    by_site = dict(zip(keys, rules.sites(gathered, len(sites))))
    t1 = time.perf_counter()
    ablations = (ablation_effects(ckpt, sites, by_site, next(ckpt.model.parameters()).device, progress) if cfg.ablation
                 else {c: np.zeros(0) for c in ABLATION_COLUMNS})
    ablation_s = time.perf_counter() - t1
    if release_model and cfg.ablation:
        drop_model(ckpt)
    timings = {"merge_s": merge_s, "reload_s": reload_s, "connections_s": connections_s, "ablation_s": ablation_s,
               **{k: sum(r.timings[k] for r in results) for k in ("forward_s", "accumulate_s", "sample_pass_s")},
               **run.timings,
               "shard_peak_rss_mib": max(r.timings["peak_rss_mib"] for r in results),
               "total_s": time.perf_counter() - begun}
    return ModelIndex(ckpt, cfg, sites, by_site, plan.tally, vocab, plan.sample, plan.segment_len, activations,
                      logits, linked, ablations, started_at, run.device, timings)


def check_counts(results: list[ShardResult], plan: Plan) -> None:
    for r in results:
        if (r.tokens, r.documents) != (plan.tokens[r.shard], plan.documents[r.shard]):
            raise UserError(f"shard {r.shard}: it read {r.tokens:,} tokens of {r.documents:,} documents, "
                            f"the plan {plan.tokens[r.shard]:,} of {plan.documents[r.shard]:,}: does every node "
                            "see the same dataset and checkpoint?")


def fit_batch_size(shape, n_sites: int, device: torch.device | None = None) -> int:
    """Rows per batch: about BATCH_TOKENS tokens, and the batch of float32 activations
    the indexer holds within BATCH_BYTES (256 MiB: on GPT-2 small one row of 1,024 tokens
    holds 151 MB, on solu-12l 604 MB); at least one row. On CUDA about GPU_BATCH_TOKENS
    tokens, the batch within 1/GPU_MEMORY_SHARE of the device's free memory."""
    row_bytes = shape.n_ctx * shape.d_mlp * n_sites * 4
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, min(GPU_BATCH_TOKENS // shape.n_ctx, free // GPU_MEMORY_SHARE // row_bytes))
    return max(1, min(BATCH_TOKENS // shape.n_ctx, BATCH_BYTES // row_bytes))


def check_window(cfg: IndexConfig, ckpt: LoadedModel) -> None:
    room = cfg.batch_size * (ckpt.model_cfg.n_ctx - 1)
    if cfg.window_after > room:
        raise UserError(f"--window-after {cfg.window_after} is longer than a batch ({room} tokens); "
                        "raise --batch-size or shorten the window")


def _span(layers: list[int]) -> str:
    """'layer 0', 'layers 0-3', 'layers 0,2'."""
    if len(layers) == 1:
        return f"layer {layers[0]}"
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    return f"layers {layers[0]}-{layers[-1]}" if contiguous else f"layers {','.join(map(str, layers))}"


def progress_bar(enabled: bool, total: int, label: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"index {label}", unit="tok", unit_scale=True, disable=not enabled,
                dynamic_ncols=True)
