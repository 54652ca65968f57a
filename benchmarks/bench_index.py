"""Indexing throughput, memory and write time, for a 1-layer and a 2-layer model.

For each model, on the same batches of the same dataset, in one run:
  forward   the model's bare forward pass (full logits), under inference_mode
  index     the indexer's streaming pass (hooks on the neuron sites, early stop,
            exact stats over every token, top-k, the band reservoir and random
            samples, windows), on the same segments `solu index` ranks
  naive     run_with_cache caching the MLP hooks, torch.topk over every position of
            every neuron, and a Python merge into each neuron's top-k documents (with
            windows) per batch; it computes no stats and no samples
forward and index alternate every few batches within one pass (the bare forward runs
on a hook-free copy of the model, between the batches the indexer pulls), so a shared
machine whose speed drifts over seconds slows both alike. Then, in fresh processes, the
peak RSS of a whole `index_model` (reading and tokenizing the dataset included) at
1x and 4x the tokens, and the DuckDB write time of the finished index. Targets: index
>= 0.9x forward, >= 5x naive, RSS(4x) within 10% of RSS(1x). The load average is
printed before and after.

--tokens defaults to what `solu index` reads (1M): the lists take in many of the first
segments a run sees and fewer and fewer later, so a short run costs more per token.

  python benchmarks/bench_index.py                      # random-init models, builtin corpus, ~8 min
  python benchmarks/bench_index.py --tokens 131072      # a short run
  python benchmarks/bench_index.py --checkpoints runs/gelu-1l runs/solu-2l --tokens 65536

Without --checkpoints it builds two SoLU checkpoints with random weights (1L d_mlp 512,
2L d_mlp 1024; d_model 128, n_ctx 128, vocab 4096): throughput does not depend on the
weights. SoLU is the harder case: two sites per layer.
"""
from __future__ import annotations

import argparse
import copy
import heapq
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from index.engine.hooks import index_sites  # noqa: E402
from index.engine.config import IndexConfig  # noqa: E402
from index.engine.batching import Tally, document_tokens, make_batches, segment_length, segments  # noqa: E402
from index.engine.indexer import Indexer, Layout  # noqa: E402
from index.engine.pipeline import index_model  # noqa: E402
from solu.checkpoint import save_checkpoint  # noqa: E402
from solu.sources import load_model, resolve  # noqa: E402
from solu.config import ModelConfig  # noqa: E402
from solu.model import build_model  # noqa: E402

SHAPES = {"solu-1l-512": dict(n_layers=1, d_mlp=512), "solu-2l-1024": dict(n_layers=2, d_mlp=1024)}


def builtin_tokenizer():
    """A 4096-token BPE trained on 3M characters of builtin (what every benchmark model uses)."""
    from solu.batches import training_texts
    from solu.corpus import iter_documents
    from solu.tokenizer import train_tokenizer

    return train_tokenizer(training_texts(iter_documents("builtin"), 3_000_000), 4096)


def random_checkpoint(path: Path, cfg: ModelConfig, tok) -> Path:
    """A checkpoint of shape `cfg` with random weights (speed does not depend on them)."""
    model = build_model(cfg, seed=0)
    meta = {"model": cfg.to_dict(), "act_fn": cfg.act_fn, "n_params": sum(p.numel() for p in model.parameters()),
            "eval_loss": None, "tokens_seen": 0}
    save_checkpoint(path, model, tok, meta)
    return path


def make_checkpoints(root: Path, dataset: str) -> list[Path]:
    tok = builtin_tokenizer()
    return [random_checkpoint(root / name, ModelConfig(act_fn="solu_ln", d_model=128, n_heads=4, n_ctx=128,
                                                       d_vocab=4096, **shape), tok)
            for name, shape in SHAPES.items()]


def bare_forward(model, batches) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(b.tokens)
    return time.perf_counter() - start


def interleaved(ckpt, batches, cfg, every: int = 4) -> tuple[float, float]:
    """(bare forward s, index s) over the same batches in one pass: before the indexer
    pulls each group of `every` batches, a hook-free copy of the model runs them (the
    indexer's hooks are on ckpt.model); that time is taken out of the indexer's."""
    twin = copy.deepcopy(ckpt.model)
    forward = 0.0

    def feed():
        nonlocal forward
        for i in range(0, len(batches), every):
            group = batches[i:i + every]
            forward += bare_forward(twin, group)
            yield from group

    start = time.perf_counter()
    Indexer(ckpt, cfg, torch.device("cpu"), Layout.of(ckpt, cfg)).run(feed())
    return forward, time.perf_counter() - start - forward


def naive_pass(ckpt, batches, k: int, before: int, after: int) -> float:
    """run_with_cache + topk over every position + a Python merge per neuron."""
    sites = index_sites(ckpt)
    lists: dict[tuple[int, int], list] = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            _, cache = ckpt.model.run_with_cache(b.tokens, names_filter=lambda name: ".mlp." in name)
            flat_index = b.flat_index()
            doc, pos = b.flat_positions()
            doc, pos = doc.tolist(), pos.tolist()
            for s_i, s in enumerate(sites):
                acts = cache[s.hook].reshape(-1, ckpt.model_cfg.d_mlp)[flat_index]
                values, where = torch.topk(acts.T, min(k, len(flat_index)), dim=1)
                for j, (vs, ws) in enumerate(zip(values.tolist(), where.tolist())):
                    kept = lists.setdefault((s_i, j), [])
                    seen = {d for _, d, _, _ in kept}
                    for v, w in zip(vs, ws):
                        if doc[w] in seen:
                            continue
                        seen.add(doc[w])
                        lo, hi = max(0, w - before), min(len(flat_index), w + after + 1)
                        window = acts[lo:hi, j].tolist()
                        heapq.heappush(kept, (v, -doc[w], pos[w], window))
                        if len(kept) > k:
                            heapq.heappop(kept)
    return time.perf_counter() - start


def rss_child(checkpoint: str, dataset: str, tokens: int, batch_size: int) -> None:
    cfg = IndexConfig(dataset=dataset, tokens=tokens, batch_size=batch_size, device="cpu")
    result = index_model(resolve(str(checkpoint)), cfg, progress=False)
    from index.store.rows import model_tables

    model_tables(result)
    print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "tokens": result.tally.tokens}))


def peak_rss(checkpoint: Path, dataset: str, tokens: int, batch_size: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(checkpoint), "--dataset", dataset,
                          "--tokens", str(tokens), "--batch-size", str(batch_size),
                          "--threads", str(torch.get_num_threads())],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_mb"]


def write_time(checkpoint: Path, dataset: str, tokens: int, batch_size: int, root: Path) -> tuple[float, float]:
    from index.store.rows import model_tables
    from index.store.writer import IndexBuild

    cfg = IndexConfig(dataset=dataset, tokens=tokens, batch_size=batch_size, device="cpu")
    result = index_model(resolve(str(checkpoint)), cfg, progress=False)
    db = root / f"{checkpoint.name}.duckdb"
    start = time.perf_counter()
    with IndexBuild(db) as build:
        seconds = build.write(result.model_id, model_tables(result))
        build.commit()
    return seconds, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", nargs="*", type=Path)
    p.add_argument("--dataset", default="builtin")
    p.add_argument("--tokens", type=int, default=IndexConfig().tokens,
                   help="tokens per throughput measurement (default: solu index's)")
    p.add_argument("--rss-tokens", type=int, default=32_768, help="the 1x of the peak-RSS comparison")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, so other processes on a shared machine skew all three "
                        "passes alike; 0: torch's choice)")
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        return rss_child(args.rss_child, args.dataset, args.tokens, args.batch_size)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoints = args.checkpoints or make_checkpoints(root, args.dataset)
        rows = [bench_model(path, args, root) for path in checkpoints]
    print_table(rows)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def bench_model(path: Path, args, root: Path) -> dict:
    ckpt = load_model(str(path), "cpu")
    cfg = IndexConfig(dataset=args.dataset, tokens=args.tokens, batch_size=args.batch_size, device="cpu")
    docs = list(document_tokens(args.dataset, "text", ckpt.tokenizer, args.tokens, Tally()))
    units = segments(docs, segment_length(cfg.segment_tokens, ckpt.model_cfg.n_ctx))
    batches = list(make_batches(units, ckpt.model_cfg.n_ctx, args.batch_size, ckpt.bos_id))
    n_tokens = sum(b.n_tokens for b in batches)
    interleaved(ckpt, batches[:8], cfg)  # warm up (and compile the indexer's loops)
    forward, index = interleaved(ckpt, batches, cfg)
    naive = naive_pass(ckpt, batches, cfg.top_k, cfg.window_before, cfg.window_after)
    rss1 = peak_rss(path, args.dataset, args.rss_tokens, args.batch_size)
    rss4 = peak_rss(path, args.dataset, 4 * args.rss_tokens, args.batch_size)
    write_s, commit_s = write_time(path, args.dataset, args.rss_tokens, args.batch_size, root)
    m = ckpt.model_cfg
    row = {"model": f"{m.act_fn} {m.n_layers}L d_mlp {m.d_mlp}", "tokens": n_tokens,
           "forward tok/s": n_tokens / forward, "index tok/s": n_tokens / index,
           "naive tok/s": n_tokens / naive, "index/forward": forward / index, "index/naive": naive / index,
           "RSS 1x MB": rss1, "RSS 4x MB": rss4, "RSS 4x/1x": rss4 / rss1, "DuckDB write s": write_s,
           "write+swap s": commit_s,
           "load avg": os.getloadavg()[0]}
    print(json.dumps(row), flush=True)
    return row


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    cell = lambda v: f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)  # noqa: E731
    widths = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.rjust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(cell(r[c]).rjust(widths[c]) for c in cols))


if __name__ == "__main__":
    main()
