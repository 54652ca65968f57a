"""Scaling out on this machine: indexing tokens/s with 1 and 2 Ray workers (and, in its
own section, training with torchrun processes), each ratio measured in one run.

Indexing: one random-init SoLU checkpoint (bench_index's 1-layer shape: d_model 128,
d_mlp 512, n_ctx 128, vocab 4096; throughput does not depend on the weights), the same
`--tokens` of the same dataset, indexed
  in one process   index_checkpoint, torch on 1 thread (no Ray)
  on N workers     RaySession(ShardOptions(workers=N, threads=1)).index_checkpoint, a
                   fresh set of workers each time, so their start-up is measured too
alternated `--repeats` times. Tokens/s is over the streaming phase (the workers' pass
over their shards, as `solu index` reports it); Ray's overhead is printed apart: ray.init,
the workers' start (process, imports, checkpoint load, overlapping the driver's plan
pass), the plan pass itself and the merge.

    python benchmarks/bench_scale.py [--tokens 262144] [--repeats 2] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from solu.text_table import format_table  # noqa: E402

# ---------------------------------------------------------------- indexing: Ray workers


def index_once(path: Path, cfg, workers: int) -> dict:
    """One indexing run; workers = 0 is one process without Ray."""
    from index.engine.index_model import index_checkpoint
    from index.engine.shard_config import ShardOptions
    from index.engine.shards import RaySession

    if workers == 0:
        result = index_checkpoint(path, cfg, progress=False)
    else:
        with RaySession(ShardOptions(workers=workers, threads=1)) as session:
            result = session.index_checkpoint(path, cfg, progress=False)
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
    g.add_argument("--repeats", type=int, default=2, help="runs per way of running, alternated")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_indexing_flags(p)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    rows, lines = indexing_rows(args)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}; solu_ln 1L d_mlp 512, "
          f"{args.tokens:,} tokens of {args.index_dataset} per run, {args.repeats} runs each, alternated")
    print(format_table(rows))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
