"""Indexing at the scale of the models researchers study: peak memory, database size, and
`solu index` against the bare forward pass, measured in one run.

Shapes, random weights (speed and memory do not depend on the weights; a trained 1-layer
GELU has the density of activations random weights give, see issue 25):
  gpt2-small  GELU, 12 layers x 3,072 neurons, d_model 768, 12 heads, n_ctx 1024, vocab 50,257
  solu-12l    SoLU with its LayerNorm (two sites a layer), 12 x 6,144, d_model 1,536,
              24 heads, n_ctx 1024, vocab 48,262 (the paper's largest SoLU model)
  solu-1l     the project's own demo shape (1 x 512, d_model 128, n_ctx 128, vocab 4,096)
All use the 4,096-token BPE the benchmarks train on the builtin corpus (ids below the
model's vocabulary; the unembedding is still the full width).

For each shape and each --tokens count, in fresh processes, one after another:
  forward  the model's bare forward pass (full logits, inference_mode) over the batches
           `solu index` makes of the same documents, at the same batch size; the time in
           the forward calls only (no loading or tokenizing)
  index    `solu index CKPT --db NEW --tokens N` at default flags otherwise: the wall time
           of the whole command (imports, model load, reading, streaming, sample pass,
           merge, connections, write), its peak RSS (wait4), the database's size, and
           its phases as index_details.timings records them
index/forward is the index wall time over the forward time. Several --tokens give the
peak RSS at 1x and 4x (memory must not grow with the tokens). With --workers N (and
--ray-address of a running cluster) the index runs sharded: each shard records its
process's peak RSS, and 'shard peak RSS' is the largest (index_details.timings).

  python benchmarks/bench_model_scale.py --shapes gpt2-small --tokens 16384 65536
  python benchmarks/bench_model_scale.py --shapes solu-1l gpt2-small solu-12l --tokens 16384
  python benchmarks/bench_model_scale.py --shapes gpt2-small --tokens 16384 --workers 2 --ray-address ADDR
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import duckdb  # noqa: E402
import torch  # noqa: E402

from solu.config import ModelConfig  # noqa: E402
from solu.text_table import format_table  # noqa: E402

SHAPES = {
    "gpt2-small": dict(act_fn="gelu", n_layers=12, d_model=768, d_mlp=3072, n_heads=12, n_ctx=1024, d_vocab=50_257),
    "solu-12l": dict(act_fn="solu_ln", n_layers=12, d_model=1536, d_mlp=6144, n_heads=24, n_ctx=1024,
                     d_vocab=48_262),
    "solu-1l": dict(act_fn="solu_ln", n_layers=1, d_model=128, d_mlp=512, n_heads=4, n_ctx=128, d_vocab=4096),
}


def checkpoint(root: Path, name: str) -> Path:
    """The shape's random checkpoint under root (made once)."""
    path = root / name
    if not (path / "config.json").exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_index import builtin_tokenizer, random_checkpoint

        random_checkpoint(path, ModelConfig(**SHAPES[name]), builtin_tokenizer())
    return path


def forward_child(path: str, dataset: str, tokens: int) -> None:
    """Prints the bare forward's seconds over `solu index`'s batches of the same tokens."""
    from index.engine.batching import Tally, document_tokens, make_batches, segment_length, segments
    from index.engine.config import IndexConfig
    from index.engine.hooks import index_sites
    from index.engine.pipeline import fit_batch_size
    from solu.sources import load_model, resolve

    ckpt = load_model(resolve(path), torch.device("cpu"))
    cfg = IndexConfig(dataset=dataset, tokens=tokens)
    rows = fit_batch_size(ckpt.model_cfg, len(index_sites(ckpt)), torch.device("cpu"))
    docs = document_tokens(dataset, "text", ckpt.tokenizer, tokens, Tally())
    units = segments(docs, segment_length(cfg.segment_tokens, ckpt.model_cfg.n_ctx))
    seconds, n = 0.0, 0
    with torch.inference_mode():
        for batch in make_batches(units, ckpt.model_cfg.n_ctx, rows, ckpt.bos_id):
            start = time.perf_counter()
            ckpt.model(batch.tokens)
            seconds += time.perf_counter() - start
            n += batch.n_tokens
    print(json.dumps({"forward_s": seconds, "tokens": n, "rows": rows}))


def peak_rss_of(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MB from wait4, stdout) of a command in a fresh process."""
    start = time.perf_counter()
    # one pipe for both streams: reading two in turn can block on the one not read
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out


def bench(path: Path, name: str, tokens: int, dataset: str, root: Path, shards: list[str]) -> dict:
    _, _, out = peak_rss_of([sys.executable, __file__, "--forward-child", str(path), "--dataset", dataset,
                             "--tokens", str(tokens)])
    fwd = json.loads(out.strip().splitlines()[-1])
    db = root / f"{name}-{tokens}.duckdb"
    wall, rss, _ = peak_rss_of([sys.executable, "-m", "solu.cli", "index", str(path), "--db", str(db),
                                "--dataset", dataset, "--tokens", str(tokens), "--no-progress", *shards])
    con = duckdb.connect(str(db), read_only=True)
    timings = json.loads(con.execute("SELECT timings FROM index_details").fetchone()[0])
    act_rows = con.execute("SELECT count(*) FROM activations").fetchone()[0]
    runs = con.execute("SELECT tokens, sample_tokens, seconds FROM index_runs").fetchone()
    con.close()
    size_mb = db.stat().st_size / 2**20
    db.unlink()
    row = {"shape": name, "workers": " ".join(shards) or "1 (in process)", "tokens": runs[0],
           "sample tokens": runs[1], "rows/batch": fwd["rows"],
           "bare forward s": fwd["forward_s"], "index wall s": wall, "index/forward": wall / fwd["forward_s"],
           "peak RSS MiB": rss, "shard peak RSS MiB": timings.get("shard_peak_rss_mib"), "DB MB": size_mb,
           "activation rows": act_rows,
           **{k.removesuffix("_s") + " s": v for k, v in timings.items() if k.endswith("_s")},
           "load avg": os.getloadavg()[0]}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--tokens", nargs="+", type=int, default=[1_000_000])
    p.add_argument("--dataset", default="builtin")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="folder to keep the random checkpoints in (default: a temporary one)")
    p.add_argument("--workers", type=int, default=0,
                   help="index with `--workers N` (local worker processes, or Ray workers with --ray-address); "
                        "peak RSS is then the driver's, and 'shard peak RSS' the largest worker's")
    p.add_argument("--ray-address", default="", help="with --workers: a running Ray cluster (`ray start --head`)")
    p.add_argument("--forward-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.forward_child:
        return forward_child(args.forward_child, args.dataset, args.tokens[0])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    shards = ["--workers", str(args.workers)] if args.workers else []
    shards += ["--ray-address", args.ray_address] if args.workers and args.ray_address else []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.checkpoints or Path(tmp)
        for name in args.shapes:
            path = checkpoint(root, name)
            rows += [bench(path, name, n, args.dataset, Path(tmp), shards) for n in args.tokens]
    columns = ["shape", "workers", "tokens", "sample tokens", "bare forward s", "index wall s", "index/forward",
               "peak RSS MiB", "shard peak RSS MiB", "DB MB", "activation rows", "stream s", "forward s", "accumulate s", "sample_pass s", "merge s",
               "connections s", "total s"]
    print(format_table([{c: round(r[c], 2) if isinstance(r.get(c), float) else r.get(c) for c in dict.fromkeys(columns)}
                        for r in rows]))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
