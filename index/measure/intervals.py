"""Confidence intervals and a test for fractions: how sure a measured share is, and
whether two models' shares differ by more than chance.

* wilson: the Wilson score interval of k successes in n trials (95% by default).
* newcombe: the interval of a difference of two independent proportions, from their
  Wilson intervals (Newcombe 1998, method 10).
* permutation_p: the exact two-sided permutation test of a difference in proportions.
  Shuffling which model each neuron belongs to leaves the passing count fixed, so the
  number of passing neurons that land in model A is hypergeometric; the p-value sums
  the probability of every split at least as far from equal shares as the one seen.
  Exact, so no random seed and no Monte Carlo error.
"""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959964


def wilson(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) Wilson intervals, elementwise over arrays k and n (NaN where n is 0).
    k = 0 gives low 0 and k = n gives high 1 exactly."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = np.where(k == 0, 0.0, np.clip(centre - half, 0, 1))
    high = np.where(k == n, 1.0, np.clip(centre + half, 0, 1))
    empty = n == 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def newcombe(k_a: int, n_a: int, k_b: int, n_b: int, z: float = Z95) -> tuple[float, float]:
    """The interval of p_b - p_a (NaN if either sample is empty)."""
    if n_a == 0 or n_b == 0:
        return math.nan, math.nan
    p_a, p_b = k_a / n_a, k_b / n_b
    (lo_a, hi_a), (lo_b, hi_b) = (tuple(float(x) for x in wilson(k, n, z)) for k, n in ((k_a, n_a), (k_b, n_b)))
    d = p_b - p_a
    return d - math.sqrt((p_b - lo_b) ** 2 + (hi_a - p_a) ** 2), d + math.sqrt((hi_b - p_b) ** 2 + (p_a - lo_a) ** 2)


def permutation_p(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided p-value of the difference k_b/n_b - k_a/n_a under random relabelling of
    the n_a + n_b units (exact; NaN if either sample is empty)."""
    if n_a == 0 or n_b == 0:
        return math.nan
    total, passing = n_a + n_b, k_a + k_b
    split = np.arange(max(0, passing - n_b), min(n_a, passing) + 1)  # passing units in A
    log_pmf = (_log_comb(passing, split) + _log_comb(total - passing, n_a - split) - _log_comb(total, n_a))
    observed = abs(k_b / n_b - k_a / n_a)
    extreme = np.abs((passing - split) / n_b - split / n_a) >= observed - 1e-12
    return float(min(1.0, np.exp(log_pmf[extreme]).sum()))


def _log_comb(n, k) -> np.ndarray:
    n, k = np.asarray(n, dtype=np.float64), np.asarray(k, dtype=np.float64)
    lgamma = np.vectorize(math.lgamma)
    return lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1)
