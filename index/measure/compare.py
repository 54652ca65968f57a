"""Two groups of models side by side (one model each, or several training seeds each):
the SoLU paper's claim, measured on an index.

Loss (does SoLU cost much?), activation sparsity (density and kurtosis of each neuron's
activations), and the measures of interpretability, all from `solu autolabel`:

* the paper's rule automated: the fraction of neurons whose top examples peak on one
  concept at least 80% of the time (it reads only the top of each neuron's range);
* the held-out score as a whole curve (index.measure.curves): the share of neurons whose
  explanation scores at least c on held-out records, for every c, and the mean score,
  at the primary site and at the site the MLP writes out;
* the verdict (index.measure.verdict): explanation at the top and held-out score at its
  cut, the cut recalibrated on the blinded study's answers when the index has them.

The difference between the groups (B minus A) comes with a 95% interval from a
hierarchical bootstrap that resamples training runs within each group and then neurons
within each run, because run-to-run variation is what can flip the answer; with one
model per group only neurons vary, and the two-model tables add Newcombe's interval and
an exact permutation test for the rule. A sentence says when the two measures disagree.
Human labels and the blinded study follow. Every function returns a DataFrame;
`index.measure.report` renders them as markdown with PNG plots, and the app's Models
page shows the same tables.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from index.measure import study as study_mod
from index.measure.autolabel import AUTHOR, RULE_SHARE
from index.measure import curves, verdict
from index.measure.intervals import newcombe, permutation_p, wilson
from index.store.queries import explanations_source, has_table, require_models
from solu.errors import UserError


def _in(models: list[str]) -> str:
    return f"({', '.join('?' * len(models))})"


def check_models(con, models: list[str]) -> None:
    require_models(con, models)
    if len(set(models)) != len(models):
        raise UserError("compare two different models" if len(models) == 2 else
                        "a model appears twice among the groups; each model belongs to one group")


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
    """Each primary-site neuron: densities above 0 and above its latest run's
    activation_threshold (a fraction of its max), kurtosis, and max activation."""
    return con.execute(f"""
        SELECT n.model_id, n.layer, n.neuron, n.frac_active, n.frac_active_rel, n.kurtosis, n.max_act,
               r.activation_threshold
        FROM neurons n LEFT JOIN latest_runs r USING (model_id)
        WHERE n.is_primary AND n.model_id IN {_in(models)}""", models).df()


def best_concepts(con, models: list[str]) -> pd.DataFrame:
    """Each primary-site neuron's best concept and its measures (the `best_concepts`
    view: the latest index run's scores; empty until `solu autolabel` has run)."""
    return con.execute(f"""
        SELECT model_id, layer, neuron, concept, top_share, top_hits, n_top, top_low, top_high,
               sample_share, base_rate, auroc
        FROM best_concepts WHERE model_id IN {_in(models)} ORDER BY model_id, layer, neuron""", models).df()


def pass_table(df: pd.DataFrame, models: list[str], by_layer: bool, extra: str, measure) -> pd.DataFrame:
    """Per model (and layer) of `df` (one row per neuron, `passes` saying whether it
    passes a measure): neurons, those passing, their fraction with its 95% Wilson
    interval, and the column `extra` = measure(rows of the group)."""
    keys = ["model_id", "layer"] if by_layer else ["model_id"]
    rows = []
    for key, group in df.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append(dict(zip(keys, key), neurons=len(group), passing=int(group.passes.sum()),
                         **{extra: measure(group)}))
    out = pd.DataFrame(rows, columns=keys + ["neurons", "passing", extra])
    low, high = wilson(out.passing.to_numpy(), out.neurons.to_numpy())
    out = out.assign(frac_passing=out.passing / out.neurons, ci_low=low, ci_high=high)
    order = {m: i for i, m in enumerate(models)}
    out = out.sort_values(keys, key=lambda c: c.map(order) if c.name == "model_id" else c)
    return out[keys + ["neurons", "passing", "frac_passing", "ci_low", "ci_high", extra]].reset_index(drop=True)


def rule_table(best: pd.DataFrame, models: list[str], rule: float, by_layer: bool) -> pd.DataFrame:
    """Per model (and layer), neurons passing the rule (best top share >= rule), their
    fraction with its 95% Wilson interval, and the median sample share of the passing
    neurons' concept (the second measure, where the sample has any)."""
    return pass_table(best.assign(passes=best.top_share >= rule), models, by_layer, "median_sample_share",
                      lambda g: g[g.passes].sample_share.median() if g.passes.any() else math.nan)


def rule_difference(by_layer: pd.DataFrame, overall: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Model B minus model A in the fraction passing the rule, per shared layer and over
    all layers: the difference, its 95% Newcombe interval and the exact two-sided
    permutation p-value (relabelling neurons between the two models)."""
    a, b = models
    parts = [(str(layer), rows) for layer, rows in by_layer.groupby("layer")] + [("all", overall)]
    out = []
    for layer, rows in parts:
        mine = rows.set_index("model_id")
        if a not in mine.index or b not in mine.index:
            continue
        (k_a, n_a), (k_b, n_b) = ((int(mine.passing[m]), int(mine.neurons[m])) for m in (a, b))
        low, high = newcombe(k_a, n_a, k_b, n_b)
        out.append({"layer": layer, f"frac_{a}": k_a / n_a, f"frac_{b}": k_b / n_b,
                    "difference": k_b / n_b - k_a / n_a, "diff_low": low, "diff_high": high,
                    "p_value": permutation_p(k_a, n_a, k_b, n_b)})
    return pd.DataFrame(out)


def concept_counts(best: pd.DataFrame, rule: float) -> pd.DataFrame:
    """Neurons passing the rule, by their concept, one column per model."""
    hits = best[best.top_share >= rule]
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
                AND coalesce(a.author, '') <> ?) AS auto_rejected
        FROM n WHERE n.model_id IN {_in(models)} ORDER BY n.model_id""", [AUTHOR, *models]).df().assign(
        frac_human_labeled=lambda d: d.human_labeled / d.neurons)


def study_table(con, models: list[str]) -> pd.DataFrame:
    """The unblinded summary of every study that includes any of the models."""
    frames = []
    for row in study_mod.studies(con).itertuples():
        if set(models) & set(row.models):
            s = study_mod.summary(con, row.study)
            frames.append(s[s.model_id.isin(models)])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def explanations(con, models: list[str]) -> pd.DataFrame:
    """Each neuron's explanation and held-out score (latest index run; empty until `solu
    autolabel` has run), at every site, with its view: 'primary' for the primary site and
    'output' for the site the MLP writes out (SoLU's post_ln; a GELU model's one site is
    both), so rows of a one-site model appear under both views."""
    df = con.execute(f"""
        SELECT e.model_id, e.layer, e.neuron, e.site, n.is_primary, e.kind, e.explanation, e.score, e.score_low,
               e.score_high, e.top_share, e.sample_share
        FROM {explanations_source(con)} e JOIN neurons n USING (model_id, layer, neuron, site)
        WHERE e.model_id IN {_in(models)} ORDER BY e.model_id, e.layer, e.neuron, e.site""", models).df()
    two_sites = set(df[~df.is_primary.astype(bool)].model_id)
    output = df[~df.is_primary.astype(bool) | ~df.model_id.isin(two_sites)]
    return pd.concat([df[df.is_primary.astype(bool)].assign(view="primary"), output.assign(view="output")],
                     ignore_index=True)


def primary(expl: pd.DataFrame) -> pd.DataFrame:
    return expl[expl.view == "primary"] if "view" in expl else expl


def verdict_table(expl: pd.DataFrame, models: list[str], by_layer: bool, cut: float) -> pd.DataFrame:
    """Per model (and layer), neurons the verdict calls interpretable (explanation at
    verdict.TOP_SHARE of the top examples and held-out score >= cut), their fraction with
    its 95% Wilson interval, and the median score (a neuron without a score, dead or with
    no held-out record, counts as not passing). Primary site."""
    rows = primary(expl)
    return pass_table(rows.assign(passes=verdict.interpretable(rows.top_share, rows.score, cut)), models,
                      by_layer, "median_score", lambda g: g.score.median())


BOOTSTRAP = 4000


def hierarchical_interval(passing: list[np.ndarray], draws: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """Bootstrap draws of a group's pooled fraction: training runs resampled with
    replacement, then each drawn run's neurons (a count `passing[i].sum()` of `len`)."""
    rng = np.random.default_rng(seed)
    n = np.array([len(p) for p in passing], dtype=np.int64)
    frac = np.array([p.mean() if len(p) else 0.0 for p in passing])
    runs = rng.integers(0, len(passing), size=(draws, len(passing)))
    hits = rng.binomial(n[runs], frac[runs])
    return hits.sum(axis=1) / np.maximum(n[runs].sum(axis=1), 1)


def group_difference(best: pd.DataFrame, expl: pd.DataFrame, groups: list[list[str]], rule: float,
                     cut: float = verdict.SCORE) -> pd.DataFrame:
    """Group B minus group A in the fraction of neurons passing each measure (the paper's
    rule, and the verdict at score cut `cut`), per shared layer and over all layers, with a
    95% hierarchical bootstrap interval. Primary site."""
    a, b = groups
    expl = primary(expl)
    measures = [("paper's rule", best.assign(passes=best.top_share >= rule)),
                ("verdict", expl.assign(passes=verdict.interpretable(expl.top_share, expl.score, cut)))]
    out = []
    for name, df in measures:
        if df.empty:
            continue
        layers = sorted(set(df.layer))
        for layer in [*layers, "all"]:
            rows = df if layer == "all" else df[df.layer == layer]
            per = [[rows[rows.model_id == m].passes.to_numpy(bool) for m in g] for g in (a, b)]
            if any(not any(len(p) for p in side) for side in per):
                continue
            frac = [sum(p.sum() for p in side) / sum(len(p) for p in side) for side in per]
            draws = [hierarchical_interval(side, seed=i) for i, side in enumerate(per)]
            low, high = np.percentile(draws[1] - draws[0], [2.5, 97.5])
            out.append({"measure": name, "layer": str(layer), "runs_a": len(a), "runs_b": len(b),
                        "frac_a": frac[0], "frac_b": frac[1], "difference": frac[1] - frac[0],
                        "diff_low": low, "diff_high": high})
    return pd.DataFrame(out)


def disagreement(diff: pd.DataFrame) -> str:
    """One sentence when the two measures point different ways over all layers (opposite
    signs, at least one interval excluding 0); empty otherwise."""
    if diff.empty:
        return ""
    rows = diff[diff.layer == "all"].set_index("measure")
    if len(rows) < 2:
        return ""
    rule, held = rows.loc["paper's rule"], rows.loc["verdict"]
    clear = [(r.diff_low > 0) or (r.diff_high < 0) for r in (rule, held)]
    if rule.difference * held.difference < 0 and any(clear):
        return (f"The two measures disagree: the paper's rule gives B minus A = {rule.difference:+.3f} "
                f"[{rule.diff_low:+.3f}, {rule.diff_high:+.3f}], the verdict {held.difference:+.3f} "
                f"[{held.diff_low:+.3f}, {held.diff_high:+.3f}]; the rule reads only the top examples, the "
                "verdict also each neuron's held-out range.")
    return ""


def relations_table(con, models: list[str]) -> pd.DataFrame:
    """Per model, its neuron relations in one row: connections kept per neuron and the
    median strongest downstream virtual weight; ablation: top examples measured and the
    mean loss change of zeroing the neuron at each example's max token; the best match in
    each other model (median r of each neuron's best match, and the share at r >= 0.9);
    SoLU's LayerNorm caveat: the median overlap of the pre-LN and post-LN top-K lists and
    their median rank correlation."""
    if not has_table(con, "connections"):
        return pd.DataFrame()
    base = con.execute(f"""
        SELECT m.model_id,
               (SELECT count(*) FROM connections c WHERE c.model_id = m.model_id)
                 / nullif((SELECT count(*) FROM neurons n WHERE n.model_id = m.model_id AND n.is_primary), 0)
                 AS connections_per_neuron,
               (SELECT median(weight) FROM connections c WHERE c.model_id = m.model_id AND c.rank = 1
                AND c.sign = 'pos' AND c.direction = 'downstream') AS median_top_downstream,
               (SELECT count(DISTINCT (layer, neuron, rank)) FROM ablations a WHERE a.model_id = m.model_id)
                 AS ablated_examples,
               (SELECT avg(a.delta_zero) FROM ablations a JOIN examples e ON e.model_id = a.model_id
                  AND e.layer = a.layer AND e.neuron = a.neuron AND e.rank = a.rank AND e.kind = 'top'
                  JOIN neurons n ON n.model_id = e.model_id AND n.layer = e.layer AND n.neuron = e.neuron
                  AND n.site = e.site AND n.is_primary
                WHERE a.model_id = m.model_id AND a.window_pos = e.max_pos) AS mean_loss_change_at_max,
               (SELECT median(overlap) FROM ln_agreement l WHERE l.model_id = m.model_id) AS median_ln_overlap,
               (SELECT median(rank_corr) FROM ln_agreement l WHERE l.model_id = m.model_id) AS median_ln_rank_corr
        FROM models m WHERE m.model_id IN {_in(models)} ORDER BY m.model_id""", models).df()
    matched = con.execute(f"""
        SELECT model_id, string_agg(other_model || ': median r ' || round(med, 3) || ', ' || round(100 * hi, 1)
                                    || '% at r >= 0.9', '; ' ORDER BY other_model) AS best_matches
        FROM (SELECT model_id, other_model, median(r) AS med, avg((r >= 0.9)::INT) AS hi
              FROM neuron_matches WHERE rank = 1 AND model_id IN {_in(models)} GROUP BY ALL)
        GROUP BY model_id""", models).df()
    return base.merge(matched, on="model_id", how="left")


def group_name(group: list[str]) -> str:
    return ",".join(group)


def compare_tables(con, groups: list[list[str]], rule: float = RULE_SHARE) -> dict[str, pd.DataFrame]:
    """Everything the report and the Models page show, by section, for groups A and B
    (each a list of model ids: one model, or several training seeds). The verdict's score
    cut is calibrated on the blinded study's answers when the index has enough of them."""
    models = [m for g in groups for m in g]
    check_models(con, models)
    best = best_concepts(con, models)
    expl = explanations(con, models)
    calibration = study_mod.calibration(con, models)
    cut = float(calibration.best_cut.iloc[0]) if study_mod.calibrated(calibration) else verdict.SCORE
    by_layer, overall = rule_table(best, models, rule, True), rule_table(best, models, rule, False)
    single = all(len(g) == 1 for g in groups)
    diff = group_difference(best, expl, groups, rule, cut)
    names = [group_name(g) for g in groups]
    curve = curves.group_curves(expl[["model_id", "view", "score"]], dict(zip(names, groups)))
    sentences = [f"{view}: {curves.crossing(rows, *names)}"
                 for view, rows in curve["curve_difference"].groupby("view", sort=False)]
    return {
        "loss": loss_table(con, models), "sparsity": sparsity_table(con, models),
        "neuron_stats": neuron_stats(con, models), "best": best, "rule": overall, "rule_by_layer": by_layer,
        "rule_difference": (rule_difference(by_layer, overall, models) if single and not best.empty
                            else pd.DataFrame()),
        "explanations": expl, "verdict": verdict_table(expl, models, False, cut),
        "verdict_by_layer": verdict_table(expl, models, True, cut),
        "verdict_cut": pd.DataFrame({"top_share": [verdict.TOP_SHARE], "score": [cut],
                                     "calibrated": [study_mod.calibrated(calibration)]}),
        "calibration": calibration, "group_difference": diff,
        "disagreement": pd.DataFrame({"sentence": [disagreement(diff)]}),
        "curves": curve["curves"], "curve_difference": curve["curve_difference"], "mean_score": curve["mean_score"],
        "crossing": pd.DataFrame({"sentence": sentences}),
        "concepts": concept_counts(best, rule), "labels": label_table(con, models),
        "relations": relations_table(con, models),
        "study": study_table(con, models),
    }


def headline(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per model: the numbers the paper's claim turns on."""
    stats, rule, labels, study = (tables["neuron_stats"], tables["rule"].set_index("model_id"),
                                  tables["labels"].set_index("model_id"), tables["study"])
    held = tables["verdict"].set_index("model_id")
    expl = tables["explanations"]
    rows = []
    for r in tables["loss"].itertuples():
        mine = stats[stats.model_id == r.model_id]
        row = {"model": r.model_id, "act_fn": r.act_fn, "eval_loss": r.eval_loss, "loss_ratio": r.loss_ratio,
               "median_density": mine.frac_active.median(), "median_density_rel": mine.frac_active_rel.median(),
               "median_kurtosis": mine["kurtosis"].median(),
               "frac_rule": rule.frac_passing.get(r.model_id, math.nan),
               "rule_ci_low": rule.ci_low.get(r.model_id, math.nan),
               "rule_ci_high": rule.ci_high.get(r.model_id, math.nan),
               "frac_verdict": held.frac_passing.get(r.model_id, math.nan),
               "verdict_ci_low": held.ci_low.get(r.model_id, math.nan),
               "verdict_ci_high": held.ci_high.get(r.model_id, math.nan),
               "mean_score": (curves.curve_mean(expl[(expl.model_id == r.model_id) & (expl.view == "primary")].score)
                              if not expl.empty else math.nan),
               "frac_human_labeled": labels.frac_human_labeled.get(r.model_id, math.nan)}
        mine_study = study[study.model_id == r.model_id] if not study.empty else study
        if not mine_study.empty:
            s = mine_study.iloc[-1]
            row["study_interpretable"] = (f"{s.frac_interpretable:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}] "
                                          f"(n={s.answers})")
        rows.append(row)
    return pd.DataFrame(rows)
