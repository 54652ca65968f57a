"""The same neuron in another model: `solu match`.

Two models indexed with the same tokenizer on the same documents have the same
activation sample (the `tokens` table: the sample is chosen by a hash of the documents,
not of the model). Each neuron's best matches in the other model are the neurons whose
activations over those tokens correlate most with its own (Pearson r of the activations
the `activations` table would record without its budget of rows: above threshold x the
neuron's max, else 0). They are read from the match sample (index.engine.match_sample:
every primary-site neuron's activations at about --match-tokens tokens of the sample,
chosen one by one by a hash, the same tokens in both models), so r does not depend on
how many rows the activations table keeps. A model indexed before the match sample
existed, or with --match-tokens 0, is read from the `activations` table instead over the
whole sample, a token it does not record counting as 0: where its budget binds, as on
GPT-2 small, r is then a correlation of the neurons' top tokens (benchmarks/RESULTS.md,
"The activation rows' budget"). `neuron_matches.method` says which was read. Every
primary-site neuron of each model gets its --top best matches in the other, written to
`neuron_matches` (the pair's earlier matches are replaced).

The work is a correlation matrix between the two models' primary-site neurons, in blocks
of neurons of one layer: each block is read into a dense [tokens, neurons] array, every
column centred and scaled to unit length (float64, then float32), so one float32 product
of two blocks is their r. What is held at once is bounded whatever the models' size: a
block is at most BLOCK_BYTES and MAX_BLOCK neurons (the r of two blocks at most
MAX_BLOCK^2 floats), and the blocks kept between passes (the other model's, when they all
fit, else a group of this model's) at most CACHE_BYTES.
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
MAX_BLOCK = 4096  # neurons in a block at most: the r of two blocks is at most 64 MB
CACHE_BYTES = 3 << 28  # blocks kept between passes over the other model (768 MiB: GPT-2 small pairs within 2 GB)
MATCH_SAMPLE, ACTIVATIONS = "match_sample", "activations"  # neuron_matches.method: what r was read from


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
    """The model's primary-site neurons (layer, neuron, site), in (layer, neuron) order."""
    return con.execute("SELECT layer, neuron, site FROM neurons WHERE model_id = ? AND is_primary "
                       "ORDER BY layer, neuron", [model_id]).df()


def blocks(neurons: pd.DataFrame, width: int) -> list[tuple[int, int]]:
    """(start, stop) rows of `neurons` in blocks of at most `width`, none across two layers."""
    layer = neurons.layer.to_numpy()
    edges = np.flatnonzero(np.diff(layer)) + 1 if len(layer) else np.zeros(0, np.int64)
    out = []
    for lo, hi in zip(np.concatenate(([0], edges)), np.concatenate((edges, [len(layer)]))):
        out += [(int(i), int(min(i + width, hi))) for i in range(int(lo), int(hi), width)]
    return out


def match_tokens(con, model_id: str) -> pd.DataFrame:
    """The model's match tokens (doc_id, pos, token, match_index), by match_index; empty
    when it has no match sample."""
    if not con.execute("SELECT count(*) FROM match_sample WHERE model_id = ?", [model_id]).fetchone()[0]:
        return pd.DataFrame({"doc_id": [], "pos": [], "token": [], "match_index": []})
    return con.execute("SELECT doc_id, pos, token, match_index FROM tokens WHERE model_id = ? "
                       "AND match_index IS NOT NULL ORDER BY match_index", [model_id]).df()


def shared_match_tokens(ma: pd.DataFrame, mb: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The places in a's and b's match samples of the tokens both hold, in (doc_id, pos)
    order: with the same flags, all of them; else the smaller cut's (a subset of the other)."""
    ka = position_key(ma.doc_id.to_numpy(np.int64), ma.pos.to_numpy(np.int64))
    kb = position_key(mb.doc_id.to_numpy(np.int64), mb.pos.to_numpy(np.int64))
    _, ia, ib = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    return ma.match_index.to_numpy(np.int64)[ia], mb.match_index.to_numpy(np.int64)[ib]


def match_block(con, model_id: str, neurons: pd.DataFrame, at: np.ndarray) -> np.ndarray:
    """[len(at), len(neurons)] activations of neurons of one layer and site at match
    tokens `at` (match_index values), from the match sample."""
    layer, site = int(neurons.layer.iloc[0]), str(neurons.site.iloc[0])
    ids = neurons.neuron.to_numpy(np.int64)
    rows = con.execute("SELECT neuron, acts FROM match_sample WHERE model_id = ? AND site = ? AND layer = ? "
                       "AND neuron BETWEEN ? AND ?", [model_id, site, layer, int(ids.min()), int(ids.max())]).fetchall()
    column = {int(n): j for j, n in enumerate(ids)}
    out = np.zeros((len(at), len(ids)), np.float32)
    found = 0
    for neuron, acts in rows:
        j = column.get(neuron)
        if j is None:
            continue
        values = np.frombuffer(acts, "<f2")
        if len(at) and (len(values) <= at.max()):
            raise UserError(f"model {model_id!r} has a damaged match sample; re-index it")
        out[:, j] = values[at]
        found += 1
    if found != len(ids):
        raise UserError(f"model {model_id!r} has a match sample without some of its neurons; re-index it")
    return out


def dense_block(con, model_id: str, neurons: pd.DataFrame, keys: np.ndarray) -> np.ndarray:
    """[tokens, len(neurons)] activations over the sample (unrecorded tokens 0) of neurons
    of one layer and site, read by their range of neuron ids."""
    layer, site = int(neurons.layer.iloc[0]), str(neurons.site.iloc[0])
    ids = neurons.neuron.to_numpy(np.int64)
    rows = con.execute("""
        SELECT neuron, doc_id, pos, act FROM activations
        WHERE model_id = ? AND site = ? AND layer = ? AND neuron BETWEEN ? AND ?""",
                       [model_id, site, layer, int(ids.min()), int(ids.max())]).fetchnumpy()
    neuron = np.asarray(rows["neuron"], np.int64)
    col = np.minimum(np.searchsorted(ids, neuron), len(ids) - 1)
    wanted = ids[col] == neuron
    out = np.zeros((len(keys), len(ids)), np.float32)
    key = position_key(np.asarray(rows["doc_id"], np.int64)[wanted], np.asarray(rows["pos"], np.int64)[wanted])
    at = np.minimum(np.searchsorted(keys, key), max(len(keys) - 1, 0))
    if len(key) and (keys[at] != key).any():
        raise UserError(f"model {model_id!r} has activations outside its activation sample; re-index it")
    out[at, col[wanted]] = np.asarray(rows["act"], np.float32)[wanted]
    return out


def _normalised(block: np.ndarray) -> torch.Tensor:
    """Each column centred and scaled to unit length (in float64, kept in float32), so the
    product of two such blocks is Pearson r; a dead neuron's column (std 0) is 0, so it
    correlates 0 with every other."""
    x = torch.from_numpy(block).double()
    constant = (x.amax(0) == x.amin(0)) if len(x) else torch.ones(x.shape[1], dtype=torch.bool)
    x -= x.mean(0)
    norm = torch.linalg.vector_norm(x, dim=0)
    x /= torch.where(constant, torch.inf, norm)
    return x.float()


def best_matches(con, a: str, b: str, top: int, progress: bool = False) -> pd.DataFrame:
    """Each primary-site neuron of a's `top` best matches among b's, and b's among a's."""
    from tqdm import tqdm

    ta, tb = sample_tokens(con, a), sample_tokens(con, b)
    check_same_tokens(a, b, ta, tb)
    na, nb = neuron_list(con, a), neuron_list(con, b)
    if na.empty or nb.empty:
        raise UserError(f"model {a if na.empty else b!r} has no indexed neurons to match")
    ma, mb = match_tokens(con, a), match_tokens(con, b)
    if len(ma) and len(mb):
        at = dict(zip((a, b), shared_match_tokens(ma, mb)))
        method, n_tokens = MATCH_SAMPLE, len(at[a])

        def read(model: str, neurons: pd.DataFrame) -> torch.Tensor:
            return _normalised(match_block(con, model, neurons, at[model]))
    else:
        keys = position_key(ta.doc_id.to_numpy(np.int64), ta.pos.to_numpy(np.int64))
        method, n_tokens = ACTIVATIONS, len(keys)

        def read(model: str, neurons: pd.DataFrame) -> torch.Tensor:
            return _normalised(dense_block(con, model, neurons, keys))
    column_bytes = 4 * max(n_tokens, 1)
    width = max(1, min(MAX_BLOCK, BLOCK_BYTES // column_bytes))
    blocks_a, blocks_b = blocks(na, width), blocks(nb, width)
    keep_b = len(nb) * column_bytes <= CACHE_BYTES  # b's blocks stay in memory between a's blocks
    group = len(blocks_a) if keep_b else max(1, CACHE_BYTES // (width * column_bytes))  # a's blocks held at once
    cache_b: dict[int, torch.Tensor] = {}
    best_a: dict[int, tuple] = {}  # per block: (values, labels) of the running top, over the other model
    best_b: dict[int, tuple] = {}
    with tqdm(total=len(na), desc=f"match {a} / {b}", unit="neuron", disable=not progress) as bar:
        for g in range(0, len(blocks_a), group):
            held = {}
            for i in range(g, min(g + group, len(blocks_a))):
                held[i] = read(a, na.iloc[slice(*blocks_a[i])])
                if keep_b:  # b is read once: compute a's block against it now, then drop it
                    _pass(read, b, nb, {i: held.pop(i)}, blocks_a, blocks_b, cache_b, best_a, best_b, top)
                    bar.update(blocks_a[i][1] - blocks_a[i][0])
            if held:
                _pass(read, b, nb, held, blocks_a, blocks_b, None, best_a, best_b, top)
                bar.update(sum(blocks_a[i][1] - blocks_a[i][0] for i in held))
    return pd.concat([_rows(a, na, b, nb, *map(torch.cat, zip(*(best_a[i] for i in range(len(blocks_a))))),
                            n_tokens, method),
                      _rows(b, nb, a, na, *map(torch.cat, zip(*(best_b[j] for j in range(len(blocks_b))))),
                            n_tokens, method)], ignore_index=True)


def _pass(read, b, nb, held: dict, blocks_a, blocks_b, cache_b: dict | None, best_a: dict, best_b: dict,
          top: int) -> None:
    """One pass over b's blocks (from cache_b where it has them) against a's `held` blocks,
    merging each r into both running tops."""
    for j, (lo, hi) in enumerate(blocks_b):
        xb = cache_b.get(j) if cache_b is not None else None
        if xb is None:
            xb = read(b, nb.iloc[lo:hi])
            if cache_b is not None:
                cache_b[j] = xb
        for i, xa in held.items():
            r = xa.T @ xb  # [block of a, block of b]
            best_a[i] = merge_top(*best_a.get(i, (None, None)), *_block_top(r, 1, lo, top), top)
            best_b[j] = merge_top(*best_b.get(j, (None, None)), *_block_top(r, 0, blocks_a[i][0], top), top)


def _block_top(r: torch.Tensor, dim: int, offset: int, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `top` largest r of each row (dim 1) or column (dim 0) of a block, as rows of
    (values, the other model's neuron index: `offset` + place along dim), so that a merge
    reads [rows, top] candidates instead of the whole block."""
    values, at = torch.topk(r if dim == 1 else r.T.contiguous(), min(top, r.shape[dim]), dim=1)  # rows: faster
    return values, at + offset


def _rows(model, neurons, other, others, score, index, tokens, method) -> pd.DataFrame:
    n, top = score.shape
    idx = index.numpy().ravel()
    return pd.DataFrame({
        "model_id": model, "layer": np.repeat(neurons.layer.to_numpy(), top),
        "neuron": np.repeat(neurons.neuron.to_numpy(), top), "other_model": other,
        "other_layer": others.layer.to_numpy()[idx], "other_neuron": others.neuron.to_numpy()[idx],
        "rank": np.tile(np.arange(1, top + 1), n), "r": score.numpy().ravel(), "tokens": tokens, "method": method})


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
