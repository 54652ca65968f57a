"""The streaming part of a shard: token batches through the model, into an Accumulator.

The model runs batch by batch under inference_mode with hooks on the neuron sites only
(and stops after the last of them). The accumulator takes each batch as soon as its
forward pass is done, so one batch of activations is held at a time; windows that run
on into the next batch are completed from it (index.engine.windows). After streaming,
the sample pass runs the activation sample's segments again for the sparse activations
table, whose threshold, a fraction of each neuron's max, needs the max, and for the
match sample (index.engine.match_sample).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from index.engine.accumulator import Accumulator, PoolShape, Rules, SiteResult, activation_limit
from index.engine.batching import Batch, doc_of, make_batches, segment_length, segment_of, segment_start, segments
from index.engine.config import IndexConfig
from index.engine.hooks import Recorder, index_sites, site_key
from index.engine.match_sample import MatchRows, match_cut
from index.engine.pools import token_dtype
from index.engine.sample_rows import SampleRows, per_neuron
from index.engine.windows import Edge, build_span, head_of, next_tail
from solu.errors import UserError
from solu.model import Site
from solu.sources import LoadedModel


@dataclass(frozen=True)
class Layout:
    """What a run indexes and in what units, computed once per run (`Layout.of`) and
    handed to every shard: the neuron sites (the model's sites in the chosen layers) and
    the segment length (documents longer than it are ranked as segments)."""
    sites: tuple[Site, ...]
    segment_len: int

    @classmethod
    def of(cls, ckpt: LoadedModel, cfg: IndexConfig) -> "Layout":
        try:
            sites = index_sites(ckpt, cfg.layer_list(ckpt.model_cfg.n_layers))
        except ValueError as e:
            raise UserError(str(e)) from None
        return cls(tuple(sites), segment_length(cfg.segment_tokens, ckpt.model_cfg.n_ctx))


def pool_shape(cfg: IndexConfig, ckpt: LoadedModel) -> PoolShape:
    """The run's pool shape; its windows' token dtype fits every id of the model and its tokenizer."""
    vocab = max(ckpt.model_cfg.d_vocab, ckpt.tokenizer.get_vocab_size())
    return PoolShape(cfg.top_k, cfg.bands, cfg.per_band, cfg.random, cfg.window_before, cfg.window_after, cfg.seed,
                     cfg.band_candidates, token_dtype(vocab))


@dataclass
class Prepared:
    """One batch after its forward pass."""

    batch: Batch
    acts: list[torch.Tensor]  # per site, in Indexer.keys order: [B, T, d_mlp]


class Indexer:
    """Feed it documents (or batches); read its accumulator."""

    def __init__(self, ckpt: LoadedModel, cfg: IndexConfig, device: torch.device, layout: Layout):
        self.ckpt, self.model, self.cfg, self.device = ckpt, ckpt.model, cfg, device
        self.sites = list(layout.sites)
        self.keys = [site_key(s) for s in self.sites]
        rules = Rules.for_run(pool_shape(cfg, ckpt), self.sites, ckpt.model_cfg.d_mlp, device)
        self.acc = Accumulator(rules, len(self.sites))
        self.segment_len = layout.segment_len
        self.forward_s = self.accumulate_s = 0.0

    def by_site(self) -> dict[str, SiteResult]:
        """Each site's results so far (interval samples drawn against the max so far), by site key."""
        return dict(zip(self.keys, self.acc.rules.sites(self.acc.gathered, len(self.sites))))

    def index_documents(self, docs: Iterable[tuple[int, list[int]]],
                        on_batch: Callable[[int], None] = lambda n: None) -> None:
        """Index (doc_id, token ids) documents: cut into segments, batched and streamed."""
        units = segments(docs, self.segment_len)
        self.run(make_batches(units, self.ckpt.model_cfg.n_ctx, self.cfg.batch_size, self.ckpt.bos_id), on_batch)

    def run(self, batches: Iterable[Batch], on_batch: Callable[[int], None] = lambda n: None) -> None:
        tail, open_windows = None, []
        with torch.inference_mode(), Recorder(self.model, self.sites) as rec:
            for batch in batches:
                tail, open_windows = self._absorb(self._forward(batch.to(self.device), rec), tail, open_windows)
                on_batch(batch.n_tokens)

    def _forward(self, batch: Batch, rec: Recorder) -> Prepared:
        start = time.perf_counter()
        acts = rec.run(batch.tokens)
        self.forward_s += time.perf_counter() - start
        return Prepared(batch, [acts[k] for k in self.keys])

    def _absorb(self, cur: Prepared, tail: Edge | None, open_windows: list) -> tuple[Edge | None, list]:
        """Take batch cur: first the windows the batch before left open (their head is
        cur's first positions), then cur itself (its tail from the batch before); returns
        the tail and the open windows cur leaves for the next batch."""
        start = time.perf_counter()
        span = build_span(cur.acts, cur.batch, tail if cur.batch.continues_prev else None)
        if open_windows:
            self.acc.fill_windows(open_windows, head_of(span, self.cfg.window_after))
        self.acc.update(span, cur.batch)
        open_windows = self.acc.open_windows(cur.batch)
        self.accumulate_s += time.perf_counter() - start
        return next_tail(span, self.cfg.window_before), open_windows

    def sample_pass(self, sample: list[tuple[int, list[int]]]) -> SampleRows:
        """The activation rows of the sample's segments (index.engine.sample_rows), selected
        against this shard's max (a one-shard run's are final); pos is the document position."""
        d_mlp = self.ckpt.model_cfg.d_mlp
        top = self.acc.gathered.stats.max
        limit = activation_limit(top, len(self.sites), self.cfg.threshold)
        rows = SampleRows.empty(limit, top, per_neuron(self.cfg.sample_rows, len(top)), d_mlp)
        if self.cfg.match_tokens:
            cut = match_cut(self.cfg.match_tokens, self.cfg.sample_tokens, self.cfg.tokens)
            rows.match = MatchRows(cut, self.cfg.seed, sum(s.primary for s in self.sites), d_mlp)
        batches = make_batches(iter(sample), self.ckpt.model_cfg.n_ctx, self.cfg.batch_size, self.ckpt.bos_id)
        with torch.inference_mode(), Recorder(self.model, self.sites) as rec:
            for batch in batches:
                self._sample_batch(rows, batch.to(self.device), rec)
        return rows.select(limit, top)

    def _sample_batch(self, rows: SampleRows, batch: Batch, rec: Recorder) -> None:
        """One batch of the sample pass into rows (its activations go when it returns)."""
        acts, d_mlp = rec.run(batch.tokens), self.ckpt.model_cfg.d_mlp
        index = batch.flat_index()
        unit, pos = batch.flat_positions()
        doc_id = doc_of(unit).cpu().numpy()
        pos = (pos + segment_start(unit, self.segment_len)).cpu().numpy().astype(np.int32)
        match = torch.from_numpy(rows.match.choose(doc_id, pos)).to(index.device) if rows.match else None

        def by_site():  # one site's rows at a time; a primary site's values at the match tokens go to rows.match
            primary = 0
            for key, site in zip(self.keys, self.sites):
                x = acts[key].reshape(-1, d_mlp)[index]
                if match is not None and site.primary:
                    rows.match.add(primary, x[match])
                    primary += 1
                yield x
        rows.add(by_site(), doc_id, segment_of(unit).cpu().numpy().astype(np.int32), pos)
