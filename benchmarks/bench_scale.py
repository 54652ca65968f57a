"""Scaling out on this machine: training tokens/s with 1 and 2 torchrun processes and
indexing tokens/s with 1 and 2 Ray workers, each ratio measured in one run.

Training: the same `solu train` run (same shape, data, seed and global batch) with
`--nproc 1` and `--nproc 2`, alternated `--repeats` times; each run's tokens/s is the
one its config.json reports (global tokens over time in steps, so start-up, tokenizer
and evaluation are excluded) and its wall time is printed beside it. One process uses
every torch thread; with N processes each gets threads / N (solu.data_parallel.launch);
one process on one thread separates the gain of splitting the cores between processes
from the gain of more processes.

Indexing: one random-init SoLU checkpoint (bench_index's 1-layer shape: d_model 128,
d_mlp 512, n_ctx 128, vocab 4096; throughput does not depend on the weights), the same
`--tokens` of the same dataset, indexed
  in one process   index_model with InProcess, torch on 1 thread (no Ray)
  on N workers     index_model with RayShards(ShardOptions(workers=N, threads=1)), a
                   fresh set of workers each time, so their start-up is measured too
alternated `--repeats` times. Tokens/s is over the streaming phase (the workers' pass
over their shards, as `solu index` reports it); Ray's overhead is printed apart: ray.init,
the workers' start (process, imports, checkpoint load, overlapping the driver's plan
pass), the plan pass itself and the merge.

    python benchmarks/bench_scale.py [--part all|train|index] [--repeats 2] [--steps 60 ...] [--tokens 262144 --workers 1 2]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from solu.batches import training_texts  # noqa: E402
from solu.commands import MODEL_FLAGS  # noqa: E402
from solu.config import ModelConfig, TrainConfig  # noqa: E402
from solu.corpus import iter_documents  # noqa: E402
from solu.flags import add_config_flags  # noqa: E402
from solu.text_table import format_table  # noqa: E402
from solu.tokenizer import train_tokenizer  # noqa: E402

# ---------------------------------------------------------------- training: torchrun processes


def train_once(args, nproc: int, threads: int | None, out: Path, tokenizer: Path) -> dict:
    cmd = [sys.executable, "-m", "solu.cli", "train", "--act", "gelu", "--layers", str(args.n_layers),
           "--d-model", str(args.d_model), "--d-mlp", str(args.d_mlp), "--heads", str(args.n_heads),
           "--ctx", str(args.n_ctx), "--vocab", str(args.d_vocab), "--batch-size", str(args.batch_size),
           "--tokens", str(args.steps * args.batch_size * args.n_ctx), "--checkpoint-every", str(args.steps),
           "--eval-tokens", str(args.batch_size * args.n_ctx), "--dataset", args.dataset, "--device", args.device,
           "--nproc", str(nproc), "--tokenizer", str(tokenizer), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(cmd)}\nfailed ({done.returncode}):\n{done.stderr[-2000:]}")
    meta = json.loads((out / "config.json").read_text())
    return {"tokens_per_s": meta["tokens_per_s"], "wall_s": wall, "eval_loss": meta["eval_loss"]}


def training_setups(args) -> list[tuple[int, int]]:
    """(processes, torch threads each): every core in one process, the same cores split
    between N processes, and one process on one thread (what each of 2 ranks gets)."""
    threads = torch.get_num_threads()
    setups = [(1, threads)] + [(n, max(1, threads // n)) for n in args.nproc if n > 1]
    return setups + [(1, 1)] if threads > 1 else setups


def training_rows(args) -> tuple[list[dict], list[str]]:
    """One row per setup, and the ratio lines."""
    setups = training_setups(args)
    runs: dict[tuple[int, int], list[dict]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = tmp / "tokenizer.json"  # fitted once on 1 MB of text, reused by every run
        train_tokenizer(training_texts(iter_documents(args.dataset), 1_000_000), args.d_vocab).save(str(tokenizer))
        for i in range(args.repeats):
            for n, threads in setups:
                env_threads = threads if n == 1 else None  # the launcher gives each rank threads // n
                runs[n, threads].append(train_once(args, n, env_threads, tmp / f"run-{n}-{threads}-{i}", tokenizer))
    rate = {s: statistics.median(r["tokens_per_s"] for r in runs[s]) for s in setups}
    rows = [{"what": f"train, {n} process{'es' * (n > 1)} x {threads} thread{'s' * (threads > 1)}",
             "tokens/s (median)": f"{rate[n, threads]:,.0f}",
             "tokens/s (each run)": " ".join(f"{r['tokens_per_s']:,.0f}" for r in runs[n, threads]),
             "wall s (median)": f"{statistics.median(r['wall_s'] for r in runs[n, threads]):.1f}",
             "eval loss": f"{runs[n, threads][0]['eval_loss']:.4f}"} for n, threads in setups]
    base = setups[0]
    ratios = [f"training tokens/s, {n} processes / 1 process of {base[1]} threads: {rate[n, t] / rate[base]:.2f}x"
              for n, t in setups if n > 1]
    if (1, 1) in rate:
        ratios += [f"training tokens/s, {n} processes / 1 process of 1 thread: {rate[n, t] / rate[1, 1]:.2f}x"
                   for n, t in setups if n > 1]
    return rows, ratios


def add_training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--nproc", type=int, nargs="+", default=[2], help="process counts to compare with one process")
    g.add_argument("--steps", type=int, default=60)
    add_config_flags(g, ModelConfig, rename=MODEL_FLAGS, skip=("act_fn",))  # the model shape's defaults, written once
    g.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="the global batch")
    g.add_argument("--dataset", default="builtin")
    g.add_argument("--device", default="cpu")


# ---------------------------------------------------------------- indexing: Ray workers


def index_once(path: Path, cfg, workers: int) -> dict:
    """One indexing run; workers = 0 is one process without Ray."""
    from index.engine.pipeline import InProcess, index_model
    from index.engine.ray_shards import RayShards
    from index.engine.shard_config import ShardOptions
    from solu.sources import resolve

    executor = InProcess() if workers == 0 else RayShards(ShardOptions(workers=workers, threads=1))
    with executor:
        result = index_model(resolve(str(path)), cfg, executor, progress=False)
    t = result.timings
    return {"tokens": result.tally.tokens, "tokens_per_s": result.tally.tokens / t["stream_s"], **t}


def indexing_rows(args) -> tuple[list[dict], list[str]]:
    """One row per way of running, the ratio lines and Ray's overhead."""
    import ray

    from index.engine.config import IndexConfig
    from bench_index import make_checkpoints

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ray.init(num_cpus=max(os.cpu_count() or 1, max(args.workers)), include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    init_s = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = str(make_checkpoints(Path(tmp), args.index_dataset)[0])
            cfg = IndexConfig(dataset=args.index_dataset, tokens=args.tokens, device="cpu")
            runs: dict[int, list[dict]] = {n: [] for n in [0, *args.workers]}
            for _ in range(args.repeats):
                for n in runs:
                    runs[n].append(index_once(path, cfg, n))
    finally:
        ray.shutdown()
    med = lambda n, key: statistics.median(r[key] for r in runs[n])  # noqa: E731
    rows = [{"what": "index, 1 process (no Ray)" if n == 0 else f"index, {n} Ray worker{'s' * (n > 1)}",
             "threads each": 1,
             "tokens/s (median)": f"{med(n, 'tokens_per_s'):,.0f}",
             "tokens/s (each run)": " ".join(f"{r['tokens_per_s']:,.0f}" for r in runs[n]),
             "wall s (median)": f"{med(n, 'total_s'):.1f}",
             "workers ready s": "" if n == 0 else f"{med(n, 'ready_s'):.1f}",
             "plan s": "" if n == 0 else f"{med(n, 'plan_s'):.2f}",
             "merge s": "" if n == 0 else f"{med(n, 'merge_s'):.2f}"} for n in runs]
    base = args.workers[0]
    lines = [f"indexing tokens/s, {n} / {base} Ray workers: {med(n, 'tokens_per_s') / med(base, 'tokens_per_s'):.2f}x"
             for n in args.workers[1:]]
    lines += [f"indexing tokens/s, {n} Ray worker{'s' * (n > 1)} / 1 process without Ray: "
              f"{med(n, 'tokens_per_s') / med(0, 'tokens_per_s'):.2f}x" for n in args.workers]
    lines.append(f"Ray start-up: ray.init {init_s:.1f}s; per run, workers ready (process, imports, checkpoint) "
                 f"{med(base, 'ready_s'):.1f}s, of which the driver's plan pass {med(base, 'plan_s'):.2f}s; "
                 f"merge {med(args.workers[-1], 'merge_s'):.2f}s")
    return rows, lines


def add_indexing_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("indexing")
    g.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to compare (first = base)")
    g.add_argument("--tokens", type=int, default=262_144, help="tokens indexed per run")
    g.add_argument("--index-dataset", default="builtin")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "train", "index"), default="all")
    p.add_argument("--repeats", type=int, default=2, help="runs per setup, alternated")
    add_training_flags(p)
    add_indexing_flags(p)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.part in ("all", "train"):
        rows, ratio = training_rows(args)
        print(f"\ntraining: shape {args.n_layers}L d_model {args.d_model} d_mlp {args.d_mlp} ctx {args.n_ctx} "
              f"vocab {args.d_vocab}, global batch {args.batch_size}, {args.steps} steps per run, device {args.device}")
        print(format_table(rows))
        print("\n".join(ratio))
    if args.part in ("all", "index"):
        rows, lines = indexing_rows(args)
        print(f"\nindexing: solu_ln 1L d_mlp 512, {args.tokens:,} tokens of {args.index_dataset} per run, "
              f"{args.repeats} runs each, alternated")
        print(format_table(rows))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
