"""The same neuron in another model: `solu match`.

Two models indexed with the same tokenizer on the same documents have the same
activation sample (the `tokens` table: the sample is chosen by a hash of the documents,
not of the model). Each neuron's best matches in the other model are the neurons whose
activations over those tokens correlate most with its own (Pearson r; the `activations`
table records what exceeds the index threshold, and a token it does not record counts as
0 for that neuron). Every primary-site neuron of each model gets its --top best matches in
the other, written to `neuron_matches` (the pair's earlier matches are replaced).

The work is a correlation matrix between the two models' neurons, computed in blocks of
neurons (the product of the raw activations in float32, centred afterwards) so that
memory stays under about 1 GB whatever the models' size.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from index.engine.topk import merge_top
from index.measure.records import position_key
from index.store.connection import check_writable, open_read, open_write
from index.store.queries import require_models
from solu.errors import UserError

BLOCK_BYTES = 128 * 2**20  # one dense block of activations (tokens x neurons, float32)
CACHE_BYTES = 1 << 30  # the other model's blocks are kept between passes when they fit in this
METHOD = "activations"


def sample_tokens(con, model_id: str) -> pd.DataFrame:
    return con.execute("SELECT doc_id, pos, token FROM tokens WHERE model_id = ? ORDER BY doc_id, pos",
                       [model_id]).df()


def check_same_tokens(a: str, b: str, ta: pd.DataFrame, tb: pd.DataFrame) -> None:
    """One line if the two samples are not the same tokens of the same documents."""
    if ta.empty or tb.empty:
        raise UserError(f"model {a if ta.empty else b!r} has no activation sample to match on")
    shared = set(ta.doc_id) & set(tb.doc_id)
    if not shared:
        raise UserError(f"{a} and {b} were indexed on different documents; index both with the same --dataset "
                        "and --seed to match them")
    pa_, pb = ta[ta.doc_id.isin(shared)], tb[tb.doc_id.isin(shared)]
    if len(pa_) != len(pb) or not (pa_.token.to_numpy() == pb.token.to_numpy()).all():
        raise UserError(f"{a} and {b} tokenize the same documents differently (different tokenizers); "
                        "matching needs the same tokens")
    if len(shared) != ta.doc_id.nunique() or len(shared) != tb.doc_id.nunique():
        raise UserError(f"{a} and {b} sampled different documents; index both with the same --dataset, "
                        "--tokens, --sample-tokens and --seed to match them")


def neuron_list(con, model_id: str) -> pd.DataFrame:
    return con.execute("SELECT layer, neuron FROM neurons WHERE model_id = ? AND is_primary ORDER BY layer, neuron",
                       [model_id]).df()


def dense_block(con, model_id: str, neurons: pd.DataFrame, keys: np.ndarray) -> np.ndarray:
    """[tokens, len(neurons)] activations over the sample (unrecorded tokens 0)."""
    con.register("wanted", neurons.assign(col=np.arange(len(neurons))))
    rows = con.execute("""
        SELECT w.col, a.doc_id, a.pos, a.act FROM activations a
        JOIN neurons n USING (model_id, layer, neuron, site)
        JOIN wanted w ON w.layer = a.layer AND w.neuron = a.neuron
        WHERE a.model_id = ? AND n.is_primary""", [model_id]).fetchnumpy()
    con.unregister("wanted")
    out = np.zeros((len(keys), len(neurons)), np.float32)
    key = position_key(np.asarray(rows["doc_id"], np.int64), np.asarray(rows["pos"], np.int64))
    at = np.minimum(np.searchsorted(keys, key), max(len(keys) - 1, 0))
    if len(key) and (keys[at] != key).any():
        raise UserError(f"model {model_id!r} has activations outside its activation sample; re-index it")
    out[at, np.asarray(rows["col"], np.int64)] = rows["act"]
    return out


def _moments(block: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(activations, mean, standard deviation) of each neuron (column) of a block."""
    x = torch.from_numpy(block)
    mean = x.double().mean(0)
    std = (x.double().pow(2).mean(0) - mean * mean).clamp_min(0).sqrt()
    return x, mean, std


def _correlate(a, b, tokens: int) -> torch.Tensor:
    """Pearson r between every column of a and of b ((x, mean, std) each): the product of
    the raw activations in float32 (most are 0), centred afterwards in float64. A dead
    neuron (std 0) correlates 0 with every other."""
    xa, mean_a, std_a = a
    xb, mean_b, std_b = b
    cov = (xa.T @ xb).double() / tokens - mean_a[:, None] * mean_b[None, :]
    scale = std_a[:, None] * std_b[None, :]
    return torch.where(scale > 0, cov / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(cov))


def best_matches(con, a: str, b: str, top: int, progress: bool = False) -> pd.DataFrame:
    """Each primary-site neuron of a's `top` best matches among b's, and b's among a's."""
    from tqdm import tqdm

    ta, tb = sample_tokens(con, a), sample_tokens(con, b)
    check_same_tokens(a, b, ta, tb)
    keys = position_key(ta.doc_id.to_numpy(np.int64), ta.pos.to_numpy(np.int64))
    na, nb = neuron_list(con, a), neuron_list(con, b)
    if na.empty or nb.empty:
        raise UserError(f"model {a if na.empty else b!r} has no indexed neurons to match")
    width = max(1, BLOCK_BYTES // (4 * max(len(keys), 1)))
    starts_b = range(0, len(nb), width)
    keep_b = len(starts_b) * BLOCK_BYTES <= CACHE_BYTES  # b's blocks stay in memory between a's blocks
    blocks_b: dict[int, tuple] = {}
    best_a, best_b = [], {}  # a: (values, labels) per a-block; b: the same per b-block, running over a
    with tqdm(total=len(na), desc=f"match {a} / {b}", unit="neuron", disable=not progress) as bar:
        for i in range(0, len(na), 4 * width):  # a's blocks are 4x wider: b's are read a quarter as often
            xa = _moments(dense_block(con, a, na.iloc[i:i + 4 * width], keys))
            kept = (None, None)
            for j in starts_b:
                xb = blocks_b.get(j) or _moments(dense_block(con, b, nb.iloc[j:j + width], keys))
                if keep_b:
                    blocks_b[j] = xb
                r = _correlate(xa, xb, len(keys))  # [block of a, block of b]
                kept = merge_top(*kept, r, _labels(j, r), top)
                best_b[j] = merge_top(*best_b.get(j, (None, None)), r.T, _labels(i, r.T), top)
            best_a.append(kept)
            bar.update(xa[0].shape[1])
    joined_b = [best_b[j] for j in starts_b]
    return pd.concat([_rows(a, na, b, nb, *map(torch.cat, zip(*best_a)), len(keys)),
                      _rows(b, nb, a, na, *map(torch.cat, zip(*joined_b)), len(keys))], ignore_index=True)


def _labels(offset: int, r: torch.Tensor) -> torch.Tensor:
    """The other model's neuron index of each column of r (its first column is `offset`)."""
    return (offset + torch.arange(r.shape[1]))[None, :].expand_as(r)


def _rows(model, neurons, other, others, score, index, tokens) -> pd.DataFrame:
    n, top = score.shape
    idx = index.numpy().ravel()
    return pd.DataFrame({
        "model_id": model, "layer": np.repeat(neurons.layer.to_numpy(), top),
        "neuron": np.repeat(neurons.neuron.to_numpy(), top), "other_model": other,
        "other_layer": others.layer.to_numpy()[idx], "other_neuron": others.neuron.to_numpy()[idx],
        "rank": np.tile(np.arange(1, top + 1), n), "r": score.numpy().ravel(), "tokens": tokens, "method": METHOD})


def match(db: str | Path, a: str, b: str, top: int = 3, progress: bool = False) -> pd.DataFrame:
    """Match two models' neurons and store the matches; returns them."""
    if a == b:
        raise UserError("match two different models")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    check_writable(db)
    with tempfile.TemporaryDirectory(prefix="solu-match-") as spill:
        with open_read(db, {"memory_limit": "512MB", "temp_directory": spill}) as con:
            require_models(con, [a, b])
            rows = best_matches(con, a, b, top, progress)
    with open_write(db) as con:
        con.register("new_matches", rows)
        con.execute("BEGIN")
        con.execute("DELETE FROM neuron_matches WHERE (model_id = ? AND other_model = ?) OR "
                    "(model_id = ? AND other_model = ?)", [a, b, b, a])
        con.execute("INSERT INTO neuron_matches BY NAME SELECT * FROM new_matches")
        con.execute("COMMIT")
        con.unregister("new_matches")
    return rows
