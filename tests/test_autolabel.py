"""Concept scores: the top-example share with its interval (the paper's rule), the
sample share and the AUROC from sparse activations against brute force, the stored
scores and the automatic labels (suggest, keep, withdraw)."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest

from index.measure.autolabel import (RULE_SHARE, auroc_by_group, autolabel, occurrence_auroc, resolve_concepts,
                                     sample_share_matrix)
from index.measure.intervals import wilson
from index.measure.concepts import CONCEPTS, detect
from index.store.labels import append_label
from helpers.measure_db import THRESHOLD, build_measure_db, dense_for_model
from solu.errors import UserError


def brute_auroc(x: np.ndarray, positive: np.ndarray) -> float:
    p, n = x[positive], x[~positive]
    return float(((p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()) / (len(p) * len(n)))


def test_auroc_by_group_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    n_tokens, n_groups, n_concepts = 300, 6, 4
    dense = rng.normal(size=(n_groups, n_tokens)).round(1)  # rounding makes ties
    masks = rng.random((n_tokens, n_concepts)) < 0.3
    masks[:, 3] = False  # a concept with no tokens
    group, idx = np.nonzero(dense > 0.4)
    got = auroc_by_group(group, dense[group, idx], masks[idx], n_groups, n_tokens, masks.sum(axis=0))
    censored = np.where(dense > 0.4, dense, -np.inf)  # what the sparse sample knows
    for g in range(n_groups):
        for c in range(3):
            assert got[g, c] == pytest.approx(brute_auroc(censored[g], masks[:, c]), abs=1e-12)
    assert np.isnan(got[:, 3]).all()


def brute_units(mask: np.ndarray, doc_start: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
    """Occurrences (runs of concept tokens within a document) and the other text cut
    into chunks of the median occurrence length, by plain loops."""
    runs: list[tuple[bool, list[int]]] = []
    for t in range(len(mask)):
        if runs and runs[-1][0] == mask[t] and not doc_start[t]:
            runs[-1][1].append(t)
        else:
            runs.append((bool(mask[t]), [t]))
    positive = [r for m, r in runs if m]
    size = max(1, int(np.median([len(r) for r in positive])))
    negative = [r[i:i + size] for m, r in runs if not m for i in range(0, len(r), size)]
    return positive, negative


def brute_occurrence_auroc(x: np.ndarray, mask: np.ndarray, doc_start: np.ndarray) -> float:
    positive, negative = brute_units(mask, doc_start)
    p = np.array([x[r].max() for r in positive])
    n = np.array([x[r].max() for r in negative])
    return float(((p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()) / (len(p) * len(n)))


def test_occurrence_auroc_matches_brute_force():
    rng = np.random.default_rng(1)
    n_tokens, n_groups = 500, 6
    dense = rng.normal(size=(n_groups, n_tokens)).round(1)
    mask = rng.random(n_tokens) < 0.35
    doc_start = np.zeros(n_tokens, dtype=bool)
    doc_start[::37] = True
    mask[36:39] = True  # a run across a document boundary counts as two occurrences
    group, token = np.nonzero(dense > 0.4)
    got = occurrence_auroc(group, token, dense[group, token], mask, doc_start, n_groups)
    censored = np.where(dense > 0.4, dense, -np.inf)
    for g in range(n_groups):
        assert got[g] == pytest.approx(brute_occurrence_auroc(censored[g], mask, doc_start), abs=1e-12)


@pytest.mark.parametrize("fill", [False, True])
def test_occurrence_auroc_without_an_occurrence_or_without_other_text_is_nan(fill):
    """A concept absent from the sample (or everywhere in it) has no AUROC: NaN, what
    auroc_by_group gives without positive (or negative) units, now without computing it."""
    rng = np.random.default_rng(2)
    dense = rng.normal(size=(3, 50))
    group, token = np.nonzero(dense > 0.4)
    mask, doc_start = np.full(50, fill), np.arange(50) % 10 == 0
    got = occurrence_auroc(group, token, dense[group, token], mask, doc_start, 3)
    assert got.shape == (3,) and np.isnan(got).all()


def test_occurrence_auroc_rewards_firing_once_per_occurrence():
    # 3 occurrences of 3 tokens each; the neuron fires on the last token of each only
    mask = np.array([0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0], dtype=bool)
    token = np.array([3, 8, 12])
    got = occurrence_auroc(np.zeros(3, int), token, np.ones(3), mask, np.arange(14) == 0, 1)
    assert got[0] == 1.0
    per_token = auroc_by_group(np.zeros(3, int), np.ones(3), mask[token][:, None], 1, 14, np.array([mask.sum()]))
    assert per_token[0, 0] < 0.7


def test_occurrence_auroc_of_a_random_neuron_is_near_half():
    # long occurrences would favour any neuron if they were compared with single tokens
    rng = np.random.default_rng(0)
    n_tokens, n_groups = 20_000, 40
    mask = np.zeros(n_tokens, dtype=bool)
    for start in rng.choice(n_tokens - 12, 300, replace=False):
        mask[start:start + 10] = True
    doc_start = np.arange(n_tokens) % 500 == 0
    dense = rng.random((n_groups, n_tokens))
    group, token = np.nonzero(dense > 0.85)
    got = occurrence_auroc(group, token, dense[group, token], mask, doc_start, n_groups)
    assert abs(got.mean() - 0.5) < 0.05


def test_auroc_edges():
    # a neuron with nothing recorded: every token ties, 0.5
    assert auroc_by_group(np.array([], int), np.array([]), np.zeros((0, 1), bool), 1, 10, np.array([4]))[0, 0] == 0.5
    # recorded only on the concept's tokens: 1.0
    got = auroc_by_group(np.array([0, 0]), np.array([1.0, 2.0]), np.array([[True], [True]]), 1, 10, np.array([2]))
    assert got[0, 0] == 1.0
    with pytest.raises(ValueError):
        auroc_by_group(np.zeros(3, int), np.ones(3), np.ones((3, 1), bool), 1, 2, np.array([1]))


def test_sample_share_matrix_matches_a_loop():
    rng = np.random.default_rng(2)
    n_tokens, n_groups = 200, 5
    masks = rng.random((n_tokens, 3)) < 0.3
    group, token = np.nonzero(rng.random((n_groups, n_tokens)) < 0.2)
    acts = rng.uniform(0.2, 3, len(group))
    got = sample_share_matrix(group, token, acts, masks, n_groups + 1)  # the last group records nothing
    for g in range(n_groups):
        mine = group == g
        for c in range(3):
            expected = (acts[mine] * masks[token[mine], c]).sum() / acts[mine].sum()
            assert got[g, c] == pytest.approx(expected, abs=1e-12)
    assert np.isnan(got[n_groups]).all()


@pytest.fixture()
def measure_db(tmp_path):
    return build_measure_db(tmp_path / "m.duckdb", top_k=20)  # the paper rates about 20 examples


def test_autolabel_finds_planted_neurons_and_stores_exact_scores(measure_db):
    summary = autolabel(measure_db)
    con = duckdb.connect(str(measure_db), read_only=True)
    scores = con.execute("SELECT * FROM concept_scores").df()
    labels = con.execute("SELECT * FROM current_labels WHERE source = 'auto'").df()
    best_view = con.execute("SELECT * FROM best_concepts").df()
    examples = con.execute("SELECT model_id, layer, neuron, tokens, acts FROM examples WHERE kind = 'top'").df()
    con.close()
    assert len(scores) == 2 * 2 * 8 * len(CONCEPTS) and "score" not in scores  # it copied top_share
    best = scores.sort_values(["top_share", "sample_share"]).groupby(["model_id", "layer", "neuron"]).tail(1).set_index(
        ["model_id", "layer", "neuron"])
    assert best.concept.to_dict() == best_view.set_index(["model_id", "layer", "neuron"]).concept.to_dict()
    for model in ("gelu-m", "solu-m"):
        for layer in (0, 1):
            assert best.loc[(model, layer, 0), "concept"] == "base64"
            assert best.loc[(model, layer, 1), "concept"] == "people_count"
            for n in (0, 1):
                assert best.loc[(model, layer, n), "top_share"] == 1.0
                assert best.loc[(model, layer, n), "sample_share"] > 0.9
    # random neurons: none passes the rule, and their firings follow each concept at its base rate
    random_neurons = best[best.index.get_level_values("neuron") >= 2]
    assert (random_neurons.top_share < RULE_SHARE).all()
    assert (random_neurons.sample_share - random_neurons.base_rate).abs().max() < 0.1
    # the top share counts the top examples' peaks, by the detector over each window; its interval is Wilson's
    row = scores[(scores.model_id == "gelu-m") & (scores.layer == 1) & (scores.neuron == 5) & (scores.concept == "number")]
    mine = examples[(examples.model_id == "gelu-m") & (examples.layer == 1) & (examples.neuron == 5)]
    hits = sum(bool(detect("number", list(t))[int(np.argmax(a))]) for t, a in zip(mine.tokens, mine.acts))
    assert (row.top_hits.item(), row.n_top.item()) == (hits, len(mine)) and row.top_share.item() == hits / len(mine)
    assert (row.top_low.item(), row.top_high.item()) == pytest.approx(tuple(float(x) for x in wilson(hits, len(mine))))
    # the stored AUROC is the brute-force one over the censored activations
    tokens, acts = dense_for_model(measure_db, "solu-m")
    docs = [list(g.token) for _, g in _token_frames(measure_db, "solu-m")]
    mask = np.concatenate([detect("base64", d) for d in docs])
    doc_start = np.concatenate([np.arange(len(d)) == 0 for d in docs])
    key = {(d, p): i for i, (d, p) in enumerate(zip(tokens.doc_id, tokens.pos))}
    for neuron in (0, 3):
        x = np.full(len(tokens), -np.inf)
        sel = acts[(acts.layer == 1) & (acts.neuron == neuron)]
        x[[key[(d, p)] for d, p in zip(sel.doc_id, sel.pos)]] = sel.act
        stored = scores[(scores.model_id == "solu-m") & (scores.layer == 1) & (scores.neuron == neuron)
                        & (scores.concept == "base64")].auroc.item()
        assert stored == pytest.approx(brute_occurrence_auroc(x, mask, doc_start), abs=1e-9)
    # labels: the planted neurons, and the summary agrees
    assert {(r.model_id, r.layer, r.neuron, r.label) for r in labels.itertuples()} >= {
        ("solu-m", 0, 0, "base64"), ("solu-m", 1, 1, "people_count"), ("gelu-m", 0, 0, "base64")}
    assert (labels.status == "suggested").all() and (labels.author == "autolabel").all()
    assert labels.score.min() >= RULE_SHARE and len(labels) == 8  # the planted neurons only
    row = summary[(summary.model_id == "gelu-m") & (summary.concept == "base64")].iloc[0]
    assert row.best_neuron in ("L0/N0", "L1/N0") and row.neurons_passing == 2


def _token_frames(db, model_id):
    con = duckdb.connect(str(db), read_only=True)
    df = con.execute("SELECT doc_id, pos, token FROM tokens WHERE model_id = ? ORDER BY doc_id, pos", [model_id]).df()
    con.close()
    return df.groupby("doc_id", sort=True)


def _auto_rows(db):
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT model_id, layer, neuron, label, status, author FROM labels "
                       "WHERE source = 'auto' ORDER BY label_id").fetchall()
    con.close()
    return rows


def test_autolabel_rerun_keeps_rejections_and_withdraws(measure_db):
    autolabel(measure_db)
    first = _auto_rows(measure_db)
    autolabel(measure_db)
    assert _auto_rows(measure_db) == first  # nothing changed, nothing appended
    append_label(measure_db, "solu-m", 0, 0, "base64", source="auto", author="ana", status="rejected")
    autolabel(measure_db)
    assert len(_auto_rows(measure_db)) == len(first) + 1  # a person's rejection stands
    con = duckdb.connect(str(measure_db))  # the people counters' top examples now peak on their first token
    con.execute("UPDATE examples SET acts = list_concat([9.0::FLOAT], acts[2:]) WHERE neuron = 1")
    con.close()
    autolabel(measure_db)
    after = _auto_rows(measure_db)
    withdrawn = [r for r in after[len(first) + 1:] if r[4] == "rejected" and r[5] == "autolabel"]
    assert {r[3] for r in withdrawn} == {"people_count"} and len(withdrawn) == 4
    autolabel(measure_db, threshold=0.0)  # with no bar, every neuron's best concept is suggested
    con = duckdb.connect(str(measure_db), read_only=True)
    live = con.execute("SELECT count(*) FROM current_labels WHERE source = 'auto' AND status = 'suggested'").fetchall()
    con.close()
    assert live[0][0] == 2 * 2 * 8 - 1  # all but the one a person rejected


def test_autolabel_user_regex_and_errors(measure_db):
    concepts = resolve_concepts(["base64"], ["cat=\\bcat\\b"])
    summary = autolabel(measure_db, models=["gelu-m"], concepts=concepts)
    assert set(summary.concept) == {"base64", "cat"} and set(summary.model_id) == {"gelu-m"}
    con = duckdb.connect(str(measure_db), read_only=True)
    assert con.execute("SELECT pattern FROM concepts WHERE name = 'cat'").fetchall() == [("\\bcat\\b",)]
    con.close()
    with pytest.raises(UserError, match="not in"):
        autolabel(measure_db, models=["nope"])
    with pytest.raises(UserError, match="between 0 and 1"):
        autolabel(measure_db, threshold=2)
    with pytest.raises(UserError, match="NAME=PATTERN"):
        resolve_concepts(None, ["nopattern"])
    with pytest.raises(UserError, match="repeat"):
        resolve_concepts(["base64", "base64"])


def test_a_costly_user_regex_stops_at_its_time_budget(measure_db, tmp_path, monkeypatch, capsys):
    """A user pattern's matching time in a run is bounded (here to next to nothing), and
    hitting the bound is one line; the database is left as it was."""
    from helpers.db_files import digest
    from index.measure import concepts
    from solu.cli import main

    monkeypatch.setattr(concepts, "REGEX_BUDGET_S", 1e-9)
    db = tmp_path / "m.duckdb"
    db.write_bytes(measure_db.read_bytes())
    before = digest(db)
    code = main(["autolabel", "--db", str(db), "--concepts", "base64", "--regex", "slow=(.*a){400}$"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "spent more than 1e-09s" in err[0] and "'slow'" in err[0], err
    assert digest(db) == before
    monkeypatch.setattr(concepts, "REGEX_BUDGET_S", 60.0)  # the bound, not the pattern, stopped it
    assert main(["autolabel", "--db", str(db), "--concepts", "base64", "--regex", "cheap=\\bcat\\b"]) == 0


def test_measure_db_threshold_is_sparse(measure_db):
    con = duckdb.connect(str(measure_db), read_only=True)
    low, total = con.execute(f"SELECT count(*) FILTER (WHERE act <= {THRESHOLD}), count(*) FROM activations").fetchall()[0]
    n_tokens = con.execute("SELECT count(*) FROM tokens").fetchall()[0][0]
    con.close()
    assert low == 0 and total < 2 * 8 * n_tokens / 2


def test_scores_of_an_earlier_index_run_are_stale(measure_db):
    autolabel(measure_db)
    con = duckdb.connect(str(measure_db))
    con.execute("INSERT INTO index_runs (run_id, model_id, started_at) VALUES ('r2', 'gelu-m', now())")
    current = con.execute("SELECT DISTINCT model_id FROM current_concept_scores").fetchall()
    con.close()
    assert current == [("solu-m",)]  # gelu-m was re-indexed after it was scored
    autolabel(measure_db, models=["gelu-m"])
    con = duckdb.connect(str(measure_db), read_only=True)
    runs = con.execute("SELECT DISTINCT model_id, run_id FROM current_concept_scores ORDER BY 1").fetchall()
    con.close()
    assert runs == [("gelu-m", "r2"), ("solu-m", None)]


def test_pieces_of_one_document_are_detected_apart(tmp_path):
    """Two sampled segments of one document that are not adjacent: a base64 run is not
    made up across the gap, and each piece starts an occurrence of its own."""
    from index.measure.records import read_positions, read_sample
    from index.store.schema import migrate

    con = duckdb.connect(str(tmp_path / "pieces.duckdb"))
    migrate(con)
    tokens = [(0, 0, "x"), (0, 1, " = "), (0, 2, "QUJDREVGR0"), (0, 50, "hJSktMTU5P"), (0, 51, " y")]
    con.executemany("INSERT INTO tokens (model_id, doc_id, pos, token) VALUES ('m', ?, ?, ?)", tokens)
    positions = read_positions(con, "m", [CONCEPTS["base64"]])
    sample = read_sample(con, "m", positions)
    con.close()
    assert sample.starts.tolist() == [True, False, False, True, False]
    assert not positions.bits[sample.row, 0].any()  # 10 characters on each side of the gap: no run of 16
