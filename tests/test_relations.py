"""Neuron relations: connections by virtual weight, SoLU's LayerNorm agreement, and the
same neuron in another model (solu match)."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest
import torch

from index.build import build_index
from index.engine.config import IndexConfig
from solu.sources import load_model, resolve


@pytest.fixture(scope="module")
def related(tmp_path_factory, tiny_checkpoints, tiny_corpus):
    db = tmp_path_factory.mktemp("rel") / "rel.duckdb"
    cfg = IndexConfig(dataset=str(tiny_corpus), tokens=3000, sample_tokens=3000, device="cpu", connection_k=4)
    build_index([tiny_checkpoints["gelu"], tiny_checkpoints["solu_ln"]], cfg, db, progress=False)
    return db


def brute_virtual(model, source: int, target: int) -> np.ndarray:
    """W_out[source] centred, times ln2's weight of the target block, into W_in[target], by loops
    over the state dict's own tensors (nn.Linear weights are [out, in])."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    w_out = sd[f"blocks.{source}.mlp.out.weight"].T  # [d_mlp, d_model]
    w_in = sd[f"blocks.{target}.mlp.in.weight"].T    # [d_model, d_mlp]
    ln = sd[f"blocks.{target}.ln2.weight"]
    out = np.zeros((w_out.shape[0], w_in.shape[1]))
    for i in range(w_out.shape[0]):
        row = (w_out[i] - w_out[i].mean()) * ln
        out[i] = (row[:, None] * w_in).sum(0).numpy()
    return out


def test_connections_of_three_layers_merge_every_later_and_earlier_layer():
    """A 3-layer model: layer 0's downstream partners come from layers 1 and 2 together,
    layer 2's upstream ones from layers 0 and 1, each the top k of the joined products."""
    from types import SimpleNamespace

    from index.engine.virtual_weights import connections
    from solu.config import ModelConfig
    from solu.model import build_model

    cfg = ModelConfig(act_fn="gelu", n_layers=3, d_model=16, d_mlp=12, n_heads=2, n_ctx=8, d_vocab=300)
    model = build_model(cfg, seed=3)
    rows = connections(SimpleNamespace(model=model, model_cfg=cfg), 5, [0, 1, 2])
    v = {(l, m): brute_virtual(model, l, m) for l, m in ((0, 1), (0, 2), (1, 2))}
    for layer, direction, joined, others in (
            (0, "downstream", np.concatenate([v[0, 1], v[0, 2]], 1), [1, 2]),
            (2, "upstream", np.concatenate([v[0, 2].T, v[1, 2].T], 1), [0, 1])):
        for neuron in range(12):
            mine = ((rows["layer"] == layer) & (rows["neuron"] == neuron) & (rows["direction"] == direction))
            for sign, order in (("pos", np.argsort(-joined[neuron])), ("neg", np.argsort(joined[neuron]))):
                sel = mine & (rows["sign"] == sign)
                want = order[:5]
                assert rows["other_layer"][sel].tolist() == [others[i // 12] for i in want]
                assert rows["other_neuron"][sel].tolist() == [i % 12 for i in want]
                assert np.allclose(rows["weight"][sel], joined[neuron][want], rtol=1e-4, atol=1e-6)


def test_connections_are_the_top_virtual_weights(related, tiny_checkpoints):
    model = load_model(resolve(str(tiny_checkpoints["gelu"])), torch.device("cpu")).model
    v = brute_virtual(model, 0, 1)
    con = duckdb.connect(str(related), read_only=True)
    model_id = con.execute("SELECT model_id FROM models WHERE act_fn = 'gelu'").fetchone()[0]
    rows = con.execute("SELECT layer, neuron, direction, sign, rank, other_layer, other_neuron, weight "
                       "FROM connections WHERE model_id = ? ORDER BY ALL", [model_id]).df()
    con.close()
    d_mlp = v.shape[0]
    assert len(rows) == 2 * d_mlp * 2 * 4  # two layers, one direction each, pos and neg, k = 4
    for neuron in (0, 7, d_mlp - 1):
        down = rows[(rows.layer == 0) & (rows.neuron == neuron) & (rows.direction == "downstream")]
        pos = down[down.sign == "pos"].sort_values("rank")
        assert pos.other_neuron.tolist() == list(np.argsort(-v[neuron])[:4])
        assert np.allclose(pos.weight, np.sort(v[neuron])[::-1][:4], rtol=1e-4, atol=1e-6)
        neg = down[down.sign == "neg"].sort_values("rank")
        assert neg.other_neuron.tolist() == list(np.argsort(v[neuron])[:4])
        up = rows[(rows.layer == 1) & (rows.neuron == neuron) & (rows.direction == "upstream") & (rows.sign == "pos")]
        assert up.sort_values("rank").other_neuron.tolist() == list(np.argsort(-v[:, neuron])[:4])
        assert (up.other_layer == 0).all()


def test_ln_agreement_compares_the_two_top_lists(related):
    con = duckdb.connect(str(related), read_only=True)
    agree = con.execute("SELECT * FROM ln_agreement ORDER BY layer, neuron").df()
    pre = con.execute("SELECT layer, neuron, list(doc_id || ':' || segment) AS units FROM examples "
                      "WHERE kind = 'top' AND site = 'pre_ln' GROUP BY ALL").df().set_index(["layer", "neuron"])
    post = con.execute("SELECT layer, neuron, list(doc_id || ':' || segment) AS units FROM examples "
                       "WHERE kind = 'top' AND site = 'post_ln' GROUP BY ALL").df().set_index(["layer", "neuron"])
    con.close()
    assert len(agree) == len(pre) > 0 and agree.model_id.nunique() == 1  # SoLU only: GELU has one site
    for r in agree.itertuples():
        a, b = set(pre.units[(r.layer, r.neuron)]), set(post.units[(r.layer, r.neuron)])
        assert r.overlap == pytest.approx(len(a & b) / len(a)) and r.top_k == len(a)
    assert agree.overlap.between(0, 1).all() and agree.overlap.max() > 0
    con = duckdb.connect(str(related), read_only=True)
    ranks = con.execute("SELECT layer, neuron, site, doc_id || ':' || segment AS unit, rank FROM examples "
                        "WHERE kind = 'top' AND site IN ('pre_ln', 'post_ln')").df()
    con.close()
    r = agree.iloc[0]
    mine = ranks[(ranks.layer == r.layer) & (ranks.neuron == r.neuron)]
    pre, post = (dict(zip(mine[mine.site == s].unit, mine[mine.site == s]["rank"])) for s in ("pre_ln", "post_ln"))
    union = sorted(set(pre) | set(post))  # Spearman over both lists, a rank missing from one counted as K + 1
    x = [pre.get(u, r.top_k + 1) for u in union]
    y = [post.get(u, r.top_k + 1) for u in union]
    assert r.rank_corr == pytest.approx(np.corrcoef(x, y)[0, 1])


def permuted_pair(path, shuffle_tokens: bool = False):
    """Model 'orig' from the measure fixture and 'copy', the same activations with its
    neurons permuted within each layer (and, if asked, different tokens)."""
    import random

    from helpers.measure_db import dense_activations, documents, insert_model
    from index.store.schema import migrate

    con = duckdb.connect(str(path))
    migrate(con)
    docs = documents(40, random.Random(0))
    layers = [dense_activations(docs, 8, np.random.default_rng(layer)) for layer in range(2)]
    perm = np.random.default_rng(5).permutation(8)
    insert_model(con, "orig", "gelu", docs, layers, top_k=5)
    copy_docs = [[t.upper() for t in d] for d in docs] if shuffle_tokens else docs
    insert_model(con, "copy", "gelu", copy_docs, [[a[perm] for a in layer] for layer in layers], top_k=5)
    con.close()
    return perm


@pytest.mark.parametrize("block_neurons", [None, 3])
def test_a_permuted_copy_is_matched_neuron_for_neuron(tmp_path, capsys, monkeypatch, block_neurons):
    """In one block, and in blocks of 3 neurons (b's read again for each of a's blocks, the
    running top-k merged across blocks)."""
    from index.measure import matches
    from solu.cli import main

    db = tmp_path / "perm.duckdb"
    perm = permuted_pair(db)
    if block_neurons:
        con = duckdb.connect(str(db), read_only=True)
        tokens = con.execute("SELECT count(*) FROM tokens WHERE model_id = 'orig'").fetchone()[0]
        con.close()
        monkeypatch.setattr(matches, "BLOCK_BYTES", 4 * tokens * block_neurons)
        monkeypatch.setattr(matches, "CACHE_BYTES", 0)
    assert main(["match", "--db", str(db), "orig", "copy", "--no-progress"]) == 0
    assert "orig L" in capsys.readouterr().out
    con = duckdb.connect(str(db), read_only=True)
    best = con.execute("SELECT model_id, layer, neuron, other_layer, other_neuron, r FROM neuron_matches "
                       "WHERE rank = 1 ORDER BY ALL").df()
    con.close()
    orig = best[best.model_id == "orig"]
    assert len(orig) == 16 and (orig.layer == orig.other_layer).all()
    # copy neuron j holds orig neuron perm[j]: orig neuron perm[j]'s best match is copy neuron j
    assert all(perm[r.other_neuron] == r.neuron for r in orig.itertuples())
    assert np.allclose(orig.r, 1.0)
    back = best[best.model_id == "copy"]
    assert all(perm[r.neuron] == r.other_neuron for r in back.itertuples())


def test_match_refuses_models_whose_tokens_differ(tmp_path, capsys):
    from solu.cli import main

    db = tmp_path / "diff.duckdb"
    permuted_pair(db, shuffle_tokens=True)
    assert main(["match", "--db", str(db), "orig", "copy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different tokenizers" in err[0]
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM neuron_matches").fetchone()[0] == 0
    con.close()


def correlated_pair(path):
    """Models 'a' and 'b' (2 layers x 8 neurons) on the same documents: b's neurons are
    noisy mixes of a's, b's neuron 7 of layer 1 never fires (a dead neuron); the dense
    [tokens, neurons] activations the activations table holds (0 where unrecorded)."""
    import random

    from helpers.measure_db import THRESHOLD, dense_activations, documents, insert_model
    from index.store.schema import migrate

    con = duckdb.connect(str(path))
    migrate(con)
    docs = documents(40, random.Random(1))
    rng = np.random.default_rng(2)
    a = [dense_activations(docs, 8, np.random.default_rng(layer)) for layer in range(2)]
    mix = rng.normal(size=(2, 8, 8))
    b = [[np.maximum(mix[layer] @ x, 0).astype(np.float32) + dense_activations([d], 8, rng)[0]
          for x, d in zip(a[layer], docs)] for layer in range(2)]
    for x in b[1]:
        x[7] = 0.0
    insert_model(con, "a", "gelu", docs, a, top_k=5)
    insert_model(con, "b", "gelu", docs, b, top_k=5)
    con.close()
    dense = [np.concatenate([np.concatenate(layer, axis=1) for layer in layers], axis=0).T for layers in (a, b)]
    return [np.where(x > THRESHOLD, x, 0.0).astype(np.float64) for x in dense]  # [tokens, 16] each


@pytest.mark.parametrize("block_neurons, cache_blocks", [(None, None), (3, None), (3, 0), (3, 2)])
def test_matches_are_the_top_correlations_in_every_blocking(tmp_path, monkeypatch, block_neurons, cache_blocks):
    """Pearson r of the dense activations by brute force, against `solu match` in one block;
    in blocks of 3 neurons with b's blocks kept; read again for each of a's blocks (no
    cache); and a's blocks held two at a time (b's do not fit)."""
    from index.measure import matches
    from solu.cli import main

    db = tmp_path / "corr.duckdb"
    xa, xb = correlated_pair(db)
    tokens = len(xa)
    if block_neurons:
        monkeypatch.setattr(matches, "BLOCK_BYTES", 4 * tokens * block_neurons)
    if cache_blocks is not None:
        monkeypatch.setattr(matches, "CACHE_BYTES", 4 * tokens * block_neurons * cache_blocks)
    assert main(["match", "--db", str(db), "a", "b", "--top", "3", "--no-progress"]) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(xa.T, xb.T)[:16, 16:]
    r[:, 15] = 0.0  # b's dead neuron: correlates 0 with every other
    con = duckdb.connect(str(db), read_only=True)
    got = con.execute("SELECT model_id, layer * 8 + neuron AS i, other_layer * 8 + other_neuron AS j, rank, r, tokens "
                      "FROM neuron_matches ORDER BY model_id, i, rank").df()
    con.close()
    assert len(got) == 2 * 16 * 3 and (got.tokens == tokens).all()
    for model_id, scores in (("a", r), ("b", r.T)):
        mine = got[got.model_id == model_id]
        for i in range(16):
            rows = mine[mine.i == i]
            want = np.sort(scores[i])[::-1][:3]
            assert np.allclose(rows.r, want, atol=1e-5), (model_id, i)
            assert np.allclose(scores[i][rows.j.to_numpy()], rows.r, atol=1e-5)  # each r is that pair's


@pytest.fixture(scope="module")
def ablated(tmp_path_factory, tiny_checkpoints, tiny_corpus):
    db = tmp_path_factory.mktemp("abl") / "abl.duckdb"
    cfg = IndexConfig(dataset=str(tiny_corpus), tokens=2000, sample_tokens=2000, device="cpu", ablation=True,
                      layers="1")
    build_index([tiny_checkpoints["solu_ln"]], cfg, db, progress=False, name="solu")
    return db


@pytest.mark.parametrize("neuron, rank", [(0, 1), (5, 3), (17, 2)])
def test_ablation_equals_running_the_model_with_the_neuron_zeroed(ablated, tiny_checkpoints, neuron, rank):
    import torch.nn.functional as F

    loaded = load_model(resolve(str(tiny_checkpoints["solu_ln"])), torch.device("cpu"))
    con = duckdb.connect(str(ablated), read_only=True)
    rows = con.execute("SELECT window_pos, token_id, loss, delta_zero, delta_mean FROM ablations "
                       "WHERE layer = 1 AND neuron = ? AND rank = ? ORDER BY window_pos", [neuron, rank]).df()
    shown = con.execute("SELECT tokens FROM examples WHERE layer = 1 AND neuron = ? AND rank = ? AND kind = 'top' "
                        "AND site = 'pre_ln'", [neuron, rank]).fetchone()[0]
    mean = con.execute("SELECT mean_act FROM neurons WHERE layer = 1 AND neuron = ? AND site = 'post_ln'",
                       [neuron]).fetchone()[0]
    con.close()
    assert len(rows) and (np.diff(rows.window_pos) == 1).all()
    # the stored tokens are the example's own window (its last n_ctx - 1 tokens where it is longer)
    assert [loaded.tokenizer.decode([t]) for t in rows.token_id] == list(shown)[rows.window_pos.iloc[0]:]
    ids = torch.tensor([[loaded.bos_id, *rows.token_id.tolist()]])

    def run(value=None):
        def set_neuron(x, hook):
            x = x.clone()
            x[:, :, neuron] = value
            return x
        hooks = [("blocks.1.mlp.hook_post", set_neuron)] if value is not None else []
        with torch.inference_mode(), loaded.model.hooks(fwd_hooks=hooks):
            logits = loaded.model(ids)
        return F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none").numpy()

    clean, zero, held = run(), run(0.0), run(mean)
    assert np.allclose(rows.loss, clean, atol=1e-4)
    assert np.allclose(rows.delta_zero, zero - clean, atol=1e-4)
    assert np.allclose(rows.delta_mean, held - clean, atol=1e-4)
    assert np.abs(rows.delta_zero).max() > 0  # the ablation changes something


def test_the_neuron_page_shows_every_relation(tmp_path, tiny_checkpoints, tiny_corpus, monkeypatch):
    from helpers.explorer_fixtures import app_at, html_text, no_exception
    from solu.cli import main

    db = tmp_path / "page.duckdb"
    cfg = IndexConfig(dataset=str(tiny_corpus), tokens=2000, sample_tokens=2000, device="cpu", ablation=True)
    build_index([tiny_checkpoints["gelu"], tiny_checkpoints["solu_ln"]], cfg, db, progress=False,
                name=None)
    con = duckdb.connect(str(db), read_only=True)
    gelu, solu = (con.execute("SELECT model_id FROM models WHERE act_fn = ?", [a]).fetchone()[0]
                  for a in ("gelu", "solu_ln"))
    con.close()
    assert main(["match", "--db", str(db), gelu, solu, "--no-progress"]) == 0
    monkeypatch.setenv("SOLU_DB", str(db))
    at = app_at("neuron", model=solu, layer=0, neuron=3, site="pre_ln")
    no_exception(at)
    headers = [h.value for h in at.subheader]
    assert {"Connections", "Matches in other models", "LayerNorm caveat", "Ablation effect"} <= set(headers)
    text = "\n".join(m.value for m in at.markdown)
    assert "**downstream**" in text and "L1/N" in text and "r = " in text and f"neuron?model={gelu}" in text
    assert "Δloss" in html_text(at)
    assert any("top examples before SoLU's LayerNorm" in c.value for c in at.caption)
    # the ablation was measured on the primary site's windows: the post_ln page does not draw it over its own
    at = app_at("neuron", model=solu, layer=0, neuron=3, site="post_ln")
    no_exception(at)
    assert "Ablation effect" not in [h.value for h in at.subheader]
    assert any("primary site" in c.value for c in at.caption) and "Δloss" not in html_text(at)


def test_compare_summarises_relations(related, tmp_path):
    from solu.cli import main

    con = duckdb.connect(str(related), read_only=True)
    gelu, solu = (con.execute("SELECT model_id FROM models WHERE act_fn = ?", [a]).fetchone()[0]
                  for a in ("gelu", "solu_ln"))
    con.close()
    assert main(["match", "--db", str(related), gelu, solu, "--no-progress"]) == 0
    assert main(["compare", "--db", str(related), gelu, solu, "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    section = text[text.index("## Neuron relations"):text.index("## Labels")]
    assert "median_ln_overlap" in section and f"{solu}: median r" in section
    con = duckdb.connect(str(related), read_only=True)
    overlap = con.execute("SELECT median(overlap) FROM ln_agreement").fetchone()[0]
    con.close()
    assert f"{overlap:.3f}" in section


def test_a_re_index_drops_the_models_matches_both_ways(related, tmp_path, tiny_checkpoints, tiny_corpus):
    import shutil

    from solu.cli import main

    db = tmp_path / "again.duckdb"
    shutil.copy(related, db)
    con = duckdb.connect(str(db), read_only=True)
    gelu, solu = (con.execute("SELECT model_id FROM models WHERE act_fn = ?", [a]).fetchone()[0]
                  for a in ("gelu", "solu_ln"))
    con.close()
    assert main(["match", "--db", str(db), gelu, solu, "--no-progress"]) == 0
    cfg = IndexConfig(dataset=str(tiny_corpus), tokens=2000, sample_tokens=2000, device="cpu")
    build_index([tiny_checkpoints["gelu"]], cfg, db, progress=False)
    con = duckdb.connect(str(db), read_only=True)
    left = con.execute("SELECT count(*) FROM neuron_matches WHERE model_id = ? OR other_model = ?",
                       [gelu, gelu]).fetchone()[0]
    con.close()
    assert left == 0
