"""The local Hugging Face cache: find a repo's snapshot there, or download it.

Everything the loaders read goes through `snapshot`, which returns a local directory
and the commit it holds. With HF_HUB_OFFLINE set (or no network) only the cache is
read; what is missing is one clear UserError naming the model and how to fetch it.
The cache is the one Hugging Face uses (HF_HUB_CACHE, else HF_HOME/hub), read at call
time so a test (or a user) can point it elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

from solu.errors import UserError, first_line

# files a model needs; weights are taken as safetensors, else PyTorch .bin
TOKENIZER_FILES = ["tokenizer*", "special_tokens_map.json", "vocab*", "merges.txt", "*.model", "*.tiktoken",
                   "added_tokens.json"]
HF_MODEL_FILES = ["*.json", "*.safetensors", *TOKENIZER_FILES]
HF_BIN_WEIGHTS = ["pytorch_model*.bin"]
TL_LEGACY_FILES = ["config.json", "*final.pth"]


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def how_to_fetch(spec: str, repo: str) -> str:
    return f"on a machine with a network run `solu fetch {spec}` (or `hf download {repo}`)"


def snapshot(repo: str, spec: str, patterns: list[str], revision: str | None = None,
             download: bool | None = None) -> tuple[Path, str]:
    """(local directory, commit) of `repo` in the cache; downloads `patterns` first
    unless offline. `spec` is what the user typed, for messages."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    download = not offline() if download is None else download
    where = f"the local Hugging Face cache ({cache_dir()})"
    try:
        path = snapshot_download(repo, revision=revision, cache_dir=str(cache_dir()), allow_patterns=patterns,
                                 local_files_only=not download)
    except GatedRepoError:
        raise UserError(f"{repo} is gated on the Hugging Face hub: accept its terms there and log in "
                        "(`hf auth login`) first") from None
    except RepositoryNotFoundError:
        raise UserError(f"unknown model {spec!r}: not a directory, a TransformerLens pretrained name, "
                        f"or a model on the Hugging Face hub") from None
    except RevisionNotFoundError:
        raise UserError(f"{repo} has no revision {revision!r}") from None
    except HFValidationError:
        raise UserError(f"unknown model {spec!r}: not a directory, a TransformerLens pretrained name, "
                        "or a Hugging Face model id") from None
    except (LocalEntryNotFoundError, OSError) as e:
        if download and not isinstance(e, LocalEntryNotFoundError):
            raise UserError(f"cannot download {repo}: {first_line(e)}") from None
        state = "HF_HUB_OFFLINE is set" if offline() else "the hub cannot be reached"
        what = f"{spec!r} is not a directory, and the Hugging Face model {repo}" if spec == repo \
            else f"model {spec!r} ({repo})"
        raise UserError(f"{what} is not in {where} and {state}; {how_to_fetch(spec, repo)}") from None
    path = Path(path)
    return path, path.name


def hf_model_snapshot(repo: str, spec: str, revision: str | None = None) -> tuple[Path, str]:
    """A Hugging Face model repo: configs, tokenizer and weights (safetensors, else .bin)."""
    path, commit = snapshot(repo, spec, HF_MODEL_FILES, revision)
    if not offline() and not any(path.glob("*.safetensors")):
        path, commit = snapshot(repo, spec, HF_BIN_WEIGHTS, revision)
    return path, commit


def require(path: Path, spec: str, repo: str, *patterns: str) -> None:
    """Each pattern matches a file in the snapshot, or the cache holds only part of the repo."""
    for pattern in patterns:
        if not any(path.glob(pattern)):
            raise UserError(f"model {spec!r} ({repo}) is only partly in the local Hugging Face cache "
                            f"(no {pattern}); {how_to_fetch(spec, repo)}")
