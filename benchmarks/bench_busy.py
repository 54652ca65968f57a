"""Training throughput on a quiet and on a busy machine, measured in one run.

`solu train` (the demo's shape: 1 layer, d_model 128, d_mlp 512, ctx 128, batch 16, on
the builtin corpus) runs once per setting, first on a quiet machine, then beside one
competing CPU-bound process (`python -c "while True: pass"`), which is what a shared
machine looks like. Each run reads its tokens/s from the command's own last line; the
tokenizer is trained once and reused, so only training is timed. Settings:

- default: what `solu train` does (torch's threads; an idle thread spins 3,000 times, then
  sleeps: GOMP_SPINCOUNT=3000)
- OpenMP's own: what it did before (torch is imported before `solu` can set anything; an
  idle thread spins about 300,000 times, then sleeps)
- passive: OMP_WAIT_POLICY=PASSIVE (an idle thread sleeps at once)
- spinning: OMP_WAIT_POLICY=ACTIVE (an idle thread spins)
- threads 1: --threads 1

    python benchmarks/bench_busy.py [--tokens 300000]

Run it on an otherwise idle machine: the busy half brings its own competitor.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPE = ["--act", "solu_ln", "--layers", "1", "--d-model", "128", "--d-mlp", "512", "--heads", "4", "--ctx", "128",
         "--batch-size", "16", "--device", "cpu", "--eval-tokens", "4096"]
SETTINGS = {"default": ({}, []), "OpenMP's own": ({}, []), "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
            "spinning": ({"OMP_WAIT_POLICY": "ACTIVE"}, []), "threads 1": ({}, ["--threads", "1"])}
# `solu` with torch (and so libgomp, which reads OMP_WAIT_POLICY when it loads) imported first
TORCH_FIRST = "import sys, torch; from solu.cli import main; sys.exit(main(sys.argv[1:]))"


def train(out: Path, tokens: int, env: dict, extra: list[str], tokenizer: Path | None, torch_first: bool = False) -> float:
    solu = ["-c", TORCH_FIRST] if torch_first else ["-m", "solu.cli"]
    cmd = [sys.executable, *solu, "train", *SHAPE, "--tokens", str(tokens), "--out", str(out),
           "--warmup-tokens", str(tokens // 10), *extra, *(["--tokenizer", str(tokenizer)] if tokenizer else [])]
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run(cmd, env={**base, "TQDM_DISABLE": "1", **env}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"solu train failed:\n{done.stderr[-2000:]}")
    return float(re.search(r"\(([\d,]+) tokens/s", done.stdout).group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=300_000, help="training tokens per run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train(root / "tokenizer-run", 4096, {}, [], None)  # trains the tokenizer the runs below share
        tokenizer = root / "tokenizer-run" / "tokenizer.json"
        rates: dict[tuple[str, str], float] = {}
        for load in ("quiet", "busy"):
            competitor = None if load == "quiet" else subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                for name, (env, extra) in SETTINGS.items():
                    slug = re.sub(r"\W+", "-", name)
                    out = root / f"{load}-{slug}"
                    rates[load, name] = train(out, args.tokens, env, extra, tokenizer, name == "OpenMP's own")
                    print(f"{load:>5} {name:<10} {rates[load, name]:>9,.0f} tokens/s", file=sys.stderr, flush=True)
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
    print(f"\ncores: {len(os.sched_getaffinity(0))}; {args.tokens:,} tokens per run; python "
          f"{sys.version.split()[0]}\n")
    print("| setting | quiet tokens/s | busy tokens/s | busy / quiet | quiet / default's quiet |")
    print("|---|---|---|---|---|")
    for name in SETTINGS:
        quiet, busy = rates["quiet", name], rates["busy", name]
        print(f"| {name} | {quiet:,.0f} | {busy:,.0f} | {busy / quiet:.2f} | "
              f"{quiet / rates['quiet', 'default']:.2f} |")


if __name__ == "__main__":
    main()
