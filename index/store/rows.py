"""One model's index as Arrow tables, one per database table (schema.sql says what each
column holds): what the store writes of an engine result, index.engine.pipeline.ModelIndex."""
from __future__ import annotations

import csv
import json
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

import solu
from index.engine.accumulator import SiteResult
from index.engine.batching import doc_of, segment_of, segment_start
from index.engine.hooks import site_key
from index.engine.pipeline import ModelIndex
from solu.checkpoint import LOSS_CSV
from solu.corpus import dataset_hash

MAX_TOKENS_SHOWN = 5  # tokens listed in neurons.max_tokens
MATCH_WRITE_NEURONS = 1024  # match_sample rows built at a time (on solu-12l at 8,192 tokens: 32 MB of float32)


def model_tables(result: ModelIndex) -> dict[str, pa.Table | pa.RecordBatchReader]:
    """The model's rows for every index table but index_runs and index_details (written
    last, with the write time: see run_tables); examples and activations as streams,
    read once."""
    vocab = pa.array(result.vocab, pa.string())
    cut = result.activations.sample_cut()
    neurons = [neuron_table(result, site, result.by_site[site_key(site)], vocab, cut) for site in result.sites]
    examples = (example_table(result, site, result.by_site[site_key(site)], vocab) for site in result.sites)
    return {
        "models": models_table(result),
        "neurons": pa.concat_tables(neurons),
        "examples": stream(examples),  # a site's windows at a time: all of them are 40 x 41 tokens a neuron
        "logits": logits_table(result, vocab),
        "connections": connections_table(result),
        "ablations": ablations_table(result),
        "activations": activations_table(result),
        "tokens": tokens_table(result, vocab),
        "match_sample": match_sample_table(result),
    }


def stream(tables) -> pa.RecordBatchReader:
    """Tables of one schema as a stream that builds each only when the reader gets to it."""
    tables = iter(tables)
    held = [next(tables)]
    schema = held[0].schema

    def batches():
        yield from held.pop().to_batches()
        for table in tables:
            yield from table.to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def _site_columns(result: ModelIndex, site, n: int) -> dict:
    return {"model_id": pa.array([result.model_id] * n, pa.string()),
            "layer": pa.array(np.full(n, site.layer, np.int32)),
            "neuron": pa.array(np.arange(n, dtype=np.int32)),
            "site": pa.array([site.name] * n, pa.string())}


def neuron_table(result: ModelIndex, site, acc: SiteResult, vocab: pa.Array, cut) -> pa.Table:
    """One site's neurons; cut: [sites x d_mlp] each neuron's sample_cut."""
    s = acc.stats.summary(result.cfg.threshold, result.cfg.hist_bins)
    n = acc.n
    top_ids, top_counts = most_common_tokens(acc.top.token.cpu().numpy(), acc.top.valid.cpu().numpy())
    cols = _site_columns(result, site, n)
    cols["is_primary"] = pa.array([site.primary] * n)
    for name in ("max_act", "min_act"):
        cols[name] = pa.array(s[name].astype(np.float32))
    for name in ("mean_act", "std_act", "kurtosis", "frac_active", "frac_active_rel"):
        cols[name] = pa.array(s[name].astype(np.float64))
    cols["hist_lo"] = pa.array(s["hist_lo"].astype(np.float32))
    cols["hist_hi"] = pa.array(s["hist_hi"].astype(np.float32))
    cols["hist_counts"] = pa.array([c.tolist() for c in s["hist_counts"]], pa.list_(pa.int64()))
    cols["max_tokens"] = pa.array([vocab.take(pa.array(ids, pa.int64())).to_pylist() for ids in top_ids],
                                  pa.list_(pa.string()))
    cols["max_token_counts"] = pa.array(top_counts, pa.list_(pa.int32()))
    k = result.sites.index(site)
    cols["sample_cut"] = pa.array(cut[k * n:(k + 1) * n].numpy().astype(np.float32))
    return pa.table(cols)


def most_common_tokens(tokens: np.ndarray, valid: np.ndarray) -> tuple[list, list]:
    """Per neuron, the tokens most often at the max of its top segments (count desc,
    then token id)."""
    ids, counts = [], []
    for row, ok in zip(tokens, valid):
        values, n = np.unique(row[ok], return_counts=True)
        order = np.lexsort((values, -n))[:MAX_TOKENS_SHOWN]
        ids.append(values[order].tolist())
        counts.append(n[order].tolist())
    return ids, counts


def example_table(result: ModelIndex, site, acc: SiteResult, vocab: pa.Array) -> pa.Table:
    cfg = result.cfg
    parts = [_pool_rows(acc.top, "top", None), _pool_rows(acc.intervals, "interval", cfg.per_band),
             _pool_rows(acc.random, "random", None)]
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k not in ("win_acts", "win_tokens")}
    win_acts = np.concatenate([p["win_acts"] for p in parts])
    win_tokens = np.concatenate([p["win_tokens"] for p in parts])
    inside = win_tokens >= 0
    offsets = np.concatenate([[0], np.cumsum(inside.sum(1))]).astype(np.int32)
    ids = pa.array(win_tokens[inside].astype(np.int64))
    m = len(rows["neuron"])
    unit = rows["unit"].astype(np.int64)
    start = segment_start(unit, result.segment_len)
    cols = _site_columns(result, site, m)
    cols["neuron"] = pa.array(rows["neuron"].astype(np.int32))
    cols.update({
        "kind": pa.array(rows["kind"], pa.string()),
        "band": pa.array(rows["band"], pa.int32(), mask=rows["band"] < 0),
        "rank": pa.array(rows["rank"].astype(np.int32) + 1),
        "doc_id": pa.array(doc_of(unit)),
        "segment": pa.array(segment_of(unit).astype(np.int32)),
        "max_act": pa.array(rows["value"].astype(np.float32)),
        "max_pos": pa.array((cfg.window_before - inside.argmax(1)).astype(np.int32)),
        "start_pos": pa.array((start + rows["pos"] - cfg.window_before + inside.argmax(1)).astype(np.int32)),
        "tokens": pa.ListArray.from_arrays(pa.array(offsets), vocab.take(ids)),
        "acts": pa.ListArray.from_arrays(pa.array(offsets), pa.array(win_acts[inside].astype(np.float32))),
    })
    return pa.table(cols)


def _pool_rows(pool, kind: str, per_band: int | None) -> dict[str, np.ndarray]:
    """The filled slots of a pool as flat arrays."""
    neuron, slot = np.nonzero(pool.valid.cpu().numpy())
    band = slot // per_band if per_band else np.full(len(slot), -1)
    rank = slot % per_band if per_band else slot
    pick = lambda t: t.cpu().numpy()[neuron, slot]  # noqa: E731
    win_acts, win_tokens = pool.windows()
    return {"neuron": neuron, "kind": np.full(len(slot), kind, dtype=object), "band": band, "rank": rank,
            "unit": pick(pool.unit), "value": pick(pool.value), "pos": pick(pool.pos),
            "win_acts": pick(win_acts), "win_tokens": pick(win_tokens)}


def logits_table(result: ModelIndex, vocab: pa.Array) -> pa.Table:
    lg = result.logits
    n = len(lg["neuron"])
    ids = pa.array(np.asarray(lg["token_id"], np.int64))
    return pa.table({
        "model_id": pa.array([result.model_id] * n, pa.string()),
        "layer": pa.array(np.asarray(lg["layer"], np.int32)),
        "neuron": pa.array(np.asarray(lg["neuron"], np.int32)),
        "sign": pa.array(list(lg["sign"]), pa.string()),
        "rank": pa.array(np.asarray(lg["rank"], np.int32) + 1),
        "token": vocab.take(ids),
        "token_id": pa.array(np.asarray(lg["token_id"], np.int32)),
        "weight": pa.array(np.asarray(lg["weight"], np.float32)),
    })


def _flat_table(model_id: str, data: dict[str, np.ndarray], types: dict[str, object]) -> pa.Table:
    """A table of model_id and `data`'s columns, each cast to its type in `types` (a
    numpy dtype, or str for text)."""
    n = len(next(iter(data.values()))) if data else 0
    cols = {"model_id": pa.array([model_id] * n, pa.string())}
    for name, kind in types.items():
        cols[name] = pa.array(list(data[name]), pa.string()) if kind is str else pa.array(np.asarray(data[name], kind))
    return pa.table(cols)


def connections_table(result: ModelIndex) -> pa.Table:
    return _flat_table(result.model_id, result.connections, {
        "layer": np.int32, "neuron": np.int32, "direction": str, "sign": str, "rank": np.int32,
        "other_layer": np.int32, "other_neuron": np.int32, "weight": np.float32})


def ablations_table(result: ModelIndex) -> pa.Table:
    return _flat_table(result.model_id, result.ablations, {
        "layer": np.int32, "neuron": np.int32, "rank": np.int32, "window_pos": np.int32, "token_id": np.int32,
        "loss": np.float32, "delta_zero": np.float32, "delta_mean": np.float32})


def activations_table(result: ModelIndex) -> pa.RecordBatchReader:
    """The activation rows (index.engine.sample_rows), streamed a chunk at a time:
    numeric columns shared with the arrays, model and site names as dictionaries."""
    names = sorted({s.name for s in result.sites})
    site_name = np.array([names.index(s.name) for s in result.sites], np.int32)
    site_layer = np.array([s.layer for s in result.sites], np.int32)
    schema = pa.schema([("model_id", pa.dictionary(pa.int32(), pa.string())), ("layer", pa.int32()),
                        ("neuron", pa.int32()), ("site", pa.dictionary(pa.int32(), pa.string())),
                        ("doc_id", pa.int64()), ("segment", pa.int32()), ("pos", pa.int32()), ("act", pa.float32())])

    def batches():
        for a in result.activations.columns():
            n = len(a["act"])
            yield pa.record_batch([
                pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array([result.model_id])),
                pa.array(site_layer[a["site"]]), pa.array(a["neuron"]),
                pa.DictionaryArray.from_arrays(site_name[a["site"]], pa.array(names, pa.string())),
                pa.array(a["doc_id"].astype(np.int64)), pa.array(a["segment"].astype(np.int32)),
                pa.array(a["pos"].astype(np.int32)), pa.array(a["act"].astype(np.float32))], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def tokens_table(result: ModelIndex, vocab: pa.Array) -> pa.Table:
    """The token ids of the activation sample's segments, at document positions."""
    units = result.sample.segments()
    lengths = np.array([len(t) for _, t in units], np.int64)
    unit = np.repeat(np.array([u for u, _ in units], np.int64), lengths)
    ids = np.concatenate([np.asarray(t, np.int64) for _, t in units]) if units else np.zeros(0, np.int64)
    local = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    n = len(ids)
    doc_id, pos = doc_of(unit), (segment_start(unit, result.segment_len) + local).astype(np.int32)
    match = result.activations.match
    in_match = match.holds(doc_id, pos) if match else np.zeros(n, bool)  # rows in (doc_id, pos) order, as match_index
    if match and in_match.sum() != match.n:
        raise RuntimeError(f"the match sample holds {match.n} tokens, the activation sample {in_match.sum()} of them")
    return pa.table({
        "model_id": pa.array([result.model_id] * n, pa.string()),
        "doc_id": pa.array(doc_id),
        "segment": pa.array(segment_of(unit).astype(np.int32)),
        "pos": pa.array(pos),
        "token": vocab.take(pa.array(ids)),
        "token_id": pa.array(ids.astype(np.int32)),
        "match_index": pa.array(np.cumsum(in_match, dtype=np.int64).astype(np.int32) - 1, mask=~in_match),
    })


def match_sample_table(result: ModelIndex) -> pa.RecordBatchReader:
    """Each primary-site neuron's activations at the match tokens (index.engine.match_sample),
    MATCH_WRITE_NEURONS neurons at a time (one site's values are read once, the copies
    made of them are a block's): float16 bytes in (doc_id, pos) order, 0 at or below the
    neuron's limit."""
    schema = pa.schema([("model_id", pa.string()), ("layer", pa.int32()), ("neuron", pa.int32()),
                        ("site", pa.string()), ("acts", pa.binary())])
    rows, match = result.activations, result.activations.match
    primary = [(i, s) for i, s in enumerate(result.sites) if s.primary]
    d = result.ckpt.model_cfg.d_mlp

    def batches():
        order = match.order()
        for k, (i, site) in enumerate(primary):
            x = match.site(k)
            limit = rows.limit[i * d:(i + 1) * d].numpy()
            for lo in range(0, d, MATCH_WRITE_NEURONS):
                hi = min(lo + MATCH_WRITE_NEURONS, d)
                part = x[order, lo:hi].T.astype(np.float32)  # [neurons, tokens]: a neuron's values are one row
                part[~(part > limit[lo:hi, None])] = 0  # what the activations table records without its budget
                part = part.astype("<f2")
                n = hi - lo
                yield pa.record_batch([pa.array([result.model_id] * n, pa.string()),
                                       pa.array(np.full(n, site.layer, np.int32)),
                                       pa.array(np.arange(lo, hi, dtype=np.int32)),
                                       pa.array([site.name] * n, pa.string()),
                                       pa.array([row.tobytes() for row in part], pa.binary())], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches() if match else iter(()))


def models_table(result: ModelIndex) -> pa.Table:
    loaded, m = result.ckpt, result.ckpt.model_cfg
    row = {
        "model_id": result.model_id, "act_fn": m.act_fn, "n_layers": m.n_layers, "d_model": m.d_model,
        "d_mlp": m.d_mlp, "n_heads": m.n_heads, "n_ctx": m.n_ctx, "d_vocab": m.d_vocab,
        "n_params": loaded.n_params, "eval_loss": loaded.eval_loss, "tokens_trained": loaded.tokens_trained,
        "source": loaded.source, "source_kind": loaded.kind, "revision": loaded.revision,
        "config": json.dumps(loaded.meta, default=str),
        "loss_curve": json.dumps(read_loss_curve(loaded.loss_curve_dir) if loaded.loss_curve_dir else []),
    }
    return pa.Table.from_pylist([row])


def read_loss_curve(path: Path) -> list[dict]:
    try:
        with open(path / LOSS_CSV, newline="") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except OSError:
        return []


def _number(text: str):
    if text in ("", "None"):
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def run_tables(result: ModelIndex, write_s: float) -> dict[str, pa.Table]:
    """The index_runs and index_details rows of this run (written last: they record the write time)."""
    cfg, tally = result.cfg, result.tally
    run_id = uuid.uuid4().hex
    run = {
        "run_id": run_id, "model_id": result.model_id, "dataset": cfg.dataset,
        "tokens": tally.tokens, "documents": tally.documents, "top_k": cfg.top_k,
        "window_before": cfg.window_before, "window_after": cfg.window_after,
        "sites": list(dict.fromkeys(s.name for s in result.sites)),
        "bands": cfg.bands, "band_kind": "interval", "samples_per_band": cfg.per_band,
        "random_samples": cfg.random, "activation_threshold": cfg.threshold,
        "sample_documents": len({doc_of(u) for u, _ in result.sample.segments()}),
        "sample_segments": len(result.sample.ids), "sample_tokens": result.sample.tokens,
        "sample_rule": result.sample.rule(), "segment_tokens": result.segment_len,
        "sample_rows": cfg.sample_rows,
        "started_at": result.started_at.replace(tzinfo=None), "seconds": result.timings["total_s"] + write_s,
        "tokens_per_s": tally.tokens / max(result.timings["stream_s"], 1e-9),
        "code_version": code_version(), "device": result.device,
        "dataset_sha256": dataset_hash(cfg.dataset, cfg.seed),
    }
    timings = {**{k: round(v, 3) for k, v in result.timings.items()}, "write_s": round(write_s, 3)}
    details = {"run_id": run_id, "model_id": result.model_id, "tokens_requested": cfg.tokens,
               "stats_every": 1, "stats_tokens": result.stats_tokens,
               "config": json.dumps(cfg.to_dict()), "timings": json.dumps(timings)}
    return {"index_runs": pa.Table.from_pylist([run]), "index_details": pa.Table.from_pylist([details])}


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{solu.__version__}+{commit}" if commit else solu.__version__
