"""Planted neurons with known explanations, for the held-out scoring tests.

Documents mix English, base64 strings, code lines with `return` (in several spellings)
and the word `substr` cut into two tokens. Each neuron's activation is planted from
the tokens: PLANTED names what each neuron fires on, and `purity_ladder` adds base64
neurons that put a given share of their activation mass on base64 and the rest on
random other tokens, as strongly.
"""
from __future__ import annotations

import random
from pathlib import Path

import duckdb
import numpy as np

from index.measure.concepts import detect
from index.measure.records import normalise, words
from index.store.schema import migrate
from helpers.measure_db import insert_model

ENGLISH = [" the", " cat", " sat", " on", " a", " mat", ".", ",", " and", " then", " it", " left", " str",
           " sub", " value", " marine", " turned"]
B64 = ["QUJD", "REVG", "R0hJ", "SktM", "TU5P", "UFFS", "U1RV", "VldY", "WVo0", "MTIz"]
PLANTED = ["base64", "return", "substr", "base64 at the top, busy elsewhere"]
N_RANDOM = 6


def documents(n_docs: int, rng: random.Random) -> list[list[str]]:
    docs = []
    for _ in range(n_docs):
        doc = ["The"]
        for _ in range(rng.randint(4, 8)):
            r = rng.random()
            if r < 0.15:
                doc += ["\n", "key", ":", " "] + [rng.choice(B64) for _ in range(rng.randint(5, 9))] + ["\n"]
            elif r < 0.3:
                doc += ["\n", "    ", rng.choice([" return", "return", " Return"]), " x", "\n"]
            elif r < 0.42:
                doc += [" the", " sub", "str", " of", " it"]
            else:
                doc += [rng.choice(ENGLISH) for _ in range(rng.randint(3, 8))]
        docs.append(doc)
    return docs


def masks(doc: list[str]) -> dict[str, np.ndarray]:
    return {"base64": detect("base64", doc),
            "return": np.array([normalise(t) == "return" for t in doc]),
            "substr": np.array([w == "substr" for w in words(doc)])}


def planted_activations(docs, purities=(), seed: int = 0) -> list[np.ndarray]:
    """Per document an (n_neurons, n_tokens) matrix: PLANTED, N_RANDOM random neurons,
    then one base64 neuron per purity."""
    rng = np.random.default_rng(seed)
    all_masks = [masks(d) for d in docs]
    n_b64 = sum(int(m["base64"].sum()) for m in all_masks)
    n_other = sum(len(d) for d in docs) - n_b64
    n = len(PLANTED) + N_RANDOM + len(purities)
    out = []
    for doc, m in zip(docs, all_masks):
        size = len(doc)
        acts = rng.normal(0, 0.02, size=(n, size))
        for i, name in enumerate(("base64", "return", "substr")):
            acts[i] += m[name] * rng.uniform(1, 2, size)
        acts[3] += m["base64"] * rng.uniform(2.5, 3, size)
        acts[3] += ~m["base64"] * (rng.random(size) < 0.45) * rng.uniform(2, 2.8, size)
        acts[4:4 + N_RANDOM] += (rng.random((N_RANDOM, size)) < 0.1) * rng.uniform(0.5, 2, (N_RANDOM, size))
        for j, q in enumerate(purities):
            rate = (1 - q) / q * n_b64 / n_other  # the share q of the mass lands on base64
            row = 4 + N_RANDOM + j
            acts[row] += m["base64"] * rng.uniform(1, 2, size)
            acts[row] += ~m["base64"] * (rng.random(size) < rate) * rng.uniform(1, 2, size)
        out.append(acts.astype(np.float32))
    return out


def build_planted_neurons_db(path: Path, n_docs: int = 300, top_k: int = 20, purities=(), seed: int = 0) -> Path:
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        migrate(con)
        docs = documents(n_docs, random.Random(seed))
        insert_model(con, "planted", "gelu", docs, [planted_activations(docs, purities, seed)], top_k)
    finally:
        con.close()
    return path
