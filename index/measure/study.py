"""The blinded interpretability study, after the SoLU paper's protocol.

A study samples neurons at random from two or more models (primary site, neurons with
top examples only), the same sample for every rater. Each rater sees the sample in an
order of their own, one neuron at a time, with about 20 top snippets and nothing that
names the model: no model id, no layer or neuron number, activations scaled to the
neuron's own maximum. The question is the paper's: does one rule explain 80% or more
of the strongest firings? (yes / no / unsure, and an optional label.)

Raters who work offline get the same thing as a blinded sheet (`solu study sheet`: top
examples, interval samples and random samples, as the neuron page shows them) and hand
back their answers by item number (`solu study answer`).

Answers are stored per rater, append-only; a rater's latest answer for a neuron counts.
`summary` unblinds: per model, the fraction of answers that are "yes" (unsure counts as
not yes) with a 95% Wilson interval. Every rater's answer is one observation, so with
several raters the interval treats their answers as independent.
"""
from __future__ import annotations

import math
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd

from index.measure.intervals import wilson
from index.store.connection import open_read, open_write
from index.measure.verdict import calibrate
from index.store.queries import explanations_source, has_table, require_models
from index.store.schema import rollback
from solu.errors import UserError

ANSWERS = ("yes", "no", "unsure")
QUESTION = "Does one rule explain 80% or more of the strongest firings?"
ITEM_COLUMNS = ["model_id", "layer", "neuron", "site"]


INT32_MAX = 2**31 - 1


def create_study(db: str | Path, name: str, models: list[str], per_model: int = 50, seed: int = 0,
                 snippets: int = 20) -> None:
    """Define a study; an existing study of that name must have the same settings."""
    name = name.strip()
    if not re.fullmatch(r"[\w .:-]{1,80}", name):
        raise UserError("a study name is 1-80 letters, digits, spaces or . _ : -")
    if len(set(models)) < 2:
        raise UserError("a blinded study compares two or more models")
    if per_model < 1 or snippets < 1:
        raise UserError("neurons per model and snippets must be at least 1")
    for flag, value in (("--per-model", per_model), ("--snippets", snippets), ("--seed", seed)):
        if not 0 <= value <= INT32_MAX:  # the studies table stores them as INTEGER
            raise UserError(f"{flag} must be from 0 to {INT32_MAX:,}, got {value:,}")
    with open_read(db) as con:  # checked before the write lock, so a refused study leaves no lock file
        require_models(con, models)
    with open_write(db) as con:
        old = con.execute("SELECT models, per_model, seed, snippets FROM studies WHERE study = ?", [name]).fetchall()
        if old:
            if (sorted(old[0][0]), old[0][1], old[0][2], old[0][3]) != (sorted(set(models)), per_model, seed, snippets):
                raise UserError(f"study {name!r} exists with other settings; pick another name")
            return
        con.execute("BEGIN")  # the study and the sample it draws, or nothing
        try:
            con.execute("INSERT INTO studies (study, models, per_model, seed, snippets) VALUES (?, ?, ?, ?, ?)",
                        [name, sorted(set(models)), per_model, seed, snippets])
            if study_items(con, name).empty:
                raise UserError(f"the models {', '.join(sorted(set(models)))} have no neurons with top examples "
                                "to rate; index them first")
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise


def studies(con) -> pd.DataFrame:
    return con.execute("SELECT study, models, per_model, seed, snippets, created_at FROM studies "
                       "ORDER BY created_at, study").df()


def _settings(con, study: str) -> tuple:
    rows = con.execute("SELECT models, per_model, seed, snippets FROM studies WHERE study = ?", [study]).fetchall()
    if not rows:
        raise UserError(f"no study named {study!r}")
    return rows[0]


def study_items(con, study: str) -> pd.DataFrame:
    """The study's sample: up to per_model neurons of each model, drawn with the study's
    seed from the primary-site neurons that have top examples."""
    models, per_model, seed, _ = _settings(con, study)
    frames = []
    for model_id in sorted(models):
        pool = con.execute("""
            SELECT n.model_id, n.layer, n.neuron, n.site FROM neurons n
            WHERE n.model_id = ? AND n.is_primary AND EXISTS (
                SELECT 1 FROM examples e WHERE e.model_id = n.model_id AND e.layer = n.layer
                  AND e.neuron = n.neuron AND e.site = n.site AND e.kind = 'top')
            ORDER BY n.layer, n.neuron""", [model_id]).df()
        rng = random.Random(f"{seed}:{model_id}")
        frames.append(pool.iloc[sorted(rng.sample(range(len(pool)), min(per_model, len(pool))))])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ITEM_COLUMNS)


def rater_order(items: pd.DataFrame, rater: str, seed: int) -> pd.DataFrame:
    """The items in this rater's own random order (models interleaved), numbered from 1."""
    order = list(range(len(items)))
    random.Random(f"{seed}:rater:{rater}").shuffle(order)
    return items.iloc[order].reset_index(drop=True).assign(item=lambda d: d.index + 1)


def rater_queue(con, study: str, rater: str) -> pd.DataFrame:
    """The rater's ordered items with their latest answer (None where not yet rated)."""
    _, _, seed, _ = _settings(con, study)
    items = rater_order(study_items(con, study), rater, seed)
    answered = latest_answers(con, study)
    answered = answered[answered.rater == rater][ITEM_COLUMNS + ["answer", "label"]]
    return items.merge(answered, on=ITEM_COLUMNS, how="left").sort_values("item").reset_index(drop=True)


def next_item(con, study: str, rater: str) -> dict | None:
    """The rater's first unrated item (model, layer, neuron, site, item number), or None."""
    return first_unrated(rater_queue(con, study, rater))


def first_unrated(queue: pd.DataFrame) -> dict | None:
    """The first item of a rater_queue that has no answer yet, or None."""
    todo = queue[queue.answer.isna()]
    return None if todo.empty else todo.iloc[0][ITEM_COLUMNS + ["item"]].to_dict()


def blinded_snippets(con, item: dict, n: int) -> pd.DataFrame:
    """The item's top examples (rank, tokens, acts, max_pos, start_pos), strongest first,
    blinded as blinded_windows blinds them."""
    top = blinded_windows(con, item, n)
    return top[top.kind == "top"][["rank", "tokens", "acts", "max_pos", "start_pos"]].reset_index(drop=True)


def record_answer(db: str | Path, study: str, rater: str, item: dict, answer: str, label: str = "",
                  seconds: float | None = None) -> None:
    """Append one answer under the write lock (the path labels take)."""
    rater = rater.strip()
    if not rater:
        raise UserError("a rater name is required")
    if answer not in ANSWERS:
        raise UserError(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
    with open_write(db) as con:
        items = study_items(con, study)
        key = (item["model_id"], int(item["layer"]), int(item["neuron"]), item["site"])
        if key not in set(items[ITEM_COLUMNS].itertuples(index=False, name=None)):
            raise UserError(f"that neuron is not part of study {study!r}")
        con.execute("""
            INSERT INTO study_answers (answer_id, study, rater, model_id, layer, neuron, site, answer, label, seconds)
            SELECT coalesce(max(answer_id), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM study_answers""",
                    [study, rater, item["model_id"], int(item["layer"]), int(item["neuron"]), item["site"],
                     answer, label.strip() or None, seconds])


def latest_answers(con, study: str) -> pd.DataFrame:
    return con.execute("""
        SELECT * FROM study_answers WHERE study = ?
        QUALIFY row_number() OVER (PARTITION BY rater, model_id, layer, neuron, site
                                   ORDER BY created_at DESC, answer_id DESC) = 1""", [study]).df()


def summary_models(con, study: str) -> list[str]:
    return list(_settings(con, study)[0])


def summary(con, study: str) -> pd.DataFrame:
    """Unblinded: per model, answers, yes/no/unsure, fraction interpretable and its 95% CI."""
    models, _, _, _ = _settings(con, study)
    answers = latest_answers(con, study)
    acts = dict(con.execute("SELECT model_id, act_fn FROM models").fetchall())
    rows = []
    for model_id in sorted(models):
        mine = answers[answers.model_id == model_id]
        counts = mine.answer.value_counts()
        n, yes = len(mine), int(counts.get("yes", 0))
        lo, hi = map(float, wilson(yes, n))
        rows.append({"study": study, "model_id": model_id, "act_fn": acts.get(model_id),
                     "raters": mine.rater.nunique(), "neurons": len(mine[ITEM_COLUMNS].drop_duplicates()),
                     "answers": n, "yes": yes, "no": int(counts.get("no", 0)), "unsure": int(counts.get("unsure", 0)),
                     "frac_interpretable": yes / n if n else math.nan, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


MIN_ANSWERS = 20  # a calibration needs this many answers, with at least MIN_EACH yes and MIN_EACH no
MIN_EACH = 5


def calibration(con, models: list[str], study: str | None = None) -> pd.DataFrame:
    """Agreement between raters and the automated measures (index.measure.verdict.calibrate)
    over every latest answer on these models' neurons (of one study, or of all): one row,
    or none when no answer meets an explanation. Each rater's answer is one observation;
    'unsure' counts as not yes."""
    if not has_table(con, "study_answers"):
        return pd.DataFrame()
    names = [study] if study else list(studies(con).study)
    answers = pd.concat([latest_answers(con, s) for s in names], ignore_index=True) if names else pd.DataFrame()
    if answers.empty:
        return pd.DataFrame()
    answers = answers[answers.model_id.isin(models)]
    expl = con.execute(f"SELECT model_id, layer, neuron, site, top_share, score FROM {explanations_source(con)}").df()
    rated = answers.merge(expl, on=ITEM_COLUMNS, how="inner")
    if rated.empty:
        return pd.DataFrame()
    found = calibrate(rated.top_share.to_numpy(), rated.score.to_numpy(), (rated.answer == "yes").to_numpy())
    return pd.DataFrame([{"studies": ", ".join(sorted(set(rated.study))), "raters": rated.rater.nunique(),
                          "neurons": len(rated[ITEM_COLUMNS].drop_duplicates()), **found}])


def calibrated(table: pd.DataFrame) -> bool:
    """Whether a calibration has enough answers to set the verdict's score cut."""
    if table.empty:
        return False
    row = table.iloc[0]
    return bool(row["items"] >= MIN_ANSWERS and MIN_EACH <= row["yes"] <= row["items"] - MIN_EACH)


# ---------------------------------------------------------------- sheets for raters who work offline

SHEET_CONTEXT = (16, 4)  # tokens shown before and after each window's strongest token


def blinded_windows(con, item: dict, snippets: int) -> pd.DataFrame:
    """What the neuron page shows of an item, blinded: its top examples (up to `snippets`),
    every interval sample and its random samples, activations divided by the neuron's
    largest top activation."""
    df = con.execute("""
        SELECT kind, band, rank, tokens, acts, max_pos, start_pos, max_act,
               max(max_act) FILTER (WHERE kind = 'top') OVER () AS neuron_max FROM examples
        WHERE model_id = ? AND layer = ? AND neuron = ? AND site = ? AND len(tokens) > 0
        QUALIFY kind <> 'top' OR row_number() OVER (PARTITION BY kind ORDER BY rank) <= ?
        ORDER BY CASE kind WHEN 'top' THEN 0 WHEN 'interval' THEN 1 ELSE 2 END, band DESC, rank""",
                     [item["model_id"], int(item["layer"]), int(item["neuron"]), item["site"], snippets]).df()
    scale = max(float(df.neuron_max.max()), 1e-12) if df.neuron_max.notna().any() else 1.0
    df["acts"] = [[float(a) / scale for a in acts] for acts in df.acts]
    return df.drop(columns=["max_act", "neuron_max"])


def _shown(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥").replace("`", "'")


def window_text(tokens, acts, peak: int, context: tuple[int, int] = SHEET_CONTEXT) -> str:
    """Tokens around the peak; a token firing at 10% of the neuron's max or more is shown
    as [token|k] with k its activation in tenths of the max (10 = the max)."""
    lo, hi = max(0, peak - context[0]), min(len(tokens), peak + context[1] + 1)
    parts = []
    for t, a in zip(tokens[lo:hi], acts[lo:hi]):
        level = int(round(10 * a)) if a == a else 0
        parts.append(f"[{_shown(t)}|{level}]" if level >= 1 else _shown(t))
    return "".join(parts)


def sheet_text(con, study: str, rater: str) -> str:
    """A blinded sheet of the study for one rater, in their own order: per item its top
    examples, interval samples and random samples, as the neuron page shows them, and
    nothing that names the model, the layer or the neuron."""
    _, _, seed, snippets = _settings(con, study)
    items = rater_order(study_items(con, study), rater, seed)
    lines = [f"# Study sheet: {len(items)} neurons", "",
             f"For each neuron answer: {QUESTION} (yes / no / unsure), and name the rule in a few words.",
             "Each line is a window of text around the token where the neuron fired most; [token|k] marks a "
             "token firing at k tenths of the neuron's largest activation (⏎ is a newline).", ""]
    for item in items.to_dict("records"):
        lines += [f"## Neuron {item['item']}", ""]
        windows = blinded_windows(con, item, snippets)
        for kind, title in (("top", "Top examples"), ("interval", "Interval samples (strongest band first)"),
                            ("random", "Random samples")):
            rows = windows[windows.kind == kind]
            if rows.empty:
                continue
            lines.append(f"{title}:")
            for r in rows.itertuples():
                tokens, acts = list(r.tokens), list(r.acts)
                peak = int(np.nanargmax(acts)) if kind != "top" else int(r.max_pos)
                lines.append(f"- `{window_text(tokens, acts, peak)}`")
            lines.append("")
    return "\n".join(lines) + "\n"


def import_answers(db: str | Path, study: str, rater: str, rows: list[dict]) -> int:
    """Record a rater's answers by item number of their sheet (rows of item, answer and an
    optional label); everything is checked before the first answer is written."""
    with open_read(db) as con:
        _, _, seed, _ = _settings(con, study)
        items = rater_order(study_items(con, study), rater.strip(), seed).set_index("item")
    checked = []
    for n, row in enumerate(rows, start=1):
        try:
            number = int(str(row.get("item", "")).strip())
        except ValueError:
            raise UserError(f"answers row {n}: item must be a number, got {row.get('item')!r}") from None
        answer = str(row.get("answer", "")).strip().lower()
        if number not in items.index:
            raise UserError(f"answers row {n}: the sheet has no item {number} (1-{len(items)})")
        if answer not in ANSWERS:
            raise UserError(f"answers row {n}: answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
        checked.append((items.loc[number][ITEM_COLUMNS].to_dict(), answer, str(row.get("label") or "")))
    for item, answer, label in checked:
        record_answer(db, study, rater, item, answer, label)
    return len(checked)
