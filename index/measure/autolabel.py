"""Automatic concept labels: how selectively each neuron fires for each concept.

Two measurements per (neuron, concept), both from what the index stored, at the
neuron's primary site:

* auroc: over the sampled documents (the `tokens` table), the chance that an
  occurrence of the concept (a run of consecutive concept tokens: one base64 string,
  one "twelve tired workers") has a higher activation, taken at its strongest token,
  than a chunk of the other text as long as a typical occurrence (the median); ties
  count half (the Mann-Whitney statistic). Occurrences rather than tokens, because a
  neuron that reads a multi-token concept usually fires on one part of it (the noun
  of "twelve tired workers"); equally long chunks on the other side, so a neuron that
  fires at random does not gain from long occurrences (it scores about 0.5). For
  one-token concepts this is the plain token AUROC. The `activations` table is
  sparse: it holds only activations above the index run's threshold (a fraction of
  each neuron's max). A token missing from it is taken to lie below every recorded
  activation, and all missing tokens tie with one another, which is all the index
  knows about them. So a neuron that never reaches its threshold on the sample scores
  0.5 on every concept, and one whose recorded activations cover every occurrence and
  nothing else scores 1.
* top_share: the share of the neuron's top-K examples whose max-activating token is in
  the concept, the concept detected on the example's window of tokens. This is the
  paper's test ("one rule explains 80% or more of the strongest firings"), made
  automatic.

score = sqrt(top_share * max(0, 2 * auroc - 1)), the geometric mean of the top share
and the Gini coefficient: high only when the strongest firings are the concept and
the concept's occurrences as a whole rank above the rest of the text. A neuron whose
top examples match a concept at its base rate (auroc near 0.5) scores near 0.

Every score is stored in `concept_scores` with the index run it was computed from (a
re-index makes it stale, and `current_concept_scores` hides stale rows). Each neuron's
best concept scoring at least the threshold becomes an automatic label (source 'auto',
status 'suggested', with its score), which the app offers to accept or reject.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from index.measure.concepts import CONCEPTS, Concept, concept, concept_masks
from index.store.connection import check_writable, open_read, open_write
from solu.errors import UserError

AUTHOR = "autolabel"
DEFAULT_THRESHOLD = 0.5


def auroc_by_group(group: np.ndarray, acts: np.ndarray, positive: np.ndarray, n_groups: int,
                   n_total: int, n_positive: np.ndarray) -> np.ndarray:
    """AUROC per (group, concept) from sparse activations.

    group[i], acts[i], positive[i, c] describe recorded activation i (group = neuron);
    every group also has n_total - (its recorded count) unrecorded tokens, tied below
    all recorded ones, of which n_positive[c] - (its recorded positives) are positive.
    Returns an (n_groups, n_concepts) array, NaN where a concept has no positive or no
    negative token. Integer `acts` are taken as dense ranks of the activations."""
    n_positive = np.asarray(n_positive, dtype=np.float64)
    positive = positive.reshape(len(acts), len(n_positive)).astype(np.float64)
    group, levels = np.asarray(group, dtype=np.int64), dense_rank(acts)
    order = np.argsort(group * (int(levels.max(initial=0)) + 1) + levels, kind="stable")
    g, a, pos = group[order], levels[order], positive[order]
    recorded = np.bincount(g, minlength=n_groups)
    if (recorded > n_total).any():
        raise ValueError("a neuron has more recorded activations than there are tokens")
    start = np.concatenate(([0], np.cumsum(recorded)[:-1]))
    position = np.arange(len(g)) - start[g] + 1.0  # 1-based rank among recorded
    new_block = np.ones(len(g), dtype=bool)
    new_block[1:] = (g[1:] != g[:-1]) | (a[1:] != a[:-1])
    block = np.cumsum(new_block) - 1
    midrank = (np.bincount(block, weights=position) / np.bincount(block))[block] if len(g) else position
    unrecorded = (n_total - recorded).astype(np.float64)
    rank = unrecorded[g] + midrank
    rank_sum = np.stack([np.bincount(g, weights=rank * pos[:, c], minlength=n_groups)
                         for c in range(pos.shape[1])], axis=1).astype(np.float64)
    pos_recorded = np.stack([np.bincount(g, weights=pos[:, c], minlength=n_groups)
                             for c in range(pos.shape[1])], axis=1)
    rank_sum += (n_positive[None, :] - pos_recorded) * (unrecorded[:, None] + 1) / 2
    n_negative = n_total - n_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    auc[:, (n_positive == 0) | (n_negative == 0)] = np.nan
    return auc


def occurrence_units(mask: np.ndarray, doc_start: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(unit of each token, n_positive_units, n_units). Positive units are occurrences:
    runs of concept tokens, not crossing a document start. The text between them is cut
    into chunks of the median occurrence length, the negative units, so both sides take
    the max over about as many tokens and a neuron firing at random scores about 0.5."""
    mask = np.asarray(mask, dtype=bool)
    idx = np.arange(len(mask))
    previous = np.zeros_like(mask)
    previous[1:] = mask[:-1]
    boundary = (mask != previous) | doc_start
    boundary[:1] = True
    run_start = np.maximum.accumulate(np.where(boundary, idx, 0))
    starts = mask & boundary
    n_runs = int(starts.sum())
    ends = np.append(idx[boundary][1:], len(mask))
    run_lengths = (ends - idx[boundary])[mask[boundary]]
    chunk = max(1, int(np.median(run_lengths))) if n_runs else 1
    chunk_start = ~mask & ((idx - run_start) % chunk == 0)
    unit = np.where(mask, np.cumsum(starts) - 1, n_runs + np.cumsum(chunk_start) - 1)
    return unit, n_runs, n_runs + int(chunk_start.sum())


def dense_rank(acts: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... by activation, equal activations sharing a rank (integers pass as is)."""
    acts = np.asarray(acts)
    if np.issubdtype(acts.dtype, np.integer):
        return acts.astype(np.int64)
    return np.unique(acts.astype(np.float64), return_inverse=True)[1].reshape(-1).astype(np.int64)


def occurrence_auroc(group: np.ndarray, token: np.ndarray, acts: np.ndarray, mask: np.ndarray,
                     doc_start: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group (neuron), the AUROC of the concept's occurrences against equally long
    chunks of the other text, each unit at its strongest recorded token (see
    occurrence_units). `mask` and `doc_start` run over all sampled tokens; row i of the
    sparse activations is (group[i], token[i], acts[i]). Rows already sorted by (group,
    token), with acts as dense ranks, skip a sort (score_model passes them so)."""
    group, token, level = np.asarray(group, dtype=np.int64), np.asarray(token, dtype=np.int64), dense_rank(acts)
    if len(group) and ((np.diff(group) < 0) | ((np.diff(group) == 0) & (np.diff(token) < 0))).any():
        order = np.lexsort((token, group))
        group, token, level = group[order], token[order], level[order]
    unit, n_runs, n_units = occurrence_units(mask, doc_start)
    key = group * n_units + unit[token]  # non-decreasing: units grow with the token index
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))) if len(key) else np.zeros(0, np.int64)
    strongest = np.maximum.reduceat(level, starts) if len(starts) else level
    return auroc_by_group(group[starts], strongest, (unit[token[starts]] < n_runs)[:, None], n_groups, n_units,
                          np.array([n_runs]))[:, 0]


def selectivity(auroc: np.ndarray, top_share: np.ndarray) -> np.ndarray:
    """sqrt(top_share * max(0, 2*auroc - 1)); NaN auroc (no concept tokens) scores 0."""
    gini = np.clip(2 * np.nan_to_num(auroc, nan=0.5) - 1, 0, None)
    return np.sqrt(np.nan_to_num(top_share, nan=0.0) * gini)


def resolve_concepts(specs: list[str] | None = None, regexes: list[str] | None = None) -> list[Concept]:
    """Built-in names or regex specs, plus NAME=PATTERN user regexes; all built-ins by default."""
    chosen = [concept(s) for s in specs] if specs else list(CONCEPTS.values())
    for spec in regexes or []:
        if "=" not in spec:
            raise UserError(f"--regex takes NAME=PATTERN, got {spec!r}")
        chosen.append(concept(spec))
    names = [c.name for c in chosen]
    if len(set(names)) != len(names):
        raise UserError(f"concept names repeat: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return chosen


# ---------------------------------------------------------------- reading the index

_TOKEN_INDEX = """(SELECT doc_id, pos, row_number() OVER (ORDER BY doc_id, pos) - 1 AS idx
                   FROM tokens WHERE model_id = ?)"""


def primary_neurons(con, model_id: str) -> pd.DataFrame:
    """(layer, neuron, site) of a model's primary-site neurons, in a fixed order."""
    return con.execute("SELECT layer, neuron, site FROM neurons WHERE model_id = ? AND is_primary "
                       "ORDER BY layer, neuron", [model_id]).df()


def sampled_token_masks(con, model_id: str, concepts: list[Concept]) -> tuple[np.ndarray, np.ndarray]:
    """(masks, doc_start): (n_tokens, n_concepts) concept masks over the sampled
    documents, rows in (doc_id, pos) order, each document's tokens joined and detected
    as one text; doc_start marks each document's first token."""
    docs = con.execute("SELECT list(token ORDER BY pos) FROM tokens WHERE model_id = ? "
                       "GROUP BY doc_id ORDER BY doc_id", [model_id]).fetchall()
    parts, starts = [], []
    for (tokens,) in docs:
        masks = concept_masks(tokens, concepts)
        parts.append(np.stack([masks[c.name] for c in concepts], axis=1))
        starts.append(np.arange(len(tokens)) == 0)
    if not parts:
        return np.zeros((0, len(concepts)), dtype=bool), np.zeros(0, dtype=bool)
    return np.concatenate(parts), np.concatenate(starts)


def recorded_activations(con, model_id: str) -> pd.DataFrame:
    """The sparse activation sample at primary sites, each row with its token's index."""
    return con.execute(f"""
        SELECT a.layer, a.neuron, a.act, t.idx
        FROM activations a JOIN {_TOKEN_INDEX} t USING (doc_id, pos)
        JOIN neurons n ON n.model_id = a.model_id AND n.layer = a.layer AND n.neuron = a.neuron
                      AND n.site = a.site AND n.is_primary
        WHERE a.model_id = ?""", [model_id, model_id]).df()


def top_examples(con, model_id: str) -> pd.DataFrame:
    return con.execute("""
        SELECT e.layer, e.neuron, e.tokens, e.acts FROM examples e
        JOIN neurons n USING (model_id, layer, neuron, site)
        WHERE e.model_id = ? AND e.kind = 'top' AND n.is_primary""", [model_id]).df()


# ---------------------------------------------------------------- scoring

def _neuron_index(neurons: pd.DataFrame, layer: np.ndarray, neuron: np.ndarray) -> np.ndarray:
    keys = pd.MultiIndex.from_arrays([neurons.layer.to_numpy(), neurons.neuron.to_numpy()])
    found = keys.get_indexer(pd.MultiIndex.from_arrays([layer, neuron]))
    if (found < 0).any():
        raise UserError("the index has activations or examples for neurons missing from its neurons table")
    return found


def top_share_matrix(examples: pd.DataFrame, index: np.ndarray, concepts: list[Concept],
                     n_neurons: int) -> tuple[np.ndarray, np.ndarray]:
    """(share, n_top): per neuron, the share of top examples whose max token is in each concept."""
    hits = np.zeros((n_neurons, len(concepts)))
    counts = np.bincount(index, minlength=n_neurons)
    for i, tokens, acts in zip(index, examples.tokens, examples.acts):
        tokens = list(tokens)
        if not tokens:
            continue
        peak = int(np.nanargmax(np.asarray(acts, dtype=np.float64)))
        masks = concept_masks(tokens, concepts)
        hits[i] += [masks[c.name][peak] for c in concepts]
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts[:, None], counts


def score_model(con, model_id: str, concepts: list[Concept]) -> pd.DataFrame:
    """Every (neuron, concept) score of one model, as rows for `concept_scores`."""
    neurons = primary_neurons(con, model_id)
    if neurons.empty:
        raise UserError(f"model {model_id!r} has no indexed neurons")
    masks, doc_start = sampled_token_masks(con, model_id, concepts)
    acts = recorded_activations(con, model_id)
    examples = top_examples(con, model_id)
    n = len(neurons)
    group = _neuron_index(neurons, acts.layer.to_numpy(), acts.neuron.to_numpy())
    token, level = acts.idx.to_numpy(np.int64), dense_rank(acts.act.to_numpy(np.float64))
    order = np.lexsort((token, group))  # once, for every concept
    group, token, level = group[order], token[order], level[order]
    auroc = np.stack([occurrence_auroc(group, token, level, masks[:, j], doc_start, n)
                      for j in range(len(concepts))], axis=1).reshape(n, len(concepts))
    share, n_top = top_share_matrix(examples, _neuron_index(neurons, examples.layer.to_numpy(),
                                                            examples.neuron.to_numpy()), concepts, n)
    score = selectivity(auroc, share)
    recorded = np.bincount(group, minlength=n)
    occurrences = [occurrence_units(masks[:, j], doc_start)[1] for j in range(len(concepts))]
    frames = [neurons.assign(model_id=model_id, concept=c.name, auroc=auroc[:, j], top_share=share[:, j],
                             score=score[:, j], n_recorded=recorded, n_top=n_top, occurrences=occurrences[j])
              for j, c in enumerate(concepts)]
    columns = ["model_id", "layer", "neuron", "site", "concept", "auroc", "top_share", "score",
               "n_recorded", "n_top", "occurrences"]
    return pd.concat(frames, ignore_index=True)[columns].assign(run_id=latest_run(con, model_id))


def latest_run(con, model_id: str) -> str | None:
    rows = con.execute("SELECT run_id FROM index_runs WHERE model_id = ? ORDER BY started_at DESC LIMIT 1",
                       [model_id]).fetchall()
    return rows[0][0] if rows else None


# ---------------------------------------------------------------- writing scores and labels

def autolabel(db: str | Path, models: list[str] | None = None, concepts: list[Concept] | None = None,
              threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Score every primary-site neuron of `models` (all by default) on `concepts`, store
    the scores, and suggest labels. Returns one row per model and concept: occurrences
    in the activation sample (none: no AUROC, so every score is 0), neurons at or above
    the threshold and the best neuron."""
    if not 0 <= threshold <= 1:
        raise UserError(f"--threshold must be between 0 and 1, got {threshold}")
    concepts = concepts or list(CONCEPTS.values())
    check_writable(db)  # the scores are written at the end: refuse a read-only index before the work
    con = open_read(db)
    try:
        known = [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY model_id").fetchall()]
        models = models or known
        missing = [m for m in models if m not in known]
        if missing:
            raise UserError(f"model {missing[0]!r} is not in {db} (models: {', '.join(known) or 'none'})")
        scores = pd.concat([score_model(con, m, concepts) for m in models], ignore_index=True)
    finally:
        con.close()
    write_scores(db, scores, concepts, threshold)
    return summarise(scores, threshold)


def summarise(scores: pd.DataFrame, threshold: float) -> pd.DataFrame:
    best = scores.sort_values("score", ascending=False).drop_duplicates(["model_id", "concept"])
    above = (scores[scores.score >= threshold].groupby(["model_id", "concept"]).size()
             .rename("neurons_above").reset_index())
    out = best.merge(above, on=["model_id", "concept"], how="left").fillna({"neurons_above": 0})
    out["best_neuron"] = "L" + out.layer.astype(str) + "/N" + out.neuron.astype(str)
    out = out.rename(columns={"score": "best_score", "auroc": "best_auroc", "top_share": "best_top_share",
                              "occurrences": "in_sample"})
    return out[["model_id", "concept", "in_sample", "neurons_above", "best_neuron", "best_score", "best_auroc",
                "best_top_share"]].sort_values(["model_id", "concept"]).reset_index(drop=True)


def write_scores(db: str | Path, scores: pd.DataFrame, concepts: list[Concept], threshold: float) -> int:
    """Replace the scores of these models and concepts, then append auto labels where a
    neuron's best concept changed. One short transaction; returns the labels appended."""
    defs = pd.DataFrame({"name": [c.name for c in concepts], "description": [c.description for c in concepts],
                         "pattern": [c.pattern for c in concepts]})
    with open_write(db) as con:
        con.register("new_scores", scores.drop(columns=["occurrences"]))
        con.register("new_concepts", defs)
        con.execute("BEGIN")
        con.execute("DELETE FROM concepts WHERE name IN (SELECT name FROM new_concepts)")
        con.execute("INSERT INTO concepts (name, description, pattern) SELECT * FROM new_concepts")
        con.execute("DELETE FROM concept_scores WHERE (model_id, concept) IN "
                    "(SELECT DISTINCT model_id, concept FROM new_scores)")
        con.execute("INSERT INTO concept_scores BY NAME SELECT * FROM new_scores")
        changes = label_changes(con, list(scores.model_id.unique()), threshold)
        con.register("new_labels", changes)
        con.execute("""
            INSERT INTO labels (label_id, model_id, layer, neuron, label, note, source, author, score, status)
            SELECT (SELECT coalesce(max(label_id), 0) FROM labels) + row_number() OVER (),
                   model_id, layer, neuron, label, note, 'auto', ?, score, status FROM new_labels""", [AUTHOR])
        con.execute("COMMIT")
        con.unregister("new_scores")
    return len(changes)


def label_changes(con, models: list[str], threshold: float) -> pd.DataFrame:
    """Auto label rows to append: a suggestion where a neuron's best concept is at or above
    the threshold and differs from its current auto label (or that label was withdrawn, or
    its score changed);
    a withdrawal (status 'rejected', by autolabel) where a suggestion fell below it. A
    label a person rejected is not suggested again while it stays the best concept."""
    best = con.execute(f"""
        SELECT s.model_id, s.layer, s.neuron, s.concept, s.score, s.auroc, s.top_share, s.n_top,
               c.label AS current, c.status AS current_status, c.author AS current_author,
               c.score AS current_score
        FROM current_concept_scores s
        JOIN neurons n USING (model_id, layer, neuron, site)
        LEFT JOIN (SELECT * FROM current_labels WHERE source = 'auto') c USING (model_id, layer, neuron)
        WHERE n.is_primary AND s.model_id IN ({', '.join('?' * len(models))})
        QUALIFY row_number() OVER (PARTITION BY s.model_id, s.layer, s.neuron ORDER BY s.score DESC, s.concept) = 1
        """, models).df()
    withdrawn = (best.current_status == "rejected") & (best.current_author == AUTHOR)
    live = best.current.notna() & ~withdrawn
    above = best.score >= threshold
    ours = live & (best.current_author == AUTHOR)
    rescored = ours & (best.current_status == "suggested") & ((best.score - best.current_score).abs() > 1e-6)
    suggest = best[above & (best.current.isna() | withdrawn | (best.current != best.concept) | rescored)]
    withdraw = best[~above & ours]
    rows = [
        suggest.assign(label=suggest.concept, status="suggested",
                       note=[f"auroc {a:.3f}, top-{k} share {s:.2f}"
                             for a, k, s in zip(suggest.auroc, suggest.n_top, suggest.top_share)]),
        withdraw.assign(label=withdraw.current, status="rejected",
                        note=f"withdrawn: best score below {threshold:g}"),
    ]
    return pd.concat(rows, ignore_index=True)[["model_id", "layer", "neuron", "label", "note", "score", "status"]]
