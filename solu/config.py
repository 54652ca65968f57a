"""Model and training configuration: frozen, validated, saved as JSON with a checkpoint."""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

ACT_FNS = ("gelu", "solu_ln")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")  # training arithmetic, see solu.device
DATASET_HELP = "builtin, a .txt/.jsonl/.parquet file or folder, or hf:NAME[:split]"


# sizes past these are mistakes (a tokenizer asked for 10^12 tokens aborts the process)
MAX_SHAPE = {"n_layers": 512, "d_model": 65_536, "d_mlp": 262_144, "n_heads": 1024, "n_ctx": 131_072,
             "d_vocab": 1_048_576}
MAX_PARAMS = 100_000_000_000


def check_int(value, name: str, minimum: int = 1) -> None:
    """The one whole-number check of every config: ValueError unless `value` is an int
    (not a bool) of at least `minimum`; `name` is what the message calls it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def _positive(obj, *names: str) -> None:
    for name in names:
        check_int(getattr(obj, name), name)


def option(default=MISSING, help: str = "", most: tuple[int, str] | None = None):
    """A config field with the help text of its command-line flag (see solu.flags), and for a
    count of tokens, rows or examples its bound: (the largest value, what makes it the bound)."""
    return field(default=default, metadata={"help": help, **({"most": most} if most else {})})


# a count of tokens past this is a typo: at a million tokens a second it is eleven days of work
MOST_TOKENS = (10**12, "a trillion tokens")


def check_bounds(cfg) -> None:
    """Every field declared with `most` is at most that (ValueError naming the flag and the bound)."""
    for f in fields(cfg):
        most = f.metadata.get("most")
        value = getattr(cfg, f.name)
        if most and isinstance(value, int) and value > most[0]:
            raise ValueError(f"--{f.name.replace('_', '-')} must be at most {most[0]:,} ({most[1]}), got {value:,}")


def _from_dict(cls, data: dict):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a model. GELU and SoLU models differ only in act_fn."""

    act_fn: str = option(help=f"activation: {' or '.join(ACT_FNS)} (required unless --resume)")
    n_layers: int = option(1, "transformer blocks")
    d_model: int = option(128, "residual stream width")
    d_mlp: int = option(512, "MLP neurons per layer")
    n_heads: int = option(4, "attention heads (must divide d_model)")
    n_ctx: int = option(128, "context length in tokens")
    d_vocab: int = option(4096, "vocabulary size of the trained byte-level BPE tokenizer")

    def __post_init__(self):
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"unknown act_fn {self.act_fn!r}; choose one of {', '.join(ACT_FNS)}")
        _positive(self, "n_layers", "d_model", "d_mlp", "n_heads", "n_ctx", "d_vocab")
        for name, most in MAX_SHAPE.items():
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be at most {most:,}, got {getattr(self, name):,}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if self.d_vocab < 260:
            raise ValueError(f"d_vocab must be at least 260 (256 bytes plus special tokens), got {self.d_vocab}")
        if self.n_params_estimate() > MAX_PARAMS:
            raise ValueError(f"this shape has about {self.n_params_estimate():,} parameters; at most {MAX_PARAMS:,}")

    def n_params_estimate(self) -> int:
        """Embedding, unembedding, attention and MLP weights (biases and norms left out)."""
        per_layer = 4 * self.d_model * self.d_model + 2 * self.d_model * self.d_mlp
        return 2 * self.d_vocab * self.d_model + self.n_ctx * self.d_model + self.n_layers * per_layer

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

    dataset: str = option("builtin", DATASET_HELP)
    text_column: str = option("text", "text column of .jsonl/.parquet/hf: datasets")
    tokens: int = option(2_000_000, "training tokens (with --resume, raises the budget)", MOST_TOKENS)
    batch_size: int = option(16, "sequences per step", (4096, "sequences held in memory at once"))
    lr: float = option(3e-3, "peak learning rate")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of the peak")
    warmup_tokens: int = option(100_000, "tokens of linear warmup", MOST_TOKENS)
    weight_decay: float = option(0.05, "AdamW weight decay")
    grad_clip: float = option(1.0, "gradient norm clip")
    eval_tokens: int = option(65_536, "held-out tokens for the eval loss", (2**30, "held-out tokens kept in memory"))
    seed: int = option(0, "seed of initialisation and data order")
    shuffle: bool = option(True, "shuffle a local or hub dataset's documents, seeded by --seed, through a buffer of "
                                 "100,000 documents / 256 MB of text (off: file order; builtin is shuffled already)")
    device: str = option("auto", f"{', '.join(DEVICES)}")
    checkpoint_every: int = option(100, "steps between checkpoints", (10**9, "steps"))
    precision: str = option("auto", "auto (bf16 autocast on cuda, fp32 on cpu), fp32 or bf16")

    def __post_init__(self):
        _positive(self, "tokens", "batch_size", "eval_tokens", "checkpoint_every")
        check_bounds(self)
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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _from_dict(cls, data)
