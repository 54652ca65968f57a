"""`solu index`: index each model in turn (index.engine.pipeline) and write them all into
one database (index.store.writer), all or nothing."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from index.engine.config import IndexConfig
from index.engine.pipeline import InProcess, ModelIndex, index_model
from index.store.rows import model_tables, run_tables
from index.store.connection import open_read
from index.store.writer import IndexBuild
from solu.corpus import check_dataset
from solu.errors import UserError
from solu.sources import ModelRef, resolve


def build_index(models: list, cfg: IndexConfig, db: Path, progress: bool = True, name: str | None = None,
                shards=None) -> list[str]:
    """Index `models` (MODEL specs or ModelRefs: solu.sources) into `db`, replacing
    their earlier rows; labels are kept. Returns one report line per model. The
    database changes only if every model succeeds. `name` overrides the model_id of a
    single model. `shards`, a shard_config.ShardOptions, spreads each model's run over
    Ray workers."""
    refs = [m if isinstance(m, ModelRef) else resolve(str(m)) for m in models]
    if name is not None and len(refs) != 1:
        raise UserError("--name names one model; index the others in their own run")
    if name:
        refs = [replace(refs[0], model_id=name)]
    ids = [r.model_id for r in refs]
    if len(set(ids)) != len(ids):
        raise UserError("two models have the same model_id "
                        f"({', '.join(sorted({i for i in ids if ids.count(i) > 1}))}); index one with --name")
    # the dataset exists and holds text, before anything loads (each model's plan reads it once more, to its budget)
    check_dataset(cfg.dataset, cfg.text_column, cfg.seed, whole=False)
    _check_same_models(Path(db), refs)
    lines = []
    with IndexBuild(db) as build, _executor(shards) as executor:
        for i, ref in enumerate(refs):
            result = index_model(ref, cfg, executor, progress=progress,
                                 position=f" (model {i + 1} of {len(refs)})" if len(refs) > 1 else "")
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


def _executor(shards):
    """InProcess; with --workers, LocalShards (processes on this machine); with
    --ray-address too, RayShards on that cluster (Ray is imported only then)."""
    if shards is None:
        return InProcess()
    if not shards.address:
        from index.engine.local_shards import LocalShards

        return LocalShards(shards)
    from index.engine.ray_shards import RayShards

    return RayShards(shards)


def _check_same_models(db: Path, refs: list[ModelRef]) -> None:
    """A model_id already in the database must come from the same place (re-indexing it
    replaces it); another model of that id is refused rather than overwritten. Read-only,
    before the build takes any lock (IndexBuild then checks the target itself)."""
    if not db.is_file() or db.is_symlink():
        return
    with open_read(db) as con:
        for ref in refs:
            row = con.execute("SELECT source FROM models WHERE model_id = ?", [ref.model_id]).fetchone()
            if row is not None and row[0] not in (None, ref.source):
                raise UserError(f"model_id {ref.model_id!r} is already in the database from {row[0]}, not "
                                f"{ref.source}; pick another id with --name")


def report_line(result: ModelIndex, write_s: float) -> str:
    t = result.timings
    return (f"{result.model_id}: {result.tally.tokens:,} tokens of {result.tally.documents:,} documents, "
            f"{len(result.sites)} site{'s' if len(result.sites) > 1 else ''} x {result.ckpt.model_cfg.d_mlp} neurons, "
            f"{result.tally.tokens / max(t['stream_s'], 1e-9):,.0f} tokens/s, write {write_s:.1f}s")
