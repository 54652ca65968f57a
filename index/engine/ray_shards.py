"""Shards on Ray workers: the executor of `solu index ... --workers N --ray-address ADDR`
(a cluster the user started and trusts: Ray has no authentication by default; without
--ray-address, index.engine.local_shards runs the workers on this machine).

The pipeline (index.engine.pipeline) is the same as without workers; only who runs
the shards differs. While the driver reads the plan, each worker (a Ray actor: one CPU,
or one GPU where the cluster has them) loads the checkpoint; then each indexes its
shard with pipeline.run_shard, reading the dataset itself in file order (never through
the shuffle buffer again), picking its documents by the places the plan found and
skipping the other shards' before tokenizing them, and hands back its ShardResult. One
progress bar counts every worker's tokens; a worker that dies or fails ends the run
with one line naming its shard, before anything is written.

Workers must see the checkpoint and the dataset at the same paths as the driver (a
shared filesystem on a multi-node cluster); a shard whose token count disagrees with the
plan fails the run. Ray is imported only here, only when --ray-address is given.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import Iterator

import numpy as np
import torch

from index.engine.config import IndexConfig
from index.engine.indexer import Layout
from index.engine.pipeline import Execution, Progress, ShardResult, device_of, run_worker_shard
from index.engine.plan import Plan
from index.engine.shard_config import ShardOptions
from index.engine.shard_progress import TokenCounter
from solu.errors import UserError, first_line
from solu.sources import LoadedModel, ModelRef, load_model


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

        self.cfg, self.device = cfg, device_of(cfg)
        self.ckpt = load_model(ref, self.device, cfg.dtype)
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "device": str(self.device)}

    def run(self, layout: Layout, shard: int, places: np.ndarray, stop: tuple[int, int], sample: list, counter,
            run_no: int) -> ShardResult:
        result = run_worker_shard(self.ckpt, self.cfg, self.device, layout, shard, places, stop, sample,
                                  lambda n: counter.add.remote(run_no, n))
        self.ckpt = None  # the next model's turn
        return result


class RayShards:
    """with RayShards(options) as executor: index_model(ref, cfg, executor) ...
    Starts (or joins) Ray once; its workers serve every model of the build in turn. The
    driver's copy of the model (tokenizer, models row, logit effects) is on the CPU."""

    workers_load = True  # each worker loads the model: the driver lets its copy go meanwhile (pipeline.index_model)

    def __init__(self, options: ShardOptions):
        self.options = options
        self.shards = options.workers
        self.ray = None
        self.started = False
        self.start_s = 0.0  # ray.init
        self.workers: list = []
        self.counter = None  # a shard_progress.TokenCounter actor
        self.runs = 0  # models indexed so far: the counter's key
        self.gpus = 0

    def __enter__(self) -> "RayShards":
        ray = self.ray = _ray()
        t0 = time.perf_counter()
        if not ray.is_initialized():
            try:
                ray.init(address=self.options.address, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UserError(f"cannot join the Ray cluster at {self.options.address}: "
                                f"{first_line(e)[:300]}") from None
            self.started = True
        self.start_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc) -> None:
        self._stop_workers()
        if self.started:
            self.ray.shutdown()

    def driver_device(self, cfg: IndexConfig) -> torch.device:
        return torch.device("cpu")

    def run(self, ckpt: LoadedModel, cfg: IndexConfig, device: torch.device, layout: Layout, plan: Plan,
            stream: Iterator, progress: Progress) -> Execution:
        """Load the model on every worker while the driver reads the plan, then run a
        shard on each."""
        t0 = time.perf_counter()
        n = self.shards
        ref = ckpt.ref if ckpt.ref.path is None else replace(ckpt.ref, path=ckpt.ref.path.resolve())
        try:
            workers = self._start_workers(cfg)
            loading = [w.load.remote(ref, cfg) for w in workers]
            for _ in stream:
                pass
            plan_s = time.perf_counter() - t0
            info = [self._get(r, k, n, None) for k, r in enumerate(loading)]
            progress.say(f"{ckpt.name}: {n} Ray workers ({', '.join(i['device'] for i in info)})")
            t1 = time.perf_counter()
            results = self._run(workers, info, layout, plan,
                                progress.bar(plan.tally.tokens, f"{ckpt.name} ({n} workers)"))
            stream_s = time.perf_counter() - t1
        except BaseException:
            self._stop_workers()  # a failed run leaves no worker busy
            raise
        timings = {"stream_s": stream_s, "plan_s": plan_s, "ready_s": t1 - t0, "ray_start_s": self.start_s,
                   "workers": n}
        return Execution(results, ", ".join(sorted({i["device"] for i in info})), timings)

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

    def _run(self, workers: list, info: list[dict], layout: Layout, plan: Plan, bar) -> list[ShardResult]:
        """Run every shard; the bar follows the counter without ever waiting on it."""
        ray, n, counter = self.ray, len(workers), self.counter
        self.runs += 1
        refs = {workers[k].run.remote(layout, k, plan.places_of(k), plan.stop, plan.sample_of(k), counter,
                                      self.runs): k for k in range(n)}
        results, pending, asked = [], list(refs), None
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
