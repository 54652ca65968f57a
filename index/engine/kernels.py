"""The per-token stats of a batch on the CPU, as compiled loops (numba).

On a CPU the stats are bound by memory traffic: as tensor ops, min, power sums and
histogram read every activation about ten times and write it four times. Here one
loop takes min and the four power sums (each row's in float32, over at most n_ctx - 1
tokens, then added in float64), and a second counts each activation into its fine
histogram bin, both over the real tokens of each row only: column 0 (BOS) and the
padding of short rows are skipped, so no duplicate has to be taken out. The loops
release the GIL, and a site's neurons are split across torch's thread count.

index.engine.stats defines the numbers (the grid, the bins, the shift) and calls
these; on other devices the same numbers come from tensor ops there.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch


_POOLS: dict[int, ThreadPoolExecutor] = {}  # by thread count


@numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
def _moments(acts, row_len, shift, j0, j1, lo, sums):  # pragma: no cover (compiled)
    """Neurons j0..j1 of acts [B, T, d] (float32; row b's tokens at columns
    1..row_len[b]): their min into lo [d] and the sums of (x - shift)**k, k = 1..4,
    added into sums [4, d] (float64)."""
    n = j1 - j0
    row = np.zeros((4, n), np.float32)
    low = np.full(n, np.inf, np.float32)
    sh = shift[j0:j1].astype(np.float32)
    for b in range(acts.shape[0]):
        row[:] = 0
        for t in range(1, row_len[b] + 1):
            x = acts[b, t, j0:j1]
            for j in range(n):
                low[j] = min(low[j], x[j])
                a = x[j] - sh[j]
                a2 = a * a
                row[0, j] += a
                row[1, j] += a2
                row[2, j] += a2 * a
                row[3, j] += a2 * a2
        for k in range(4):
            for j in range(n):
                sums[k, j0 + j] += row[k, j]
    for j in range(n):
        lo[j0 + j] = low[j]


@numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
def _histogram(acts, row_len, neg_inv, j0, j1, hist):  # pragma: no cover (compiled)
    """Add 1 into hist [d, 2 FINE] (int32) at bin FINE - 1 - floor(x * neg_inv[j]) of
    neuron j, for every real token x of neurons j0..j1."""
    top = hist.shape[1] // 2 - 1  # FINE - 1
    for b in range(acts.shape[0]):
        for t in range(1, row_len[b] + 1):
            x = acts[b, t]
            for j in range(j0, j1):
                hist[j, top - np.int64(np.floor(x[j] * neg_inv[j]))] += 1


def moments(acts: list[torch.Tensor], row_len: torch.Tensor,
            shift: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-site hook outputs [B, T, d] (float32, CPU): min [sites * d] (float32) and the
    power sums s1..s4 about shift [sites * d] (float32 values), float64 each."""
    d = acts[0].shape[2]
    lens = row_len.numpy()
    lo = np.empty((len(acts), d), np.float32)
    sums = np.zeros((len(acts), 4, d), np.float64)
    sh = shift.numpy().reshape(len(acts), d)
    _run([lambda j0, j1, s=s, a=a.numpy(): _moments(a, lens, sh[s], j0, j1, lo[s], sums[s])
          for s, a in enumerate(acts)], d)
    out = torch.from_numpy(sums)
    return torch.from_numpy(lo).reshape(-1), [out[:, k].reshape(-1) for k in range(4)]


def histogram(acts: list[torch.Tensor], row_len: torch.Tensor, neg_inv: list[torch.Tensor],
              hist: torch.Tensor) -> None:
    """Count every real token of each site into hist [sites * d, 2 FINE] (int32,
    contiguous), in place; neg_inv[s] [d] (float32) is -1 / bin width of site s."""
    if not hist.is_contiguous():
        raise ValueError("the histogram must be contiguous: it is counted into in place")
    d = acts[0].shape[2]
    lens = row_len.numpy()
    h = hist.numpy().reshape(len(acts), d, -1)
    _run([lambda j0, j1, s=s, a=a.numpy(): _histogram(a, lens, neg_inv[s].numpy(), j0, j1, h[s])
          for s, a in enumerate(acts)], d)


def _run(tasks: list, d: int) -> None:
    """Each task(j0, j1) over ranges of the d neurons, on torch's thread count."""
    threads = torch.get_num_threads()
    if threads == 1:
        for task in tasks:
            task(0, d)
        return
    step = (-(-d // threads) + 15) // 16 * 16  # ceil(d / threads), whole cache lines of float32
    jobs = [(task, j, min(j + step, d)) for task in tasks for j in range(0, d, step)]
    list(_pool(threads).map(lambda job: job[0](job[1], job[2]), jobs))


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="solu-stats")
    return _POOLS[threads]
