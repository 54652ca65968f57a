"""Subcommands of the `solu` package: train, corpus, fetch."""
from __future__ import annotations

import os
import sys

from solu.errors import UserError
from solu.flags import check_count, cores, path

# the contract's short flag names for the model shape (solu train --act --layers --heads --ctx --vocab)
MODEL_FLAGS = {"act_fn": "act", "n_layers": "layers", "n_heads": "heads", "n_ctx": "ctx", "d_vocab": "vocab"}


def register(sub) -> None:
    from solu.config import ModelConfig, TrainConfig
    from solu.flags import add_config_flags

    p = sub.add_parser("train", help="train a GELU or SoLU model into a checkpoint directory")
    add_config_flags(p, ModelConfig, rename=MODEL_FLAGS, unset=True)
    add_config_flags(p, TrainConfig, unset=("tokens",))
    p.add_argument("--tokenizer", help="use this tokenizer.json instead of training one")
    p.add_argument("--out", required=True, type=path)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--threads", type=int, help="torch threads (with --nproc, per process; default: torch's choice, "
                                                "the cores / --nproc)")
    p.add_argument("--nproc", type=int, default=1,
                   help="train data-parallel in N processes on this machine, launched with torchrun; "
                        "--batch-size stays the global batch (default 1)")
    p.set_defaults(func=cmd_train, parser=p)

    p = sub.add_parser("fetch", help="download a pretrained model (and its tokenizer) into the Hugging Face cache, "
                                     "so that it loads offline")
    p.add_argument("model", metavar="NAME", help="a TransformerLens pretrained name (solu-2l, gelu-2l, solu-1l-pile) "
                                                 "or a Hugging Face model id (gpt2, EleutherAI/pythia-70m)")
    p.add_argument("--revision", help="a branch, tag or commit (default: main)")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("corpus", help="build the offline builtin corpus and print its composition")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_corpus)


def cmd_train(args) -> int:
    from solu.data_parallel import world_size

    ranks = world_size()
    if ranks == 1:
        check_count("--nproc", args.nproc, *_nproc_bound(args.device))
        if args.threads is not None:
            check_count("--threads", args.threads, max(1, cores() // args.nproc), "the cores of this machine / --nproc")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if ranks == 1 and args.nproc > 1:
        if not args.resume:  # every flag is checked here, before any rank starts
            _configs(args, copies=args.nproc)
        return _launch_ranks(args)
    if args.nproc not in (1, ranks):
        raise UserError(f"--nproc {args.nproc} disagrees with the {ranks} processes torchrun started")
    if ranks > 1 and int(os.environ["RANK"]) > 0:
        try:  # rank 0 reports the run and its errors
            _train(args)
        except UserError:
            return 2
        return 0
    meta = _train(args)
    corpus = f"; builtin corpus sha256 {meta['dataset_sha256'][:16]}" if meta.get("dataset_sha256") else ""
    print(f"{args.out}: {meta['act_fn']} eval loss {meta['eval_loss']:.4f} after {meta['tokens_seen']:,} tokens "
          f"({meta['tokens_per_s']:,.0f} tokens/s{corpus})")
    return 0


def _nproc_bound(device: str | None) -> tuple[int, str]:
    """How many training processes this machine takes: one per GPU on CUDA, one per core on the CPU."""
    import torch

    if device == "cuda" or (device in (None, "auto") and torch.cuda.is_available()):
        return max(torch.cuda.device_count(), 1), "the GPUs of this machine"
    return cores(), "the cores of this machine"


def _launch_ranks(args) -> int:
    """`solu train --nproc N`: the same command in N ranks under torchrun's launcher."""
    from solu.data_parallel import launch

    if not args.resume and args.batch_size % args.nproc:
        raise UserError(f"--batch-size {args.batch_size} is the global batch and must be a multiple of "
                        f"--nproc {args.nproc}")
    code = launch(args.nproc, rank_argv(args))
    if code not in (0, 2):  # 2: rank 0 printed a user error
        print(f"solu train: error: a training process failed with exit code {code} (its output is above)",
              file=sys.stderr)
    return code


def rank_argv(args) -> list[str]:
    """The command line each rank runs: this one without --nproc, every flag explicit."""
    argv = ["train"]
    for action in args.parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in ("help", "nproc") or value is None:
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:  # a switch (--resume, --force)
            argv += [flag] if value is True else []
        else:  # a value; an on/off flag as on or off
            argv += [flag, ("on" if value else "off") if isinstance(value, bool) else str(value)]
    return argv


def _train(args) -> dict:
    from solu.config import ModelConfig
    from solu.flags import given
    from solu.train import train

    if args.resume and given(ModelConfig, args):
        raise UserError("--resume continues the saved run; drop the model flags (only --tokens may be raised)")
    if args.resume:
        meta = train(None, None, args.out, resume=True, force=args.force, tokens=args.tokens)
    else:
        model_cfg, train_cfg = _configs(args)
        meta = train(model_cfg, train_cfg, args.out, force=args.force, tokenizer_path=args.tokenizer)
    return meta


def _configs(args, copies: int = 1):
    """The model and training configs the flags ask for, and a check that `copies` processes
    training that model fit in this machine's memory (CUDA ranks each hold theirs on a GPU)."""
    from solu.config import ModelConfig, TrainConfig
    from solu.flags import config_from_args
    from solu.model import check_fits

    model_cfg = config_from_args(ModelConfig, args, rename=MODEL_FLAGS)
    train_cfg = config_from_args(TrainConfig, args)
    check_fits(model_cfg, training=True, copies=1 if train_cfg.device == "cuda" else copies)
    return model_cfg, train_cfg


def cmd_fetch(args) -> int:
    from solu.hub import TL_LEGACY_FILES, TOKENIZER_FILES, cache_dir, hf_model_snapshot, offline, snapshot
    from solu.sources import resolve, tl_legacy_config

    ref = resolve(args.model)
    if ref.path is not None:
        raise UserError(f"{args.model} is a local directory; it loads as it is, with nothing to fetch")
    if ref.kind == "hf":
        path, commit = hf_model_snapshot(ref.repo, ref.spec, args.revision)
        parts = [f"{ref.repo}@{commit}"]
    else:
        import json

        path, commit = snapshot(ref.repo, ref.spec, TL_LEGACY_FILES, args.revision)
        parts = [f"{ref.repo}@{commit}"]
        cfg = tl_legacy_config(json.loads((path / "config.json").read_text()), ref.repo)
        if cfg.tokenizer_name:
            _, tok_commit = snapshot(cfg.tokenizer_name, cfg.tokenizer_name, TOKENIZER_FILES)
            parts.append(f"tokenizer {cfg.tokenizer_name}@{tok_commit}")
    verb = "found in" if offline() else "fetched into"
    print(f"{ref.model_id}: {', '.join(parts)} {verb} {cache_dir()}; `solu index {args.model} ...` now works "
          f"offline (HF_HUB_OFFLINE=1)")
    return 0


def cmd_corpus(args) -> int:
    from solu.corpus import builtin_composition, builtin_hash, builtin_path, format_composition

    path = builtin_path(args.seed)
    print(f"{path}\n{format_composition(builtin_composition(path))}\nsha256 {builtin_hash(args.seed)}")
    return 0

