"""Everything downstream of the index at GPT-2-small scale: the explorer's pages, `solu
autolabel`, `solu match`, `solu compare` and `solu sql`, on an index of two models of
12 layers x 3,072 neurons.

Every operation runs in a fresh process, so its peak RSS is its own:
  CLI commands     `solu ...` as a child process; peak RSS from wait4 (the largest process
                   among the command and the workers it waited for), and the peak of the
                   summed PSS of its process tree, sampled every 0.2 s (autolabel forks
                   workers that share pages with it: PSS counts a shared page once)
  explorer pages   a child Python process calls the functions the page calls
                   (index.store.queries through explorer.db.read, the app's shared
                   read-only connection), or runs the page's whole script in Streamlit's
                   AppTest; its seconds exclude the imports, its RSS includes them
The index is copied first (autolabel and match write into it), then measured in this
order: autolabel per model, match, compare, every example query of docs/sql.md, the
Neurons list, the neuron page, the Models page. Targets (issue 25): the neuron page
<= 2 s; the Neurons list pages without loading every neuron (rows = what came back to
Python); autolabel at most the model's index time and 2 GB.

  python benchmarks/bench_downstream.py --db /work/scale/gpt2.duckdb      # an index of two models
  python benchmarks/bench_downstream.py --build /work/scale               # build it first (~6 min)

--build writes DIR/gpt2-a and DIR/gpt2-b (GPT-2-small-shaped GELU checkpoints with random
weights, seeds 0 and 1, the 4,096-token BPE of bench_index) and indexes both into
DIR/gpt2.duckdb with `solu index CKPT --db DB --tokens 8192 --sample-tokens 4096`
(what exists is kept).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "helpers"), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GPT2_SMALL = dict(act_fn="gelu", n_layers=12, d_model=768, d_mlp=3072, n_heads=12, n_ctx=1024)
PAGE_SIZE = 100  # explorer.views.neurons.PAGE_SIZE


# ---------------------------------------------------------------- running one operation in a process

def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def _pss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total / 1024


def measure(cmd: list[str], log: Path) -> dict:
    """Run cmd; its wall seconds, exit code, peak RSS (wait4) and peak sampled tree PSS."""
    peak, done = [0.0], threading.Event()
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], _pss_mb(_tree(proc.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "rc": proc.returncode,
            "rss_mb": usage.ru_maxrss / 1024, "tree_mb": peak[0]}


def solu(*args: str) -> list[str]:
    return [sys.executable, "-m", "solu.cli", *args]


def child(op: str, db: Path, *args: str) -> list[str]:
    return [sys.executable, __file__, "--child", op, "--db", str(db), *args]


# ---------------------------------------------------------------- children: what the pages do

def neuron_page_queries(con, model_id: str, layer: int, neuron: int, site: str) -> int:
    """Every query views/neuron.py makes for one neuron (data.query / data.fresh), in its order;
    returns the rows they brought back."""
    from index.store import queries as q

    frames = [q.sites(con), q.neuron(con, model_id, layer, neuron, site),
              q.current_labels(con, model_id, layer, neuron), q.models(con),
              q.current_labels(con, model_id, layer, neuron), q.label_history(con, model_id, layer, neuron),
              q.logits(con, model_id, layer, neuron), q.connections(con, model_id, layer, neuron),
              q.matches(con, model_id, layer, neuron), q.ln_agreement(con, model_id, layer, neuron),
              q.examples(con, model_id, layer, neuron, site), q.explanation(con, model_id, layer, neuron, site),
              q.ablation(con, model_id, layer, neuron)]
    return sum(len(f) for f in frames)


def sample_neurons(db: Path, n: int) -> list[tuple]:
    """n primary-site neurons spread over the models and layers (a fixed hash), the
    neuron with the most stored examples first."""
    from index.store.connection import open_read

    with open_read(db) as con:
        first = con.execute("""SELECT model_id, layer, neuron, site FROM examples GROUP BY ALL
                               ORDER BY count(*) DESC, model_id, layer, neuron, site LIMIT 1""").fetchall()
        rest = con.execute("""SELECT model_id, layer, neuron, site FROM neurons WHERE is_primary
                              ORDER BY hash(model_id, layer, neuron, 7) LIMIT ?""", [n - 1]).fetchall()
    return first + rest


class Clock:
    """Wall and CPU seconds (this process) since start()."""

    def start(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def read(self) -> dict:
        return {"seconds": time.perf_counter() - self.wall, "cpu_s": time.process_time() - self.cpu}


def run_child(op: str, db: Path, args) -> dict:
    from explorer import db as app_db
    from index.store import queries as q

    if op == "neuron-page":
        times, rows = [], 0
        for target in sample_neurons(db, args.neurons):
            app_db.close()  # a visit after the app's idle second: a new connection
            clock = Clock().start()
            rows += app_db.read(db, neuron_page_queries, *target)
            times.append(clock.read())
        times.sort(key=lambda t: t["seconds"])
        return {**times[len(times) // 2], "rows": rows,
                "note": f"{len(times)} neurons, each on a new connection; median (max {times[-1]['seconds']:.3f} s)"}
    if op == "neurons-list":
        kwargs = json.loads(args.kwargs)
        page_no = kwargs.pop("page", 1)
        clock = Clock().start()
        total = app_db.read(db, q.neuron_table, **kwargs, limit=1).total  # the page counts first
        total = int(total.iloc[0]) if len(total) else 0
        n_pages = max(1, -(-total // PAGE_SIZE))
        offset = (min(page_no, n_pages) if page_no > 0 else n_pages) * PAGE_SIZE - PAGE_SIZE
        page = app_db.read(db, q.neuron_table, **kwargs, limit=PAGE_SIZE, offset=offset)
        return {**clock.read(), "rows": len(page) + 1,
                "note": f"{total:,} match, offset {offset:,}"}
    if op == "models-queries":
        from index.measure import compare

        models = json.loads(args.kwargs)["models"]
        clock = Clock().start()
        frames = [app_db.read(db, q.models), app_db.read(db, q.model_summary),
                  app_db.read(db, compare.neuron_stats, models)]
        tables = app_db.read(db, compare.compare_tables, [[models[0]], [models[1]]])
        rows = sum(len(f) for f in frames) + sum(len(t) for t in tables.values())
        return {**clock.read(), "rows": rows, "note": "models, model_summary, "
                "neuron_stats, compare_tables"}
    if op.startswith("app-"):
        return app_page(db, op.removeprefix("app-"), json.loads(args.kwargs))
    if op == "browser":
        return {"rows": browser_pages(db, sample_neurons(db, args.neurons)[:5], Path(args.kwargs))}
    raise SystemExit(f"unknown child {op}")


def browser_pages(db: Path, neurons: list[tuple], log: Path) -> list[dict]:
    """Seconds until what a reader waits for is on screen in headless Chromium, with
    `solu app` serving the index: a neuron page opened from its URL (its first snippet's
    heatmap), the next neuron by 'Next', the Neurons list (its table), the Models page
    (down to its last section)."""
    from browser_app import browser, running_app

    def timed(go, ready) -> float:
        start = time.perf_counter()
        go()
        ready()
        return time.perf_counter() - start

    out = []
    with running_app(db, log) as url, browser() as b:
        page = b.new_page(viewport={"width": 1440, "height": 1000})
        heatmap = page.locator(".snippet .heatmap:visible").first
        page.goto(f"{url}/neuron")  # first visit: the app's static files into the browser's cache
        heatmap.wait_for(timeout=120_000)
        query = lambda n: "&".join(f"{k}={v}" for k, v in zip(("model", "layer", "neuron", "site"), n))  # noqa: E731
        loads = [timed(lambda: page.goto(f"{url}/neuron?{query(n)}"), lambda: heatmap.wait_for(timeout=120_000))
                 for n in neurons]
        steps = []
        for _ in neurons:
            title = page.locator(".neuron-header div").first.inner_text()
            steps.append(timed(lambda: page.get_by_role("button", name="Next").click(), lambda: (
                page.wait_for_function("t => document.querySelector('.neuron-header div')?.innerText !== t",
                                       arg=title, timeout=120_000), heatmap.wait_for(timeout=120_000))))
        for name, times in (("neuron page from its URL", loads), ("next neuron (in the app)", steps)):
            times.sort()
            out.append({"name": f"Chromium: {name}", "seconds": times[len(times) // 2],
                        "note": f"median of {len(times)} (max {times[-1]:.2f} s)"})
        out.append({"name": "Chromium: Neurons list from its URL", "seconds": timed(
            lambda: page.goto(f"{url}/neurons"),
            lambda: page.get_by_text("neurons match").wait_for(timeout=120_000)), "note": "until its caption"})
        out.append({"name": "Chromium: Models page from its URL", "seconds": timed(
            lambda: page.goto(f"{url}/models"),
            lambda: page.get_by_text("Full configs").wait_for(timeout=300_000)),
            "note": "until its last section"})
    return out


def app_page(db: Path, page: str, params: dict) -> dict:
    """The page's whole script in AppTest (the app's home page, the Neurons list, runs
    first, as in a browser; only the page's own run is timed)."""
    import logging

    from helpers.explorer_fixtures import APP
    from streamlit.testing.v1 import AppTest

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    os.environ["SOLU_DB"] = str(db)
    at = AppTest.from_file(str(APP), default_timeout=600)
    clock = Clock().start()
    at.run()
    timed = clock.read()
    if page != "neurons":
        for key, value in params.items():
            at.query_params[key] = str(value)
        clock.start()
        at.switch_page(f"views/{page}.py").run()
        timed = clock.read()
    if at.exception:
        raise SystemExit(f"{page}: {[e.value for e in at.exception]}")
    rows = sum(len(d.value) for d in at.dataframe)
    elements = [*at.get("vega_lite_chart"), *at.dataframe, *at.html]
    sent = sum(e.proto.ByteSize() for e in elements) / 1e6
    return {**timed, "rows": rows, "note": f"{len(at.html)} HTML blocks, {len(at.dataframe)} tables, "
            f"{len(at.get('vega_lite_chart'))} charts: {sent:.2f} MB"}


# ---------------------------------------------------------------- building the index

def build(root: Path, tokens: int, sample_tokens: int) -> tuple[Path, list[dict]]:
    """DIR/gpt2-a, DIR/gpt2-b and DIR/gpt2.duckdb (what exists is kept); the index rows.
    Each checkpoint is made in a child process: Linux starts a child's peak RSS (wait4) at
    its parent's, so a benchmark process that had held the weights would floor every
    measured command's peak RSS at its own."""
    root.mkdir(parents=True, exist_ok=True)
    db, rows = root / "gpt2.duckdb", []
    for name, seed in (("gpt2-a", 0), ("gpt2-b", 1)):
        ckpt = root / name
        if not (ckpt / "config.json").exists():
            subprocess.run([sys.executable, __file__, "--make-checkpoint", str(ckpt), "--seed", str(seed)], check=True)
        if name not in model_ids(db):
            cmd = solu("index", str(ckpt), "--db", str(db), "--tokens", str(tokens), "--sample-tokens",
                       str(sample_tokens), "--no-progress")
            rows.append(row(f"solu index {name}", measure(cmd, root / f"index-{name}.log"), " ".join(cmd[2:])))
    return db, rows


def make_checkpoint(ckpt: Path, seed: int) -> None:
    """A GPT-2-small-shaped GELU checkpoint with random weights, on the 4,096-token BPE."""
    from bench_index import builtin_tokenizer
    from solu.checkpoint import save_checkpoint
    from solu.config import ModelConfig
    from solu.model import build_model

    tok = builtin_tokenizer()
    cfg = ModelConfig(**GPT2_SMALL, d_vocab=tok.get_vocab_size())
    model = build_model(cfg, seed=seed)
    meta = {"model": cfg.to_dict(), "act_fn": cfg.act_fn, "eval_loss": None, "tokens_seen": 0,
            "n_params": sum(p.numel() for p in model.parameters())}
    save_checkpoint(ckpt, model, tok, meta)


def model_ids(db: Path) -> list[str]:
    if not db.exists():
        return []
    from index.store.connection import open_read

    with open_read(db) as con:
        return [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY model_id").fetchall()]


def index_seconds(db: Path) -> dict[str, float]:
    from index.store.connection import open_read

    with open_read(db) as con:
        return dict(con.execute("SELECT model_id, seconds FROM latest_runs").fetchall())


# ---------------------------------------------------------------- the measurements

def row(name: str, result: dict, note: str = "") -> dict:
    if result.get("rc"):
        note = f"FAILED (exit {result['rc']}) {note}"
    return {"operation": name, "seconds": result["seconds"], "CPU s": result["cpu_s"], "peak RSS MB": result["rss_mb"],
            "tree PSS MB": result.get("tree_mb", float("nan")), "rows": result.get("rows", ""),
            "note": result.get("note", note)}


def in_child(name: str, op: str, db: Path, work: Path, **kwargs) -> dict:
    log = work / f"{op}.log"
    result = measure(child(op, db, "--kwargs", json.dumps(kwargs)), log)
    lines = log.read_text().strip().splitlines()
    if result["rc"] or not lines:
        raise SystemExit(f"{name} failed:\n{log.read_text()[-3000:]}")
    return row(name, {**result, **json.loads(lines[-1])})


def in_browser(db: Path, work: Path) -> list[dict]:
    log = work / "browser.log"
    result = measure(child("browser", db, "--kwargs", str(work / "app.log")), log)
    lines = log.read_text().strip().splitlines()
    if result["rc"] or not lines:
        raise SystemExit(f"the browser measurement failed:\n{log.read_text()[-3000:]}")
    found = json.loads(lines[-1])["rows"]
    return [row(r["name"], {**result, "seconds": r["seconds"], "cpu_s": float("nan"),
                            "note": f"{r['note']}; RSS and PSS: the app, Chromium and the driver"}) for r in found]


def cli(name: str, work: Path, *args: str, note: str = "") -> dict:
    log = work / f"{name.replace(' ', '_').replace('/', '_')}.log"
    result = measure(solu(*args), log)
    if result["rc"]:
        first = next((line for line in log.read_text().splitlines() if "error" in line.lower()), "")
        note = f"{note} {first[:120]}".strip()
    return row(name, result, note)


def measure_all(db: Path, models: list[str], work: Path, skip: list[str]) -> list[dict]:
    rows = []
    for measure_part in (command_rows, page_rows, browser_rows):
        for r in measure_part(db, models, work, skip):
            print_row(r)
            rows.append(r)
    return rows


def command_rows(db: Path, models: list[str], work: Path, skip: list[str]):
    from explorer.sql_examples import examples

    a, b = models
    indexed = index_seconds(db)
    for m in models if "autolabel" not in skip else []:
        r = cli(f"solu autolabel {m}", work, "autolabel", "--db", str(db), "--models", m, "--no-progress")
        yield {**r, "note": f"index took {indexed.get(m, float('nan')):.0f} s; {r['note']}".strip("; ")}
    if "match" not in skip:
        yield cli("solu match", work, "match", "--db", str(db), a, b, "--no-progress")
    if "compare" not in skip:
        yield cli("solu compare", work, "compare", "--db", str(db), a, b, "--out", str(work / "compare"), "--force")
    for i, (title, sql) in enumerate(examples().items() if "sql" not in skip else []):
        yield cli(f"solu sql #{i + 1}", work, "sql", "--db", str(db), sql, note=title[:60])


def page_rows(db: Path, models: list[str], work: Path, skip: list[str]):
    if "pages" in skip:
        return
    lists = [("Neurons list: first page", {}),
             ("Neurons list: filtered page", {"models": [models[1]], "layers": [5], "sort": "heldout_score",
                                              "labeled": "suggested"}),
             ("Neurons list: label search", {"search": "punct"}),
             ("Neurons list: last page, by density", {"page": 0, "sort": "density", "descending": False}),
             ("Neurons list: page 500, by neuron", {"page": 500, "sort": "neuron", "descending": False})]
    for name, kwargs in lists:
        yield in_child(name, "neurons-list", db, work, **kwargs)
    yield in_child("neuron page: its queries", "neuron-page", db, work)
    neuron = dict(zip(("model", "layer", "neuron", "site"), sample_neurons(db, 1)[0]))
    for name, op, params in (("Neurons list: whole page (AppTest)", "app-neurons", {}),
                             ("neuron page: whole page (AppTest)", "app-neuron", neuron),
                             ("Models page: its queries", "models-queries", {"models": models}),
                             ("Models page: whole page (AppTest)", "app-models", {}),
                             ("Text probe: whole page (AppTest)", "app-probe", neuron),
                             ("SQL page: whole page (AppTest)", "app-sql", {})):
        yield in_child(name, op, db, work, **params)


def browser_rows(db: Path, models: list[str], work: Path, skip: list[str]):
    from browser_app import chromium_path

    if "browser" in skip:
        return
    if chromium_path() is None:
        print("chromium not found: no browser measurement")
        return
    yield from in_browser(db, work)


# ---------------------------------------------------------------- the table

def cell(v) -> str:
    if isinstance(v, float):
        return "-" if v != v else f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def print_row(r: dict) -> None:
    print("  ".join(cell(v) for v in r.values()), flush=True)


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    numeric = ("seconds", "CPU s", "peak RSS MB", "tree PSS MB", "rows")
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if c in numeric else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(cell(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--db", type=Path, help="an index holding two models (it is copied, not changed)")
    where.add_argument("--build", type=Path, metavar="DIR", help="build the checkpoints and the index in DIR first")
    p.add_argument("--tokens", type=int, default=8192, help="with --build: tokens indexed per model (default 8192)")
    p.add_argument("--sample-tokens", type=int, default=4096,
                   help="with --build: tokens of the activation sample (default 4096: about 30M activation rows a "
                        "model with today's indexer)")
    p.add_argument("--models", nargs=2, metavar="MODEL", help="the two model ids (default: the index's first two)")
    p.add_argument("--work", type=Path, help="folder for the copy and the logs (default: a temporary one)")
    p.add_argument("--skip", nargs="+", default=[], choices=("autolabel", "match", "compare", "sql", "pages", "browser"),
                   help="leave these measurements out")
    p.add_argument("--neurons", type=int, default=20, help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint, args.seed)
        return 0
    if not (args.db or args.build):
        p.error("one of the arguments --db --build is required")
    if args.child:
        print(json.dumps(run_child(args.child, args.db, args)), flush=True)
        return 0
    rows = []
    if args.build:
        args.db, rows = build(args.build, args.tokens, args.sample_tokens)
        for r in rows:
            print_row(r)
    models = args.models or model_ids(args.db)[:2]
    if len(models) != 2:
        raise SystemExit(f"{args.db} holds {len(models)} models; two are needed")
    with tempfile.TemporaryDirectory(prefix="bench-downstream-", dir=args.work) as tmp:
        work = Path(tmp)
        copy = work / "index.duckdb"
        shutil.copyfile(args.db, copy)
        print(f"{args.db} ({args.db.stat().st_size / 1e6:,.0f} MB), models {', '.join(models)}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        rows += measure_all(copy, models, work, args.skip)
    print()
    print(markdown(rows))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
