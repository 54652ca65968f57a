"""Model and training configuration: frozen, validated, saved as JSON with a checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ACT_FNS = ("gelu", "solu_ln")
DEVICES = ("auto", "cpu", "cuda")


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _from_dict(cls, data: dict):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a model. GELU and SoLU models differ only in act_fn."""

    act_fn: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_ctx: int
    d_vocab: int

    def __post_init__(self):
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"unknown act_fn {self.act_fn!r}; choose one of {', '.join(ACT_FNS)}")
        _positive(self, "n_layers", "d_model", "d_mlp", "n_heads", "n_ctx", "d_vocab")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if self.d_vocab < 260:
            raise ValueError(f"d_vocab must be at least 260 (256 bytes plus special tokens), got {self.d_vocab}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. Tokens are counted in training tokens (batch x ctx per step)."""

    dataset: str = "builtin"
    text_column: str = "text"
    tokens: int = 2_000_000
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_tokens: int = 100_000
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    eval_tokens: int = 65_536
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 100

    def __post_init__(self):
        _positive(self, "tokens", "batch_size", "eval_tokens", "checkpoint_every")
        if not self.dataset:
            raise ValueError("dataset must not be empty")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_tokens < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("warmup_tokens and weight_decay must be >= 0 and grad_clip > 0")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _from_dict(cls, data)
