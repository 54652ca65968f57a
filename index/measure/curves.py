"""The held-out score as a whole curve, not one cut.

For a group of models (one model, or several training seeds), the share of neurons whose
held-out score is at least c, for every c on GRID from 0 to 1, and the mean score. Their
95% intervals come from a hierarchical bootstrap: training runs are resampled with
replacement, then each drawn run's neurons (a multinomial draw over its scores, binned
to 0.001 for speed; point estimates use the exact scores). The difference between two
groups (B minus A) is taken draw by draw. A neuron without a score (dead, or no rule
holds anywhere) counts as 0: a rule that predicts nothing.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

GRID = np.round(np.linspace(0, 1, 101), 2)
DRAWS = 2000
TIE = 0.005  # shares closer than half a point count as level when telling who leads
_BINS = 2001  # scores in [-1, 1] to 0.001


def _scores(values) -> np.ndarray:
    return np.clip(np.nan_to_num(np.asarray(values, np.float64), nan=0.0), -1, 1)


def curve(scores) -> np.ndarray:
    """Share of scores >= each cut of GRID."""
    s = _scores(scores)
    return (s[:, None] >= GRID[None, :] - 1e-12).mean(axis=0) if len(s) else np.full(len(GRID), np.nan)


def curve_mean(scores) -> float:
    """The mean score, a missing one counting as 0 (NaN when there are none)."""
    s = _scores(scores)
    return float(s.mean()) if len(s) else float("nan")


def bootstrap(runs: list, draws: int = DRAWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical bootstrap draws of a group's pooled curve (draws, len(GRID)) and mean
    (draws,): runs resampled, then each drawn run's neurons. Scores are binned down to
    0.001, so a score counts at a cut on GRID exactly when it reaches it."""
    rng = np.random.default_rng(seed)
    runs = [_scores(r) for r in runs if len(r)]
    centres = np.linspace(-1, 1, _BINS)
    hists = [np.bincount(np.floor((r + 1) * 1000 + 1e-9).astype(np.int64), minlength=_BINS) for r in runs]
    pooled = np.zeros((draws, _BINS), np.int64)
    pick = rng.integers(0, len(runs), size=(draws, len(runs)))
    for slot in range(len(runs)):
        for r, h in enumerate(hists):
            rows = np.flatnonzero(pick[:, slot] == r)
            if len(rows):
                pooled[rows] += rng.multinomial(int(h.sum()), h / h.sum(), size=len(rows))
    total = pooled.sum(axis=1, keepdims=True)
    at_least = np.cumsum(pooled[:, ::-1], axis=1)[:, ::-1] / total  # share >= each bin's centre
    cut_bins = np.rint((GRID + 1) * 1000).astype(np.int64)
    return at_least[:, cut_bins], (pooled * centres).sum(axis=1) / total[:, 0]


def group_curves(scores: pd.DataFrame, groups: dict[str, list[str]], draws: int = DRAWS) -> dict[str, pd.DataFrame]:
    """From one row per neuron (model_id, view, score) and named groups of models: the
    curves with their bands, the B-minus-A difference curve, and the mean scores and
    their difference, per view. The first group is A, the second B."""
    (name_a, a), (name_b, b) = groups.items()
    curves, diffs, means = [], [], []
    for view, rows in scores.groupby("view", sort=False):
        per = {g: [rows[rows.model_id == m].score.to_numpy() for m in models]
               for g, models in ((name_a, a), (name_b, b))}
        if any(not any(len(r) for r in runs) for runs in per.values()):
            continue
        draws_of = {}
        for i, (g, runs) in enumerate(per.items()):
            point = curve(np.concatenate(runs))
            boot, mean = bootstrap(runs, draws, seed=i)
            draws_of[g] = (boot, mean)
            low, high = np.percentile(boot, [2.5, 97.5], axis=0)
            curves.append(pd.DataFrame({"view": view, "group": g, "runs": len(runs), "cut": GRID, "share": point,
                                        "low": low, "high": high}))
            m_low, m_high = np.percentile(mean, [2.5, 97.5])
            means.append({"view": view, "group": g, "runs": len(runs), "neurons": sum(map(len, runs)),
                          "mean_score": curve_mean(np.concatenate(runs)), "low": m_low, "high": m_high})
        point = curves[-1].share.to_numpy() - curves[-2].share.to_numpy()
        diff = draws_of[name_b][0] - draws_of[name_a][0]
        low, high = np.percentile(diff, [2.5, 97.5], axis=0)
        diffs.append(pd.DataFrame({"view": view, "cut": GRID, "difference": point, "low": low, "high": high}))
        mean_diff = draws_of[name_b][1] - draws_of[name_a][1]
        m_low, m_high = np.percentile(mean_diff, [2.5, 97.5])
        means.append({"view": view, "group": f"{name_b} - {name_a}", "runs": None, "neurons": None,
                      "mean_score": means[-1]["mean_score"] - means[-2]["mean_score"], "low": m_low, "high": m_high})
    cat = (lambda frames, cols: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols))
    return {"curves": cat(curves, ["view", "group", "runs", "cut", "share", "low", "high"]),
            "curve_difference": cat(diffs, ["view", "cut", "difference", "low", "high"]),
            "mean_score": pd.DataFrame(means, columns=["view", "group", "runs", "neurons", "mean_score", "low", "high"]
                                     ).astype({"runs": "Int64", "neurons": "Int64"})}


def crossing(diff: pd.DataFrame, name_a: str, name_b: str) -> str:
    """One sentence on a difference curve (one view): whether one side leads at every cut
    where either has neurons (level within TIE allowed), or where the curves cross, and
    where the lead is clear (the 95% interval excludes 0)."""
    live = diff[(diff.difference.abs() > 1e-9) | (diff.low < -1e-9) | (diff.high > 1e-9)]
    if live.empty:
        return f"{name_a} and {name_b} have the same share at every cut."
    sign = np.where(live.difference.abs() >= TIE, np.sign(live.difference), 0.0)
    cuts = live.cut.to_numpy()
    clear_b = cuts[live.low.to_numpy() > 0]
    clear_a = cuts[live.high.to_numpy() < 0]
    clear = []
    for name, at in ((name_b, clear_b), (name_a, clear_a)):
        if len(at):
            clear.append(f"{name}'s lead is clear (95% interval excludes 0) at {_ranges(at)}")
    tail = ("; ".join(clear) if clear else "no cut has an interval that excludes 0") + "."
    if not sign.any():
        return f"{name_a} and {name_b} are level (within {TIE:.1%}) at every cut; {tail}"
    if (sign >= 0).all() or (sign <= 0).all():
        leader = name_b if (sign >= 0).all() else name_a
        return f"{leader} leads at every cut from {cuts[0]:.2f} to {cuts[-1]:.2f}; {tail}"
    nonzero = sign != 0
    sign, at = sign[nonzero], cuts[nonzero]
    changes = np.flatnonzero(np.diff(sign) != 0)
    where = ", ".join(f"{at[i]:.2f}-{at[i + 1]:.2f}" for i in changes)
    below = name_b if sign[0] > 0 else name_a
    return (f"The curves cross (between cuts {where}): {below} leads at the lowest cuts, the other side "
            f"above{' them' if len(changes) == 1 else ', and they cross again'}; {tail}")


def _ranges(cuts: np.ndarray) -> str:
    """0.30-0.45, 0.60 style ranges of consecutive grid cuts."""
    steps = np.rint(np.asarray(cuts) * 100).astype(int)
    parts, start = [], 0
    for i in range(1, len(steps) + 1):
        if i == len(steps) or steps[i] != steps[i - 1] + 1:
            a, b = steps[start], steps[i - 1]
            parts.append(f"{a / 100:.2f}" if a == b else f"{a / 100:.2f}-{b / 100:.2f}")
            start = i
    return "cuts " + ", ".join(parts)
