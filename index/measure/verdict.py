"""The verdict "interpretable", and how it is calibrated against people.

A neuron is interpretable when its explanation (index.measure.explain) passes two tests:

* the top of the range: the explanation holds at the peak token of at least TOP_SHARE of
  the neuron's top examples (the paper's rule, read with that explanation). An
  explanation absent from the top examples cannot make a neuron interpretable, however
  well it correlates with the rest of the range;
* the whole range: its held-out score (the correlation of the rule's prediction with the
  activations of held-out records: top, interval and random windows and the activation
  sample) reaches SCORE.

Both cuts were chosen by matching blinded readers (docs: measuring interpretability):
raters saw demo neurons as the neuron page shows them, models hidden; the cuts are the
pair that agreed best with them on a tuning sample, then checked on a sample they were
not chosen on. When a study in the index has answers, `solu compare` and `solu study
summary` recalibrate the score cut on those answers (`calibrate`) and say so.
"""
from __future__ import annotations

import numpy as np

TOP_SHARE = 0.75
SCORE = 0.05
CUTS = np.round(np.arange(0, 1.0001, 0.01), 2)  # the score cuts a calibration tries
BOOTSTRAP = 1000


def interpretable(top_share, score, score_cut: float = SCORE) -> np.ndarray:
    """The verdict per neuron (a missing explanation or score is not interpretable)."""
    top, held = np.asarray(top_share, np.float64), np.asarray(score, np.float64)
    with np.errstate(invalid="ignore"):
        return (top >= TOP_SHARE) & (held >= score_cut)


def auroc(score, positive) -> float:
    """The chance that a random positive outranks a random negative (ties half): the
    Mann-Whitney statistic. A missing score ranks below every score. NaN without both."""
    score = np.nan_to_num(np.asarray(score, np.float64), nan=-np.inf)
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    values, inverse = np.unique(score, return_inverse=True)
    counts = np.bincount(inverse)
    midrank = np.cumsum(counts) - (counts - 1) / 2
    ranks = midrank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def kappa(a, b) -> np.ndarray:
    """Cohen's kappa of yes/no ratings b against each column of a (items on the first
    axis; a 1-d a gives a scalar). NaN where chance agreement is 1."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    b2 = b.reshape((len(b),) + (1,) * (a.ndim - 1))
    observed = (a == b2).mean(axis=0)
    pa, pb = a.mean(axis=0), b.mean()
    chance = pa * pb + (1 - pa) * (1 - pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(chance < 1, (observed - chance) / (1 - chance), np.nan)[()]


def best_cut(top_share, score, positive) -> tuple[float, float]:
    """The score cut whose verdict agrees best with the raters (highest kappa; the middle
    of the best cuts when several tie), and that kappa."""
    verdicts = interpretable(np.asarray(top_share)[:, None], np.asarray(score)[:, None], CUTS[None, :])
    kappas = np.nan_to_num(kappa(verdicts, positive), nan=-np.inf)
    best = np.flatnonzero(kappas == kappas.max())
    return float(CUTS[best[len(best) // 2]]), float(kappas.max())


def calibrate(top_share, score, positive, draws: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Agreement between raters (positive: a rater said yes) and the automated measures
    over rated items: the held-out score's AUROC, the kappa of the default verdict, the
    best score cut with its kappa and a 95% bootstrap interval (items resampled)."""
    top_share, score = np.asarray(top_share, np.float64), np.asarray(score, np.float64)
    positive = np.asarray(positive, bool)
    cut, best = best_cut(top_share, score, positive)
    rng = np.random.default_rng(seed)
    cuts = []
    for _ in range(draws):
        i = rng.integers(0, len(score), len(score))
        if positive[i].any() and (~positive[i]).any():
            cuts.append(best_cut(top_share[i], score[i], positive[i])[0])
    low, high = np.percentile(cuts, [2.5, 97.5]) if cuts else (np.nan, np.nan)
    verdict = interpretable(top_share, score)
    return {"items": len(score), "yes": int(positive.sum()), "auroc": auroc(score, positive),
            "kappa_default": float(kappa(verdict, positive)), "default_cut": SCORE,
            "accepts_yes": float(verdict[positive].mean()) if positive.any() else np.nan,
            "accepts_no": float(verdict[~positive].mean()) if (~positive).any() else np.nan,
            "best_cut": cut, "best_cut_low": float(low), "best_cut_high": float(high), "kappa_best": best}
