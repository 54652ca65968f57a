"""Scaling out on this machine: training tokens/s with 1 and 2 torchrun processes (and,
in its own section, indexing with Ray workers), each ratio measured in one run.

Training: the same `solu train` run (same shape, data, seed and global batch) with
`--nproc 1` and `--nproc 2`, alternated `--repeats` times; each run's tokens/s is the
one its config.json reports (global tokens over time in steps, so start-up, tokenizer
and evaluation are excluded) and its wall time is printed beside it. One process uses
every torch thread; with N processes each gets threads / N (solu.data_parallel.launch);
one process on one thread separates the gain of splitting the cores between processes
from the gain of more processes.

    python benchmarks/bench_scale.py [--steps 60] [--repeats 2] [--layers 1 --d-model 128 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from solu.batches import training_texts
from solu.text_table import format_table
from solu.tokenizer import train_tokenizer

# ---------------------------------------------------------------- training: torchrun processes


def train_once(args, nproc: int, threads: int | None, out: Path, tokenizer: Path) -> dict:
    cmd = [sys.executable, "-m", "solu.cli", "train", "--act", "gelu", "--layers", str(args.layers),
           "--d-model", str(args.d_model), "--d-mlp", str(args.d_mlp), "--heads", str(args.heads),
           "--ctx", str(args.ctx), "--vocab", str(args.vocab), "--batch-size", str(args.batch_size),
           "--tokens", str(args.steps * args.batch_size * args.ctx), "--checkpoint-every", str(args.steps),
           "--eval-tokens", str(args.batch_size * args.ctx), "--dataset", args.dataset, "--device", args.device,
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
        train_tokenizer(training_texts(args.dataset, "text", 0, 1_000_000), args.vocab).save(str(tokenizer))
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
    g.add_argument("--repeats", type=int, default=2, help="runs per process count, alternated")
    g.add_argument("--layers", type=int, default=1)
    g.add_argument("--d-model", type=int, default=128)
    g.add_argument("--d-mlp", type=int, default=512)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--ctx", type=int, default=128)
    g.add_argument("--vocab", type=int, default=4096)
    g.add_argument("--batch-size", type=int, default=16, help="the global batch")
    g.add_argument("--dataset", default="builtin")
    g.add_argument("--device", default="cpu")


# ---------------------------------------------------------------- indexing: Ray workers (the `ray` branch adds it)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_flags(p)
    args = p.parse_args()
    rows, ratio = training_rows(args)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"shape {args.layers}L d_model {args.d_model} d_mlp {args.d_mlp} ctx {args.ctx} vocab {args.vocab}, "
          f"global batch {args.batch_size}, {args.steps} steps per run, device {args.device}")
    print(format_table(rows))
    print("\n".join(ratio))


if __name__ == "__main__":
    main()
