"""Planted neurons for each kind of rule beyond tokens, words and concepts.

Documents are lines of prose, field lines (`License: MIT`, `key: value`), copyright
lines, "number of people" phrases and licence text in capitals. The generator marks,
as it writes each line, the tokens every planted neuron fires on, so the answers do
not come from the rule definitions under test:

* `line_end`: the "." that ends a line (prose also has a "." inside a line);
* `line_start`: "So" as the first token of a line, indented or not (" so" and " So" inside lines);
* `after_class`: ":" after a capitalised field name (`key:` and `ratio:` do not count);
* `context2`: " people" after " number of" (not after " lots of", nor " cats" after it);
* `in_concept`: "20" inside a copyright line (not "20" in "in 2019 we");
* `caps_prose`: words of licence text in capitals (not an acronym such as NASA in prose).

For each there is a planted neuron (fires on its tokens only), then a near miss (the same
tokens carry a fifth of its activation mass, random other tokens as strongly the rest),
then two confusable neurons: every "." and every ":".
"""
from __future__ import annotations

import random
from pathlib import Path

import duckdb
import numpy as np

from index.store.schema import migrate
from helpers.measure_db import insert_model

KINDS = ["line_end", "line_start", "after_class", "context2", "in_concept", "caps_prose"]
WANT = {"line_end": ("line_end", ["."]), "line_start": ("line_start", ["so"]),
        "after_class": ("after_class", ["capitalised word", ":"]),
        "context2": ("context2", ["number", "of", "people"]), "in_concept": ("in_concept", ["20", "copyright"]),
        "caps_prose": ("concept", ["caps_prose"])}
CONFUSABLE = {"period": ".", "colon": ":"}
NEAR_MISS_SHARE = 0.2
WORDS = [" cat", " sat", " on", " mat", " and", " then", " it", " left", " dog", " ran", " far", " home"]


def _line(rng: random.Random) -> tuple[list[str], dict[str, list[int]]]:
    """One line ending in a newline, and the positions each planted kind fires on."""
    r = rng.random()
    marks: dict[str, list[int]] = {}
    if r < 0.3:  # prose: "So" or "It" to start (some lines indented), a "." inside, a "." to end
        first = rng.choice(["So", "It"])
        indent = ["  "] if rng.random() < 0.4 else []
        toks = indent + [first] + [rng.choice(WORDS) for _ in range(rng.randint(1, 3))] + ["."]
        toks += [rng.choice([" so", " So"])] + [rng.choice(WORDS) for _ in range(rng.randint(1, 3))]
        toks += [" NASA", " sat", "."] if rng.random() < 0.3 else ["."]
        marks["line_start"] = [len(indent)] if first == "So" else []
        marks["line_end"] = [len(toks) - 1]
    elif r < 0.45:
        name = rng.choice(["License", "Files", "Author", "key", "ratio"])
        toks = [name, ":", rng.choice([" MIT", " value", " x", " Bob"])]
        marks["after_class"] = [1] if name[0].isupper() else []
    elif r < 0.6:
        year = rng.choice(["01", "03", "19", "22"])
        if rng.random() < 0.5:
            toks = ["Copyright", " (", "c", ")", " ", "20", year, "-", "20", "23", " Python"]
            marks["in_concept"] = [5, 8]
        else:
            toks = ["In", " ", "20", year, " we", rng.choice(WORDS)]
    elif r < 0.8:
        lead, noun = rng.choice([(" number", " people"), (" lots", " people"), (" number", " cats")])
        toks = ["A", lead, " of", noun, rng.choice(WORDS)]
        marks["context2"] = [3] if (lead, noun) == (" number", " people") else []
    else:
        toks = ["THE", " SOFTWARE", " IS", " PROVIDED", " AS", " IS", ",", " WITHOUT", " WARRANTY"]
        marks["caps_prose"] = [0, 1, 2, 3, 4, 5, 7, 8]
    return toks + ["\n"], marks


def documents(n_docs: int, rng: random.Random) -> tuple[list[list[str]], list[dict[str, np.ndarray]]]:
    docs, masks = [], []
    for _ in range(n_docs):
        doc, mask = ["#", " doc", "\n"], {k: [] for k in KINDS}
        for _ in range(rng.randint(5, 9)):
            toks, marks = _line(rng)
            for kind, at in marks.items():
                mask[kind] += [len(doc) + i for i in at]
            doc += toks
        docs.append(doc)
        masks.append({k: np.isin(np.arange(len(doc)), v) for k, v in mask.items()})
    return docs, masks


def planted_activations(docs, masks, seed: int = 0) -> list[np.ndarray]:
    """Per document an (n_neurons, n_tokens) matrix: per kind a planted neuron and its near
    miss, then the confusable neurons."""
    rng = np.random.default_rng(seed)
    n_tokens = sum(len(d) for d in docs)
    rate = {k: (1 - NEAR_MISS_SHARE) / NEAR_MISS_SHARE * sum(int(m[k].sum()) for m in masks)
            / (n_tokens - sum(int(m[k].sum()) for m in masks)) for k in KINDS}
    out = []
    for doc, m in zip(docs, masks):
        size = len(doc)
        acts = rng.normal(0, 0.02, size=(2 * len(KINDS) + len(CONFUSABLE), size))
        for i, kind in enumerate(KINDS):
            acts[2 * i] += m[kind] * rng.uniform(1, 2, size)
            acts[2 * i + 1] += m[kind] * rng.uniform(1, 2, size)
            acts[2 * i + 1] += ~m[kind] * (rng.random(size) < rate[kind]) * rng.uniform(1, 2, size)
        for j, token in enumerate(CONFUSABLE.values()):
            acts[2 * len(KINDS) + j] += np.array([t == token for t in doc]) * rng.uniform(1, 2, size)
        out.append(acts.astype(np.float32))
    return out


def build_family_db(path: Path, n_docs: int = 300, top_k: int = 20, seed: int = 0) -> Path:
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        migrate(con)
        docs, masks = documents(n_docs, random.Random(seed))
        insert_model(con, "family", "gelu", docs, [planted_activations(docs, masks, seed)], top_k)
    finally:
        con.close()
    return path
