"""Subcommands of the `index` package: index (build the neuron index), sql (query it)."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from solu.errors import UserError

SQL_FORMATS = ("table", "csv", "json")


def register(sub) -> None:
    p = sub.add_parser("index", help="index every MLP neuron of one or more checkpoints into a DuckDB file")
    p.add_argument("models", nargs="+", type=Path, metavar="MODEL", help="checkpoint directories from 'solu train'")
    p.add_argument("--db", required=True, type=Path, help="the DuckDB file to create or update")
    p.add_argument("--dataset", default="builtin", help="builtin, a .txt/.jsonl/.parquet file or folder, or hf:NAME[:split]")
    p.add_argument("--text-column", default="text")
    p.add_argument("--tokens", type=int, default=1_000_000, help="tokens to index per model (default 1M)")
    p.add_argument("--top-k", type=int, default=20, help="top documents kept per neuron (default 20)")
    p.add_argument("--window-before", type=int, default=32, help="tokens kept before an example's max (default 32)")
    p.add_argument("--window-after", type=int, default=8, help="tokens kept after it (default 8)")
    p.add_argument("--bands", type=int, default=5, help="equal-width activation bands in (0, max] (default 5)")
    p.add_argument("--per-band", type=int, default=3, help="random documents per band (default 3)")
    p.add_argument("--random", type=int, default=5, help="random documents regardless of activation (default 5)")
    p.add_argument("--threshold", type=float, default=0.2,
                   help="fraction of a neuron's max above which a token counts in frac_active_rel "
                        "and in the activations table (default 0.2)")
    p.add_argument("--sample-tokens", type=int, default=16_384,
                   help="tokens of the first documents whose activations go into the activations table (default 16384)")
    p.add_argument("--hist-bins", type=int, default=32)
    p.add_argument("--logit-k", type=int, default=10, help="top and bottom tokens of each neuron's logit effect")
    p.add_argument("--batch-size", type=int, default=32, help="rows of n_ctx tokens per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--stats-every", type=int, default=16,
                   help="token-level stats over one row in this many (1: every token; max is always exact)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random samples (and the builtin corpus)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("sql", help="run a read-only SQL query against an index")
    p.add_argument("query", metavar="SQL")
    p.add_argument("--db", required=True, type=Path)
    p.add_argument("--format", choices=SQL_FORMATS, default="table")
    p.add_argument("--max-rows", type=int, default=1000, help="rows shown at most (default 1000)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before the query is stopped (default 10)")
    p.set_defaults(func=cmd_sql)


def _index_config(args):
    from index.engine.config import IndexConfig

    names = ("dataset", "text_column", "tokens", "top_k", "window_before", "window_after", "bands", "per_band",
             "random", "threshold", "sample_tokens", "hist_bins", "stats_every", "logit_k", "batch_size", "device",
             "seed")
    try:
        return IndexConfig(**{n: getattr(args, n) for n in names})
    except ValueError as e:
        raise UserError(str(e)) from None


def cmd_index(args) -> int:
    cfg = _index_config(args)
    from index.engine.index_run import build_index
    from solu.checkpoint import read_meta
    from solu.corpus import check_dataset
    from index.store.writer import check_target

    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be a positive integer")
        import torch

        torch.set_num_threads(args.threads)
    check_target(args.db)
    for model in args.models:
        read_meta(model)
    check_dataset(cfg.dataset, cfg.text_column, cfg.seed)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        reports = build_index(args.models, cfg, args.db, progress=not args.no_progress)
    except KeyboardInterrupt:
        raise UserError(f"interrupted; {args.db} was left as it was") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    for line in reports:
        print(line)
    return 0


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def cmd_sql(args) -> int:
    from index.store.readonly_sql import run_query

    df, truncated = run_query(args.db, args.query, max_rows=args.max_rows, timeout_s=args.timeout)
    if args.format == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif args.format == "json":
        sys.stdout.write(df.to_json(orient="records", force_ascii=False, date_format="iso") + "\n")
    else:
        print(format_frame(df))
    if truncated:
        print(f"(truncated to the first {args.max_rows} rows; raise --max-rows for more)", file=sys.stderr)
    return 0


def format_frame(df, width: int = 60) -> str:
    """A DataFrame as an aligned text table; long cells cut to `width` characters."""
    from solu.commands import format_table

    if df.columns.empty:
        return "(no columns)"
    cell = lambda v: (s if len(s := _text(v)) <= width else s[:width - 1] + "…")  # noqa: E731
    rows = [{str(c): cell(v) for c, v in zip(df.columns, r)} for r in df.itertuples(index=False)]
    if not rows:
        return format_table([{str(c): "" for c in df.columns}]).rsplit("\n", 1)[0] + "\n(0 rows)"
    return format_table(rows) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})"


def _text(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\n", "\\n")
