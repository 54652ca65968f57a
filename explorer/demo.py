"""`solu demo`: corpus, a GELU and a SoLU model, one index with automatic labels, ready
for the app.

Both models share the shape, the seed, the data order and the tokenizer (the SoLU run
reuses the GELU run's), so they differ only in the activation. Each step is skipped when
its output is already complete in --out, so a second `solu demo` starts the app at once.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from index.engine.config import IndexConfig
from solu.checkpoint import CONFIG, TOKENIZER
from solu.config import ModelConfig, TrainConfig
from solu.errors import UserError


@dataclass(frozen=True)
class DemoPlan:
    shape: dict
    tokens: int
    index_tokens: int
    batch_size: int
    eval_tokens: int
    warmup_tokens: int


# the full demo is the configs' defaults (a dataclass field's default is also its class attribute)
FULL = DemoPlan(shape={name: getattr(ModelConfig, name) for name in ("n_layers", "d_model", "d_mlp", "n_heads",
                                                                    "n_ctx", "d_vocab")},
                tokens=TrainConfig.tokens, index_tokens=IndexConfig.tokens, batch_size=TrainConfig.batch_size,
                eval_tokens=TrainConfig.eval_tokens, warmup_tokens=TrainConfig.warmup_tokens)
QUICK = DemoPlan(shape=dict(n_layers=1, d_model=32, d_mlp=64, n_heads=2, n_ctx=32, d_vocab=320),
                 tokens=16_384, index_tokens=8_192, batch_size=16, eval_tokens=2_048, warmup_tokens=2_048)
MODELS = (("gelu", "gelu-1l"), ("solu_ln", "solu-1l"))


def step(number: int, total: int, text: str) -> None:
    print(f"\n[{number}/{total}] {text}", file=sys.stderr, flush=True)


def complete(checkpoint: Path) -> bool:
    from solu.checkpoint import read_meta

    try:
        return bool(read_meta(checkpoint).get("complete"))
    except UserError:
        return False


def train_model(act: str, out: Path, plan: DemoPlan, tokenizer: Path | None, force: bool) -> None:
    from solu.train import train

    if complete(out) and not force:
        print(f"{out} is already trained; skipping (--force retrains)", file=sys.stderr)
        return
    cfg = ModelConfig(act_fn=act, **plan.shape)
    tcfg = TrainConfig(dataset="builtin", tokens=plan.tokens, batch_size=plan.batch_size, seed=0, device="cpu",
                       eval_tokens=plan.eval_tokens, warmup_tokens=plan.warmup_tokens)
    meta = train(cfg, tcfg, out, force=True, tokenizer_path=str(tokenizer) if tokenizer else None)
    print(f"{out.name}: eval loss {meta['eval_loss']:.4f} after {meta['tokens_seen']:,} tokens "
          f"({meta['tokens_per_s']:,.0f} tokens/s)", file=sys.stderr)


def index_models(checkpoints: list[Path], db: Path, plan: DemoPlan, force: bool) -> None:
    from index.build import build_index

    newest = max((c / CONFIG).stat().st_mtime for c in checkpoints)
    if db.exists() and db.stat().st_mtime > newest and not force:
        print(f"{db} already indexes these checkpoints; skipping (--force re-indexes; labels are kept)",
              file=sys.stderr)
        return
    cfg = IndexConfig(dataset="builtin", tokens=plan.index_tokens, device="cpu", seed=0, ablation=True)
    for line in build_index(checkpoints, cfg, db, progress=True):
        print(line, file=sys.stderr)


def label_models(db: Path, force: bool, app: str) -> None:
    """`solu autolabel` on every model (skipped when the latest index run of every model
    is scored already), then where the base64 neurons are (their pages under the URL `app`)."""
    from index.measure.autolabel import autolabel
    from index.store.connection import open_read

    with open_read(db) as con:
        unscored = con.execute("SELECT count(*) FROM models WHERE model_id NOT IN "
                               "(SELECT model_id FROM current_concept_scores)").fetchone()[0]
    if not unscored and not force:
        print(f"{db} is already labelled; skipping (--force relabels; human labels are kept)", file=sys.stderr)
    else:
        autolabel(db, progress=True)
        match_models(db)
    for line in base64_neurons(db, app):
        print(line, file=sys.stderr)


def match_models(db: Path) -> None:
    """`solu match` on the GELU and SoLU model: each neuron's best matches in the other."""
    from index.measure.matches import match

    rows = match(db, MODELS[0][1], MODELS[1][1], progress=True)
    best = rows[rows["rank"] == 1]
    print(f"matched {MODELS[0][1]} and {MODELS[1][1]}: median best r {best.r.median():.2f}", file=sys.stderr)


def base64_neurons(db: Path, app: str, limit: int = 3) -> list[str]:
    """One line per model: its neurons automatically labelled base64, strongest first, each
    with the full URL of its page in the app served at `app` (http://host:port)."""
    from explorer.nav import Address
    from index.store.connection import open_read

    with open_read(db) as con:
        rows = con.execute("""
            SELECT b.model_id, b.layer, b.neuron, b.site, b.top_share FROM best_concepts b
            JOIN current_labels l ON l.model_id = b.model_id AND l.layer = b.layer AND l.neuron = b.neuron
                 AND l.source = 'auto' AND l.status = 'suggested' AND l.label = 'base64'
            WHERE b.concept = 'base64' ORDER BY b.model_id, b.top_share DESC, b.sample_share DESC NULLS LAST,
                  b.layer, b.neuron""").df()
        models = [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY model_id").fetchall()]
    lines = []
    for model_id in models:
        mine = rows[rows.model_id == model_id]
        found = ", ".join(f"L{r.layer}/N{r.neuron} ({r.top_share:.0%} of top examples; in the app: "
                          f"{app}/{Address(r.model_id, int(r.layer), int(r.neuron), r.site).url})"
                          for r in mine.head(limit).itertuples())
        lines.append(f"{model_id}: {len(mine)} neurons labelled base64" + (f": {found}" if found else ""))
    return lines


def demo_plan(quick: bool, tokens: int | None, index_tokens: int | None) -> DemoPlan:
    """The plan, with --tokens / --index-tokens if given (0 is refused like -1, not read as 'default')."""
    plan = QUICK if quick else FULL
    for flag, value in (("--tokens", tokens), ("--index-tokens", index_tokens)):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    return DemoPlan(plan.shape, plan.tokens if tokens is None else tokens,
                    plan.index_tokens if index_tokens is None else index_tokens, plan.batch_size,
                    plan.eval_tokens, plan.warmup_tokens)


def check_demo_out(out: Path, force: bool = False):
    """--out must be new, empty or a demo's folder (see OutputFolder); the corpus cache
    (SOLU_CACHE) a writable folder, or creatable. Returns the OutputFolder."""
    from solu.corpus import cache_dir
    from solu.outputs import OutputFolder, check_out_dir

    folder = OutputFolder(out, "--out", "demo", force=force)
    check_out_dir(cache_dir(), "SOLU_CACHE")
    return folder


def run_demo(out: Path, *, quick: bool = False, tokens: int | None = None, index_tokens: int | None = None,
             force: bool = False, app: str | None = None) -> Path:
    """Build everything under `out` and return the index's path; the neuron URLs it prints
    point at `app` (default: where `solu app` serves by default)."""
    from explorer.urls import app_url
    from solu.corpus import builtin_hash, builtin_path

    plan = demo_plan(quick, tokens, index_tokens)
    out = Path(out)
    folder = check_demo_out(out, force)
    folder.claim(*[name for _, name in MODELS], "index.duckdb", "index.duckdb.wal")
    start = time.perf_counter()
    checkpoints = [out / name for _, name in MODELS]
    try:
        step(1, 5, "builtin corpus (the standard library's sources and docstrings and pydoc's topics; built "
                   "once, then cached)")
        print(f"{builtin_path(0)} (sha256 {builtin_hash(0)})", file=sys.stderr)
        for i, ((act, _), ckpt) in enumerate(zip(MODELS, checkpoints)):
            step(2 + i, 5, f"training {ckpt.name} ({act}, {plan.tokens:,} tokens)")
            tokenizer = checkpoints[0] / TOKENIZER if i else None
            train_model(act, ckpt, plan, tokenizer, force)
    except BaseException:
        if not any(c.exists() for c in checkpoints):  # nothing to resume from: leave no folder
            folder.abandon()
        raise
    db = out / "index.duckdb"
    step(4, 5, f"indexing both models ({plan.index_tokens:,} tokens each) into {db}")
    index_models(checkpoints, db, plan, force)
    step(5, 5, "automatic labels and explanations (solu autolabel), and each neuron's match in the other model "
               "(solu match)")
    label_models(db, force, app or app_url())
    print(f"\ndemo ready in {time.perf_counter() - start:,.0f} s", file=sys.stderr)
    return db
