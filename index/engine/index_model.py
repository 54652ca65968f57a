"""Index one checkpoint: stream a dataset through the model, keeping per neuron site the
stats and the example pools; then a short second pass over the activation sample
(segments chosen by a hash, index.engine.sample) for the sparse activations table,
whose threshold, a fraction of each neuron's max, needs the max; and the direct logit
effects, from the weights alone. The unit of ranking and sampling is the segment of a
document (index.engine.batching).

Memory does not grow with the dataset: documents are read and tokenized a group at a
time, the model runs batch by batch under inference_mode with hooks on the neuron
sites only and stops after the last of them, and the index keeps, for every neuron of
every site, its stats and its pools (neurons x (K + samples) windows), plus two batches
of activations.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from index.engine.accumulator import Accumulator, PoolShape, SiteResult
from index.engine.hooks import Recorder, index_sites, site_key
from index.engine.config import IndexConfig
from index.engine.batching import (Batch, Tally, doc_of, document_tokens, make_batches, segment_length,
                                   segment_of, segment_start, segments)
from index.engine.sample import ActivationSample
from index.engine.windows import build_span, head_of, next_tail
from solu.errors import UserError
from solu.model import Site, final_norm, mlp_out_weights, resolve_device, unembed
from solu.sources import LoadedModel, load_model
from solu.tokenizer import token_strings

BATCH_TOKENS = 4096  # tokens per forward pass when the batch size is chosen automatically
BATCH_BYTES = 1 << 30  # and at most this much float32 activation memory (two batches are held)


@dataclass
class Prepared:
    """One batch after its forward pass."""

    batch: Batch
    acts: list[torch.Tensor]  # per site, in Indexer.keys order: [B, T, d_mlp]


def run_sites(ckpt: LoadedModel, cfg: IndexConfig) -> list:
    """The neuron sites a run indexes: the model's sites in the chosen layers."""
    try:
        return index_sites(ckpt, cfg.layer_list(ckpt.model_cfg.n_layers))
    except ValueError as e:
        raise UserError(str(e)) from None


class Indexer:
    """The streaming part: feed it batches, read its accumulator."""

    def __init__(self, ckpt: LoadedModel, cfg: IndexConfig, device: torch.device):
        self.ckpt, self.model, self.cfg, self.device = ckpt, ckpt.model, cfg, device
        self.sites = run_sites(ckpt, cfg)
        self.keys = [site_key(s) for s in self.sites]
        shape = PoolShape(cfg.top_k, cfg.bands, cfg.per_band, cfg.random, cfg.window_before,
                          cfg.window_after, cfg.seed, cfg.band_candidates)
        d_mlp = ckpt.model_cfg.d_mlp
        # a neuron's samples depend on its layer and unit, not its site: both SoLU sites draw the same random documents
        neuron_keys = torch.cat([torch.arange(d_mlp) + s.layer * d_mlp for s in self.sites])
        self.acc = Accumulator(len(self.sites), d_mlp, neuron_keys, shape, device)
        self._tail: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sample: ActivationSample | None = None
        self.segment_len = segment_length(cfg.segment_tokens, ckpt.model_cfg.n_ctx)
        self.forward_s = self.accumulate_s = 0.0

    @property
    def accs(self) -> dict[str, SiteResult]:
        """Each site's results, by site key."""
        return {key: self.acc.site(i) for i, key in enumerate(self.keys)}

    def index_documents(self, docs: Iterable[tuple[int, list[int]]],
                        on_batch: Callable[[int], None] = lambda n: None) -> None:
        """Index (doc_id, token ids) documents: cut into segments, offered to the
        activation sample, batched and streamed. Call once per Indexer; shards that
        read disjoint documents merge (merge) into the result of one run."""
        units = self.sampled(segments(docs, self.segment_len))
        self.run(make_batches(units, self.ckpt.model_cfg.n_ctx, self.cfg.batch_size, self.ckpt.bos_id), on_batch)

    def run(self, batches: Iterable[Batch], on_batch: Callable[[int], None] = lambda n: None) -> None:
        with torch.inference_mode(), Recorder(self.model, self.sites) as rec:
            prev = None
            for batch in batches:
                cur = self._forward(batch.to(self.device), rec)
                if prev is not None:
                    self._absorb(prev, cur)
                prev = cur
                on_batch(batch.n_tokens)
            if prev is not None:
                self._absorb(prev, None)

    def _forward(self, batch: Batch, rec: Recorder) -> Prepared:
        start = time.perf_counter()
        acts = rec.run(batch.tokens)
        self.forward_s += time.perf_counter() - start
        return Prepared(batch, [acts[k] for k in self.keys])

    def _absorb(self, cur: Prepared, nxt: Prepared | None) -> None:
        start = time.perf_counter()
        head = head_of(build_span(nxt.acts, nxt.batch), self.cfg.window_after) \
            if nxt is not None and cur.batch.continues_next else None
        tail = self._tail if cur.batch.continues_prev else None
        span = build_span(cur.acts, cur.batch, *(tail or (None, None)), *(head or (None, None)))
        self.acc.update(span, cur.batch)
        self._tail = next_tail(span, self.cfg.window_before)
        self.accumulate_s += time.perf_counter() - start

    def merge(self, other: "Indexer") -> None:
        """Fold in an indexer that read other documents (another shard of the dataset)."""
        self.acc = self.acc.merge(other.acc)
        if self.sample is not None and other.sample is not None:
            self.sample = self.sample.merge(other.sample)

    def sampled(self, units: Iterable[tuple[int, list[int]]]) -> Iterator[tuple[int, list[int]]]:
        """Pass segments through, offering each to the activation sample."""
        self.sample = self.sample or ActivationSample(self.cfg.sample_tokens, self.cfg.seed)
        for unit, ids in units:
            self.sample.add(unit, ids)
            yield unit, ids


@dataclass
class ModelIndex:
    """Everything indexed for one model, ready to be written."""

    ckpt: LoadedModel
    cfg: IndexConfig
    sites: list[Site]
    accs: dict[str, SiteResult]
    tally: Tally
    vocab: list[str]
    sample: ActivationSample  # its segments feed the activations and tokens tables
    segment_len: int  # tokens per segment, the unit of ranking
    activations: dict[str, np.ndarray]
    logits: dict[str, np.ndarray]
    started_at: datetime
    device: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.ckpt.name

    @property
    def stats_tokens(self) -> int:
        """Tokens the token-level stats were taken over."""
        return next(iter(self.accs.values())).stats.count


def index_checkpoint(path: str | Path, cfg: IndexConfig, progress: bool = True, name: str | None = None,
                     position: str = "") -> ModelIndex:
    """Index one model (any MODEL spec: solu.sources). Raises UserError for bad input."""
    started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
    try:
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    ckpt = load_model(path, device, cfg.dtype, name=name)
    indexer = Indexer(ckpt, cfg, device)
    if cfg.batch_size == 0:
        cfg = indexer.cfg = replace(cfg, batch_size=fit_batch_size(ckpt.model_cfg, len(indexer.sites)))
    _check_window(cfg, ckpt)
    tally = Tally()
    docs = document_tokens(cfg.dataset, cfg.text_column, ckpt.tokenizer, cfg.tokens, tally, cfg.seed)
    if progress:
        layers = sorted({s.layer for s in indexer.sites})
        print(f"solu index: {ckpt.name}{position}: layers {_span(layers)} of {ckpt.model_cfg.n_layers}, "
              f"{ckpt.model_cfg.d_mlp} neurons each, sites {', '.join(sorted({s.name for s in indexer.sites}))}; "
              f"{cfg.batch_size} rows x {ckpt.model_cfg.n_ctx} tokens per batch, {cfg.dtype}", file=sys.stderr)
    bar = _progress(progress, cfg.tokens, ckpt.name)
    try:
        indexer.index_documents(docs, bar.update)
    finally:
        bar.close()
    if tally.tokens == 0:
        raise UserError(f"dataset {cfg.dataset!r} has no text to index")
    return finish(indexer, tally, started_at, time.perf_counter() - t0, progress)


def finish(indexer: Indexer, tally: Tally, started_at: datetime, stream_s: float,
           progress: bool = False) -> ModelIndex:
    """The ModelIndex of an indexer that has read every document (or of merged shards):
    the activation sample's pass and the logit effects."""
    ckpt, cfg = indexer.ckpt, indexer.cfg
    t1 = time.perf_counter()
    sample = indexer.sample or ActivationSample(cfg.sample_tokens, cfg.seed)
    activations = sample_activations(indexer, sample.segments(), ckpt.model_cfg.n_ctx, ckpt.bos_id)
    sample_s = time.perf_counter() - t1
    vocab = token_strings(ckpt.tokenizer, range(ckpt.tokenizer.get_vocab_size()))
    logits = direct_logits(ckpt, cfg.logit_k, len(vocab), sorted({s.layer for s in indexer.sites}), progress)
    timings = {"stream_s": stream_s, "forward_s": indexer.forward_s, "accumulate_s": indexer.accumulate_s,
               "sample_pass_s": sample_s, "total_s": stream_s + time.perf_counter() - t1}
    return ModelIndex(ckpt, cfg, indexer.sites, indexer.accs, tally, vocab, sample, indexer.segment_len,
                      activations, logits, started_at, str(indexer.device), timings)


def fit_batch_size(shape, n_sites: int) -> int:
    """Rows per batch: about BATCH_TOKENS tokens, and the two batches of float32
    activations the indexer holds within BATCH_BYTES; at least one row."""
    row_bytes = 2 * shape.n_ctx * shape.d_mlp * n_sites * 4
    return max(1, min(BATCH_TOKENS // shape.n_ctx, BATCH_BYTES // row_bytes))


def _span(layers: list[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1 \
        else ",".join(map(str, layers))


def _check_window(cfg: IndexConfig, ckpt: LoadedModel) -> None:
    room = cfg.batch_size * (ckpt.model_cfg.n_ctx - 1)
    if cfg.window_after > room:
        raise UserError(f"--window-after {cfg.window_after} is longer than a batch ({room} tokens); "
                        "raise --batch-size or shorten the window")


def _layer_progress(enabled: bool, layers, name: str):
    from tqdm import tqdm

    return tqdm(list(layers), desc=f"logit effects {name}", unit="layer", disable=not enabled, dynamic_ncols=True,
                leave=False)


def _progress(enabled: bool, total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"index {name}", unit="tok", unit_scale=True, disable=not enabled,
                dynamic_ncols=True)


def sample_activations(indexer: Indexer, sample: list[tuple[int, list[int]]], n_ctx: int,
                       bos: int) -> dict[str, np.ndarray]:
    """Every (site, neuron, doc, segment, pos) of the sample's segments whose activation
    is above threshold x the neuron's max (and above 0); pos is the document position."""
    out: dict[str, list] = {k: [] for k in ("site", "neuron", "doc_id", "segment", "pos", "act")}
    acc = indexer.acc
    threshold = acc.activation_limit(indexer.cfg.threshold)[:, None, :]
    with torch.inference_mode(), Recorder(indexer.model, indexer.sites) as rec:
        for batch in make_batches(iter(sample), n_ctx, indexer.cfg.batch_size, bos):
            batch = batch.to(indexer.device)
            acts = rec.run(batch.tokens)
            span = build_span([acts[k] for k in indexer.keys], batch)
            index = batch.flat_index()
            flat = torch.stack([a.reshape(-1, acc.d_mlp)[index] for a in span.acts])
            unit, pos = batch.flat_positions()
            s, p, j = ((flat > threshold) & (flat > 0)).nonzero(as_tuple=True)
            unit = unit[p]
            for name, values in (("neuron", j), ("doc_id", doc_of(unit)), ("segment", segment_of(unit)),
                                 ("pos", pos[p] + segment_start(unit, indexer.segment_len)), ("act", flat[s, p, j])):
                out[name].append(values.cpu().numpy())
            out["site"].append(np.asarray(indexer.keys, dtype=object)[s.cpu().numpy()])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def direct_logits(ckpt: LoadedModel, k: int, n_vocab: int, layers: list[int] | None = None,
                  progress: bool = False) -> dict[str, np.ndarray]:
    """Top and bottom tokens of each neuron's direct effect on the logits.

    The effect of neuron n is W_out[n] through the final norm into W_U. The norm is
    linearised: W_out[n] is centred (a LayerNorm subtracts the mean over d_model; an
    RMSNorm does not) and scaled by the norm's weight; its division by the residual's
    norm is taken as a constant, and its bias (the same for every neuron) dropped. So
    weights compare within a model, not as logits. Computed in float32. Tokens beyond
    the tokenizer's vocabulary are skipped.
    """
    model = ckpt.model
    norm, w_ln = final_norm(model)
    w_ln = w_ln.float() if w_ln is not None else 1.0
    w_u = unembed(model)[:, :n_vocab].float()
    rows: dict[str, list] = {k_: [] for k_ in ("layer", "neuron", "sign", "rank", "token_id", "weight")}
    k = min(k, n_vocab)
    if k == 0:
        return {k_: np.zeros(0) for k_ in rows}
    with torch.inference_mode():
        for layer in _layer_progress(progress, layers if layers is not None else range(ckpt.model_cfg.n_layers),
                                     ckpt.name):
            w_out = mlp_out_weights(model, layer).float()
            if norm == "LN":
                w_out = w_out - w_out.mean(1, keepdim=True)
            effect = (w_out * w_ln) @ w_u  # [d_mlp, vocab]
            for sign, largest in (("pos", True), ("neg", False)):
                weight, token = torch.topk(effect, k, dim=1, largest=largest)
                d_mlp = effect.shape[0]
                rows["layer"].append(np.full(d_mlp * k, layer))
                rows["neuron"].append(np.repeat(np.arange(d_mlp), k))
                rows["sign"].append(np.full(d_mlp * k, sign, dtype=object))
                rows["rank"].append(np.tile(np.arange(k), d_mlp))
                rows["token_id"].append(token.cpu().numpy().ravel())
                rows["weight"].append(weight.float().cpu().numpy().ravel())
    return {k_: np.concatenate(v) for k_, v in rows.items()}
