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
    key = (np.asarray(rows["doc_id"], np.int64) << 24) + np.asarray(rows["pos"], np.int64)
    out[np.searchsorted(keys, key), np.asarray(rows["col"], np.int64)] = rows["act"]
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
    ta, tb = sample_tokens(con, a), sample_tokens(con, b)
    check_same_tokens(a, b, ta, tb)
    keys = (ta.doc_id.to_numpy(np.int64) << 24) + ta.pos.to_numpy(np.int64)
    na, nb = neuron_list(con, a), neuron_list(con, b)
    width = max(1, BLOCK_BYTES // (4 * max(len(keys), 1)))
    from tqdm import tqdm

    best = {a: [], b: []}  # per model: (scores [n, top], index [n, top]) per block
    running_b = [(torch.full((len(nb), top), -2.0, dtype=torch.float64), torch.zeros((len(nb), top), dtype=torch.long))]
    blocks_b = [(j, nb.iloc[j:j + width]) for j in range(0, len(nb), width)]
    kept: dict[int, tuple] = {}  # b's blocks, read once when they all fit in CACHE_BYTES

    def cached(j, part):
        if j in kept:
            return kept[j]
        block = _moments(dense_block(con, b, part, keys))
        if len(blocks_b) * BLOCK_BYTES <= CACHE_BYTES:
            kept[j] = block
        return block
    with tqdm(total=len(na), desc=f"match {a} / {b}", unit="neuron", disable=not progress) as bar:
        for i in range(0, len(na), 4 * width):  # a's blocks are 4x wider: b's are read a quarter as often
            xa = _moments(dense_block(con, a, na.iloc[i:i + 4 * width], keys))
            score_a = torch.full((xa[0].shape[1], top), -2.0, dtype=torch.float64)
            index_a = torch.zeros((xa[0].shape[1], top), dtype=torch.long)
            for j, part in blocks_b:
                r = _correlate(xa, cached(j, part), len(keys))  # [block of a, block of b]
                score_a, index_a = _merge_top(score_a, index_a, r, j, top)
                s_b, i_b = running_b[0]
                s_b[j:j + len(part)], i_b[j:j + len(part)] = _merge_top(s_b[j:j + len(part)], i_b[j:j + len(part)],
                                                                        r.T, i, top)
            best[a].append((score_a, index_a))
            bar.update(xa[0].shape[1])
    best[b] = running_b
    return pd.concat([_rows(a, na, b, nb, *map(torch.cat, zip(*best[a])), len(keys)),
                      _rows(b, nb, a, na, *running_b[0], len(keys))], ignore_index=True)


def _merge_top(score, index, r, offset, top):
    """Keep the `top` largest of (score, index) and the new candidates r (columns offset...)."""
    k = min(top, r.shape[1])
    new_score, new_index = torch.topk(r, k, dim=1)
    both_s = torch.cat([score, new_score], dim=1)
    both_i = torch.cat([index, new_index + offset], dim=1)
    keep_s, keep = torch.topk(both_s, top, dim=1)
    return keep_s, torch.gather(both_i, 1, keep)


def _rows(model, neurons, other, others, score, index, tokens) -> pd.DataFrame:
    n, top = score.shape
    found = score.numpy() > -2
    idx = index.numpy()
    return pd.DataFrame({
        "model_id": model, "layer": np.repeat(neurons.layer.to_numpy(), top)[found.ravel()],
        "neuron": np.repeat(neurons.neuron.to_numpy(), top)[found.ravel()], "other_model": other,
        "other_layer": others.layer.to_numpy()[idx].ravel()[found.ravel()],
        "other_neuron": others.neuron.to_numpy()[idx].ravel()[found.ravel()],
        "rank": np.tile(np.arange(1, top + 1), n)[found.ravel()], "r": score.numpy().ravel()[found.ravel()],
        "tokens": tokens, "method": METHOD})


def match(db: str | Path, a: str, b: str, top: int = 3, progress: bool = False) -> pd.DataFrame:
    """Match two models' neurons and store the matches; returns them."""
    if a == b:
        raise UserError("match two different models")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    check_writable(db)
    with tempfile.TemporaryDirectory(prefix="solu-match-") as spill:
        con = open_read(db, {"memory_limit": "512MB", "temp_directory": spill})
        try:
            require_models(con, [a, b])
            rows = best_matches(con, a, b, top, progress)
        finally:
            con.close()
    with open_write(db) as con:
        con.register("new_matches", rows)
        con.execute("BEGIN")
        con.execute("DELETE FROM neuron_matches WHERE (model_id = ? AND other_model = ?) OR "
                    "(model_id = ? AND other_model = ?)", [a, b, b, a])
        con.execute("INSERT INTO neuron_matches BY NAME SELECT * FROM new_matches")
        con.execute("COMMIT")
        con.unregister("new_matches")
    return rows
