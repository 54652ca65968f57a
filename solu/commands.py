"""Subcommands of the `solu` package: train, corpus."""
from __future__ import annotations

from pathlib import Path

from solu.errors import UserError

# the contract's short flag names for the model shape (solu train --act --layers --heads --ctx --vocab)
MODEL_FLAGS = {"act_fn": "act", "n_layers": "layers", "n_heads": "heads", "n_ctx": "ctx", "d_vocab": "vocab"}


def register(sub) -> None:
    from solu.config import ModelConfig, TrainConfig
    from solu.flags import add_config_flags

    p = sub.add_parser("train", help="train a GELU or SoLU model into a checkpoint directory")
    add_config_flags(p, ModelConfig, rename=MODEL_FLAGS, unset=True)
    add_config_flags(p, TrainConfig, unset=("tokens",))
    p.add_argument("--tokenizer", help="use this tokenizer.json instead of training one")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("corpus", help="build the offline builtin corpus and print its composition")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_corpus)


def cmd_train(args) -> int:
    from solu.config import ModelConfig, TrainConfig
    from solu.flags import config_from_args, given
    from solu.train import train

    if args.resume and given(ModelConfig, args):
        raise UserError("--resume continues the saved run; drop the model flags (only --tokens may be raised)")
    if args.resume:
        meta = train(None, None, args.out, resume=True, force=args.force, tokens=args.tokens)
    else:
        model_cfg = config_from_args(ModelConfig, args, rename=MODEL_FLAGS)
        train_cfg = config_from_args(TrainConfig, args)
        meta = train(model_cfg, train_cfg, args.out, force=args.force, tokenizer_path=args.tokenizer)
    print(f"{args.out}: {meta['act_fn']} eval loss {meta['eval_loss']:.4f} after {meta['tokens_seen']:,} tokens "
          f"({meta['tokens_per_s']:,.0f} tokens/s)")
    return 0


def cmd_corpus(args) -> int:
    from solu.corpus import builtin_composition, builtin_path, format_composition

    path = builtin_path(args.seed)
    print(f"{path}\n{format_composition(builtin_composition(path))}")
    return 0

