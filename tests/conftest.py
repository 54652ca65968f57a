"""Shared fixtures: a small offline corpus and two tiny trained checkpoints (GELU, SoLU).

The checkpoints are trained once per test session, in a few seconds, with the real
training loop, so every test that needs a model reads a real `solu train` output.
"""
from __future__ import annotations

import base64
import json
import os
import random
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_SHAPE = dict(n_layers=2, d_model=32, d_mlp=64, n_heads=2, n_ctx=32, d_vocab=320)


def read_plan(cfg, tokenizer, n_shards: int, segment_len: int):
    """The plan of a run (index.engine.plan), read to its end."""
    from index.engine.plan import Plan, planned
    from index.engine.sample import ActivationSample

    plan = Plan(n_shards, segment_len, ActivationSample(cfg.sample_tokens, cfg.seed))
    for _ in planned(plan, cfg, tokenizer):
        pass
    return plan


def make_corpus(path: Path, n_docs: int = 300, seed: int = 0) -> Path:
    """Real text from a few stdlib modules, cut into documents, plus base64 lines."""
    rng = random.Random(seed)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join((stdlib / name).read_text() for name in ("textwrap.py", "string.py", "colorsys.py", "bisect.py"))
    lines = text.splitlines(keepends=True)
    with open(path, "w") as f:
        for i in range(n_docs):
            start = rng.randrange(len(lines) - 30)
            doc = "".join(lines[start:start + rng.randint(5, 30)])
            if i % 7 == 0:
                doc += base64.b64encode(doc[:90].encode()).decode() + "\n"
            f.write(json.dumps({"text": doc}) + "\n")
    return path


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
