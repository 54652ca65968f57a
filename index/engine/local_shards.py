"""Shards in worker processes on this machine: the executor of `solu index ... --workers N`
without --ray-address.

The pipeline is the same as on Ray (index.engine.ray_shards); only who runs the shards
differs. Each worker is a fresh Python process (spawned, not forked: the driver holds
torch's threads) talking to this one over pipes, so nothing listens on a network port:
a local run is not reachable from the network, where a local Ray cluster would listen
on every interface with no authentication. While the driver reads the plan, each worker
loads the model; then each indexes its shard and hands back its ShardResult. One
progress bar counts every worker's tokens; a worker that dies or fails ends the run with
one line naming its shard, before anything is written.
"""
from __future__ import annotations

import multiprocessing
import queue
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Iterator

import numpy as np
import torch

from index.engine.config import IndexConfig
from index.engine.indexer import Layout
from index.engine.pipeline import Execution, Progress, ShardResult, device_of, run_worker_shard
from index.engine.plan import Plan
from index.engine.shard_config import ShardOptions
from solu.errors import UserError
from solu.sources import LoadedModel, ModelRef, load_model

_tokens: multiprocessing.Queue | None = None  # in a worker: where its token counts go


def _start_worker(threads: int, tokens: multiprocessing.Queue) -> None:
    global _tokens
    torch.set_num_threads(threads)
    _tokens = tokens


def _index_shard(ref: ModelRef, cfg: IndexConfig, layout: Layout, shard: int, places: np.ndarray,
                 stop: tuple[int, int], sample: list) -> ShardResult:
    """In a worker: load the model, index one shard, report tokens as they are done."""
    device = device_of(cfg)
    ckpt = load_model(ref, device, cfg.dtype)
    return run_worker_shard(ckpt, cfg, device, layout, shard, places, stop, sample, _tokens.put)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool's workers now (a run that failed or was interrupted leaves none busy)."""
    for process in list((pool._processes or {}).values()):
        if process.is_alive():
            process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


class LocalShards:
    """with LocalShards(options) as executor: index_model(ref, cfg, executor) ...
    A pool of --workers processes (--threads torch threads each) serves every model of
    the build in turn; the driver's copy of the model is on the CPU."""

    workers_load = True  # each worker loads the model: the driver lets its copy go meanwhile (pipeline.index_model)

    def __init__(self, options: ShardOptions):
        self.options = options
        self.shards = options.workers
        self.pool: ProcessPoolExecutor | None = None
        self.tokens: multiprocessing.Queue | None = None

    def __enter__(self) -> "LocalShards":
        context = multiprocessing.get_context("spawn")
        self.tokens = context.Queue()
        self.pool = ProcessPoolExecutor(self.options.workers, mp_context=context, initializer=_start_worker,
                                        initargs=(self.options.threads, self.tokens))
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.pool is not None:
            stop_pool(self.pool)
            self.pool = None

    def driver_device(self, cfg: IndexConfig) -> torch.device:
        return torch.device("cpu")

    def run(self, ckpt: LoadedModel, cfg: IndexConfig, device: torch.device, layout: Layout, plan: Plan,
            stream: Iterator, progress: Progress) -> Execution:
        t0 = time.perf_counter()
        n = self.shards
        ref = ckpt.ref if ckpt.ref.path is None else replace(ckpt.ref, path=ckpt.ref.path.resolve())
        for _ in stream:  # the whole plan first: each worker reads only its own documents
            pass
        plan_s = time.perf_counter() - t0
        progress.say(f"{ckpt.name}: {n} worker processes on this machine")
        bar = progress.bar(plan.tally.tokens, f"{ckpt.name} ({n} workers)")
        t1 = time.perf_counter()
        try:
            futures = {self.pool.submit(_index_shard, ref, cfg, layout, k, plan.places_of(k), plan.stop,
                                        plan.sample_of(k)): k for k in range(n)}
            results = self._collect(futures, bar)
        except BaseException:
            self._stop()  # a failed run leaves no worker busy
            raise
        finally:
            bar.close()
        timings = {"stream_s": time.perf_counter() - t1, "plan_s": plan_s, "ready_s": t1 - t0, "workers": n}
        return Execution(results, str(device_of(cfg)), timings)

    def _collect(self, futures: dict, bar) -> list[ShardResult]:
        n, results, pending = len(futures), [], set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                results.append(self._result(future, futures[future], n))
            self._drain(bar)
        self._drain(bar)
        bar.update(sum(r.tokens for r in results) - bar.n)
        return sorted(results, key=lambda r: r.shard)

    def _drain(self, bar) -> None:
        while True:
            try:
                bar.update(self.tokens.get_nowait())
            except queue.Empty:
                return

    def _result(self, future, shard: int, n: int) -> ShardResult:
        try:
            return future.result()
        except BrokenProcessPool:
            raise UserError(f"shard {shard} of {n}: its worker process died before finishing (killed, out of "
                            "memory or crashed); nothing was written") from None
        except UserError as e:
            raise UserError(f"shard {shard} of {n}: {e}") from None
