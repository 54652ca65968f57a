"""Subcommands of the `solu` package: train, compare (checkpoints), corpus."""
from __future__ import annotations

from pathlib import Path

from solu.errors import UserError

MODEL_DEFAULTS = {"act": None, "layers": 1, "d_model": 128, "d_mlp": 512, "heads": 4, "ctx": 128, "vocab": 4096}


def register(sub) -> None:
    p = sub.add_parser("train", help="train a GELU or SoLU model into a checkpoint directory")
    p.add_argument("--act", help="gelu or solu_ln (required unless --resume)")
    p.add_argument("--layers", type=int)
    p.add_argument("--d-model", type=int)
    p.add_argument("--d-mlp", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--ctx", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--dataset", default="builtin", help="builtin, a .txt/.jsonl/.parquet file or folder, or hf:NAME[:split]")
    p.add_argument("--text-column", default="text")
    p.add_argument("--tokens", type=int, help="training tokens (default 2M; with --resume, raises the budget)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup-tokens", type=int, default=100_000)
    p.add_argument("--eval-tokens", type=int, default=65_536)
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--tokenizer", help="use this tokenizer.json instead of training one")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="print checkpoints side by side; with --db, report on two indexed models")
    p.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT|MODEL",
                   help="checkpoint directories, or with --db two model ids")
    p.add_argument("--db", type=Path, help="an index: write the interpretability report for MODEL_A MODEL_B")
    p.add_argument("--out", type=Path, help="with --db: report folder (default compare-A-vs-B)")
    p.add_argument("--threshold", type=float, default=0.5, help="with --db: selectivity threshold (default 0.5)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("corpus", help="build the offline builtin corpus and print its composition")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_corpus)


def _model_config(args):
    from solu.config import ModelConfig

    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in MODEL_DEFAULTS.items()}
    if values["act"] is None:
        raise UserError("--act is required (gelu or solu_ln)")
    try:
        return ModelConfig(act_fn=values["act"], n_layers=values["layers"], d_model=values["d_model"],
                           d_mlp=values["d_mlp"], n_heads=values["heads"], n_ctx=values["ctx"],
                           d_vocab=values["vocab"])
    except ValueError as e:
        raise UserError(str(e)) from None


def cmd_train(args) -> int:
    from solu.config import TrainConfig
    from solu.train import train

    if args.resume and any(getattr(args, k) is not None for k in MODEL_DEFAULTS):
        raise UserError("--resume continues the saved run; drop the model flags (only --tokens may be raised)")
    if args.resume:
        meta = train(None, None, args.out, resume=True, force=args.force, tokens=args.tokens)
    else:
        model_cfg = _model_config(args)
        try:
            train_cfg = TrainConfig(dataset=args.dataset, text_column=args.text_column,
                                    tokens=2_000_000 if args.tokens is None else args.tokens,
                                    batch_size=args.batch_size, lr=args.lr, warmup_tokens=args.warmup_tokens,
                                    eval_tokens=args.eval_tokens, seed=args.seed, device=args.device,
                                    checkpoint_every=args.checkpoint_every)
        except ValueError as e:
            raise UserError(str(e)) from None
        meta = train(model_cfg, train_cfg, args.out, force=args.force, tokenizer_path=args.tokenizer)
    print(f"{args.out}: {meta['act_fn']} eval loss {meta['eval_loss']:.4f} after {meta['tokens_seen']:,} tokens "
          f"({meta['tokens_per_s']:,.0f} tokens/s)")
    return 0


def checkpoint_table(paths: list[Path]) -> list[dict]:
    from solu.checkpoint import read_meta

    rows = []
    for path in paths:
        meta = read_meta(path)
        m = meta["model"]
        rows.append({
            "checkpoint": str(path), "act_fn": m["act_fn"],
            "shape": f"{m['n_layers']}L d{m['d_model']} mlp{m['d_mlp']} h{m['n_heads']} ctx{m['n_ctx']} v{m['d_vocab']}",
            "params": f"{meta.get('n_params', 0):,}", "tokens": f"{meta.get('tokens_seen', 0):,}",
            "eval_loss": f"{meta['eval_loss']:.4f}" if meta.get("eval_loss") is not None else "-",
            "tokens/s": f"{meta['tokens_per_s']:,.0f}" if meta.get("tokens_per_s") else "-",
            "train_s": f"{meta.get('train_seconds', 0):,.0f}",
        })
    return rows


def format_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def cmd_compare(args) -> int:
    if args.db is not None:
        from index.measure.commands import cmd_compare_report

        return cmd_compare_report(args)
    if args.out is not None:
        raise UserError("--out needs --db (the report compares two indexed models)")
    print(format_table(checkpoint_table(args.checkpoints)))
    return 0


def cmd_corpus(args) -> int:
    from solu.corpus import builtin_composition, builtin_path, format_composition

    path = builtin_path(args.seed)
    print(f"{path}\n{format_composition(builtin_composition(path))}")
    return 0

