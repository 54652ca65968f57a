"""How an index is built: one frozen, validated config, recorded in index_runs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from solu.config import DATASET_HELP, DEVICES, option


@dataclass(frozen=True)
class IndexConfig:
    dataset: str = option("builtin", DATASET_HELP)
    text_column: str = option("text", "text column of .jsonl/.parquet/hf: datasets")
    tokens: int = option(1_000_000, "tokens to index per model (fewer if the dataset is shorter)")
    top_k: int = option(20, "top documents kept per neuron and site")
    window_before: int = option(32, "tokens kept before an example's max")
    window_after: int = option(8, "tokens kept after it")
    bands: int = option(5, "equal-width activation bands in (0, max]")
    per_band: int = option(3, "random documents per band")
    random: int = option(5, "random documents regardless of activation")
    threshold: float = option(0.2, "fraction of a neuron's max above which a token counts in frac_active_rel "
                                   "and in the activations table")
    sample_tokens: int = option(16_384, "tokens of the first documents whose activations go into the activations table")
    hist_bins: int = option(32, "histogram bins per neuron")
    stats_every: int = option(16, "token-level stats over one row in this many (1: every token; max is always exact)")
    logit_k: int = option(10, "top and bottom tokens of each neuron's direct logit effect")
    batch_size: int = option(32, "rows of n_ctx tokens per forward pass")
    device: str = option("auto", ", ".join(DEVICES))
    seed: int = option(0, "seed of the random samples (and the builtin corpus)")

    def __post_init__(self):
        for name in ("tokens", "top_k", "batch_size", "hist_bins", "stats_every"):
            _check_int(self, name, minimum=1)
        for name in ("window_before", "window_after", "bands", "per_band", "random", "sample_tokens", "logit_k", "seed"):
            _check_int(self, name, minimum=0)
        if self.bands > 100:
            raise ValueError(f"bands must be at most 100, got {self.bands}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold is a fraction of the max, in [0, 1), got {self.threshold}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not self.dataset:
            raise ValueError("dataset must not be empty")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "IndexConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _check_int(cfg, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else "an integer >= 0"
        raise ValueError(f"--{name.replace('_', '-')} must be {what}, got {value!r}")
