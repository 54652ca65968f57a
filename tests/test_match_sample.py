"""The match sample (index.engine.match_sample) and `solu match` reading it: the tokens are
chosen by the rule and are the same in both models, the stored values are what the
activations table records without its budget, and matches do not move when the budget
binds."""
from __future__ import annotations

import pickle

import duckdb
import numpy as np
import pytest
import torch

from helpers.db_files import frame, query
from index.build import build_index
from index.engine.config import IndexConfig
from index.engine.match_sample import FULL, MatchRows, chosen, match_cut
from index.measure.matches import dense_block, neuron_list, sample_tokens
from index.measure.records import position_key
from solu.cli import main

CFG = dict(tokens=2000, sample_tokens=2000, top_k=5, bands=3, per_band=2, random=3, device="cpu")


def build(db, checkpoints, corpus, **flags):
    build_index([checkpoints["gelu"], checkpoints["solu_ln"]], IndexConfig(dataset=str(corpus), **{**CFG, **flags}),
                db, progress=False, name=None)
    return tuple(query(db, "SELECT model_id FROM models WHERE act_fn = ?", [a])[0][0] for a in ("gelu", "solu_ln"))


def matches_of(db, a, b):
    assert main(["match", "--db", str(db), a, b, "--top", "3", "--no-progress"]) == 0
    return frame(db, "SELECT model_id, layer, neuron, rank, other_layer, other_neuron, r, tokens, method "
                     "FROM neuron_matches ORDER BY model_id, layer, neuron, rank")


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tiny_checkpoints, tiny_corpus):
    """Both tiny models indexed with the match sample as large as the activation sample."""
    db = tmp_path_factory.mktemp("whole") / "whole.duckdb"
    return db, *build(db, tiny_checkpoints, tiny_corpus)


def test_the_match_sample_holds_what_the_activations_table_records(whole):
    """With --match-tokens above the sample, every sample token is a match token, and each
    primary neuron's stored values are its activations table rows (float16), 0 elsewhere:
    the budget binds on nothing this small. (The limit is compared in float16: a value
    within its rounding of the limit may fall on the other side.)"""
    db, gelu, solu = whole
    con = duckdb.connect(str(db), read_only=True)
    for model in (gelu, solu):
        tokens = sample_tokens(con, model)
        index = con.execute("SELECT match_index FROM tokens WHERE model_id = ? ORDER BY doc_id, pos",
                            [model]).fetchnumpy()["match_index"]
        assert list(index) == list(range(len(tokens)))
        keys = position_key(tokens.doc_id.to_numpy(np.int64), tokens.pos.to_numpy(np.int64))
        neurons = neuron_list(con, model)
        for layer in sorted(set(neurons.layer)):
            part = neurons[neurons.layer == layer]
            want = dense_block(con, model, part, keys)
            rows = con.execute("SELECT neuron, acts FROM match_sample WHERE model_id = ? AND layer = ? ORDER BY neuron",
                               [model, int(layer)]).fetchall()
            assert [n for n, _ in rows] == part.neuron.tolist()
            got = np.stack([np.frombuffer(a, "<f2") for _, a in rows], axis=1).astype(np.float32)
            limit = con.execute("SELECT n.max_act * r.activation_threshold FROM neurons n JOIN index_runs r "
                                "USING (model_id) WHERE model_id = ? AND layer = ? AND is_primary ORDER BY neuron",
                                [model, int(layer)]).fetchnumpy()
            limit = next(iter(limit.values())).astype(np.float32)
            edge = np.isclose(np.maximum(got, want), limit, rtol=2e-3)
            assert (got != 0).sum() > 0 and ((got != 0) == (want != 0))[~edge].all() and edge.mean() < 1e-3
            np.testing.assert_allclose(got[~edge], want[~edge], rtol=2e-3, atol=1e-6)
    sites = con.execute("SELECT DISTINCT site FROM match_sample WHERE model_id = ?", [solu]).fetchall()
    primary = con.execute("SELECT DISTINCT site FROM neurons WHERE model_id = ? AND is_primary", [solu]).fetchall()
    con.close()
    assert len(primary) == 1 and sites == primary  # SoLU's primary site only, of its two


def test_match_reads_the_match_sample_and_agrees_with_the_activations_table(whole, tmp_path):
    """The same r as the activations-table reading over the whole sample (within 0.005: float16),
    and the same best matches where the best is not a near tie."""
    import shutil

    db, gelu, solu = whole
    got = matches_of(db, gelu, solu)
    old = tmp_path / "old.duckdb"
    shutil.copy(db, old)
    con = duckdb.connect(str(old))
    con.execute("DELETE FROM match_sample")  # as a database indexed before the match sample
    con.close()
    want = matches_of(old, gelu, solu)
    assert set(got.method) == {"match_sample"} and set(want.method) == {"activations"}
    assert (got.tokens == want.tokens).all()
    np.testing.assert_allclose(got.r, want.r, atol=5e-3)  # float16, and a value at the limit on either side
    best, ref = got[got["rank"] == 1].reset_index(), want[want["rank"] == 1].reset_index()
    second = want[want["rank"] == 2].r.to_numpy()
    clear = ref.r.to_numpy() - second > 5e-3
    assert clear.sum() > len(ref) // 2
    assert (best.other_neuron[clear] == ref.other_neuron[clear]).all()
    assert (best.other_layer[clear] == ref.other_layer[clear]).all()


def test_matches_do_not_move_when_the_budget_binds(whole, tmp_path, tiny_checkpoints, tiny_corpus):
    """The activations table cut to one row a neuron: the table changes, the matches do not."""
    db, gelu, solu = whole
    small = tmp_path / "budget.duckdb"
    build(small, tiny_checkpoints, tiny_corpus, sample_rows=1)
    con = duckdb.connect(str(small), read_only=True)
    per_neuron = con.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM activations "
                             "GROUP BY model_id, layer, neuron, site)").fetchone()[0]
    bound = con.execute("SELECT count(*) FROM neurons n JOIN index_runs USING (model_id) "
                        "WHERE n.sample_cut > activation_threshold * n.max_act").fetchone()[0]
    con.close()
    assert per_neuron == 1 and bound > 0
    got, want = matches_of(small, gelu, solu), matches_of(db, gelu, solu)
    assert got.drop(columns="r").equals(want.drop(columns="r"))
    np.testing.assert_allclose(got.r, want.r, rtol=1e-6, atol=1e-7)


def test_match_tokens_are_chosen_one_by_one_the_same_in_both_models(tmp_path, tiny_checkpoints, tiny_corpus):
    """--match-tokens 300 of a 2,000-token sample: about 300 tokens, by the hash rule, the
    same in both models, a subset of --match-tokens 600's; a model of each matches on the
    smaller set."""
    db = tmp_path / "m.duckdb"
    gelu, solu = build(db, tiny_checkpoints, tiny_corpus, match_tokens=300)
    picked = {m: frame(db, "SELECT doc_id, pos FROM tokens WHERE model_id = ? AND match_index IS NOT NULL "
                           "ORDER BY match_index", [m]) for m in (gelu, solu)}
    every = frame(db, "SELECT doc_id, pos FROM tokens WHERE model_id = ? ORDER BY doc_id, pos", [gelu])
    assert picked[gelu].equals(picked[solu])
    assert 200 <= len(picked[gelu]) <= 400
    rule = chosen(every.doc_id.to_numpy(), every.pos.to_numpy(), 0, match_cut(300, 2000, 2000))
    assert picked[gelu].equals(every[rule].reset_index(drop=True))
    assert len(set(picked[gelu].doc_id)) > 1  # spread over the sample, not one document
    # a larger cut holds the smaller's tokens; matching across the two reads the smaller set
    build_index([tiny_checkpoints["gelu"]], IndexConfig(dataset=str(tiny_corpus), **CFG, match_tokens=600), db,
                progress=False, name="gelu-600")
    more = frame(db, "SELECT doc_id, pos FROM tokens WHERE model_id = 'gelu-600' AND match_index IS NOT NULL")
    assert set(map(tuple, picked[gelu].values)) < set(map(tuple, more.values))
    got = matches_of(db, "gelu-600", solu)
    assert (got.tokens == len(picked[gelu])).all() and set(got.method) == {"match_sample"}


def test_match_cut():
    assert match_cut(8192, 65536, 10**6) == FULL // 8
    assert match_cut(8192, 65536, 4096) == FULL  # the sample is the run's 4,096 tokens: all of them
    assert match_cut(100, 10**6, 10**6) == 100 * FULL // 10**6


def test_match_rows_merge_and_travel(tmp_path, monkeypatch):
    """Two shards' match rows merged, and pickled on the way to the driver, read back as
    the rows they were given, site by site."""
    monkeypatch.setenv("SOLU_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    shards, want = [], {0: [], 1: []}
    for shard in range(2):
        rows = MatchRows(FULL, 0, 2, 4)
        for batch in range(3):
            mask = rows.choose(np.full(5, shard * 10 + batch), np.arange(5))
            for site in range(2):
                x = torch.from_numpy(rng.normal(size=(int(mask.sum()), 4)).astype(np.float32))
                rows.add(site, x)
                want[site].append(x.numpy().astype(np.float16))
        shards.append(pickle.loads(pickle.dumps(rows)) if shard else rows)
    merged = shards[0].merge(shards[1])
    assert merged.n == 30
    for site in range(2):
        np.testing.assert_array_equal(merged.site(site), np.concatenate(want[site]))
    doc, pos = merged.positions()
    assert list(doc[merged.order()][:5]) == [0] * 5 and list(doc[merged.order()][-5:]) == [12] * 5


def test_match_sample_rows_written_in_blocks_are_the_same(whole, tmp_path, tiny_checkpoints, tiny_corpus, monkeypatch):
    """The match_sample table built 7 neurons at a time equals the one built in one block."""
    from index.store import rows

    db = whole[0]
    monkeypatch.setattr(rows, "MATCH_WRITE_NEURONS", 7)
    blocks = tmp_path / "blocks.duckdb"
    build(blocks, tiny_checkpoints, tiny_corpus)
    sql = "SELECT model_id, layer, neuron, site, acts FROM match_sample ORDER BY ALL"
    want, got = query(db, sql), query(blocks, sql)
    assert len(want) == 2 * 2 * 64 and got == want
