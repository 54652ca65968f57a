"""How fast is the explorer on a big index?

Builds (once) a synthetic index of 100k neurons x 20 examples with the real schema, then
measures
  1. the neuron page's queries, one batch per random neuron, on the app's shared
     connection (warm) and on a fresh read-only connection per batch (cold);
  2. the neurons table page's query (sorted, filtered, counted);
  3. the neuron page's load in headless Chromium: from navigation to its URL (a full
     page load) until the top examples' heatmap is on screen, and from a click on 'Next'
     until the next neuron's heatmap is.
Targets: neuron page queries p95 < 50 ms; neuron page load < 2 s.

    python benchmarks/bench_app.py [--db runs/bench/bench.duckdb] [--samples 200] [--pages 10]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from explorer import db as app_db  # noqa: E402
from index.store import queries  # noqa: E402
from index.store.connection import open_read  # noqa: E402
from synthetic_index import build_synthetic_index  # noqa: E402

SHAPE = dict(n_layers=4, d_mlp=12_500, examples=20, window=32)  # 2 models x 4 x 12,500 = 100k neurons
MODELS = (("gelu-bench", "gelu"), ("solu-bench", "solu_ln"))


def neuron_page_queries(con, model_id: str, layer: int, neuron: int, site: str) -> None:
    """What the neuron page reads for one neuron (sites and models come from its cache)."""
    queries.neuron(con, model_id, layer, neuron, site)
    queries.current_labels(con, model_id, layer, neuron)
    queries.label_history(con, model_id, layer, neuron)
    queries.logits(con, model_id, layer, neuron)
    queries.examples(con, model_id, layer, neuron, site)


def percentiles(xs: list[float]) -> str:
    xs = sorted(xs)
    p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return f"p50 {1e3 * p(0.5):7.1f} ms   p95 {1e3 * p(0.95):7.1f} ms   max {1e3 * xs[-1]:7.1f} ms"


def sample_neurons(n: int, seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        model_id, act = rng.choice(MODELS)
        site = "pre_ln" if act == "solu_ln" else "post"
        out.append((model_id, rng.randrange(SHAPE["n_layers"]), rng.randrange(SHAPE["d_mlp"]), site))
    return out


def bench_queries(db: Path, n: int) -> dict[str, list[float]]:
    targets = sample_neurons(n)
    times: dict[str, list[float]] = {"warm": [], "cold": [], "table": []}
    app_db.read(db, queries.sites)  # open the shared connection once
    for t in targets:
        start = time.perf_counter()
        app_db.read(db, neuron_page_queries, *t)
        times["warm"].append(time.perf_counter() - start)
    app_db.close()
    for t in targets:
        start = time.perf_counter()
        con = open_read(db)
        neuron_page_queries(con, *t)
        con.close()
        times["cold"].append(time.perf_counter() - start)
    for i in range(max(5, n // 20)):
        start = time.perf_counter()
        app_db.read(db, queries.neuron_table, search="base" if i % 2 else "", offset=100 * i, limit=100)
        times["table"].append(time.perf_counter() - start)
    app_db.close()
    return times


def bench_browser(db: Path, n: int, log: Path) -> tuple[list[float], list[float]]:
    """Seconds to a neuron page's heatmaps: opened from its URL, and reached with 'Next'."""
    from browser_app import browser, chromium_path, running_app

    if chromium_path() is None:
        print("chromium not found: skipping the browser measurement (apt-get install chromium)")
        return [], []
    times, steps = [], []
    with running_app(db, log) as url, browser() as b:
        page = b.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url + "/neuron")  # first visit: loads the app's static files into the browser cache
        page.get_by_text("Top 10 activations").wait_for(timeout=60_000)
        for model_id, layer, neuron, site in sample_neurons(n, seed=1):
            start = time.perf_counter()
            page.goto(f"{url}/neuron?model={model_id}&layer={layer}&neuron={neuron}&site={site}")
            page.get_by_text("Top 10 activations").wait_for(timeout=60_000)
            page.locator(".snippet .heatmap").first.wait_for(timeout=60_000)
            times.append(time.perf_counter() - start)
        for _ in range(n):
            title = page.locator(".neuron-header div").first.inner_text()
            start = time.perf_counter()
            page.get_by_role("button", name="Next").click()
            page.wait_for_function("t => document.querySelector('.neuron-header div')?.innerText !== t", arg=title,
                                   timeout=60_000)
            page.locator(".snippet .heatmap").first.wait_for(timeout=60_000)
            steps.append(time.perf_counter() - start)
    return times, steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, default=ROOT / "runs" / "bench" / "bench.duckdb")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--samples", type=int, default=200, help="neurons for the query measurement")
    ap.add_argument("--pages", type=int, default=10, help="neuron pages for the browser measurement")
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()

    if args.rebuild or not args.db.exists():
        args.db.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        build_synthetic_index(args.db, models=MODELS, **SHAPE)
        print(f"built {args.db} ({args.db.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s")
    con = open_read(args.db)
    n_neurons, n_examples = con.execute(
        "SELECT (SELECT count(*) FROM neurons), (SELECT count(*) FROM examples)").fetchone()
    con.close()
    print(f"index: {n_neurons:,} neurons, {n_examples:,} examples\n")

    times = bench_queries(args.db, args.samples)
    print(f"neuron page queries, shared connection  ({args.samples} neurons): {percentiles(times['warm'])}")
    print(f"neuron page queries, new connection     ({args.samples} neurons): {percentiles(times['cold'])}")
    print(f"neurons table page query                ({len(times['table'])} pages):   {percentiles(times['table'])}")
    if not args.no_browser:
        pages, steps = bench_browser(args.db, args.pages, args.db.with_suffix(".app.log"))
        if pages:
            print(f"neuron page load in Chromium, from URL  ({len(pages)} pages):   {percentiles(pages)}")
            print(f"next neuron in Chromium (in-app)        ({len(steps)} pages):   {percentiles(steps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
