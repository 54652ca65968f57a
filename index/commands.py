"""Subcommands of the `index` package: index (build the neuron index), sql (query it)."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from solu.errors import UserError

SQL_FORMATS = ("table", "csv", "json")


def register(sub) -> None:
    from index.engine.config import IndexConfig
    from index.engine.shard_config import SHARD_FLAGS, ShardOptions
    from solu.flags import add_config_flags

    p = sub.add_parser("index", help="index every MLP neuron of one or more models into a DuckDB file")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="a checkpoint directory from 'solu train', a TransformerLens pretrained name (solu-2l, "
                        "gelu-2l, solu-1l-pile), or a Hugging Face model id or directory (gpt2, ./my-model)")
    p.add_argument("--name", help="the model_id to record (one MODEL only; default: the directory name, "
                                  "the pretrained name or the hub id)")
    p.add_argument("--db", required=True, type=Path, help="the DuckDB file to create or update")
    add_config_flags(p, IndexConfig)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; with --workers, "
                                                "per worker, default 1)")
    add_config_flags(p, ShardOptions, rename=SHARD_FLAGS, skip=("threads",), unset=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("sql", help="run a read-only SQL query against an index")
    p.add_argument("query", metavar="SQL")
    p.add_argument("--db", required=True, type=Path)
    p.add_argument("--format", choices=SQL_FORMATS, default="table")
    p.add_argument("--max-rows", type=int, default=1000, help="rows shown at most (default 1000)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before the query is stopped (default 10)")
    p.set_defaults(func=cmd_sql)


def cmd_index(args) -> int:
    from index.engine.config import IndexConfig
    from index.engine.index_run import build_index
    from index.store.writer import check_target
    from solu.corpus import check_dataset
    from solu.flags import config_from_args
    from solu.sources import check_available, resolve

    cfg = config_from_args(IndexConfig, args)
    shards = _shard_options(args)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be a positive integer")
        import torch

        torch.set_num_threads(args.threads)
    check_target(args.db)
    for model in args.models:
        check_available(resolve(model))
    if args.name is not None and len(args.models) != 1:
        raise UserError("--name names one model; index the others in their own run")
    check_dataset(cfg.dataset, cfg.text_column, cfg.seed)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        reports = build_index(args.models, cfg, args.db, progress=not args.no_progress, name=args.name,
                              shards=shards)
    except KeyboardInterrupt:
        raise UserError(f"interrupted; {args.db} was left as it was") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    for line in reports:
        print(line)
    return 0


def _shard_options(args):
    """ShardOptions when --workers is given, else None; Ray itself is imported only when a run starts."""
    from index.engine.shard_config import SHARD_FLAGS, ShardOptions
    from solu.flags import config_from_args, given

    if args.workers is None:
        if given(ShardOptions, args, skip=("threads",)):
            raise UserError("--ray-address needs --workers N")
        return None
    return config_from_args(ShardOptions, args, rename=SHARD_FLAGS, skip=("threads",),
                            threads=args.threads if args.threads is not None else 1)


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
    from solu.text_table import format_table

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
