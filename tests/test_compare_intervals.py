"""The intervals and the test behind `solu compare`: Wilson against its formula,
Newcombe against the published example, the permutation p-value against an
enumeration of every relabelling."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from index.measure.intervals import newcombe, permutation_p, wilson


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 1), (17, 20), (102, 512)])
def test_wilson_matches_the_formula(k, n):
    z, p = 1.959964, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = wilson(k, n)
    assert float(low) == pytest.approx(0.0 if k == 0 else centre - half, abs=1e-12)
    assert float(high) == pytest.approx(1.0 if k == n else centre + half, abs=1e-12)


def test_wilson_is_elementwise_and_empty_is_nan():
    low, high = wilson(np.array([[1, 2], [0, 0]]), np.array([[4, 4], [5, 0]]))
    assert low.shape == (2, 2) and low[1, 0] == 0.0 and np.isnan(low[1, 1]) and np.isnan(high[1, 1])
    assert high[0, 1] == pytest.approx(float(wilson(2, 4)[1]))


def test_newcombe_reproduces_the_published_example():
    # Newcombe (1998), example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339
    low, high = newcombe(48, 80, 56, 70)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    assert all(math.isnan(x) for x in newcombe(0, 0, 3, 5))


def brute_permutation_p(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Every way to choose which n_a of the units are model A's, counted."""
    units = [1] * (k_a + k_b) + [0] * (n_a + n_b - k_a - k_b)
    observed = abs(k_b / n_b - k_a / n_a)
    extreme = total = 0
    for chosen in itertools.combinations(range(len(units)), n_a):
        in_a = sum(units[i] for i in chosen)
        total += 1
        extreme += abs((k_a + k_b - in_a) / n_b - in_a / n_a) >= observed - 1e-12
    return extreme / total


@pytest.mark.parametrize("k_a,n_a,k_b,n_b", [(1, 6, 5, 6), (2, 7, 2, 5), (0, 5, 4, 8), (3, 3, 0, 4), (4, 9, 6, 9)])
def test_permutation_p_is_the_exact_permutation_test(k_a, n_a, k_b, n_b):
    assert permutation_p(k_a, n_a, k_b, n_b) == pytest.approx(brute_permutation_p(k_a, n_a, k_b, n_b), abs=1e-12)


def test_permutation_p_edges():
    assert permutation_p(3, 10, 3, 10) == pytest.approx(1.0)
    assert permutation_p(0, 512, 512, 512) < 1e-100
    assert math.isnan(permutation_p(0, 0, 1, 2))
