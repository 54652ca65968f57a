"""MODEL specs: the one function that turns what a user names into a loaded model.

A spec is
- a checkpoint directory written by `solu train`;
- a TransformerLens pretrained name (`solu-2l`, `gelu-2l`, `solu-1l-pile`, ...: the
  installed TransformerLens alias table) or a legacy TransformerLens repo id
  (`NeelNanda/SoLU_2L512W_C4_Code`): a TransformerLens-format config.json and a
  `*final.pth` state dict, loaded into a native bridge (act_fn solu_ln or gelu);
- a Hugging Face model id or local directory (`gpt2`, `EleutherAI/pythia-70m`,
  `./my-model`), loaded by `TransformerBridge.boot_transformers`.

Hub models are read from the local Hugging Face cache (solu.hub), downloaded first when
there is a network. TransformerLens's own `boot_tl_legacy` lists the repo's files on the
hub (`HfApi().list_repo_files`) before it reads the cache, so it cannot run offline;
the legacy path here reads the cached snapshot directly, with TransformerLens's config
fields, weight converters and strict native load.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from solu.errors import UserError, first_line
from solu.inputs import check_regular
from solu.hub import TL_LEGACY_FILES, TOKENIZER_FILES, hf_model_snapshot, require, snapshot
from solu.model import Site, neuron_sites
from solu.tokenizer import EOT

KINDS = ("checkpoint", "tl-legacy", "hf")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TL_NAME = re.compile(r"^(solu|gelu|attn-only)-\d+l\b", re.I)


@dataclass(frozen=True)
class ModelShape:
    """The shape of any loaded model (ModelConfig, for models trained here, has the same fields)."""

    act_fn: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_ctx: int
    d_vocab: int


@dataclass(frozen=True)
class ModelRef:
    """A resolved spec, before anything heavy is loaded."""

    spec: str
    kind: str  # one of KINDS
    model_id: str
    repo: str | None = None  # hub repo id; None for a local directory
    path: Path | None = None  # local directory; None for a hub model

    @property
    def source(self) -> str:
        """What loads this model again: an absolute path or a hub repo id."""
        return str(self.path.resolve()) if self.path is not None else self.repo


@dataclass
class LoadedModel:
    ref: ModelRef
    revision: str | None  # hub commit; None for a local directory
    model_cfg: ModelShape
    model: object  # TransformerBridge (None while an index run does not need its weights: index.engine.pipeline)
    tokenizer: Tokenizer
    bos_id: int  # starts every row (stands in for BOS; its activations are not indexed)
    sites: list[Site]
    meta: dict  # recorded in models.config
    n_params: int
    eval_loss: float | None = None
    tokens_trained: int | None = None
    loss_curve_dir: Path | None = None  # where loss.csv is (models trained here)
    details: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.ref.model_id

    @property
    def kind(self) -> str:
        return self.ref.kind

    @property
    def source(self) -> str:
        return self.ref.source

    @property
    def path(self) -> Path | None:
        """The local directory it was read from (None for a hub model)."""
        return self.ref.path


# ------------------------------------------------------------------ resolving

def resolve(spec: str) -> ModelRef:
    """What `spec` names. Raises UserError for a directory that is not a model, an
    unknown TransformerLens name or a string that cannot be a hub id."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _resolve_dir(spec, path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model directory {spec} not found")
    repo = _tl_official_name(spec)
    if repo is None and TL_NAME.match(spec):
        raise UserError(f"unknown TransformerLens pretrained name {spec!r}; known: {', '.join(_tl_legacy_aliases())}")
    repo = repo or spec
    from huggingface_hub.utils import validate_repo_id
    from huggingface_hub.errors import HFValidationError

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise UserError(f"unknown model {spec!r}: not a directory, a TransformerLens pretrained name, "
                        "or a Hugging Face model id") from None
    from transformer_lens.model_bridge.sources.tl_legacy import TL_LEGACY_PREFIXES

    if repo.startswith(TL_LEGACY_PREFIXES):
        return ModelRef(spec, "tl-legacy", _tl_short_name(repo), repo=repo)
    return ModelRef(spec, "hf", repo, repo=repo)


def _resolve_dir(spec: str, path: Path) -> ModelRef:
    if not path.is_dir():
        raise UserError(f"{spec} is a file, not a model directory")
    from solu.checkpoint import CONFIG, FORMAT, read_meta

    check_regular(path / CONFIG, "model config")
    try:
        cfg = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise UserError(f"{spec} is not a model directory: no {CONFIG} (expected a 'solu train' checkpoint, "
                        "a Hugging Face model directory or a TransformerLens checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}/{CONFIG} is not valid JSON") from None
    name = path.resolve().name
    if isinstance(cfg, dict) and (cfg.get("format") == FORMAT or "model" in cfg and "train" in cfg):
        read_meta(path)
        return ModelRef(spec, "checkpoint", name, path=path)
    if isinstance(cfg, dict) and "model_type" in cfg:
        return ModelRef(spec, "hf", name, path=path)
    if isinstance(cfg, dict) and {"d_model", "n_layers", "act_fn"} <= set(cfg):
        return ModelRef(spec, "tl-legacy", name, path=path)
    raise UserError(f"{spec} is not a model directory: its {CONFIG} is neither a 'solu train' checkpoint, "
                    "a Hugging Face config (no model_type) nor a TransformerLens config")


def _aliases() -> dict[str, list[str]]:
    from transformer_lens.tools.model_registry.registry_io import load_model_aliases

    return load_model_aliases()


def _tl_official_name(spec: str) -> str | None:
    """The hub repo a TransformerLens alias (case-insensitive) stands for."""
    for official, names in _aliases().items():
        if spec.lower() in (n.lower() for n in names):
            return official
    return None


def _tl_short_name(repo: str) -> str:
    """solu-2l for NeelNanda/SoLU_2L512W_C4_Code: the first TransformerLens alias."""
    names = _aliases().get(repo)
    return names[0] if names else repo


def _tl_legacy_aliases() -> list[str]:
    from transformer_lens.model_bridge.sources.tl_legacy import TL_LEGACY_PREFIXES

    return [names[0] for repo, names in _aliases().items() if repo.startswith(TL_LEGACY_PREFIXES) and names]


def check_available(ref: ModelRef) -> None:
    """Offline, a hub model must already be in the local cache: checked before any work,
    with the one-line message that says how to fetch it."""
    from solu.hub import offline

    if ref.repo is not None and offline():
        patterns = TL_LEGACY_FILES if ref.kind == "tl-legacy" else ["config.json"]
        path, _ = snapshot(ref.repo, ref.spec, patterns, download=False)
        require(path, ref.spec, ref.repo, *patterns)


# ------------------------------------------------------------------ loading

def load_model(spec: str | ModelRef, device: str | torch.device = "cpu", dtype: str = "float32",
               revision: str | None = None) -> LoadedModel:
    """The one function that loads a model for indexing or probing: its bridge, its own
    tokenizer, its neuron sites (read off the bridge) and what to record about it.
    Raises UserError for anything the user can fix."""
    ref = spec if isinstance(spec, ModelRef) else resolve(spec)
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    loader = {"checkpoint": _load_checkpoint, "tl-legacy": _load_tl_legacy, "hf": _load_hf}[ref.kind]
    loaded = loader(ref, torch.device(device), DTYPES[dtype], revision)
    loaded.model.eval()
    return loaded


def _shape(cfg, act_fn: str | None = None) -> ModelShape:
    return ModelShape(act_fn or cfg.act_fn, cfg.n_layers, cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.n_ctx,
                      cfg.d_vocab)


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_checkpoint(ref: ModelRef, device, dtype, revision) -> LoadedModel:
    from solu.checkpoint import load_checkpoint
    from solu.tokenizer import eot_id

    ckpt = load_checkpoint(ref.path, device)
    model = ckpt.model.to(dtype)
    meta = ckpt.meta
    return LoadedModel(ref, None, _shape(ckpt.model_cfg), model, ckpt.tokenizer, eot_id(ckpt.tokenizer),
                       _sites(model, ckpt.model_cfg.act_fn, ref), meta, meta.get("n_params") or _n_params(model),
                       meta.get("eval_loss"), meta.get("tokens_seen"), ref.path)


def _sites(model, act_fn: str, ref: ModelRef) -> list[Site]:
    try:
        return neuron_sites(model, act_fn)
    except ValueError as e:
        raise UserError(f"cannot read the MLP neurons of {ref.spec}: {e}") from None


def _load_tl_legacy(ref: ModelRef, device, dtype, revision) -> LoadedModel:
    if ref.path is not None:
        path, commit = ref.path, None
    else:
        path, commit = snapshot(ref.repo, ref.spec, TL_LEGACY_FILES, revision)
    where = ref.repo or str(path)
    require(path, ref.spec, where, "config.json", "*final.pth")
    check_regular(path / "config.json", "model config")
    raw = json.loads((path / "config.json").read_text())
    cfg = tl_legacy_config(raw, where)
    tokenizer_dir = path if any(path.glob("tokenizer*.json")) or not cfg.tokenizer_name else None
    if tokenizer_dir is None:
        tokenizer_dir, _ = snapshot(cfg.tokenizer_name, cfg.tokenizer_name, TOKENIZER_FILES)
    hf_tok = _hf_tokenizer(tokenizer_dir, ref.spec)
    weights = sorted(path.glob("*final.pth"))[0]
    model = _native_from_tl_state(cfg, weights, hf_tok, device, dtype, ref)
    details = {"tokenizer": cfg.tokenizer_name, "weights": weights.name}
    return LoadedModel(ref, commit, _shape(cfg), model, _backend(hf_tok, ref.spec), _bos_id(hf_tok, ref.spec),
                       _sites(model, cfg.act_fn, ref), {"kind": ref.kind, "repo": ref.repo, **raw}, _n_params(model),
                       tokens_trained=raw.get("n_tokens") or raw.get("tokens"), details=details)


def tl_legacy_config(raw: dict, where: str):
    """A TransformerBridgeConfig from a legacy TransformerLens config.json: the fields
    and the architecture rule of TransformerLens's derive_tl_legacy_config, read from a
    local file instead of the hub."""
    from transformer_lens.config import TransformerBridgeConfig

    try:
        if raw.get("shortformer_pos", False):
            raise UserError(f"{where} uses shortformer positional embeddings, which the native bridge "
                            "does not implement")
        cfg = TransformerBridgeConfig(
            d_model=raw["d_model"], n_layers=raw["n_layers"], d_mlp=raw.get("d_mlp"), d_head=raw["d_head"],
            n_heads=raw["n_heads"], n_ctx=raw["n_ctx"], d_vocab=raw["d_vocab"], act_fn=raw["act_fn"],
            attn_only=raw.get("attn_only", False), final_rms=raw.get("final_rms", False),
            normalization_type=raw.get("normalization", raw.get("normalization_type")),
            positional_embedding_type="standard", tokenizer_name=raw.get("tokenizer_name"),
            architecture="TransformerLensNative")
    except KeyError as e:
        raise UserError(f"{where}/config.json lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}/config.json: {e}") from None
    cfg.original_architecture = raw.get("architecture", "neel-solu-old" if "_old" in where else "neel")
    return cfg


def _native_from_tl_state(cfg, weights: Path, hf_tok, device, dtype, ref: ModelRef):
    from transformer_lens.model_bridge.sources.native import boot as boot_native
    from transformer_lens.model_bridge.sources.tl_legacy import _convert_neel_solu_old_weights
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    if cfg.attn_only or not cfg.d_mlp:
        raise UserError(f"cannot read the MLP neurons of {ref.spec}: it is an attention-only model (no MLP)")
    check_regular(weights, "model weights", max_bytes=None)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k: v.to(dtype) for k, v in state.items()}
        if cfg.original_architecture == "neel-solu-old":
            state = _convert_neel_solu_old_weights(state, cfg)
        state = convert_tl_checkpoint(state, cfg)
        state.setdefault("unembed.bias", torch.zeros(cfg.d_vocab, dtype=dtype))
        model = boot_native(cfg, tokenizer=hf_tok, device=device, dtype=dtype, model_name=ref.repo or ref.spec)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        first = first_line(e)
        raise UserError(f"{weights} does not load into the model its config.json describes: {first}") from None
    return model


def _load_hf(ref: ModelRef, device, dtype, revision) -> LoadedModel:
    from transformer_lens.model_bridge import TransformerBridge
    import transformer_lens.model_bridge.sources  # noqa: F401  (attaches boot_transformers)

    if ref.path is not None:
        path, commit = ref.path, None
    else:
        path, commit = hf_model_snapshot(ref.repo, ref.spec, revision)
    where = ref.repo or str(path)
    require(path, ref.spec, where, "config.json")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        require(path, ref.spec, where, "*.safetensors")
    hf_tok = _hf_tokenizer(path, ref.spec)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one error line stays one line; `solu index` shows its own progress
    try:
        model = TransformerBridge.boot_transformers(str(path), device=device, dtype=dtype, tokenizer=hf_tok)
    except (ValueError, KeyError, RuntimeError, OSError, NotImplementedError) as e:
        first = first_line(e)
        raise UserError(f"TransformerLens cannot load {ref.spec}: {first}") from None
    finally:
        hf_logging.enable_progress_bar()
    check_regular(path / "config.json", "model config")
    raw = json.loads((path / "config.json").read_text())
    act = getattr(model.cfg, "act_fn", None) or raw.get("hidden_act") or raw.get("activation_function") or "?"
    meta = {"kind": ref.kind, "repo": ref.repo, "architecture": getattr(model.cfg, "architecture", None), **raw}
    return LoadedModel(ref, commit, _shape(model.cfg, act), model, _backend(hf_tok, ref.spec),
                       _bos_id(hf_tok, ref.spec), _sites(model, act, ref), meta, _n_params(model))


def _hf_tokenizer(path: Path, spec: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, KeyError) as e:
        first = first_line(e)
        raise UserError(f"no usable tokenizer for {spec} in {path}: {first}") from None


def _backend(hf_tok, spec: str) -> Tokenizer:
    """The `tokenizers` object behind a fast tokenizer: what the indexer and probe use."""
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise UserError(f"the tokenizer of {spec} has no fast (tokenizers) version")
    return backend


def _bos_id(hf_tok, spec: str) -> int:
    """The token each row starts with: the tokenizer's BOS, else its EOS, else <|endoftext|>."""
    for value in (hf_tok.bos_token_id, hf_tok.eos_token_id, _backend(hf_tok, spec).token_to_id(EOT)):
        if isinstance(value, int):
            return value
    raise UserError(f"the tokenizer of {spec} has no BOS or EOS token to start a row with")
