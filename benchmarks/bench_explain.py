"""Scoring time and peak memory of `solu autolabel` (concept scores and held-out
explanations) on a synthetic index the size of GPT-2 small's MLPs.

The index has the real schema and the default `solu index` shape: 12 layers x 3,072
neurons (36,864), 20 top examples, 5 bands x 3 interval samples and 5 random samples per
neuron (windows of 41 tokens cut from a 1M-token corpus), and an activation sample of
65,536 tokens with --per-neuron recorded activations each. Every value comes from hashes
inside DuckDB, so the same arguments give the same file.

    python benchmarks/bench_explain.py [--layers 12 --d-mlp 3072] [--db FILE] [--workers N]

It prints the wall time and the peak memory of the autolabel process and its workers
together (proportional set size, sampled from /proc every 0.2 s), and the ratio to the
time indexing takes for a model of that size: a random-init GELU model of GPT-2 small's
shape (12 layers, d_model 768, d_mlp 3072, ctx 1024) indexed with `solu index` on
--index-tokens of `builtin`, its streaming rate projected to the default 1M tokens.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from index.store.schema import migrate  # noqa: E402

WORDS = (" the of and to in is that for it as with was on be by at this from or an are not have which one all "
         "but were their has more when can there been def return self None True import class range print x y "
         "value data list dict str int = ( ) : , . \n     QUJD ZGVm Z2hp == 0 1 2 3 12 three people workers").split(" ")


def build(path: Path, layers: int, d_mlp: int, per_neuron: int, docs: int = 2048, doc_len: int = 512) -> None:
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    con.execute("SET preserve_insertion_order = true")
    migrate(con)
    vocab = [w for w in WORDS if w] + ["\n"]
    con.execute("CREATE TEMP TABLE vocab AS SELECT unnest(?) AS token, generate_subscripts(?, 1) - 1 AS i",
                [vocab, vocab])
    n_vocab = len(vocab)
    con.execute(f"""CREATE TEMP TABLE corpus AS
        SELECT d.d AS doc_id, list(v.token ORDER BY p.p) AS toks
        FROM range({docs}) d(d), range({doc_len}) p(p) JOIN vocab v ON v.i = hash(d.d * 7919 + p.p) % {n_vocab}
        GROUP BY d.d""")
    con.execute("""INSERT INTO models (model_id, act_fn, n_layers, d_model, d_mlp, n_heads, n_ctx, d_vocab, n_params,
                   source) VALUES ('synth', 'gelu', ?, 768, ?, 12, 1024, 50257, 124000000, 'synthetic')""",
                [layers, d_mlp])
    con.execute("""INSERT INTO index_runs (run_id, model_id, dataset, tokens, top_k, window_before, window_after,
                   bands, samples_per_band, random_samples, activation_threshold, started_at)
                   VALUES ('synth-run', 'synth', 'synthetic', ?, 20, 32, 8, 5, 3, 5, 0.2, now())""",
                [docs * doc_len])
    con.execute(f"""INSERT INTO neurons (model_id, layer, neuron, site, is_primary, max_act, frac_active)
        SELECT 'synth', l.l, n.n, 'post', true, 3.0, 0.01 FROM range({layers}) l(l), range({d_mlp}) n(n)""")
    sample_docs = 65_536 // doc_len
    con.execute(f"""INSERT INTO tokens (model_id, doc_id, pos, token, token_id, segment)
        SELECT 'synth', doc_id, p - 1, toks[p], 0, 0 FROM corpus, range(1, {doc_len} + 1) r(p)
        WHERE doc_id < {sample_docs} ORDER BY doc_id, p""")
    kinds = "CASE WHEN w.w < 20 THEN 'top' WHEN w.w < 35 THEN 'interval' ELSE 'random' END"
    for layer in range(layers):  # one layer at a time keeps the build's memory small
        con.execute(f"""INSERT INTO examples (model_id, layer, neuron, site, kind, band, rank, doc_id, max_act,
                                              max_pos, start_pos, tokens, acts, segment)
            SELECT 'synth', {layer}, n.n, 'post', {kinds}, CASE WHEN w.w BETWEEN 20 AND 34 THEN (w.w - 20) // 3 END,
                   w.w, c.doc_id, 3.0 - w.w * 0.05, 32, s.start, c.toks[s.start + 1 : s.start + 41],
                   list_transform(range(41), lambda i: (hash({layer}, n.n, w.w, i) % 1000) / 1000.0 *
                                  CASE WHEN i = 32 THEN 3.0 ELSE 1.0 END), 0
            FROM range({d_mlp}) n(n), range(40) w(w),
                 LATERAL (SELECT hash(n.n, w.w, {layer}) % {docs} AS doc, hash(w.w, n.n, {layer}) % {doc_len - 41}
                          AS start) s
            JOIN corpus c ON c.doc_id = s.doc ORDER BY n.n, w.w""")
        con.execute(f"""INSERT INTO activations (model_id, layer, neuron, site, doc_id, pos, act, segment)
            SELECT 'synth', {layer}, n.n, 'post', any_value(hash(n.n, k.k, {layer}) % {sample_docs}) AS doc,
                   any_value(hash(k.k, n.n, {layer}) % {doc_len}) AS pos, 0.6 + (hash(n.n, k.k) % 100) / 40.0, 0
            FROM range({d_mlp}) n(n), range({per_neuron}) k(k) GROUP BY n.n, k.k ORDER BY n.n""")
    con.execute("CHECKPOINT")
    con.close()


def process_tree_pss(root: int) -> int:
    """Proportional set size of root and all its descendants now: resident bytes, a page
    shared by n processes (forked workers) counted 1/n in each, so the sum is what the tree holds."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
        todo += children.get(pid, [])
    return total


def index_seconds(tokens: int, root: Path) -> tuple[float, float]:
    """(tokens/s of `solu index` on a GPT-2-small-shaped random GELU model, projected
    seconds for IndexConfig's default token budget)."""
    from bench_index import builtin_tokenizer, random_checkpoint
    from index.engine.config import IndexConfig
    from solu.config import ModelConfig

    cfg = ModelConfig(act_fn="gelu", n_layers=12, d_model=768, d_mlp=3072, n_heads=12, n_ctx=1024, d_vocab=4096)
    random_checkpoint(root / "gpt2-shape", cfg, builtin_tokenizer())
    db = root / "index.duckdb"
    subprocess.run([sys.executable, "-m", "solu.cli", "index", str(root / "gpt2-shape"), "--db", str(db),
                    "--tokens", str(tokens), "--device", "cpu", "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    con = duckdb.connect(str(db), read_only=True)
    rate = con.execute("SELECT tokens_per_s FROM index_runs").fetchone()[0]
    con.close()
    return rate, IndexConfig().tokens / rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-mlp", type=int, default=3072)
    p.add_argument("--per-neuron", type=int, default=1000, help="recorded activations per neuron in the sample")
    p.add_argument("--db", type=Path, default=Path("/tmp/bench_explain.duckdb"))
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--index-tokens", type=int, default=32_768,
                   help="tokens `solu index` reads to measure its rate (0: skip the comparison)")
    args = p.parse_args()
    if args.rebuild or not args.db.exists():
        start = time.perf_counter()
        build(args.db, args.layers, args.d_mlp, args.per_neuron)
        print(f"built {args.db} ({args.layers * args.d_mlp:,} neurons) in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    argv = [sys.executable, "-m", "solu.cli", "autolabel", "--db", str(args.db), "--no-progress"]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    start, peak = time.perf_counter(), 0
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    while proc.poll() is None:
        peak = max(peak, process_tree_pss(proc.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"autolabel failed with exit {proc.returncode}")
    con = duckdb.connect(str(args.db), read_only=True)
    scored = con.execute("SELECT count(*) FROM explanations").fetchone()[0]
    con.close()
    print(f"neurons {args.layers * args.d_mlp:,} · explained {scored:,} · autolabel {seconds:.1f} s · "
          f"peak memory (PSS of the process tree) {peak / 2**30:.2f} GiB · cores {os.cpu_count()}")
    if args.index_tokens:
        import tempfile

        with tempfile.TemporaryDirectory() as root:
            rate, projected = index_seconds(args.index_tokens, Path(root))
        print(f"solu index, 12L d_mlp 3072 random GELU: {rate:,.0f} tokens/s over {args.index_tokens:,} tokens; "
              f"1M tokens would take {projected:,.0f} s · autolabel / indexing = {seconds / projected:.3f}")


if __name__ == "__main__":
    main()
