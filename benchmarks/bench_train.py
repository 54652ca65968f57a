"""Training throughput of GELU vs SoLU models of the same shape, measured in one run.

Both models train on the same token batches. Steps alternate between the models in
blocks, so machine noise hits both alike; the ratio is what to read. Peak memory is
measured in a fresh subprocess per model (resident set size, ru_maxrss).

    python benchmarks/bench_train.py [--steps 60] [--layers 1 --d-model 128 --d-mlp 512 ...]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from solu.commands import MODEL_FLAGS
from solu.config import ModelConfig, TrainConfig
from solu.flags import add_config_flags
from solu.model import build_model
from solu.train import lm_loss


def make_model(act: str, args):
    cfg = ModelConfig(act_fn=act, n_layers=args.n_layers, d_model=args.d_model, d_mlp=args.d_mlp,
                      n_heads=args.n_heads, n_ctx=args.n_ctx, d_vocab=args.d_vocab)
    model = build_model(cfg, seed=0).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def step(model, opt, tokens) -> None:
    loss = lm_loss(model, tokens)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def batches(args, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, args.d_vocab, (args.batch_size, args.n_ctx), generator=g) for _ in range(n)]


def throughput(args) -> dict[str, float]:
    models = {act: make_model(act, args) for act in ("gelu", "solu_ln")}
    data = batches(args, args.steps)
    for model, opt in models.values():  # warm-up
        step(model, opt, data[0])
    seconds = dict.fromkeys(models, 0.0)
    block = 5
    for start in range(0, args.steps, block):
        for act, (model, opt) in models.items():
            t0 = time.perf_counter()
            for tokens in data[start:start + block]:
                step(model, opt, tokens)
            seconds[act] += time.perf_counter() - t0
    tokens = args.steps * args.batch_size * args.n_ctx
    return {act: tokens / s for act, s in seconds.items()}


def peak_rss_mb(act: str, args) -> float:
    """Peak RSS of a fresh process that trains one model for a few steps."""
    cmd = [sys.executable, __file__, "--child", act, *sys.argv[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def child(act: str, args) -> None:
    model, opt = make_model(act, args)
    for tokens in batches(args, 5):
        step(model, opt, tokens)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    add_config_flags(p, ModelConfig, rename=MODEL_FLAGS, skip=("act_fn",))  # the model shape's defaults, written once
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args)
    rates = throughput(args)
    rss = {act: peak_rss_mb(act, args) for act in rates}
    print(f"shape: {args.n_layers}L d_model {args.d_model} d_mlp {args.d_mlp} heads {args.n_heads} ctx {args.n_ctx} "
          f"vocab {args.d_vocab} batch {args.batch_size}; {args.steps} steps each, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'model':<8} {'tokens/s':>10} {'peak RSS MB':>12}")
    for act in rates:
        print(f"{act:<8} {rates[act]:>10,.0f} {rss[act]:>12,.0f}")
    print(f"SoLU / GELU throughput: {rates['solu_ln'] / rates['gelu']:.2f}x (target >= 0.85x)")


if __name__ == "__main__":
    main()
