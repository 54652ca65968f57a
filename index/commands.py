"""Subcommands of the `index` package: index (build the neuron index), sql (query it)."""
from __future__ import annotations

import signal
import sys

from solu.errors import UserError
from solu.flags import path

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
    p.add_argument("--db", required=True, type=path, help="the DuckDB file to create or update")
    add_config_flags(p, IndexConfig)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; with --workers, "
                                                "per worker, default 1)")
    add_config_flags(p, ShardOptions, rename=SHARD_FLAGS, skip=("threads",), unset=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("sql", help="run a read-only SQL query against an index")
    p.add_argument("query", metavar="SQL")
    p.add_argument("--db", required=True, type=path)
    p.add_argument("--format", choices=SQL_FORMATS, default="table")
    p.add_argument("--max-rows", type=int, default=1000, help="rows shown at most (default 1000)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before the query is stopped (default 10)")
    p.set_defaults(func=cmd_sql)


def cmd_index(args) -> int:
    from index.build import build_index
    from index.engine.config import IndexConfig
    from index.store.writer import check_target
    from solu.flags import check_count, config_from_args, cores
    from solu.sources import check_available, resolve

    cfg = config_from_args(IndexConfig, args)
    check_target(args.db)  # the database, before any model is looked up or loaded
    if args.threads is not None:
        check_count("--threads", args.threads, cores(), "the cores of this machine")
    shards = _shard_options(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    refs = [resolve(model) for model in args.models]
    for ref in refs:
        check_available(ref)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        reports = build_index(refs, cfg, args.db, progress=not args.no_progress, name=args.name, shards=shards)
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
    from solu.flags import MAX_CLUSTER_WORKERS, check_count, config_from_args, cores, given

    if args.workers is None:
        if given(ShardOptions, args, skip=("threads",)):
            raise UserError("--ray-address needs --workers N")
        return None
    if args.address:
        check_count("--workers", args.workers, MAX_CLUSTER_WORKERS, "workers sent to a cluster at once")
    else:
        check_count("--workers", args.workers, cores() // (args.threads or 1), "the cores of this machine / --threads")
    return config_from_args(ShardOptions, args, rename=SHARD_FLAGS, skip=("threads",),
                            threads=args.threads if args.threads is not None else 1)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def cmd_sql(args) -> int:
    from index.store.readonly_sql import open_query, sql_limits

    limits = sql_limits(max_rows=args.max_rows, timeout_s=args.timeout)
    with open_query(args.db, args.query, limits) as q:
        write = {"csv": _write_csv, "json": _write_json, "table": _write_table}[args.format]
        write(q.columns, q.chunks(), sys.stdout)
    if q.truncated:
        print(f"(truncated to the first {args.max_rows} rows; raise --max-rows for more)", file=sys.stderr)
    return 0


def _write_csv(columns: list[str], chunks, out) -> None:
    import csv

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for rows in chunks:
        writer.writerows([_csv_cell(v) for v in row] for row in rows)


def _csv_cell(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return "" if value is None else value


def _write_json(columns: list[str], chunks, out) -> None:
    """One JSON array of objects, written row by row."""
    import json

    out.write("[")
    first = True
    for rows in chunks:
        for row in rows:
            out.write(("" if first else ",\n") + json.dumps(dict(zip(columns, map(_jsonable, row))),
                                                         ensure_ascii=False))
            first = False
    out.write("]\n")


def _jsonable(value):
    """A SQL value as JSON: ISO dates, hex BLOBs, null for NaN and infinities."""
    import datetime
    import decimal
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


TABLE_BLOCK_ROWS = 1000


def _write_table(columns: list[str], chunks, out) -> None:
    """Aligned text, in blocks of TABLE_BLOCK_ROWS rows (each aligned on its own), then a row count."""
    import pandas as pd

    block: list[tuple] = []
    total = 0
    for rows in chunks:
        block.extend(rows)
        if len(block) >= TABLE_BLOCK_ROWS:
            out.write(format_frame(pd.DataFrame(block, columns=columns), footer=False) + "\n")
            total, block = total + len(block), []
    if block or not total:
        out.write(format_frame(pd.DataFrame(block, columns=columns), footer=False) + "\n")
    total += len(block)
    out.write(f"({total} row{'s' if total != 1 else ''})\n")


def format_frame(df, width: int = 60, footer: bool = True) -> str:
    """A DataFrame as an aligned text table; long cells cut to `width` characters."""
    from solu.text_table import format_table

    if df.columns.empty:
        return "(no columns)"
    cell = lambda v: (s if len(s := _text(v)) <= width else s[:width - 1] + "…")  # noqa: E731
    rows = [{str(c): cell(v) for c, v in zip(df.columns, r)} for r in df.itertuples(index=False)]
    if not rows:
        return format_table([{str(c): "" for c in df.columns}]).rsplit("\n", 1)[0] + ("\n(0 rows)" * footer)
    return format_table(rows) + (f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})" if footer else "")


def _text(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\n", "\\n")
