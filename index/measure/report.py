"""`solu compare --db FILE A B --out DIR`: the comparison of `index.measure.compare`
as report.md with PNG plots."""
from __future__ import annotations


import math
from pathlib import Path

import numpy as np
import pandas as pd

from index.measure.autolabel import RULE_SHARE, check_threshold
from index.measure.compare import compare_tables, headline
from index.store.connection import open_read
from solu.outputs import OutputFolder


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    if df.empty:
        return "_none_\n"

    def cell(v) -> str:
        if v is pd.NA:
            return "-"
        if isinstance(v, (float, np.floating)):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        if isinstance(v, (list, tuple, np.ndarray)):
            return ", ".join(map(str, v))
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the path may be a temporary name (see OutputFolder)
    pyplot().close(fig)


def plot_best_share(best: pd.DataFrame, models: list[str], rule: float, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6.4, 3.6))
    bins = np.linspace(0, 1, 22)
    for m in models:
        ax.hist(best[best.model_id == m].top_share.dropna(), bins=bins, alpha=0.55, label=m)
    ax.axvline(rule, color="k", linestyle="--", linewidth=1, label=f"rule {rule:.0%}")
    ax.set(xlabel="top examples peaking on the neuron's best concept", ylabel="neurons",
           title="Best concept's share of the top examples")
    ax.legend()
    save_figure(fig, path)


def plot_by_layer(by_layer: pd.DataFrame, models: list[str], title: str, path: Path) -> None:
    """Per layer and model, the fraction passing a measure with its 95% Wilson interval."""
    fig, ax = pyplot().subplots(figsize=(6.4, 3.6))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        rows = by_layer[by_layer.model_id == m]
        y = rows.frac_passing.to_numpy(float)
        err = np.clip(np.vstack([y - rows.ci_low.to_numpy(float), rows.ci_high.to_numpy(float) - y]), 0, None)
        ax.bar(rows.layer + (i - (len(models) - 1) / 2) * width, y, width, yerr=err, capsize=4, label=m)
    ax.set(xlabel="layer", ylabel="fraction of neurons", ylim=(0, 1), title=title)
    ax.set_xticks(sorted(by_layer.layer.unique()))
    ax.legend()
    save_figure(fig, path)


def plot_scores(expl: pd.DataFrame, models: list[str], cut: float, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6.4, 3.6))
    bins = np.linspace(-0.2, 1, 25)
    rows = expl[expl.view == "primary"]
    for m in models:
        ax.hist(rows[rows.model_id == m].score.dropna().clip(-0.2, 1), bins=bins, alpha=0.55, label=m)
    ax.axvline(cut, color="k", linestyle="--", linewidth=1, label=f"verdict's score cut {cut:g}")
    ax.set(xlabel="held-out score (correlation of predicted and actual activations)", ylabel="neurons",
           title="Explanations scored on held-out records (primary site)")
    ax.legend()
    save_figure(fig, path)


def plot_curves(curve: pd.DataFrame, diff: pd.DataFrame, path: Path) -> None:
    """Left: each group's share of neurons with score >= c, with its seed-level band, per
    view (solid: primary site; dashed: output site). Right: B minus A with its band."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(12, 3.8))
    colours = {}
    for (view, group), rows in curve.groupby(["view", "group"], sort=False):
        style = "-" if view == "primary" else "--"
        line, = left.plot(rows.cut, rows.share, style, color=colours.get(group), label=f"{group} ({view})")
        colours[group] = line.get_color()
        left.fill_between(rows.cut, rows.low, rows.high, color=line.get_color(), alpha=0.15)
    left.set(xlabel="score cut c", ylabel="share of neurons with held-out score >= c", ylim=(0, 1),
             title="The whole curve (95% hierarchical bootstrap bands)")
    left.legend(fontsize=8)
    for view, rows in diff.groupby("view", sort=False):
        line, = right.plot(rows.cut, rows.difference, "-" if view == "primary" else "--", label=view)
        right.fill_between(rows.cut, rows.low, rows.high, color=line.get_color(), alpha=0.15)
    right.axhline(0, color="k", linewidth=0.8)
    right.set(xlabel="score cut c", ylabel="B minus A", title="Difference of the curves (95% band)")
    right.legend(fontsize=8)
    save_figure(fig, path)


def plot_sparsity(stats: pd.DataFrame, models: list[str], path: Path) -> None:
    fig, axes = pyplot().subplots(1, 3, figsize=(13, 3.4))
    for m in models:
        rows = stats[stats.model_id == m]
        axes[0].hist(np.log10(rows.frac_active.clip(lower=1e-7).dropna()), bins=30, alpha=0.55, label=m)
        axes[1].hist(np.log10(rows.frac_active_rel.clip(lower=1e-7).dropna()), bins=30, alpha=0.55, label=m)
        axes[2].hist(np.log10(rows["kurtosis"].clip(lower=1e-3).dropna()), bins=30, alpha=0.55, label=m)
    axes[0].set(xlabel="log10(density)", ylabel="neurons", title="Density (tokens above 0)")
    axes[1].set(xlabel="log10(density_rel)", title="Tokens above the index threshold")
    axes[2].set(xlabel="log10(kurtosis)", title="Kurtosis (3 = Gaussian)")
    axes[0].legend()
    save_figure(fig, path)


def plot_study(summary: pd.DataFrame, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6.4, 3.4))
    labels = [f"{r.study}\n{r.model_id}" for r in summary.itertuples()]
    y = summary.frac_interpretable.to_numpy(float)
    err = np.clip(np.vstack([y - summary.ci_low.to_numpy(float), summary.ci_high.to_numpy(float) - y]), 0, None)
    ax.bar(labels, y, yerr=err, capsize=6, color=["#1f77b4" if a == "gelu" else "#ff6a00" for a in summary.act_fn])
    ax.set(ylim=(0, 1), ylabel="fraction interpretable", title="Blinded study (95% Wilson CI)")
    save_figure(fig, path)


def rule_section(tables: dict[str, pd.DataFrame], models: list[str], rule: float, images: dict[str, str]) -> list[str]:
    if tables["best"].empty:
        return ["No concept scores for these models yet: run `solu autolabel --db FILE` first.\n"]
    parts = [f"A neuron passes when one concept holds at least {rule:.0%} of its top examples' peak tokens "
             "(the paper's rule, automated with the concept detectors of `solu autolabel`). Fractions with "
             "95% Wilson intervals; median_sample_share: how much of the passing neurons' activation over the "
             "index's activation sample falls on their concept (the second measure).\n",
             markdown_table(tables["rule"]), "Per layer:\n", markdown_table(tables["rule_by_layer"])]
    if not tables["rule_difference"].empty:
        a, b = models
        parts += [f"Difference ({b} minus {a}), with a 95% Newcombe interval and the exact two-sided permutation "
                  "p-value (neurons relabelled between the two models):\n",
                  markdown_table(tables["rule_difference"], 4)]
    return parts + ["Neurons passing the rule, by concept:\n", markdown_table(tables["concepts"]),
                    f"![per layer]({images['rule']})\n\n![best share]({images['best']})\n"]


def heldout_section(tables: dict[str, pd.DataFrame], images: dict[str, str]) -> list[str]:
    if tables["explanations"].empty:
        return ["No explanations for these models yet: run `solu autolabel --db FILE` first.\n"]
    cut = tables["verdict_cut"].iloc[0]
    how = ("calibrated on the blinded study's answers (below)" if cut.calibrated else
           "the default, chosen against blinded readers of demo neurons (docs: measuring interpretability)")
    return [
        "Each neuron's explanation (a concept, a set of tokens, a token after a token or two, a token at a line "
        "end or start, after a token class or inside a concept, or a piece of a word) is chosen on half of its "
        "records and scored on the other half (split by document): the correlation between the activation it "
        "predicts and the actual one over every held-out token of its top examples, interval samples, random "
        "samples and the activation sample.\n",
        "### The whole curve\n",
        "Share of neurons whose held-out score is at least c, for every c from 0 to 1, per group, with 95% "
        "hierarchical bootstrap bands (training runs, then neurons, resampled). The primary view reads SoLU "
        "before its LayerNorm (pre_ln), as the paper does; the output view reads what each MLP writes out "
        "(SoLU's post_ln; a GELU model's one site is both).\n",
        *[f"- {s}\n" for s in tables["crossing"].sentence],
        f"\n![curves]({images['curves']})\n",
        "The threshold-free headline, the mean held-out score (a neuron without a score counts 0), with the "
        "same bootstrap:\n", markdown_table(tables["mean_score"], 4),
        "### The verdict\n",
        f"A neuron is interpretable when its explanation holds at the peak of at least "
        f"{cut.top_share:.0%} of its top examples (the paper's rule, read with the explanation) and its "
        f"held-out score is at least {cut.score:g}: {how}. Primary site; fractions with 95% Wilson "
        "intervals.\n",
        markdown_table(tables["verdict"]), "Per layer:\n", markdown_table(tables["verdict_by_layer"]),
        f"![verdict per layer]({images['heldout']})\n\n![held-out scores]({images['scores']})\n"]


def calibration_section(tables: dict[str, pd.DataFrame]) -> list[str]:
    cal = tables["calibration"]
    if cal.empty:
        return ["No study answers on these models' explained neurons: the verdict keeps its default cuts.\n"]
    used = ("Compare uses the best cut above." if tables["verdict_cut"].calibrated.iloc[0] else
            "Too few answers to recalibrate (at least 20, with 5 yes and 5 no): compare keeps the default cut.")
    return ["Agreement between the raters' answers ('yes' against 'no' or 'unsure') and the automated measures: "
            "the held-out score's AUROC, Cohen's kappa of the default verdict, the share of yes and of no it "
            "accepts, and the score cut whose verdict agrees best (kappa) with a 95% bootstrap interval over "
            f"answers. {used}\n", markdown_table(cal)]


def difference_section(tables: dict[str, pd.DataFrame], groups: list[list[str]]) -> list[str]:
    diff = tables["group_difference"]
    if diff.empty:
        return ["No measure to compare yet: run `solu autolabel --db FILE` first.\n"]
    a, b = (", ".join(g) for g in groups)
    parts = [f"B minus A (A: {a}; B: {b}) in the fraction of neurons passing each measure, with a 95% "
             "hierarchical bootstrap interval: training runs resampled within each group, then neurons within "
             "each run.\n", markdown_table(diff, 4)]
    if all(len(g) == 1 for g in groups):
        parts.append("With one model per group the interval covers neuron-to-neuron variation only: a "
                     "second training run of the same recipe can differ by more. Compare several seeds per "
                     "group (`solu compare --db FILE A1,A2,A3 B1,B2,B3`).\n")
    sentence = tables["disagreement"].sentence.iloc[0]
    parts.append(f"**{sentence}**\n" if sentence else "The two measures do not point in opposite directions.\n")
    return parts


def render_markdown(tables: dict[str, pd.DataFrame], groups: list[list[str]], rule: float,
                    images: dict[str, str]) -> str:
    models = [m for g in groups for m in g]
    parts = [f"# {', '.join(groups[0])} vs {', '.join(groups[1])}\n",
             "The SoLU paper's claim: SoLU makes more MLP neurons interpretable (about 35% to 60% by "
             "blinded human rating) at little cost in loss. Measured here on one index.\n",
             "## Summary\n", markdown_table(headline(tables)),
             f"frac_rule: share of primary-site neurons whose top examples peak on one concept at least "
             f"{rule:.0%} of the time, with its 95% interval (rule_ci_low, rule_ci_high); frac_verdict: share "
             f"the verdict calls interpretable (below); mean_score: the mean held-out score.\n",
             "## The difference between the groups\n", *difference_section(tables, groups),
             "## Loss\n", markdown_table(tables["loss"], 4),
             "## Activation sparsity (primary site, per layer)\n", markdown_table(tables["sparsity"], 4),
             f"![sparsity]({images['sparsity']})\n", "## The paper's rule, automated\n"]
    parts += rule_section(tables, models, rule, images)
    parts += ["## Explanations scored on held-out records\n", *heldout_section(tables, images)]
    parts += ["## Calibration against the blinded study\n", *calibration_section(tables)]
    parts += ["## Neuron relations\n",
              "Connections by virtual weight (`solu index`), the loss change of zeroing a neuron at its top "
              "examples' max token (`solu index --ablation on`), each neuron's best match in the other models "
              "(`solu match`), and SoLU's LayerNorm caveat: how far the top examples after the LayerNorm "
              "(post_ln) agree with those before it (pre_ln), as the median share of the pre-LN top-K also in "
              "the post-LN top-K and the median rank correlation.\n",
              markdown_table(tables["relations"]) if not tables["relations"].empty else "_none_\n"]
    parts += ["## Labels\n", markdown_table(tables["labels"]), "## Blinded study\n"]
    if tables["study"].empty:
        parts.append("No blinded study covers these models (start one on the app's Study page).\n")
    else:
        parts += ["Fraction of answers that said one rule explains 80% or more of the strongest firings, "
                  "with a 95% Wilson interval. Unblinded here only.\n", markdown_table(tables["study"]),
                  f"![study]({images['study']})\n"]
    return "\n".join(parts)


def write_report(db: str | Path, groups: list[list[str]], folder: OutputFolder, rule: float = RULE_SHARE) -> Path:
    """Write report.md and its PNG plots into `folder` for groups A and B (lists of model
    ids); returns the report's path. A failure (a full disk) leaves nothing half-written."""
    check_threshold(rule)
    with open_read(db) as con:
        tables = compare_tables(con, groups, rule)
    try:
        return _write_files(tables, groups, rule, folder)
    except BaseException:
        folder.abandon()
        raise


def _write_files(tables: dict, groups: list[list[str]], rule: float, folder: OutputFolder) -> Path:
    models = [m for g in groups for m in g]
    images = {}

    def plot(key: str, name: str, draw, *args) -> None:
        folder.write(name, lambda tmp: draw(*args, tmp))
        images[key] = name

    plot("sparsity", "sparsity.png", plot_sparsity, tables["neuron_stats"], models)
    if not tables["best"].empty:
        plot("rule", "rule_by_layer.png", plot_by_layer, tables["rule_by_layer"], models,
             f"One concept explains >= {rule:.0%} of the top examples (95% CI)")
        plot("best", "best_share.png", plot_best_share, tables["best"], models, rule)
    if not tables["study"].empty:
        plot("study", "study.png", plot_study, tables["study"])
    if not tables["explanations"].empty:
        cut = tables["verdict_cut"].iloc[0]
        plot("heldout", "verdict_by_layer.png", plot_by_layer, tables["verdict_by_layer"], models,
             f"Interpretable: top share >= {cut.top_share:g}, score >= {cut.score:g} (95% CI)")
        plot("scores", "heldout_scores.png", plot_scores, tables["explanations"], models, float(cut.score))
        plot("curves", "score_curves.png", plot_curves, tables["curves"], tables["curve_difference"])
    text = render_markdown(tables, groups, rule, images)
    return folder.write("report.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
