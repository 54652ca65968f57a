"""`solu index`: index each checkpoint in turn and write them all into one database."""
from __future__ import annotations

import sys
from pathlib import Path

from index.engine.config import IndexConfig
from index.engine.index_model import ModelIndex, index_checkpoint
from index.engine.arrow_tables import model_tables, run_tables
from index.store.writer import IndexBuild
from solu.errors import UserError


def build_index(models: list[Path], cfg: IndexConfig, db: Path, progress: bool = True) -> list[str]:
    """Index `models` into `db`, replacing their earlier rows; labels are kept.
    Returns one report line per model. The database changes only if every model succeeds."""
    names = [Path(m).name for m in models]
    if len(set(names)) != len(names):
        raise UserError("two checkpoints share a directory name, which is the model_id; rename one")
    lines = []
    with IndexBuild(db) as build:
        for path in models:
            result = index_checkpoint(path, cfg, progress=progress)
            write_s = build.write(result.model_id, model_tables(result))
            build.write(result.model_id, run_tables(result, write_s))
            if result.tally.exhausted:
                print(f"solu index: {cfg.dataset} holds only {result.tally.tokens:,} tokens "
                      f"({cfg.tokens:,} asked); indexed all of them", file=sys.stderr)
            if result.tally.read.summary():
                print(f"solu index: {result.tally.read.summary()}", file=sys.stderr)
            lines.append(report_line(result, write_s))
            del result
        build.commit()
    return lines


def report_line(result: ModelIndex, write_s: float) -> str:
    t = result.timings
    return (f"{result.model_id}: {result.tally.tokens:,} tokens of {result.tally.documents:,} documents, "
            f"{len(result.sites)} site{'s' if len(result.sites) > 1 else ''} x {result.ckpt.model_cfg.d_mlp} neurons, "
            f"{result.tally.tokens / max(t['stream_s'], 1e-9):,.0f} tokens/s, write {write_s:.1f}s")
