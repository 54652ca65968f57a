"""The held-out score as a curve (index.measure.curves) and the verdict's calibration
against raters (index.measure.verdict, study.calibration), on planted cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from index.measure import curves, verdict


def scores_frame(runs: dict[str, np.ndarray], view: str = "primary") -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"model_id": m, "view": view, "score": s}) for m, s in runs.items()],
                     ignore_index=True)


def test_the_curve_equals_a_count_at_every_cut():
    s = np.array([0.05, 0.3, 0.3, 0.61, np.nan, 0.99, -0.2])
    brute = [np.mean(np.nan_to_num(s) >= c) for c in curves.GRID]
    assert np.allclose(curves.curve(s), brute)
    assert curves.curve_mean(s) == pytest.approx(np.nan_to_num(s).mean())


def test_crossing_curves_are_named_and_located():
    """A: many middling scores; B: fewer neurons above 0.3 but more above 0.6. B leads
    above the crossing, A below, and the sentence says so."""
    rng = np.random.default_rng(0)
    a = {f"a{i}": np.concatenate([rng.uniform(0.3, 0.5, 600), rng.uniform(0, 0.1, 400)]) for i in range(3)}
    b = {f"b{i}": np.concatenate([rng.uniform(0.6, 0.9, 300), rng.uniform(0, 0.1, 700)]) for i in range(3)}
    out = curves.group_curves(scores_frame(a | b), {"A": list(a), "B": list(b)}, draws=300)
    diff = out["curve_difference"].set_index("cut")
    assert diff.difference[0.35] < 0 and diff.high[0.35] < 0  # A leads at 0.35, clearly
    assert diff.difference[0.5] > 0 and diff.low[0.5] > 0  # B leads at 0.5, clearly
    sentence = curves.crossing(out["curve_difference"], "A", "B")
    assert "cross" in sentence and "A leads at the lowest" in sentence
    crossed = [float(x) for x in sentence.split("between cuts ")[1].split(")")[0].split("-")]
    assert 0.37 <= crossed[0] < crossed[1] <= 0.43, sentence  # shares tie at 0.40 by construction
    mean = out["mean_score"].set_index("group")
    assert mean.mean_score["A"] == pytest.approx(np.concatenate(list(a.values())).mean())
    assert mean.low["B - A"] <= mean.mean_score["B - A"] <= mean.high["B - A"]


def test_one_side_leading_everywhere_says_so():
    rng = np.random.default_rng(1)
    a = {"a": rng.uniform(0, 0.5, 2000)}
    b = {"b": rng.uniform(0, 0.5, 2000) + 0.3}
    out = curves.group_curves(scores_frame(a | b), {"A": ["a"], "B": ["b"]}, draws=200)
    assert curves.crossing(out["curve_difference"], "A", "B").startswith("B leads at every cut")


def test_seed_spread_widens_the_band():
    """Three runs that differ give a wider band than three identical runs of the same pool."""
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 1000)
    same = [base] * 3
    spread = [np.clip(base - 0.15, 0, 1), base, np.clip(base + 0.15, 0, 1)]
    width = {}
    for name, runs in (("same", same), ("spread", spread)):
        draws, _ = curves.bootstrap(runs, draws=400)
        low, high = np.percentile(draws, [2.5, 97.5], axis=0)
        width[name] = (high - low)[50]
    assert width["spread"] > 2 * width["same"]


def test_auroc_and_kappa_equal_their_definitions():
    score = np.array([0.9, 0.8, 0.3, 0.3, 0.1, np.nan])
    yes = np.array([True, False, True, False, False, False])
    pairs = [(p, n) for p in np.flatnonzero(yes) for n in np.flatnonzero(~yes)]
    s = np.nan_to_num(score, nan=-np.inf)
    brute = np.mean([1.0 if s[p] > s[n] else 0.5 if s[p] == s[n] else 0.0 for p, n in pairs])
    assert verdict.auroc(score, yes) == pytest.approx(brute)
    a = np.array([1, 1, 0, 0, 1, 0], bool)
    po, pe = (a == yes).mean(), a.mean() * yes.mean() + (1 - a.mean()) * (1 - yes.mean())
    assert verdict.kappa(a, yes) == pytest.approx((po - pe) / (1 - pe))


def test_calibration_recovers_the_raters_rule():
    """Raters who say yes exactly when the score is at least 0.45 and the explanation
    holds at most top examples: the best cut lands on 0.45 with an interval around it,
    kappa 1, and the default cut accepts every yes but also some no."""
    rng = np.random.default_rng(3)
    score, top = rng.uniform(0, 1, 300), rng.uniform(0, 1, 300)
    yes = (score >= 0.45) & (top >= verdict.TOP_SHARE)
    found = verdict.calibrate(top, score, yes, draws=300)
    assert found["kappa_best"] == pytest.approx(1.0)
    assert abs(found["best_cut"] - 0.45) <= 0.011 and found["best_cut_low"] <= 0.45 <= found["best_cut_high"] + 0.01
    assert found["accepts_yes"] == 1.0 and found["accepts_no"] > 0
    assert 0.6 < found["auroc"] < 1  # the score alone ranks yes above no, short of the top share
