"""End to end: plant base64 strings and people counts in a corpus, train a small SoLU
model on it, index it, and check that `solu autolabel` finds a neuron for each planted
concept while randomly chosen neurons score low. Trains a real model: a few minutes."""
from __future__ import annotations

import random

import duckdb
import pytest

from helpers.planted_corpus import write_planted_corpus
from solu.cli import main

PLANTED = ("base64", "people_count")


@pytest.fixture(scope="module")
def planted_index(tmp_path_factory):
    from index.build import build_index
    from index.engine.config import IndexConfig
    from solu.config import ModelConfig, TrainConfig
    from solu.train import train

    root = tmp_path_factory.mktemp("planted")
    corpus = write_planted_corpus(root / "planted.jsonl", n_docs=3000, seed=0)
    model = ModelConfig(act_fn="solu_ln", n_layers=1, d_model=64, d_mlp=256, n_heads=4, n_ctx=64, d_vocab=1024)
    training = TrainConfig(dataset=str(corpus), tokens=400_000, batch_size=16, lr=3e-3, warmup_tokens=20_000,
                           eval_tokens=8192, seed=0, device="cpu", checkpoint_every=1000)
    train(model, training, root / "solu-planted")
    db = root / "planted.duckdb"
    build_index([root / "solu-planted"], IndexConfig(dataset=str(corpus), tokens=40_000, device="cpu"), db,
                progress=False)
    return db


def query(db, sql: str):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


@pytest.mark.slow
def test_autolabel_finds_the_planted_neurons(planted_index, capsys):
    assert main(["autolabel", "--db", str(planted_index)]) == 0
    out = capsys.readouterr().out
    scores = query(planted_index, "SELECT * FROM concept_scores")
    labels = query(planted_index, "SELECT * FROM current_labels WHERE source = 'auto' AND status = 'suggested'")
    for concept in PLANTED:
        mine = scores[scores.concept == concept].sort_values(["top_share", "sample_share"], ascending=False)
        best = mine.iloc[0]
        # the paper's rule, and the sample agrees: the neuron's firings are enriched in the concept
        assert best.top_share >= 0.8 and best.sample_share >= 5 * best.base_rate, (concept, best.to_dict())
        assert concept in out
        # autolabel labels that neuron with the concept, and its score
        row = labels[(labels.layer == best.layer) & (labels.neuron == best.neuron)]
        assert row.label.tolist() == [concept] and row.score.iloc[0] == pytest.approx(best.top_share)


@pytest.mark.slow
def test_random_neurons_score_low(planted_index):
    if not len(query(planted_index, "SELECT 1 FROM concept_scores LIMIT 1")):
        assert main(["autolabel", "--db", str(planted_index)]) == 0
    best = query(planted_index, "SELECT layer, neuron, max(top_share) AS best, "
                                "max(top_share) FILTER (WHERE concept = 'base64') AS base64, "
                                "max(top_share) FILTER (WHERE concept = 'people_count') AS people "
                                "FROM concept_scores GROUP BY layer, neuron ORDER BY layer, neuron")
    sample = best.iloc[random.Random(0).sample(range(len(best)), 50)]
    assert sample.base64.mean() < 0.2 and sample.people.mean() < 0.2
    assert (best.base64 >= 0.8).mean() < 0.2 and (best.people >= 0.8).mean() < 0.2  # a few neurons, not most
