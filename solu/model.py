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
from solu.errors import UserError


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
    the SoLU LayerNorm) come out identical for the same seed. A shape whose float32
    weights alone would not fit in this machine's available memory is refused first."""
    check_fits(cfg)
    return TransformerBridge.boot_native(bridge_config(cfg, seed), device=device)


def check_fits(cfg: ModelConfig, *, training: bool = False, copies: int = 1) -> None:
    """UserError when `copies` processes each holding the model's float32 weights (and, when
    training, its gradients and Adam's two moments: 16 bytes a parameter) exceed the memory
    available now (the bridge is built on the host before it moves to a device)."""
    per_param = 16 if training else 4
    need = cfg.n_params_estimate() * per_param * copies
    have = available_memory()
    if have is not None and need > have:
        what = "its weights" if not training else "its weights, gradients and optimiser state"
        procs = f" in each of {copies} processes" if copies > 1 else ""
        raise UserError(f"a model of this shape (d_model {cfg.d_model:,}, d_mlp {cfg.d_mlp:,}, {cfg.n_layers} "
                        f"layers) needs about {need / 2**30:,.1f} GB for {what}{procs}; this machine has "
                        f"{have / 2**30:,.1f} GB available")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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


def neuron_sites(model: TransformerBridge, act_fn: str) -> list[Site]:
    """The one function that picks the hooks carrying each layer's neuron activations,
    read off the bridge: an MLP's `hook_post` must alias a hook inside it (the input of
    its output projection), not the MLP's own output, as a mixture of experts' does.
    SoLU (act_fn solu_ln, with its LayerNorm `mlp.ln`) is read before the LayerNorm
    (primary) and after it. Raises ValueError saying why a model's MLP cannot be read."""
    sites = []
    hooks = model.hook_dict
    for layer in range(model.cfg.n_layers):
        post = f"blocks.{layer}.mlp.hook_post"
        mlp = getattr(model.blocks[layer], "mlp", None) if hasattr(model, "blocks") else None
        if mlp is None or post not in hooks:
            raise ValueError(f"layer {layer} has no MLP hook_post (attention-only or an unsupported block)")
        target = getattr(mlp, "hook_aliases", {}).get("hook_post", "")
        if isinstance(target, list) or target in ("hook_in", "hook_out") or "." not in target:
            raise ValueError(f"layer {layer}'s MLP ({type(mlp).__name__}) has no hook between its activation "
                             f"and its output projection (hook_post is {target!r}: a mixture of experts?)")
        pre_ln = f"blocks.{layer}.mlp.ln.hook_in"
        if act_fn == "solu_ln" and pre_ln in hooks:
            sites.append(Site(layer, "pre_ln", pre_ln, True))
            sites.append(Site(layer, "post_ln", post, False))
        else:
            sites.append(Site(layer, "post", post, True))
    return sites


def final_norm(model: TransformerBridge) -> tuple[str, torch.Tensor | None]:
    """The final norm's kind ('LN' centres then scales, 'RMS' scales, 'none') and its
    weight over d_model (None where it has none)."""
    kind = str(getattr(model.cfg, "normalization_type", None) or "none").upper()
    kind = "RMS" if kind.startswith("RMS") or getattr(model.cfg, "final_rms", False) else \
        "LN" if kind.startswith("LN") else "none"
    weight = model.state_dict().get("ln_final.weight") if kind != "none" else None
    return kind, weight


def unembed(model: TransformerBridge) -> torch.Tensor:
    """W_U as [d_model, d_vocab]."""
    return model.W_U


def mlp_out_weights(model: TransformerBridge, layer: int) -> torch.Tensor:
    """W_out of one layer as [d_mlp, d_model] (that layer's MLP only, not every layer stacked)."""
    mlp = model.blocks[layer].mlp
    return mlp.W_out if hasattr(mlp, "W_out") else model.W_out[layer]


def mlp_written(model: TransformerBridge, layer: int, norm: str) -> torch.Tensor:
    """W_out of a layer as later LayerNorms see it ([d_mlp, d_model], float32): centred
    over d_model when the model's norm is a LayerNorm (`final_norm`'s kind), which
    subtracts the mean; as it is for an RMSNorm or none."""
    w_out = mlp_out_weights(model, layer).float()
    return w_out - w_out.mean(1, keepdim=True) if norm == "LN" else w_out


def mlp_read(model: TransformerBridge, layer: int) -> torch.Tensor:
    """W_in of a layer through the norm in front of its MLP (ln2): [d_model, d_mlp], float32."""
    mlp = model.blocks[layer].mlp
    w_in = (mlp.W_in if hasattr(mlp, "W_in") else model.W_in[layer]).float()
    scale = getattr(getattr(model.blocks[layer], "ln2", None), "weight", None)
    return w_in * scale.float()[:, None] if scale is not None else w_in


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device(device)
