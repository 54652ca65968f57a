"""Checkpoint directories: config.json, model.safetensors, tokenizer.json.

A checkpoint is self-describing: its config.json holds the model and training configs,
and its tokenizer travels with it. Every file is written to a temporary name and moved
into place, config.json last, so a reader never sees a half-written checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformer_lens.model_bridge import TransformerBridge

from solu.config import ModelConfig
from solu.errors import UserError
from solu.inputs import check_regular
from solu.model import build_model
from solu.outputs import write_atomic
from solu.tokenizer import load_tokenizer

FORMAT = "solu-checkpoint"
CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
# written beside them by solu train: the loss curve, and the optimizer and data position for --resume
LOSS_CSV, LOSS_PNG, STATE = "loss.csv", "loss.png", "train_state.pt"


@dataclass
class Checkpoint:
    path: Path
    meta: dict  # the whole config.json
    model_cfg: ModelConfig
    model: TransformerBridge
    tokenizer: Tokenizer

    @property
    def name(self) -> str:
        return self.path.name


def save_checkpoint(out: Path, model: TransformerBridge, tokenizer: Tokenizer, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomic(out / WEIGHTS, lambda p: save_file(state, str(p)))
    write_atomic(out / TOKENIZER, lambda p: tokenizer.save(str(p)))
    text = json.dumps({"format": FORMAT, **meta}, indent=2)
    write_atomic(out / CONFIG, lambda p: p.write_text(text))


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint {path} not found (expected a directory written by 'solu train')")
    check_regular(path / CONFIG, "checkpoint config")
    try:
        meta = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is not a checkpoint: no {CONFIG}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}/{CONFIG} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("model"), dict):
        raise UserError(f"{path}/{CONFIG} is not a solu checkpoint config")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """The one function that loads a checkpoint. Raises UserError for anything malformed."""
    path = Path(path)
    meta = read_meta(path)
    try:
        model_cfg = ModelConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}/{CONFIG}: bad model config: {e}") from None
    check_regular(path / WEIGHTS, "checkpoint weights", max_bytes=None)
    try:
        state = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise UserError(f"{path} is not a checkpoint: no {WEIGHTS}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}/{WEIGHTS} is not a readable safetensors file ({e})") from None
    model = build_model(model_cfg, seed=0)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(f"{path}/{WEIGHTS} does not match the model in {CONFIG}") from None
    tokenizer = load_tokenizer(path / TOKENIZER)
    if tokenizer.get_vocab_size() > model_cfg.d_vocab:  # its ids past d_vocab would index past the embedding
        raise UserError(f"{path}/{TOKENIZER} has {tokenizer.get_vocab_size():,} tokens, more than the model's "
                        f"d_vocab {model_cfg.d_vocab:,}: it is not this model's tokenizer")
    model.to(device).eval()
    return Checkpoint(path, meta, model_cfg, model, tokenizer)
