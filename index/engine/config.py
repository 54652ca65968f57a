"""How an index is built: one frozen, validated config, recorded in index_runs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from solu.config import DATASET_HELP, DEVICES, MOST_TOKENS, check_bounds, check_int, option

# bounds of the counts that size what the index holds in memory per neuron and site
EXAMPLES = (1000, "examples kept per neuron and site")
WINDOW = (4096, "tokens of context kept per example")

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class IndexConfig:
    dataset: str = option("builtin", DATASET_HELP)
    text_column: str = option("text", "text column of .jsonl/.parquet/hf: datasets")
    tokens: int = option(1_000_000, "tokens to index per model (fewer if the dataset is shorter)", MOST_TOKENS)
    top_k: int = option(20, "top segments (the unit of ranking: documents longer than --segment-tokens are cut) "
                            "kept per neuron and site", EXAMPLES)
    window_before: int = option(32, "tokens kept before an example's max", WINDOW)
    window_after: int = option(8, "tokens kept after it", WINDOW)
    bands: int = option(5, "equal-width activation bands in (0, max]", (100, "bands per neuron"))
    per_band: int = option(3, "random segments per band (0: no interval samples)", EXAMPLES)
    band_candidates: int = option(32, "active segments per neuron, chosen by a hash, that the interval samples are "
                                      "drawn from (with the top-K) once the max is known", (10_000, "candidates held per neuron and site"))
    random: int = option(5, "random segments regardless of activation", EXAMPLES)
    threshold: float = option(0.2, "fraction of a neuron's max above which a token counts in frac_active_rel "
                                   "and in the activations table")
    sample_tokens: int = option(65_536, "tokens of segments, chosen across the run by a hash of (seed, doc_id, "
                                        "segment), whose activations go into the activations table",
                              (2**24, "sampled tokens held per neuron"))
    sample_rows: int = option(2**25, "rows the activations table keeps in all: each (site, neuron) keeps its highest "
                                     "sample activations above the threshold, at most sample_rows / neurons of them "
                                     "(12 bytes a row in memory)", (2**30, "activation rows held"))
    match_tokens: int = option(8192, "tokens of the activation sample, chosen one by one by a hash of (seed, doc_id, "
                                     "pos), at which every primary-site neuron's activation is kept whole for solu "
                                     "match (the match_sample table, 2 bytes a token and neuron; 0: none, and solu "
                                     "match reads the activations table)", (2**20, "match tokens"))
    segment_tokens: int = option(1024, "documents longer than this are ranked and sampled as segments of this many "
                                       "tokens, rounded down to whole rows of the model's context", (2**20, "tokens per segment"))
    hist_bins: int = option(32, "histogram bins per neuron", (10_000, "bins per neuron"))
    logit_k: int = option(10, "top and bottom tokens of each neuron's direct logit effect", EXAMPLES)
    ablation: bool = option(False, "also measure each neuron's effect on the next-token loss over its top "
                                   "examples, zeroed and mean-ablated (3 forward passes over the top-K windows "
                                   "per neuron)")
    connection_k: int = option(10, "strongest positive and negative partners kept per neuron, upstream and "
                                   "downstream, by virtual weight (models of 2+ layers)", EXAMPLES)
    batch_size: int = option(0, "rows of n_ctx tokens per forward pass; 0: as many as fit, about 4096 tokens "
                                "and 256 MiB of activations, at least one row (on CUDA: 65,536 tokens, within an "
                                "eighth of the device's free memory)", (4096, "rows of context in one forward pass"))
    dtype: str = option("float32", "dtype the model runs in: float32, bfloat16 or float16 (activations are "
                                   "accumulated in float32)")
    layers: str = option("", "layers to index, e.g. 0,2-3 (empty: all)")
    device: str = option("auto", ", ".join(DEVICES))
    seed: int = option(0, "seed of the random samples (and the builtin corpus)")
    shuffle: bool = option(False, "read a local or hub dataset's documents in an order seeded by --seed (a buffer "
                                  "of 100,000 documents / 256 MB), so --tokens covers more than its first sources")

    def __post_init__(self):
        # a zero count that would mean nothing is refused; --per-band 0 turns the interval samples off
        for name in ("tokens", "top_k", "hist_bins", "segment_tokens", "bands", "band_candidates", "sample_rows"):
            _check_int(self, name, minimum=1)
        for name in ("window_before", "window_after", "per_band", "random",
                     "sample_tokens", "match_tokens", "logit_k", "connection_k", "seed", "batch_size"):
            _check_int(self, name, minimum=0)
        check_bounds(self)
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold is a fraction of the max, in [0, 1), got {self.threshold}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not self.dataset:
            raise ValueError("dataset must not be empty")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        parse_layers(self.layers)

    def layer_list(self, n_layers: int) -> list[int]:
        """The layers to index of a model with n_layers (ValueError if one is beyond it)."""
        chosen = parse_layers(self.layers)
        if chosen is None:
            return list(range(n_layers))
        beyond = [layer for layer in chosen if layer >= n_layers]
        if beyond:
            has = "layer 0" if n_layers == 1 else f"layers 0-{n_layers - 1}"
            raise ValueError(f"--layers {self.layers}: the model has {has} only")
        return chosen

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "IndexConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def parse_layers(text: str) -> list[int] | None:
    """'0,2-3' -> [0, 2, 3]; '' -> None (all layers). ValueError for anything else."""
    if not isinstance(text, str):
        raise ValueError(f"--layers must be a string like 0,2-3, got {text!r}")
    if not text.strip():
        return None
    chosen: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()) or (sep and int(hi) < int(lo)):
            raise ValueError(f"--layers takes layer numbers and ranges like 0,2-3, got {text!r}")
        chosen.update(range(int(lo), int(hi if sep else lo) + 1))
    return sorted(chosen)


def _check_int(cfg, name: str, minimum: int) -> None:
    check_int(getattr(cfg, name), f"--{name.replace('_', '-')}", minimum)
