"""The experiment's figure and report: GELU against SoLU across sizes, seeds as the unit.

For every (activation, size) of the grid, over its seeds: the share of neurons the
verdict calls interpretable, the mean held-out score and the share passing the paper's
rule, each with a 95% hierarchical bootstrap interval (training runs resampled, then
neurons within each), and the eval loss with a 95% bootstrap interval over seeds. Per
size, SoLU minus GELU for each measure and SoLU's loss as a ratio of GELU's (seeds
paired: they share init and data order), with intervals; per layer within each size,
the verdict's share. One paragraph says what the grid supports. `write_report` renders
report.md and PNGs; the Models page shows the same tables.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from index.measure import curves, study, verdict
from index.measure.autolabel import RULE_SHARE
from index.measure.compare import best_concepts, explanations, hierarchical_interval, primary
from index.measure.report import markdown_table, pyplot, save_figure
from solu.outputs import OutputFolder

DRAWS = 2000
MEASURES = {"verdict": "interpretable (verdict)", "mean_score": "mean held-out score", "rule": "paper's rule"}


def experiment_cells(con, name: str | None = None) -> pd.DataFrame:
    """The finished cells of an experiment (the latest one by default)."""
    if name is None:
        rows = con.execute("SELECT experiment FROM experiments ORDER BY created_at DESC LIMIT 1").fetchall()
        if not rows:
            return pd.DataFrame()
        name = rows[0][0]
    return con.execute("SELECT c.*, m.eval_loss AS model_eval_loss FROM experiment_cells c "
                       "JOIN models m USING (model_id) WHERE experiment = ? ORDER BY n_layers, act_fn, seed",
                       [name]).df()


def neuron_measures(con, models: list[str]) -> tuple[pd.DataFrame, float]:
    """One row per primary-site neuron: layer, its verdict, held-out score and the paper's
    rule; and the verdict's score cut (calibrated on a study's answers when there are)."""
    cal = study.calibration(con, models)
    cut = float(cal.best_cut.iloc[0]) if study.calibrated(cal) else verdict.SCORE
    expl = primary(explanations(con, models))[["model_id", "layer", "neuron", "top_share", "score"]]
    best = best_concepts(con, models)[["model_id", "layer", "neuron", "top_share"]].rename(
        columns={"top_share": "best_share"})
    df = expl.merge(best, on=["model_id", "layer", "neuron"], how="left")
    return df.assign(verdict=verdict.interpretable(df.top_share, df.score, cut),
                     rule=df.best_share.fillna(0) >= RULE_SHARE), cut


def _interval(draws: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def _draws(per_run: list[pd.DataFrame], measure: str, seed: int) -> np.ndarray:
    if measure == "mean_score":
        return curves.bootstrap([r.score.to_numpy() for r in per_run], DRAWS, seed)[1]
    return hierarchical_interval([r[measure].to_numpy(bool) for r in per_run], DRAWS, seed)


def _point(rows: pd.DataFrame, measure: str) -> float:
    return curves.curve_mean(rows.score) if measure == "mean_score" else float(rows[measure].mean())


def _loss_draws(losses: np.ndarray, rng) -> np.ndarray:
    return losses[rng.integers(0, len(losses), size=(DRAWS, len(losses)))].mean(axis=1)


def experiment_tables(con, name: str | None = None) -> dict[str, pd.DataFrame]:
    cells = experiment_cells(con, name)
    if cells.empty:
        return {}
    models = list(cells.model_id)
    neurons, cut = neuron_measures(con, models)
    rng = np.random.default_rng(0)
    by_size, differences, by_layer, draws_of = [], [], [], {}
    for (layers, act), group in cells.groupby(["n_layers", "act_fn"], sort=True):
        runs = [neurons[neurons.model_id == m] for m in group.model_id]
        rows = pd.concat(runs)
        row = {"n_layers": layers, "act_fn": act, "seeds": len(group), "neurons": len(rows)}
        for i, measure in enumerate(MEASURES):
            d = draws_of[(layers, act, measure)] = _draws(runs, measure, i)
            row[measure], (row[f"{measure}_low"], row[f"{measure}_high"]) = _point(rows, measure), _interval(d)
        losses = group.model_eval_loss.to_numpy(float)
        row["eval_loss"], (row["loss_low"], row["loss_high"]) = losses.mean(), _interval(_loss_draws(losses, rng))
        by_size.append(row)
        for layer, mine in rows.groupby("layer"):
            per = [r[r.layer == layer] for r in runs]
            low, high = _interval(_draws(per, "verdict", 7))
            by_layer.append({"n_layers": layers, "act_fn": act, "layer": layer, "verdict": mine.verdict.mean(),
                             "low": low, "high": high})
    size = pd.DataFrame(by_size)
    for layers, group in cells.groupby("n_layers", sort=True):
        acts = set(group.act_fn)
        if not {"gelu", "solu_ln"} <= acts:
            continue
        row = {"n_layers": layers}
        mine = size[size.n_layers == layers].set_index("act_fn")
        for measure in MEASURES:
            d = draws_of[(layers, "solu_ln", measure)] - draws_of[(layers, "gelu", measure)]
            row[measure] = mine.loc["solu_ln", measure] - mine.loc["gelu", measure]
            row[f"{measure}_low"], row[f"{measure}_high"] = _interval(d)
        paired = group.pivot(index="seed", columns="act_fn", values="model_eval_loss").dropna()
        ratios = (paired["solu_ln"] / paired["gelu"]).to_numpy(float)
        row["loss_ratio"], (row["ratio_low"], row["ratio_high"]) = ratios.mean(), _interval(_loss_draws(ratios, rng))
        row["paired_seeds"] = len(ratios)
        differences.append(row)
    diff = pd.DataFrame(differences)
    per_cell = neurons.groupby("model_id").agg(verdict=("verdict", "mean"), rule=("rule", "mean"),
                                               mean_score=("score", curves.curve_mean)).reset_index()
    cells_table = cells[["model_id", "act_fn", "n_layers", "seed", "model_eval_loss", "train_s", "index_s",
                         "score_s"]].rename(columns={"model_eval_loss": "eval_loss"}).merge(per_cell, on="model_id")
    return {"cells": cells_table, "by_size": size, "difference": diff, "by_layer": pd.DataFrame(by_layer),
            "cut": pd.DataFrame({"top_share": [verdict.TOP_SHARE], "score": [cut]}),
            "summary": pd.DataFrame({"sentence": [summary(diff)]})}


def summary(diff: pd.DataFrame) -> str:
    """What the grid supports, one clause per size and a plain conclusion."""
    if diff.empty:
        return "The grid has no size with both GELU and SoLU finished, so it supports no comparison yet."
    parts, clear = [], []
    for r in diff.itertuples():
        verdict_clear = r.verdict_low > 0 or r.verdict_high < 0
        mean_clear = r.mean_score_low > 0 or r.mean_score_high < 0
        parts.append(f"at {r.n_layers} layer{'s' if r.n_layers > 1 else ''}, SoLU minus GELU is "
                     f"{100 * r.verdict:+.1f} points [{100 * r.verdict_low:+.1f}, {100 * r.verdict_high:+.1f}] in "
                     f"the share the verdict calls interpretable, {r.mean_score:+.3f} [{r.mean_score_low:+.3f}, "
                     f"{r.mean_score_high:+.3f}] in the mean held-out score, and SoLU's loss is "
                     f"{r.loss_ratio:.3f}x GELU's [{r.ratio_low:.3f}, {r.ratio_high:.3f}]")
        clear.append((verdict_clear, r.verdict > 0, mean_clear, r.mean_score > 0))
    sizes = ", ".join(str(n) for n in diff.n_layers)
    if all(c[0] and c[1] for c in clear):
        verdict_text = f"SoLU makes more neurons interpretable at every size tried ({sizes} layers)"
    elif not any(c[0] for c in clear):
        verdict_text = (f"no clear difference in the share of interpretable neurons at these sizes ({sizes} "
                        "layers): every interval covers 0")
    else:
        verdict_text = "a difference at some sizes and not at others"
    return (f"With seeds as the unit, {'; '.join(parts)}. The grid supports: {verdict_text}. Intervals rest on "
            f"{int(diff.paired_seeds.min())} seeds per cell at the fewest; read them as a first estimate.")


def plot_sizes(size: pd.DataFrame, diff: pd.DataFrame, path: Path) -> None:
    """The paper's figure: each measure against the number of layers, GELU and SoLU, with
    seed-level intervals; and the eval loss with SoLU's ratio."""
    fig, axes = pyplot().subplots(1, 4, figsize=(16, 3.6))
    colours = {"gelu": "#1f77b4", "solu_ln": "#ff6a00"}
    for ax, (measure, title) in zip(axes[:3], MEASURES.items()):
        for act, rows in size.groupby("act_fn"):
            y = rows[measure].to_numpy(float)
            err = np.clip(np.vstack([y - rows[f"{measure}_low"], rows[f"{measure}_high"] - y]), 0, None)
            ax.errorbar(rows.n_layers, y, yerr=err, marker="o", capsize=4, label=act, color=colours.get(act))
        ax.set(xlabel="layers", title=title, xticks=sorted(size.n_layers.unique()))
        ax.set_ylim(0, 1 if measure != "mean_score" else max(0.6, float(size[f"{measure}_high"].max()) + 0.05))
    axes[0].set_ylabel("share of neurons / mean score")
    axes[0].legend()
    ax = axes[3]
    for act, rows in size.groupby("act_fn"):
        y = rows.eval_loss.to_numpy(float)
        err = np.clip(np.vstack([y - rows.loss_low, rows.loss_high - y]), 0, None)
        ax.errorbar(rows.n_layers, y, yerr=err, marker="o", capsize=4, label=act, color=colours.get(act))
    ax.set(xlabel="layers", ylabel="eval loss", title="Eval loss (95% CI over seeds)",
           xticks=sorted(size.n_layers.unique()))
    if not diff.empty:
        ax.set_title("Eval loss; SoLU/GELU " + ", ".join(f"{r.n_layers}L {r.loss_ratio:.3f}" for r in diff.itertuples()))
    save_figure(fig, path)


def plot_layers(by_layer: pd.DataFrame, path: Path) -> None:
    sizes = sorted(by_layer.n_layers.unique())
    fig, axes = pyplot().subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.4), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        rows = by_layer[by_layer.n_layers == n]
        for i, (act, mine) in enumerate(rows.groupby("act_fn")):
            y = mine.verdict.to_numpy(float)
            err = np.clip(np.vstack([y - mine.low, mine.high - y]), 0, None)
            ax.bar(mine.layer + (i - 0.5) * 0.4, y, 0.4, yerr=err, capsize=4, label=act)
        ax.set(title=f"{n} layer{'s' if n > 1 else ''}: per layer", xlabel="layer", ylim=(0, 1),
               xticks=list(range(n)))
    axes[0][0].set_ylabel("share interpretable (verdict)")
    axes[0][0].legend()
    save_figure(fig, path)


def write_report(db: Path, folder: OutputFolder, name: str | None = None) -> Path:
    """report.md, sizes.png and layers.png into `folder` (nothing half-written on a failure)."""
    from index.store.connection import open_read

    with open_read(db) as con:
        tables = experiment_tables(con, name)
        grid = con.execute("SELECT grid FROM experiments ORDER BY created_at DESC LIMIT 1").fetchone()
    if not tables:
        raise ValueError("no finished cell to report")
    try:
        folder.write("sizes.png", lambda tmp: plot_sizes(tables["by_size"], tables["difference"], tmp))
        if not tables["by_layer"].empty:
            folder.write("layers.png", lambda tmp: plot_layers(tables["by_layer"], tmp))
        return folder.write("report.md", lambda tmp: tmp.write_text(_markdown(tables, grid), encoding="utf-8"))
    except BaseException:
        folder.abandon()
        raise


def _markdown(tables: dict, grid) -> str:
    cut = tables["cut"].iloc[0]
    return "\n".join([
        "# GELU vs SoLU across sizes and seeds\n",
        f"Grid: `{json.dumps(json.loads(grid[0])) if grid else '?'}`\n",
        "## What the grid supports\n", tables["summary"].sentence.iloc[0] + "\n",
        "## Interpretable share, mean score and loss against size\n",
        f"Verdict: the explanation holds at {cut.top_share:.0%} or more of the top examples and its held-out score is "
        f"at least {cut.score:g}. Intervals: 95%, hierarchical bootstrap (seeds, then neurons); eval loss over seeds.\n",
        markdown_table(tables["by_size"]), "![sizes](sizes.png)\n",
        "## SoLU minus GELU per size\n",
        "loss_ratio: SoLU's eval loss over GELU's, seed by seed (paired: the same init seed and data order).\n",
        markdown_table(tables["difference"], 4),
        "## Per layer\n", markdown_table(tables["by_layer"]), "![layers](layers.png)\n",
        "## Every cell\n", markdown_table(tables["cells"]),
    ])
