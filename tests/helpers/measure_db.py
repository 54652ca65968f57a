"""A small index with known answers, for the autolabel, study and compare tests.

Documents mix English, base64 and people counts. In each model, neuron 0 of layer 0
fires on base64 tokens only and neuron 1 on half of the people-count tokens only; every other
neuron fires on random tokens. The activations table keeps what exceeds THRESHOLD,
as the indexer's sparse sample does, and the top examples are the true top documents.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from index.measure.concepts import detect
from index.store.schema import migrate

THRESHOLD = 0.25
WORDS = [" the", " cat", " sat", " on", " a", " mat", ".", ",", " and", " then", " it", " left"]
B64 = ["QUJD", "REVG", "R0hJ", "SktM", "TU5P", "UFFS", "U1RV", "VldY", "WVo0", "MTIz"]
PEOPLE = [[" three", " people"], [" 12", " workers"], [" a", " dozen", " children"]]
THINGS = [[" three", " apples"], [" 12", " files"]]


def documents(n_docs: int, rng: random.Random) -> list[list[str]]:
    docs = []
    for _ in range(n_docs):
        doc = ["Then"]
        for _ in range(rng.randint(3, 6)):
            r = rng.random()
            if r < 0.2:
                doc += ["\n", "key", ":", " "] + [rng.choice(B64) for _ in range(rng.randint(5, 9))] + ["\n"]
            elif r < 0.4:
                doc += rng.choice(PEOPLE) + [" came", "."]
            elif r < 0.5:
                doc += rng.choice(THINGS) + [" fell", "."]
            else:
                doc += [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        docs.append(doc)
    return docs


def dense_activations(docs, n_neurons: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per document an (n_neurons, n_tokens) activation matrix."""
    out = []
    for doc in docs:
        acts = rng.normal(0, 0.1, size=(n_neurons, len(doc)))
        acts[0] += detect("base64", doc) * rng.uniform(1, 2, len(doc))
        acts[1] += detect("people_count", doc) * (rng.random(len(doc)) < 0.5) * rng.uniform(1, 2, len(doc))
        acts[2:] += (rng.random((n_neurons - 2, len(doc))) < 0.15) * rng.uniform(0.5, 2, (n_neurons - 2, len(doc)))
        out.append(acts.astype(np.float32))
    return out


def build_measure_db(path: Path, models=(("gelu-m", "gelu"), ("solu-m", "solu_ln")), n_layers: int = 2,
                     d_mlp: int = 8, n_docs: int = 60, top_k: int = 5, seed: int = 0) -> Path:
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    migrate(con)
    for m, (model_id, act_fn) in enumerate(models):
        docs = documents(n_docs, random.Random(seed + m))
        layers = [dense_activations(docs, d_mlp, np.random.default_rng(seed * 100 + m * 10 + layer))
                  for layer in range(n_layers)]
        insert_model(con, model_id, act_fn, docs, layers, top_k, eval_loss=4.0 + 0.1 * m)
    con.close()
    return path


def insert_model(con, model_id: str, act_fn: str, docs: list[list[str]], layers: list[list[np.ndarray]],
                 top_k: int, eval_loss: float = 4.0) -> None:
    """One model's rows: `layers[l][d]` is layer l's (n_neurons, n_tokens) activations on document d."""
    site = "pre_ln" if act_fn == "solu_ln" else "post"
    con.execute("INSERT INTO models (model_id, act_fn, n_layers, d_model, d_mlp, n_heads, n_ctx, d_vocab, "
                "n_params, eval_loss, tokens_trained, source, config) VALUES (?, ?, ?, 16, ?, 2, 32, 300, "
                "1000, ?, 10000, 'test', ?)",
                [model_id, act_fn, len(layers), layers[0][0].shape[0], eval_loss,
                 json.dumps({"model": {"act_fn": act_fn}})])
    tokens = pd.DataFrame([(model_id, d, p, t, 0) for d, doc in enumerate(docs) for p, t in enumerate(doc)],
                          columns=["model_id", "doc_id", "pos", "token", "token_id"])
    _insert(con, "tokens", tokens)
    for layer, acts in enumerate(layers):
        _insert_layer(con, model_id, layer, site, docs, acts, top_k)


TOKEN = re.compile(r" ?\w{1,6}| ?[^\w\s]|\s")


def split_tokens(text: str) -> list[str]:
    """BPE-like pieces: up to 6 word characters or one symbol, with a leading space; they join to the text."""
    return TOKEN.findall(text)


def spans_mask(tokens: list[str], spans: list[tuple[int, int]]) -> np.ndarray:
    """True for each token whose characters lie mostly inside one of the spans."""
    inside = np.zeros(sum(map(len, tokens)) + 1, dtype=bool)
    for a, b in spans:
        inside[a:b] = True
    ends = np.cumsum([len(t) for t in tokens])
    return np.array([inside[e - len(t):e].mean() > 0.5 for t, e in zip(tokens, ends)], dtype=bool)


def build_planted_db(path: Path, docs: list[tuple[str, list[tuple[int, int]]]], d_mlp: int = 16, top_k: int = 20,
                     seed: int = 0) -> Path:
    """An index of the planted corpus for a GELU and a SoLU model of one layer: in each,
    neuron 0 fires on the planted base64 (the corpus's own record of where it put it) and
    on a few other tokens, every other neuron at random."""
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    migrate(con)
    tokens = [split_tokens(text) for text, _ in docs]
    planted = [spans_mask(t, spans) for t, (_, spans) in zip(tokens, docs)]
    for m, (model_id, act_fn) in enumerate((("gelu-p", "gelu"), ("solu-p", "solu_ln"))):
        rng = np.random.default_rng(seed + m)
        layer = []
        for doc, mask in zip(tokens, planted):
            acts = (rng.random((d_mlp, len(doc))) < 0.1) * rng.uniform(0.3, 2.5, (d_mlp, len(doc)))
            acts[0] = mask * rng.uniform(1.5, 3, len(doc)) + (rng.random(len(doc)) < 0.01) * rng.uniform(0, 1, len(doc))
            layer.append(acts.astype(np.float32))
        insert_model(con, model_id, act_fn, tokens, [layer], top_k)
    con.close()
    return path


def _insert_layer(con, model_id, layer, site, docs, acts, top_k) -> None:
    d_mlp = acts[0].shape[0]
    rows, neurons, examples = [], [], []
    for n in range(d_mlp):
        flat = np.concatenate([a[n] for a in acts])
        density = float((flat > THRESHOLD).mean())
        neurons.append((model_id, layer, n, site, True, float(flat.max()), float(flat.min()), float(flat.mean()),
                        float(flat.std()), float(pd.Series(flat).kurt()) + 3.0, density, density))
        for d, a in enumerate(acts):
            rows += [(model_id, layer, n, site, d, int(p), float(a[n, p])) for p in np.flatnonzero(a[n] > THRESHOLD)]
        best = sorted(range(len(docs)), key=lambda d: -float(acts[d][n].max()))[:top_k]
        for rank, d in enumerate(best):
            peak = int(acts[d][n].argmax())
            examples.append((model_id, layer, n, site, "top", None, rank, d, float(acts[d][n, peak]), peak, 0,
                             docs[d], [float(x) for x in acts[d][n]]))
    _insert(con, "activations", pd.DataFrame(rows, columns=["model_id", "layer", "neuron", "site", "doc_id",
                                                             "pos", "act"]))
    _insert(con, "neurons", pd.DataFrame(neurons, columns=[
        "model_id", "layer", "neuron", "site", "is_primary", "max_act", "min_act", "mean_act", "std_act",
        "kurtosis", "frac_active", "frac_active_rel"]))
    _insert(con, "examples", pd.DataFrame(examples, columns=[
        "model_id", "layer", "neuron", "site", "kind", "band", "rank", "doc_id", "max_act", "max_pos",
        "start_pos", "tokens", "acts"]))


def _insert(con, table: str, df: pd.DataFrame) -> None:
    con.register("frame", df)
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame")
    con.unregister("frame")


def dense_for_model(path: Path, model_id: str):
    """The activations as the test's brute force sees them: absent tokens at -inf."""
    con = duckdb.connect(str(path), read_only=True)
    tokens = con.execute("SELECT doc_id, pos FROM tokens WHERE model_id = ? ORDER BY doc_id, pos", [model_id]).df()
    acts = con.execute("SELECT layer, neuron, doc_id, pos, act FROM activations WHERE model_id = ?", [model_id]).df()
    con.close()
    return tokens, acts
