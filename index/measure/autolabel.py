"""Automatic concept labels: which rule explains each neuron's strongest firings.

Three measurements per (neuron, concept), from what the index stored, at each of the
neuron's sites (labels read the primary site). Each answers its own question:

* top_share (primary): does one rule explain the strongest firings? The
  share of the neuron's top-K examples (its K strongest documents) whose max token is
  in the concept, the concept detected on the example's window of tokens: the paper's
  test ("one rule explains 80% or more of the ~20 strongest firings") made automatic,
  with the 95% Wilson interval of top_hits out of n_top (top_low, top_high). A neuron
  passes the rule for a concept when top_share >= RULE_SHARE.
* sample_share (second, over the activation sample): when the neuron fires anywhere in
  the sampled text, is it on the concept? The share of its recorded activation (every
  activation above its neurons.sample_cut, the index threshold unless the budget of rows
  bound it; weighted by its value) on the concept's tokens,
  read against base_rate, the concept's share of the sampled tokens. It does not
  penalise a sparse neuron: one that fires on a few base64 strings and nothing else
  scores 1, however rare its firings. It checks that the top-K are not a fluke of K
  documents.
* auroc (coverage): does the neuron pick out the concept's occurrences as a whole? Over
  the sampled documents (the `tokens` table), the chance that an occurrence of the
  concept (a run of consecutive concept tokens: one base64 string, one "twelve tired
  workers"), at its strongest token, outranks a chunk of other text as long as a typical
  occurrence; ties count half (Mann-Whitney). The `activations` table is sparse (only
  activations above the neuron's sample_cut), so unrecorded tokens tie at the bottom: a neuron
  that fires at random scores about 0.5, and one narrower than the detector (a base64
  neuron that fires on PEM certificates only) scores lower. Shown, never used to label.

Concepts are detected once per position the index holds (on the longest stretch of
consecutive positions its windows and sample cover), and neurons are scored a chunk at a
time on every core, together with their explanations (index.measure.explain), so memory
follows the chunk and not the size of the index.

Every score is stored in `concept_scores` with the index run it was computed from (a
re-index makes it stale, and `current_concept_scores` hides stale rows). Each neuron's
best concept (the `best_concepts` view: highest top share, then sample share) becomes an
automatic label when its top share reaches the threshold (source 'auto', status
'suggested', with its score), which the app offers to accept or reject.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from index.measure.concepts import CONCEPTS, Concept, concept
from index.measure.driver import Context, map_chunks
from index.measure.explain import BOOTSTRAP, explain_chunk, explanation_rows, finish_explanations
from index.measure.records import CHUNK, Chunk, chunk_plan, read_chunk, read_positions, read_sample
from index.measure.intervals import wilson
from index.store.connection import check_writable, open_read, open_write
from index.store.queries import latest_run, require_models
from solu.errors import UserError

AUTHOR = "autolabel"
RULE_SHARE = 0.8  # the paper's rule: one concept explains >= 80% of the strongest firings


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
    if n_runs == 0 or n_runs == n_units:  # no occurrence, or nothing else: no AUROC (auroc_by_group's NaN)
        return np.full(n_groups, np.nan)
    key = group * n_units + unit[token]  # non-decreasing: units grow with the token index
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))) if len(key) else np.zeros(0, np.int64)
    strongest = np.maximum.reduceat(level, starts) if len(starts) else level
    return auroc_by_group(group[starts], strongest, (unit[token[starts]] < n_runs)[:, None], n_groups, n_units,
                          np.array([n_runs]))[:, 0]


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


# ---------------------------------------------------------------- scoring, a chunk of neurons at a time

def sample_share_matrix(group: np.ndarray, token: np.ndarray, acts: np.ndarray, masks: np.ndarray,
                        n_neurons: int) -> np.ndarray:
    """Per neuron and concept, the share of the neuron's recorded activation (every
    activation in the sample above the index threshold, weighted by its value) that falls
    on the concept's tokens. NaN for a neuron with nothing recorded."""
    weight = np.clip(np.asarray(acts, dtype=np.float64), 0, None)
    total = np.bincount(group, weights=weight, minlength=n_neurons)
    on = np.stack([np.bincount(group, weights=weight * masks[token, j], minlength=n_neurons)
                   for j in range(masks.shape[1])], axis=1).reshape(n_neurons, masks.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total[:, None] > 0, on / total[:, None], np.nan)


def concept_chunk(ctx: Context, chunk: Chunk) -> dict[str, np.ndarray]:
    """A chunk's (n, n_concepts) concept measures: top hits (the top examples whose peak
    token is in the concept), sample share and occurrence AUROC over the activation
    sample; and each neuron's top examples and recorded activations."""
    positions, sample, n = ctx.positions, ctx.sample, chunk.n
    n_concepts = positions.bits.shape[1]
    top = chunk.win_top
    peak_bits = positions.bits[chunk.win_peak[top]]
    hits = np.stack([np.bincount(chunk.win_neuron[top], weights=peak_bits[:, j], minlength=n)
                     for j in range(n_concepts)], axis=1).reshape(n, n_concepts).astype(np.int64)
    masks = ctx.masks
    token = np.searchsorted(sample.row, chunk.rec_row)
    order = np.lexsort((token, chunk.rec_neuron))
    group, token, value = chunk.rec_neuron[order], token[order], chunk.rec_act[order]
    level = dense_rank(value)
    auroc = np.stack([occurrence_auroc(group, token, level, masks[:, j], sample.starts, n) for j in range(n_concepts)],
                     axis=1).reshape(n, n_concepts)
    return {"hits": hits, "n_top": np.bincount(chunk.win_neuron[top], minlength=n),
            "sample_share": sample_share_matrix(group, token, value, masks, n), "auroc": auroc,
            "recorded": np.bincount(group, minlength=n)}


def score_chunk(ctx: Context, chunk: Chunk) -> tuple[dict, pd.DataFrame]:
    """Both measures of a chunk: concept scores and explanations (one pool task)."""
    return concept_chunk(ctx, chunk), explain_chunk(ctx, chunk)


def score_model(con, model_id: str, concepts: list[Concept], workers: int | None = None,
                progress: bool = False, chunk: int = CHUNK, boot: int = BOOTSTRAP) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (neuron, concept) score of one model, as rows for `concept_scores`, and every
    neuron's explanation, as rows for `explanations`. Concepts are detected once per
    position the index holds (index.measure.records.Positions), then neurons are scored a
    chunk at a time on every core, so memory follows the chunk, not the index."""
    from tqdm import tqdm

    neurons, parts = chunk_plan(con, model_id, chunk)
    if neurons.empty:
        raise UserError(f"model {model_id!r} has no indexed neurons")
    positions = read_positions(con, model_id, concepts)
    sample = read_sample(con, model_id, positions)
    ctx = Context.build(positions, sample, boot)
    chunks = (read_chunk(con, model_id, positions, site, layer, ids) for site, layer, ids in parts)
    measures, explained = [], []
    with tqdm(total=len(neurons), desc=f"autolabel {model_id}", unit="neuron", disable=not progress) as bar:
        for (site, layer, ids), (measure, scored) in zip(parts, map_chunks(score_chunk, ctx, chunks, workers)):
            measures.append(measure)
            explained.append(explanation_rows(positions, scored, site, layer, ids))
            bar.update(len(ids))
    run_id = latest_run(con, model_id)
    merged = {k: np.concatenate([m[k] for m in measures]) for k in measures[0]}
    hits, n_top = merged["hits"], merged["n_top"]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = hits / n_top[:, None]
    low, high = wilson(hits, n_top[:, None])
    masks = ctx.masks
    base_rate = masks.mean(axis=0) if len(masks) else np.full(len(concepts), np.nan)
    occurrences = [occurrence_units(masks[:, j], sample.starts)[1] for j in range(len(concepts))]
    frames = [neurons.assign(model_id=model_id, concept=c.name, top_share=share[:, j],
                             top_hits=hits[:, j], top_low=low[:, j], top_high=high[:, j],
                             sample_share=merged["sample_share"][:, j], base_rate=base_rate[j],
                             auroc=merged["auroc"][:, j], n_recorded=merged["recorded"], n_top=n_top,
                             occurrences=occurrences[j])
              for j, c in enumerate(concepts)]
    scores = pd.concat(frames, ignore_index=True)[SCORE_COLUMNS].assign(run_id=run_id)
    return scores, finish_explanations(explained, model_id, run_id)


SCORE_COLUMNS = ["model_id", "layer", "neuron", "site", "concept", "top_share", "top_hits", "top_low",
                 "top_high", "sample_share", "base_rate", "auroc", "n_recorded", "n_top", "occurrences"]


# ---------------------------------------------------------------- writing scores and labels

def autolabel(db: str | Path, models: list[str] | None = None, concepts: list[Concept] | None = None,
              threshold: float = RULE_SHARE, progress: bool = False, workers: int | None = None) -> pd.DataFrame:
    """Score every primary-site neuron of `models` (all by default) on `concepts`, store
    the scores, and suggest labels where the best concept's top share reaches the
    threshold; choose and score each neuron's explanation (index.measure.explain) and
    store it. Returns one row per model and concept (see summarise)."""
    check_threshold(threshold)
    concepts = concepts or list(CONCEPTS.values())
    check_writable(db)  # the scores are written at the end: refuse a read-only index before the work
    with tempfile.TemporaryDirectory(prefix="solu-autolabel-") as spill:
        scores, explained = _score_models(db, models, concepts, workers, progress, spill)
    write_scores(db, scores, concepts, threshold, explained)
    return summarise(scores, threshold)


READ_MEMORY = "512MB"  # DuckDB's share while autolabel reads; larger reads spill to a temporary folder


def _score_models(db, models, concepts, workers, progress, spill: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    with open_read(db, {"memory_limit": READ_MEMORY, "temp_directory": spill}) as con:
        known = require_models(con, models or [])
        models = models or known
        if not models:
            raise UserError("the index has no models to score")
        both = [score_model(con, m, concepts, workers, progress) for m in models]
        return (pd.concat([b[0] for b in both], ignore_index=True),
                pd.concat([b[1] for b in both], ignore_index=True))


def check_threshold(threshold: float) -> None:
    if not 0 <= threshold <= 1:
        raise UserError(f"--threshold must be between 0 and 1, got {threshold}")


def summarise(scores: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """One row per model and concept: occurrences in the activation sample, neurons whose
    top share reaches the threshold, and the best neuron with its measures."""
    best = scores.sort_values(["top_share", "sample_share"], ascending=False, na_position="last").drop_duplicates(
        ["model_id", "concept"])
    passing = (scores[scores.top_share >= threshold].groupby(["model_id", "concept"]).size()
               .rename("neurons_passing").reset_index())
    out = best.merge(passing, on=["model_id", "concept"], how="left").fillna({"neurons_passing": 0})
    out["best_neuron"] = "L" + out.layer.astype(str) + "/N" + out.neuron.astype(str)
    out = out.rename(columns={"occurrences": "in_sample", "top_share": "best_top_share",
                              "sample_share": "best_sample_share", "auroc": "best_auroc"})
    return out[["model_id", "concept", "in_sample", "neurons_passing", "best_neuron", "best_top_share", "top_low",
                "top_high", "best_sample_share", "base_rate", "best_auroc"]].sort_values(
        ["model_id", "concept"]).reset_index(drop=True)


def write_scores(db: str | Path, scores: pd.DataFrame, concepts: list[Concept], threshold: float,
                 explained: pd.DataFrame | None = None) -> int:
    """Replace the scores of these models and concepts (and their explanations), then
    append auto labels where a neuron's best concept changed. One short transaction;
    returns the labels appended."""
    defs = pd.DataFrame({"name": [c.name for c in concepts], "description": [c.description for c in concepts],
                         "pattern": [c.pattern for c in concepts]})
    with open_write(db) as con:
        con.register("new_scores", scores)
        con.register("new_concepts", defs)
        con.execute("BEGIN")
        con.execute("DELETE FROM concepts WHERE name IN (SELECT name FROM new_concepts)")
        con.execute("INSERT INTO concepts (name, description, pattern) SELECT * FROM new_concepts")
        con.execute("DELETE FROM concept_scores WHERE (model_id, concept) IN "
                    "(SELECT DISTINCT model_id, concept FROM new_scores)")
        con.execute("INSERT INTO concept_scores BY NAME SELECT * FROM new_scores")
        if explained is not None:
            con.register("new_explanations", explained)
            con.execute("DELETE FROM explanations WHERE model_id IN (SELECT DISTINCT model_id FROM new_scores)")
            con.execute("INSERT INTO explanations BY NAME SELECT * FROM new_explanations")
            con.unregister("new_explanations")
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
        SELECT s.model_id, s.layer, s.neuron, s.concept, s.top_share AS score, s.top_low, s.top_high, s.sample_share,
               s.base_rate, s.n_top, c.label AS current, c.status AS current_status, c.author AS current_author,
               c.score AS current_score
        FROM best_concepts s
        LEFT JOIN (SELECT * FROM current_labels WHERE source = 'auto') c USING (model_id, layer, neuron)
        WHERE s.model_id IN ({', '.join('?' * len(models))})
        ORDER BY s.model_id, s.layer, s.neuron""", models).df()  # label ids in neuron order, run after run
    withdrawn = (best.current_status == "rejected") & (best.current_author == AUTHOR)
    live = best.current.notna() & ~withdrawn
    above = best.score >= threshold
    ours = live & (best.current_author == AUTHOR)
    rescored = ours & (best.current_status == "suggested") & ((best.score - best.current_score).abs() > 1e-6)
    suggest = best[above & (best.current.isna() | withdrawn | (best.current != best.concept) | rescored)]
    withdraw = best[~above & ours]
    rows = [
        suggest.assign(label=suggest.concept, status="suggested",
                       note=[note(r) for r in suggest.itertuples()]),
        withdraw.assign(label=withdraw.current, status="rejected",
                        note=f"withdrawn: best score below {threshold:g}"),
    ]
    return pd.concat(rows, ignore_index=True)[["model_id", "layer", "neuron", "label", "note", "score", "status"]]


def note(best) -> str:
    """What an automatic label's note says: the rule's share with its interval, and the
    measure over the activation sample against the concept's base rate."""
    text = f"top-{best.n_top} share {best.score:.2f} [{best.top_low:.2f}, {best.top_high:.2f}]"
    if best.sample_share == best.sample_share:  # not NaN
        text += f"; sample share {best.sample_share:.2f} (base rate {best.base_rate:.3f})"
    return text
