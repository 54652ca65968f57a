"""Build TransformerLens 4.x models and name their neuron sites.

This is the one place that turns a ModelConfig into a TransformerLens config, and the
one place that knows which hook carries each neuron's activation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import transformer_lens.model_bridge.sources  # noqa: F401  (attaches TransformerBridge.boot_native)
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from solu.config import ModelConfig


def bridge_config(cfg: ModelConfig, seed: int) -> TransformerBridgeConfig:
    return TransformerBridgeConfig(
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        n_layers=cfg.n_layers,
        n_ctx=cfg.n_ctx,
        n_heads=cfg.n_heads,
        d_vocab=cfg.d_vocab,
        d_mlp=cfg.d_mlp,
        act_fn=cfg.act_fn,
        normalization_type="LN",
        positional_embedding_type="standard",
        init_mode="gpt2",
        seed=seed,
        tokenizer_prepends_bos=False,
    )


def build_model(cfg: ModelConfig, seed: int, device: str | torch.device = "cpu") -> TransformerBridge:
    """A freshly initialised native bridge. The weights both activations share (all but
    the SoLU LayerNorm) come out identical for the same seed."""
    return TransformerBridge.boot_native(bridge_config(cfg, seed), device=device)


@dataclass(frozen=True)
class Site:
    """Where one layer's neuron activations are read.

    SoLU is read before its LayerNorm (what the SoLU paper interprets) and after it;
    GELU is read after the GELU.
    """

    layer: int
    name: str
    hook: str
    primary: bool


def neuron_sites(cfg: ModelConfig) -> list[Site]:
    sites = []
    for layer in range(cfg.n_layers):
        if cfg.act_fn == "solu_ln":
            sites.append(Site(layer, "pre_ln", f"blocks.{layer}.mlp.ln.hook_in", True))
            sites.append(Site(layer, "post_ln", f"blocks.{layer}.mlp.hook_post", False))
        else:
            sites.append(Site(layer, "post", f"blocks.{layer}.mlp.hook_post", True))
    return sites


def unembed(model: TransformerBridge) -> torch.Tensor:
    """W_U as [d_model, d_vocab]."""
    return model.W_U


def mlp_out_weights(model: TransformerBridge, layer: int) -> torch.Tensor:
    """W_out of one layer as [d_mlp, d_model]."""
    return model.W_out[layer]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device(device)
