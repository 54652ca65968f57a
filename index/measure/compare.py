"""Two models side by side: the SoLU paper's claim, measured on an index.

Loss (does SoLU cost much?), activation sparsity (density and kurtosis of each neuron's
activations), concept selectivity (each neuron's best concept score from `solu
autolabel`, its distribution and the fraction of neurons at or above a threshold per
layer), human labels, and the blinded study where one covers the models. Every
function takes a connection and returns a DataFrame; `write_report` renders them as
markdown with PNG plots, and the app's Models page shows the same tables.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from index.measure import study as study_mod
from index.store.connection import open_read
from solu.errors import UserError

DEFAULT_THRESHOLD = 0.5


def _in(models: list[str]) -> str:
    return f"({', '.join('?' * len(models))})"


def check_models(con, models: list[str]) -> None:
    known = [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY model_id").fetchall()]
    for m in models:
        if m not in known:
            raise UserError(f"model {m!r} is not in the index (models: {', '.join(known) or 'none'})")
    if len(set(models)) != len(models):
        raise UserError("compare two different models")


def loss_table(con, models: list[str]) -> pd.DataFrame:
    """Shape, size, training tokens and eval loss; loss_ratio is relative to the first model."""
    df = con.execute(f"""
        SELECT model_id, act_fn, n_layers, d_model, d_mlp, n_params, tokens_trained, eval_loss
        FROM models WHERE model_id IN {_in(models)}""", models).df()
    df = df.set_index("model_id").loc[models].reset_index()
    df["loss_ratio"] = df.eval_loss / df.eval_loss.iloc[0]
    return df


def sparsity_table(con, models: list[str]) -> pd.DataFrame:
    """Per model and layer (primary site): density is the fraction of tokens on which a
    neuron is active (above 0), density_rel the fraction above the index threshold (a
    fraction of its max); kurtosis of its activations (3 for a Gaussian, higher = sparser)."""
    return con.execute(f"""
        SELECT model_id, layer, count(*) AS neurons,
               avg(frac_active) AS mean_density, median(frac_active) AS median_density,
               median(frac_active_rel) AS median_density_rel,
               median(kurtosis) AS median_kurtosis, avg(kurtosis) AS mean_kurtosis,
               avg(CASE WHEN coalesce(max_act, 0) <= 0 OR frac_active = 0 THEN 1 ELSE 0 END) AS frac_dead
        FROM neurons WHERE is_primary AND model_id IN {_in(models)}
        GROUP BY model_id, layer ORDER BY model_id, layer""", models).df()


def neuron_stats(con, models: list[str]) -> pd.DataFrame:
    return con.execute(f"""
        SELECT model_id, layer, neuron, frac_active, frac_active_rel, kurtosis FROM neurons
        WHERE is_primary AND model_id IN {_in(models)}""", models).df()


def best_concepts(con, models: list[str]) -> pd.DataFrame:
    """Each primary-site neuron's best concept and score from the latest index run
    (empty until `solu autolabel` has scored it), and rule_share: its largest top-K
    share over all concepts, for the paper's rule (one concept explains >= 80% of the
    strongest firings)."""
    return con.execute(f"""
        SELECT s.model_id, s.layer, s.neuron, s.concept, s.score, s.auroc, s.top_share,
               max(s.top_share) OVER (PARTITION BY s.model_id, s.layer, s.neuron) AS rule_share
        FROM current_concept_scores s JOIN neurons n USING (model_id, layer, neuron, site)
        WHERE n.is_primary AND s.model_id IN {_in(models)}
        QUALIFY row_number() OVER (PARTITION BY s.model_id, s.layer, s.neuron
                                   ORDER BY s.score DESC, s.concept) = 1""", models).df()


RULE_SHARE = 0.8


def selectivity_table(best: pd.DataFrame, models: list[str], threshold: float) -> pd.DataFrame:
    rows = []
    for m in models:
        scores = best[best.model_id == m].score
        rule = best[best.model_id == m].rule_share >= RULE_SHARE
        rows.append({"model_id": m, "scored": len(scores), "mean_best_score": scores.mean(),
                     "median_best_score": scores.median(), "above": int((scores >= threshold).sum()),
                     "frac_above": (scores >= threshold).mean() if len(scores) else math.nan,
                     "frac_rule80": rule.mean() if len(scores) else math.nan})
    return pd.DataFrame(rows)


def frac_above_by_layer(best: pd.DataFrame, threshold: float) -> pd.DataFrame:
    if best.empty:
        return pd.DataFrame(columns=["model_id", "layer", "neurons", "above", "frac_above", "frac_rule80"])
    df = best.assign(hit=best.score >= threshold, rule=best.rule_share >= RULE_SHARE).groupby(
        ["model_id", "layer"]).agg(neurons=("hit", "size"), above=("hit", "sum"), rule=("rule", "mean")).reset_index()
    return df.assign(frac_above=df.above / df.neurons).rename(columns={"rule": "frac_rule80"})[
        ["model_id", "layer", "neurons", "above", "frac_above", "frac_rule80"]]


def concept_counts(best: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Neurons at or above the threshold by best concept, one column per model."""
    hits = best[best.score >= threshold]
    if hits.empty:
        return pd.DataFrame(columns=["concept"])
    return hits.pivot_table(index="concept", columns="model_id", values="neuron", aggfunc="count",
                            fill_value=0).reset_index().rename_axis(columns=None)


def label_table(con, models: list[str]) -> pd.DataFrame:
    """Human labels, and what became of the automatic suggestions."""
    return con.execute(f"""
        WITH n AS (SELECT model_id, count(*) AS neurons FROM neurons WHERE is_primary GROUP BY model_id),
        h AS (SELECT * FROM current_labels WHERE source = 'human' AND coalesce(label, '') <> ''),
        a AS (SELECT * FROM current_labels WHERE source = 'auto')
        SELECT n.model_id, n.neurons,
               (SELECT count(*) FROM h WHERE h.model_id = n.model_id) AS human_labeled,
               (SELECT count(*) FROM a WHERE a.model_id = n.model_id AND a.status = 'suggested') AS auto_suggested,
               (SELECT count(*) FROM a JOIN h USING (model_id, layer, neuron)
                WHERE a.model_id = n.model_id AND h.label = a.label) AS auto_accepted,
               (SELECT count(*) FROM a WHERE a.model_id = n.model_id AND a.status = 'rejected'
                AND coalesce(a.author, '') <> 'autolabel') AS auto_rejected
        FROM n WHERE n.model_id IN {_in(models)} ORDER BY n.model_id""", models).df().assign(
        frac_human_labeled=lambda d: d.human_labeled / d.neurons)


def study_table(con, models: list[str]) -> pd.DataFrame:
    """The unblinded summary of every study that includes any of the models."""
    frames = []
    for row in study_mod.studies(con).itertuples():
        if set(models) & set(row.models):
            s = study_mod.summary(con, row.study)
            frames.append(s[s.model_id.isin(models)])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def compare_tables(con, models: list[str], threshold: float = DEFAULT_THRESHOLD) -> dict[str, pd.DataFrame]:
    """Everything the report and the Models page show, by section."""
    check_models(con, models)
    best = best_concepts(con, models)
    return {
        "loss": loss_table(con, models), "sparsity": sparsity_table(con, models),
        "neuron_stats": neuron_stats(con, models), "best": best,
        "selectivity": selectivity_table(best, models, threshold),
        "frac_above_by_layer": frac_above_by_layer(best, threshold),
        "concepts": concept_counts(best, threshold), "labels": label_table(con, models),
        "study": study_table(con, models),
    }


# ---------------------------------------------------------------- the report

def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    if df.empty:
        return "_none_\n"

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        if isinstance(v, (list, tuple, np.ndarray)):
            return ", ".join(map(str, v))
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_selectivity(best: pd.DataFrame, models: list[str], threshold: float, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bins = np.linspace(0, 1, 26)
    for m in models:
        ax.hist(best[best.model_id == m].score, bins=bins, alpha=0.55, label=m)
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set(xlabel="best concept score per neuron", ylabel="neurons", title="Concept selectivity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frac_above(by_layer: pd.DataFrame, models: list[str], threshold: float, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    width = 0.8 / len(models)
    titles = {"frac_above": f"best concept score >= {threshold:g}", "frac_rule80": "one concept >= 80% of top examples"}
    for ax, (column, title) in zip(axes, titles.items()):
        for i, m in enumerate(models):
            rows = by_layer[by_layer.model_id == m]
            ax.bar(rows.layer + (i - (len(models) - 1) / 2) * width, rows[column], width, label=m)
        ax.set(xlabel="layer", ylim=(0, 1), title=title)
        ax.set_xticks(sorted(by_layer.layer.unique()) if not by_layer.empty else [])
    axes[0].set_ylabel("fraction of neurons")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sparsity(stats: pd.DataFrame, models: list[str], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for m in models:
        rows = stats[stats.model_id == m]
        axes[0].hist(np.log10(rows.frac_active.clip(lower=1e-7).dropna()), bins=30, alpha=0.55, label=m)
        axes[1].hist(np.log10(rows.frac_active_rel.clip(lower=1e-7).dropna()), bins=30, alpha=0.55, label=m)
        axes[2].hist(np.log10(rows["kurtosis"].clip(lower=1e-3).dropna()), bins=30, alpha=0.55, label=m)
    axes[0].set(xlabel="log10(density)", ylabel="neurons", title="Density (tokens above 0)")
    axes[1].set(xlabel="log10(density_rel)", title="Tokens above the index threshold")
    axes[2].set(xlabel="log10(kurtosis)", title="Kurtosis (3 = Gaussian)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_study(summary: pd.DataFrame, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    labels = [f"{r.study}\n{r.model_id}" for r in summary.itertuples()]
    y = summary.frac_interpretable.to_numpy(float)
    err = np.clip(np.vstack([y - summary.ci_low.to_numpy(float), summary.ci_high.to_numpy(float) - y]), 0, None)
    ax.bar(labels, y, yerr=err, capsize=6, color=["#1f77b4" if a == "gelu" else "#ff6a00" for a in summary.act_fn])
    ax.set(ylim=(0, 1), ylabel="fraction interpretable", title="Blinded study (95% Wilson CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headline(tables: dict[str, pd.DataFrame], models: list[str]) -> pd.DataFrame:
    """One row per model: the numbers the paper's claim turns on."""
    stats, sel, labels, study = tables["neuron_stats"], tables["selectivity"].set_index("model_id"), \
        tables["labels"].set_index("model_id"), tables["study"]
    rows = []
    for r in tables["loss"].itertuples():
        mine = stats[stats.model_id == r.model_id]
        row = {"model": r.model_id, "act_fn": r.act_fn, "eval_loss": r.eval_loss, "loss_ratio": r.loss_ratio,
               "median_density": mine.frac_active.median(), "median_density_rel": mine.frac_active_rel.median(),
               "median_kurtosis": mine["kurtosis"].median(),
               "mean_best_score": sel.mean_best_score.get(r.model_id, math.nan),
               "frac_selective": sel.frac_above.get(r.model_id, math.nan),
               "frac_rule80": sel.frac_rule80.get(r.model_id, math.nan),
               "frac_human_labeled": labels.frac_human_labeled.get(r.model_id, math.nan)}
        mine_study = study[study.model_id == r.model_id] if not study.empty else study
        if not mine_study.empty:
            s = mine_study.iloc[-1]
            row["study_interpretable"] = (f"{s.frac_interpretable:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}] "
                                          f"(n={s.answers})")
        rows.append(row)
    return pd.DataFrame(rows)


def render_markdown(tables: dict[str, pd.DataFrame], models: list[str], threshold: float,
                    images: dict[str, str]) -> str:
    a, b = models
    parts = [f"# {a} vs {b}\n",
             "The SoLU paper's claim: SoLU makes more MLP neurons interpretable (about 35% to 60% by "
             "blinded human rating) at little cost in loss. Measured here on one index.\n",
             "## Summary\n", markdown_table(headline(tables, models)),
             f"frac_selective: share of primary-site neurons whose best concept score is >= {threshold:g} "
             "(score = sqrt(top-K share x (2 AUROC - 1)), see `solu autolabel`). frac_rule80: share whose "
             "top-K examples peak on one concept 80% of the time or more (the paper's rule, automated with "
             "the concept detectors; it ignores the rest of the activations).\n",
             "## Loss\n", markdown_table(tables["loss"], 4),
             "## Activation sparsity (primary site, per layer)\n", markdown_table(tables["sparsity"], 4)]
    parts.append(f"![sparsity]({images['sparsity']})\n" if "sparsity" in images else "")
    parts.append("## Concept selectivity\n")
    if tables["best"].empty:
        parts.append("No concept scores for these models yet: run `solu autolabel --db FILE` first.\n")
    else:
        parts += [markdown_table(tables["selectivity"]), "Per layer:\n", markdown_table(tables["frac_above_by_layer"]),
                  f"Neurons with a best concept scoring >= {threshold:g}, by concept:\n",
                  markdown_table(tables["concepts"]),
                  f"![selectivity]({images['selectivity']})\n\n![per layer]({images['frac_above']})\n"]
    parts += ["## Labels\n", markdown_table(tables["labels"]), "## Blinded study\n"]
    if tables["study"].empty:
        parts.append("No blinded study covers these models (start one on the app's Study page).\n")
    else:
        parts += ["Fraction of answers that said one rule explains 80% or more of the strongest firings, "
                  "with a 95% Wilson interval. Unblinded here only.\n", markdown_table(tables["study"]),
                  f"![study]({images['study']})\n"]
    return "\n".join(parts)


def write_report(db: str | Path, model_a: str, model_b: str, out: str | Path,
                 threshold: float = DEFAULT_THRESHOLD) -> Path:
    """Write report.md and its PNG plots into `out`; returns the report's path."""
    if not 0 <= threshold <= 1:
        raise UserError(f"--threshold must be between 0 and 1, got {threshold}")
    models = [model_a, model_b]
    con = open_read(db)
    try:
        tables = compare_tables(con, models, threshold)
    finally:
        con.close()
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror or e}") from None
    images = {"sparsity": "sparsity.png"}
    plot_sparsity(tables["neuron_stats"], models, out / images["sparsity"])
    if not tables["best"].empty:
        images |= {"selectivity": "selectivity.png", "frac_above": "frac_above_by_layer.png"}
        plot_selectivity(tables["best"], models, threshold, out / images["selectivity"])
        plot_frac_above(tables["frac_above_by_layer"], models, threshold, out / images["frac_above"])
    if not tables["study"].empty:
        images["study"] = "study.png"
        plot_study(tables["study"], out / images["study"])
    report = out / "report.md"
    report.write_text(render_markdown(tables, models, threshold, images), encoding="utf-8")
    return report
