"""The driver of the measures: a model's shared records (Context) and the pool that maps a
measure over its chunks of neurons, a chunk at a time on every core, so memory follows
the chunk and not the size of the index (index.measure.autolabel maps the concept
scores and the explanations over every chunk in one pass)."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from index.measure.explain import BOOTSTRAP, counts_table
from index.measure.records import Chunk, Positions, Sample


@dataclass
class Context:
    """What every chunk of a model shares: its positions, its activation sample and the
    sample's counts of each rule's keys (fit half, and per held-out record)."""
    positions: Positions
    sample: Sample
    fit: tuple
    held: tuple
    boot: int = BOOTSTRAP

    @property
    def masks(self) -> np.ndarray:
        """(S, n_concepts): each sample position's concept bits."""
        return self.positions.bits[self.sample.row]

    @classmethod
    def build(cls, positions: Positions, sample: Sample, boot: int = BOOTSTRAP) -> "Context":
        fit_rows = sample.row[~sample.held]
        return cls(positions, sample, counts_table(positions, fit_rows, np.zeros(len(fit_rows), np.int64), 1),
                   counts_table(positions, sample.row, sample.record, len(sample.record_held)), boot)


_STATE: dict = {}


def _init(ctx: Context, fn) -> None:
    _STATE.update(ctx=ctx, fn=fn)


def _run(chunk: Chunk):
    return _STATE["fn"](_STATE["ctx"], chunk)


def map_chunks(fn, ctx: Context, chunks, workers: int | None = None):
    """fn(ctx, chunk) for every chunk (an iterable of Chunk), results in order, on
    `workers` processes (default: every core; 1 runs in this process). fn must be a
    module-level function (workers receive it by name)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        for chunk in chunks:
            yield fn(ctx, chunk)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_init,
                             initargs=(ctx, fn)) as pool:
        pending = []
        for chunk in chunks:
            pending.append(pool.submit(_run, chunk))
            if len(pending) > 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()
