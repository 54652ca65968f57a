"""What the activation rows' budget (--sample-rows) changes in the answers that read them.

The same trained checkpoints are indexed twice, on the same tokens:
  unbounded  --sample-rows 2**30: every sample token above threshold x max is kept
             (the rule before the budget), and --match-tokens 0, so that `solu match`
             reads r over the whole sample from the activations table
  bounded    each (site, neuron) keeps at most --keep rows, the share GPT-2 small gets
             at default flags (2**25 rows / 36,864 neurons = 910 of a 65,536-token sample),
             and the default match sample (`solu match` reads r over its tokens)
Then `solu autolabel` and `solu match` run on both databases (on the unbounded one with
the best 1,000 a neuron kept: every pair of models of up to 1,000 neurons, so that the
whole sample's r of any pair is known), and every SQL
example of explorer/sql_examples.sql (the SQL page's, included in docs/sql.md) runs on
both. Printed: how many neurons the budget bound; the held-out explanation scores (the
same explanation chosen? |score difference| median, 95th percentile, max); the best
concept per neuron (same?); `solu match`: the same best match?, the shortfall (the whole
sample's r of the best match minus its r of the bounded index's best match: 0 when the
two are the same or tie), and |r difference| of the bounded index's best match (its r
against the whole sample's r of that pair); and each SQL example (equal results, or the
largest relative difference of its numbers).

  python benchmarks/bench_sample_budget.py runs/seeds/gelu-s0 runs/seeds/solu-s0 --tokens 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))



def solu(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "solu.cli", *args], check=True, stdout=subprocess.DEVNULL)


def build(db: Path, checkpoints: list[str], tokens: int, keep: int | None) -> None:
    for ckpt in checkpoints:
        rows, flags = 2**30, ["--match-tokens", "0"]
        if keep is not None:
            flags = []
            cfg = json.loads((Path(ckpt) / "config.json").read_text())["model"]
            sites = 2 if cfg["act_fn"] == "solu_ln" else 1
            rows = keep * cfg["n_layers"] * cfg["d_mlp"] * sites
        solu("index", ckpt, "--db", str(db), "--tokens", str(tokens), "--sample-rows", str(rows), "--no-progress",
             *flags)
    solu("autolabel", "--db", str(db), "--no-progress")
    con = duckdb.connect(str(db), read_only=True)
    models = [m for (m,) in con.execute("SELECT model_id FROM models ORDER BY model_id").fetchall()]
    con.close()
    if len(models) == 2:  # the unbounded index keeps every pair's r: the reference of any match
        solu("match", "--db", str(db), *models, "--no-progress", *(["--top", "1000"] if keep is None else []))


def frame(db: Path, sql: str):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def summary(diff: np.ndarray) -> str:
    diff = np.abs(diff[~np.isnan(diff)])
    if not len(diff):
        return "n/a"
    return f"median {np.median(diff):.4f}, p95 {np.percentile(diff, 95):.4f}, max {diff.max():.4f} (n={len(diff)})"


def compare(a: Path, b: Path) -> None:
    bound = frame(b, "SELECT model_id, count(*) FILTER (WHERE sample_cut > activation_threshold * max_act * 1.000001) "
                     "AS bound, count(*) AS neurons FROM neurons JOIN latest_runs USING (model_id) GROUP BY model_id")
    rows = [frame(db, "SELECT model_id, count(*) AS n FROM activations GROUP BY model_id") for db in (a, b)]
    for m in bound.itertuples():
        na = int(rows[0].set_index("model_id").n[m.model_id])
        nb = int(rows[1].set_index("model_id").n[m.model_id])
        print(f"{m.model_id}: the budget bound {m.bound} of {m.neurons} neuron-sites; activation rows {na:,} -> {nb:,}")
    key = ["model_id", "layer", "neuron", "site"]
    ex = [frame(db, "SELECT model_id, layer, neuron, site, explanation, score FROM current_explanations") for db in (a, b)]
    e = ex[0].merge(ex[1], on=key, suffixes=("_a", "_b"))
    same = (e.explanation_a == e.explanation_b).mean()
    print(f"explanations: {len(e)} neurons; the same explanation for {same:.1%}; held-out score, all: "
          f"{summary((e.score_a - e.score_b).to_numpy())}")
    s = e[e.explanation_a == e.explanation_b]
    print(f"  same explanation, |score difference|: {summary((s.score_a - s.score_b).to_numpy())}")
    best = [frame(db, "SELECT model_id, layer, neuron, concept, top_share FROM best_concepts") for db in (a, b)]
    c = best[0].merge(best[1], on=["model_id", "layer", "neuron"], suffixes=("_a", "_b"))
    print(f"best concept: the same for {(c.concept_a == c.concept_b).mean():.1%} of {len(c)} neurons")
    auroc = [frame(db, "SELECT model_id, layer, neuron, site, concept, auroc FROM current_concept_scores")
             for db in (a, b)]
    u = auroc[0].merge(auroc[1], on=key + ["concept"], suffixes=("_a", "_b"))
    print(f"concept AUROC: {summary((u.auroc_a - u.auroc_b).to_numpy())}")
    m = [frame(db, "SELECT model_id, layer, neuron, other_layer, other_neuron, r, tokens, method FROM neuron_matches "
                   "WHERE rank = 1") for db in (a, b)]
    if len(m[0]):
        pair = ["model_id", "layer", "neuron", "other_layer", "other_neuron"]
        every = frame(a, "SELECT model_id, layer, neuron, other_layer, other_neuron, r FROM neuron_matches")
        j = m[0].merge(m[1], on=["model_id", "layer", "neuron"], suffixes=("_a", "_b"))
        chosen = m[1][pair].merge(every, on=pair, how="left")  # the whole sample's r of the bounded index's best
        j = j.merge(chosen.rename(columns={"other_layer": "other_layer_b", "other_neuron": "other_neuron_b",
                                           "r": "r_ref"}), on=["model_id", "layer", "neuron", "other_layer_b",
                                                               "other_neuron_b"])
        same = ((j.other_neuron_a == j.other_neuron_b) & (j.other_layer_a == j.other_layer_b)).mean()
        shortfall = (j.r_a - j.r_ref).to_numpy()
        print(f"solu match: {m[0].method.iloc[0]} ({m[0].tokens.iloc[0]:,} tokens) against {m[1].method.iloc[0]} "
              f"({m[1].tokens.iloc[0]:,} tokens); the same best match for {same:.1%} of {len(j)} neurons; "
              f"shortfall: {summary(shortfall)}, within 0.02 for {(shortfall <= 0.02).mean():.1%}; "
              f"|r difference| of the bounded best match: {summary((j.r_b - j.r_ref).to_numpy())}")
    for i, sql in enumerate(sql_examples(), 1):
        fa, fb = frame(a, sql), frame(b, sql)
        print(f"SQL example {i}: {describe(fa, fb)}")


def describe(fa, fb) -> str:
    if fa.shape != fb.shape:
        return f"{fa.shape[0]} rows unbounded, {fb.shape[0]} bounded"
    if fa.equals(fb):
        return f"equal ({len(fa)} rows)"
    nums = [c for c in fa.columns if pd.api.types.is_numeric_dtype(fa[c])]
    others = [c for c in fa.columns if c not in nums]
    differ = [c for c in others if not fa[c].equals(fb[c])]
    rel = max((np.nanmax(np.abs(fa[c] - fb[c]) / np.maximum(np.abs(fa[c]), 1e-12)) for c in nums), default=0.0)
    return (f"{len(fa)} rows; largest relative difference of a number {rel:.3g}"
            + (f"; other values differ in {', '.join(differ)}" if differ else ""))


def sql_examples() -> list[str]:
    """The example queries of explorer/sql_examples.sql (the docs' and the SQL page's),
    apart by blank lines."""
    text = (ROOT / "explorer" / "sql_examples.sql").read_text()
    return [q for part in text.split("\n\n") if (q := part.strip())]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--keep", type=int, default=910, help="rows per (site, neuron) in the bounded index")
    p.add_argument("--out", type=Path, default=None, help="keep the two databases in this folder")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        a, b = root / "unbounded.duckdb", root / "bounded.duckdb"
        for db, keep in ((a, None), (b, args.keep)):
            if not db.exists():
                build(db, args.checkpoints, args.tokens, keep)
        compare(a, b)


if __name__ == "__main__":
    main()
