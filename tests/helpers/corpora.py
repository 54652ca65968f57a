"""A small offline corpus of real text, the plan of a run read to its end, and a count
of shuffle buffer fills."""
from __future__ import annotations

import base64
import json
import random
import sysconfig
from pathlib import Path


def read_plan(cfg, tokenizer, n_shards: int, segment_len: int):
    """The plan of a run (index.engine.plan), read to its end."""
    from index.engine.plan import Plan, planned
    from index.engine.sample import ActivationSample

    plan = Plan(n_shards, segment_len, ActivationSample(cfg.sample_tokens, cfg.seed))
    for _ in planned(plan, cfg, tokenizer):
        pass
    return plan


def shuffle_fills(monkeypatch) -> list:
    """A list that gets the seed of each pass of a dataset through the shuffle buffer
    (each call of solu.corpus.shuffled) from here on."""
    from solu import corpus

    fills, shuffled = [], corpus.shuffled

    def counted(docs, seed, *args, **kwargs):
        fills.append(seed)
        return shuffled(docs, seed, *args, **kwargs)

    monkeypatch.setattr(corpus, "shuffled", counted)
    return fills


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
