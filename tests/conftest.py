"""Shared fixtures: a small offline corpus and two tiny trained checkpoints (GELU, SoLU).

The checkpoints are trained once per test session, in a few seconds, with the real
training loop, so every test that needs a model reads a real `solu train` output.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.corpora import make_corpus

pytest_plugins = ["helpers.explorer_fixtures"]  # synth_db, probe_db, real_index

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_SHAPE = dict(n_layers=2, d_model=32, d_mlp=64, n_heads=2, n_ctx=32, d_vocab=320)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    """{'gelu': dir, 'solu_ln': dir}: 2-layer models trained for 40 steps on tiny_corpus."""
    from solu.config import ModelConfig, TrainConfig
    from solu.train import train

    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for act in ("gelu", "solu_ln"):
        cfg = ModelConfig(act_fn=act, **TINY_SHAPE)
        tcfg = TrainConfig(dataset=str(tiny_corpus), tokens=40 * 8 * 32, batch_size=8, lr=3e-3,
                           warmup_tokens=2560, eval_tokens=1024, seed=0, device="cpu", checkpoint_every=20)
        train(cfg, tcfg, root / f"{act}-tiny")
        out[act] = root / f"{act}-tiny"
    return out


@pytest.fixture(autouse=True)
def _main_module_restored():
    """A test that runs a script in this process (Streamlit's AppTest) can leave its
    temporary file as `__main__`; a spawned worker process later re-imports `__main__`
    and fails. Every test gets back the `__main__` it started with."""
    import sys

    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main

