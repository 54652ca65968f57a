"""What each neuron relation costs, as a ratio to indexing the same models.

Two pairs of random-init models (the weights do not change the cost): the demo's shape
(1 layer, d_model 128, d_mlp 512, ctx 128; GELU and SoLU) and a 4-layer one (d_model
512, d_mlp 2048, ctx 256; GELU and SoLU). Each pair is indexed over the same --tokens of
`builtin` and then matched (`solu match`); the ablation is measured by indexing each
model's last layer alone with `--ablation on` and taking the time its ablation step took
times the number of layers (every layer's ablation runs the whole model over the same
number of windows); for the 4-layer pair with --top-k 2 on that layer, times 10 more
(the cost is linear in windows: the default --top-k is 20). Printed per model: the index
time, the connections' time (from index_details.timings) and the ablation's, and their ratios to the index time; per pair:
the match time and its ratio to indexing both models. The ablation does not grow with
--tokens and indexing does, so its ratio falls as --tokens grows.

    python benchmarks/bench_relations.py [--tokens 262144]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_index import builtin_tokenizer, random_checkpoint  # noqa: E402
from index.build import build_index  # noqa: E402
from index.engine.config import IndexConfig  # noqa: E402
from index.measure.matches import match  # noqa: E402
from solu.config import ModelConfig  # noqa: E402

PAIRS = {"demo (1L, d_mlp 512)": dict(n_layers=1, d_model=128, d_mlp=512, n_heads=4, n_ctx=128),
         "4L, d_mlp 2048": dict(n_layers=4, d_model=512, d_mlp=2048, n_heads=8, n_ctx=256)}
ABLATION_TOP_K = {1: 20, 4: 2}  # windows per neuron the ablation is timed on (its cost is linear in windows)
TOP_K = IndexConfig().top_k


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=262_144)
    args = p.parse_args()
    tok = builtin_tokenizer()
    print("| pair | model | index s | connections s (ratio) | ablation s (ratio) | match s (ratio to both indexes) |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        for pair, shape in PAIRS.items():
            ckpts = [random_checkpoint(root / f"{act}-{shape['n_layers']}l",
                                       ModelConfig(act_fn=act, d_vocab=4096, **shape), tok)
                     for act in ("gelu", "solu_ln")]
            db = root / f"{shape['n_layers']}l.duckdb"
            build_index(ckpts, IndexConfig(tokens=args.tokens, device="cpu"), db, progress=False)
            timings = read_timings(db)
            start = time.perf_counter()
            match(db, ckpts[0].name, ckpts[1].name)
            match_s = time.perf_counter() - start
            ablated = root / f"{shape['n_layers']}l-ablation.duckdb"
            last = str(shape["n_layers"] - 1)
            k = ABLATION_TOP_K[shape["n_layers"]]
            build_index(ckpts, IndexConfig(tokens=args.tokens, device="cpu", ablation=True, layers=last, top_k=k),
                        ablated, progress=False)
            ablation = {m: t["ablation_s"] * shape["n_layers"] * TOP_K / k for m, t in read_timings(ablated).items()}
            both = sum(t["total_s"] for t in timings.values())
            for i, (model, t) in enumerate(sorted(timings.items())):
                index_s = t["total_s"]
                matched = f"{match_s:.1f} ({match_s / both:.3f})" if i == 0 else ""
                print(f"| {pair} | {model} | {index_s:.1f} | {t['connections_s']:.2f} "
                      f"({t['connections_s'] / index_s:.3f}) | {ablation[model]:.1f} ({ablation[model] / index_s:.2f}) "
                      f"| {matched} |", flush=True)


def read_timings(db: Path) -> dict[str, dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {m: json.loads(t) for m, t in con.execute("SELECT model_id, timings FROM index_details").fetchall()}
    finally:
        con.close()

if __name__ == "__main__":
    main()
