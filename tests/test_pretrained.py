"""Pretrained models offline: a SoLU and a GELU model in the legacy TransformerLens layout
in a temporary Hugging Face cache, and a GPT-2 saved as a local directory, each loaded,
indexed, probed, autolabeled and compared through the real code with HF_HUB_OFFLINE=1;
and every way a model spec can be wrong, as one line and exit code 2."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.pretrained_models import gpt2_dir, mixtral_dir, tl_legacy_repo, tl_state_dict, tokenizer_repo, TL_SHAPE
from solu.cli import main
from helpers.db_files import query

TOKENIZER = "NeelNanda/gpt-neox-tokenizer-digits"
SOLU, GELU = "NeelNanda/SoLU_1L512W_C4_Code", "NeelNanda/GELU_1L512W_C4_Code"
COMMIT = "c" * 40
TOKENS, BATCH = 2500, 4


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hugging Face cache (HF_HOME) holding solu-1l, gelu-1l, attn-only-1l and their tokenizer."""
    home = tmp_path_factory.mktemp("hf-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home))
        mp.delenv("HF_HUB_CACHE", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        cache = home / "hub"
        tokenizer_repo(cache, TOKENIZER)
        tl_legacy_repo(cache, SOLU, "solu_ln", TOKENIZER, seed=1, commit=COMMIT)
        tl_legacy_repo(cache, GELU, "gelu", TOKENIZER, seed=2, commit=COMMIT)
        tl_legacy_repo(cache, "NeelNanda/Attn_Only_1L512W_C4_Code", "gelu", TOKENIZER, attn_only=True)
        yield cache


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    return gpt2_dir(tmp_path_factory.mktemp("local") / "tiny-gpt2")


@pytest.fixture(scope="module")
def indexed(hub, gpt2, tiny_corpus, tmp_path_factory):
    db = tmp_path_factory.mktemp("pretrained-db") / "index.duckdb"
    args = ["index", "solu-1l", "gelu-1l", str(gpt2), "--db", str(db), "--dataset", str(tiny_corpus),
            "--tokens", str(TOKENS), "--top-k", "5", "--batch-size", str(BATCH), "--sample-tokens", "500",
            "--no-progress"]
    assert main(args) == 0
    return db


# ------------------------------------------------------------------ loading

def test_legacy_checkpoint_loads_offline_with_its_own_weights_and_tokenizer(hub):
    from solu.sources import load_model

    loaded = load_model("solu-1l")
    assert (loaded.kind, loaded.name, loaded.source, loaded.revision) == ("tl-legacy", "solu-1l", SOLU, COMMIT)
    state = tl_state_dict("solu_ln", 1, **TL_SHAPE)
    torch.testing.assert_close(loaded.model.blocks[1].mlp.W_in, state["blocks.1.mlp.W_in"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.model.W_U, state["unembed.W_U"], rtol=0, atol=0)
    assert loaded.tokenizer.get_vocab_size() == TL_SHAPE["d_vocab"] and loaded.details["tokenizer"] == TOKENIZER
    assert [(s.layer, s.name, s.primary) for s in loaded.sites] == [
        (0, "pre_ln", True), (0, "post_ln", False), (1, "pre_ln", True), (1, "post_ln", False)]
    # the repo id names the same model as its TransformerLens alias
    assert load_model(SOLU).name == "solu-1l"


def test_transformer_lens_own_legacy_loader_needs_the_network(hub):
    """Why solu.sources reads the cached snapshot itself: boot_tl_legacy lists the repo's
    files on the hub first. If this starts passing, TransformerLens fixed it."""
    from transformer_lens.model_bridge import TransformerBridge
    import transformer_lens.model_bridge.sources  # noqa: F401
    from huggingface_hub.errors import OfflineModeIsEnabled

    with pytest.raises((OfflineModeIsEnabled, OSError)):
        TransformerBridge.boot_tl_legacy(SOLU)
    with pytest.raises(ValueError, match="not a known legacy"):  # it takes repo ids, not the aliases
        TransformerBridge.boot_tl_legacy("solu-1l")
    snapshot = next(hub.glob("models--NeelNanda--SoLU_1L512W_C4_Code/snapshots/*"))
    with pytest.raises(ValueError, match="model_type"):  # and boot_transformers cannot read the legacy layout
        TransformerBridge.boot_transformers(str(snapshot), device="cpu")


@torch.inference_mode()
def test_solu_pre_ln_site_is_x_softmax_x_and_post_ln_its_layernorm_at_every_layer(hub):
    from solu.sources import load_model

    loaded = load_model("solu-1l")
    state = tl_state_dict("solu_ln", 1, **TL_SHAPE)
    tokens = torch.randint(0, TL_SHAPE["d_vocab"], (2, TL_SHAPE["n_ctx"]), generator=torch.Generator().manual_seed(0))
    pre_names = [f"blocks.{layer}.mlp.hook_pre" for layer in range(TL_SHAPE["n_layers"])]
    _, cache = loaded.model.run_with_cache(tokens, names_filter=pre_names + [s.hook for s in loaded.sites])
    for site in loaded.sites:
        pre = cache[f"blocks.{site.layer}.mlp.hook_pre"]
        solu = pre * torch.softmax(pre, dim=-1)
        if site.name == "pre_ln":
            torch.testing.assert_close(cache[site.hook], solu)
        else:
            w, b = state[f"blocks.{site.layer}.mlp.ln.w"], state[f"blocks.{site.layer}.mlp.ln.b"]
            torch.testing.assert_close(cache[site.hook], F.layer_norm(solu, (TL_SHAPE["d_mlp"],), w, b, eps=1e-5))


@torch.inference_mode()
def test_hugging_face_sites_are_read_off_the_bridge_after_the_activation(gpt2):
    from transformers.activations import NewGELUActivation

    from solu.sources import load_model

    loaded = load_model(str(gpt2))
    assert (loaded.kind, loaded.name, loaded.model_cfg.act_fn) == ("hf", "tiny-gpt2", "gelu_new")
    assert [(s.name, s.hook) for s in loaded.sites] == [("post", f"blocks.{i}.mlp.hook_post") for i in range(2)]
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    _, cache = loaded.model.run_with_cache(tokens)
    for site in loaded.sites:
        assert cache[site.hook].shape[-1] == loaded.model_cfg.d_mlp
        torch.testing.assert_close(cache[site.hook], NewGELUActivation()(cache[f"blocks.{site.layer}.mlp.hook_pre"]))


# ------------------------------------------------------------------ indexing

def brute_force_top(spec: str, corpus: Path, k: int) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """(layer, site) -> per-neuron top-k documents by their max activation, from full
    forward passes (run_with_cache, every hook) over the same rows."""
    from index.engine.batching import Tally, document_tokens, make_batches
    from solu.sources import load_model

    loaded = load_model(spec)
    docs = list(document_tokens(str(corpus), "text", loaded.tokenizer, TOKENS, Tally()))
    per_doc: dict[tuple[int, str], dict[int, list]] = {(s.layer, s.name): {} for s in loaded.sites}
    with torch.inference_mode():
        for batch in make_batches(iter(docs), loaded.model_cfg.n_ctx, BATCH, loaded.bos_id):
            _, cache = loaded.model.run_with_cache(batch.tokens)
            doc, _ = batch.flat_positions()
            for s in loaded.sites:
                flat = cache[s.hook].reshape(-1, loaded.model_cfg.d_mlp)[batch.flat_index()].numpy()
                for d in np.unique(doc.numpy()):
                    per_doc[(s.layer, s.name)].setdefault(int(d), []).append(flat[doc.numpy() == d].max(0))
    out = {}
    for key, by_doc in per_doc.items():
        ids = np.array(sorted(by_doc))
        doc_max = np.stack([np.max(by_doc[d], axis=0) for d in ids])  # [docs, d_mlp]
        order = np.lexsort((np.broadcast_to(ids[:, None], doc_max.shape), -doc_max), axis=0)[:k]
        out[key] = (ids[order].T, np.take_along_axis(doc_max, order, 0).T)
    return out


@pytest.mark.parametrize("model_id", ["solu-1l", "tiny-gpt2"])
def test_top_k_equals_brute_force_over_a_full_activation_dump(indexed, gpt2, tiny_corpus, model_id):
    spec = str(gpt2) if model_id == "tiny-gpt2" else model_id
    expected = brute_force_top(spec, tiny_corpus, 5)
    rows = query(indexed, "SELECT layer, site, neuron, list(doc_id ORDER BY rank), list(max_act ORDER BY rank) "
                          "FROM examples WHERE model_id = ? AND kind = 'top' GROUP BY ALL", [model_id])
    assert {(r[0], r[1]) for r in rows} == set(expected)
    assert len(rows) == sum(len(v[0]) for v in expected.values())
    for layer, site, neuron, docs, acts in rows:
        want_docs, want_acts = expected[(layer, site)]
        assert docs == want_docs[neuron].tolist(), (layer, site, neuron)
        assert np.array_equal(np.float32(acts), want_acts[neuron].astype(np.float32))


def test_models_record_source_revision_and_config(indexed, gpt2):
    rows = {r[0]: r[1:] for r in query(indexed, "SELECT model_id, act_fn, source_kind, source, revision, n_layers, "
                                                "d_mlp, config->>'tokenizer_name' FROM models")}
    assert rows["solu-1l"] == ("solu_ln", "tl-legacy", SOLU, COMMIT, 2, 64, TOKENIZER)
    assert rows["gelu-1l"] == ("gelu", "tl-legacy", GELU, COMMIT, 2, 64, TOKENIZER)
    assert rows["tiny-gpt2"][:5] == ("gelu_new", "hf", str(gpt2.resolve()), None, 2)
    sites = dict(query(indexed, "SELECT model_id, list(DISTINCT site ORDER BY site) FROM neurons GROUP BY 1"))
    assert sites == {"solu-1l": ["post_ln", "pre_ln"], "gelu-1l": ["post"], "tiny-gpt2": ["post"]}


def test_windows_show_the_models_own_tokens_as_text(indexed, hub, tiny_corpus):
    """Byte-level pieces ('Ġ', 'Ċ') are stored as the text they stand for."""
    from solu.sources import load_model
    from solu.tokenizer import token_strings

    tok = load_model("gelu-1l").tokenizer
    vocab = token_strings(tok, range(tok.get_vocab_size()))
    assert not any("Ġ" in t or "Ċ" in t for t in vocab)
    stored = {r[0] for r in query(indexed, "SELECT DISTINCT unnest(tokens) FROM examples WHERE model_id = 'gelu-1l'")}
    assert stored <= set(vocab) and any(t.startswith(" ") for t in stored) and any("\n" in t for t in stored)
    assert any("Ġ" in tok.id_to_token(i) for i in range(tok.get_vocab_size()))


def test_logit_effects_use_the_models_unembedding_and_final_norm(indexed, hub):
    from solu.sources import load_model

    loaded = load_model("gelu-1l")
    state = tl_state_dict("gelu", 2, **TL_SHAPE)
    w_out = state["blocks.1.mlp.W_out"][7]
    effect = ((w_out - w_out.mean()) * state["ln_final.w"]) @ state["unembed.W_U"]
    top = torch.topk(effect, 3).indices.tolist()
    got = [r[0] for r in query(indexed, "SELECT token_id FROM logits WHERE model_id = 'gelu-1l' AND layer = 1 "
                                        "AND neuron = 7 AND sign = 'pos' ORDER BY rank LIMIT 3")]
    assert got == top and loaded.model_cfg.d_vocab == TL_SHAPE["d_vocab"]


def test_probe_returns_the_indexed_activation_at_the_max_token(indexed, hub, tiny_corpus):
    from explorer import text_probe
    from solu.corpus import iter_documents

    texts = {d.id: d.text for d in iter_documents(str(tiny_corpus))}
    for model_id in ("solu-1l", "tiny-gpt2"):
        source, revision, n_ctx = query(indexed, "SELECT source, revision, n_ctx FROM models WHERE model_id = ?",
                                        [model_id])[0]
        loaded = text_probe.load(source, revision)
        layer, site, neuron, doc_id, max_act, pos = query(
            indexed, "SELECT layer, site, neuron, doc_id, max_act, start_pos + max_pos FROM examples "
                     "WHERE model_id = ? AND kind = 'top' AND start_pos + max_pos < ? ORDER BY max_act DESC LIMIT 1",
            [model_id, n_ctx - 1])[0]
        result = text_probe.probe(loaded, texts[doc_id])
        assert result.acts[(layer, site)][pos, neuron] == pytest.approx(max_act, rel=1e-4, abs=1e-5)


def test_autolabel_and_compare_run_on_pretrained_models(indexed, tmp_path, capsys):
    assert main(["autolabel", "--db", str(indexed)]) == 0
    scored = dict(query(indexed, "SELECT model_id, count(*) FROM concept_scores GROUP BY 1"))
    assert set(scored) == {"solu-1l", "gelu-1l", "tiny-gpt2"} and min(scored.values()) > 0
    out = tmp_path / "report"
    assert main(["compare", "--db", str(indexed), "gelu-1l", "solu-1l", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "gelu-1l" in report and "solu-1l" in report


def test_dtype_and_layers_index_a_subset_in_bfloat16(hub, tiny_corpus, indexed, tmp_path):
    db = tmp_path / "bf16.duckdb"
    args = ["index", "solu-1l", "--db", str(db), "--dataset", str(tiny_corpus), "--tokens", str(TOKENS),
            "--top-k", "5", "--batch-size", str(BATCH), "--layers", "1", "--dtype", "bfloat16", "--name", "solu-bf16",
            "--no-progress"]
    assert main(args) == 0
    assert query(db, "SELECT DISTINCT model_id, layer FROM neurons") == [("solu-bf16", 1)]
    assert query(db, "SELECT config->>'dtype', config->>'layers' FROM index_details") == [("bfloat16", "1")]
    assert query(db, "SELECT sites FROM index_runs") == [(["pre_ln", "post_ln"],)]  # the sites of layer 1 too
    full = dict(query(indexed, "SELECT neuron, max_act FROM neurons WHERE model_id = 'solu-1l' AND layer = 1 "
                               "AND site = 'pre_ln'"))
    half = dict(query(db, "SELECT neuron, max_act FROM neurons WHERE layer = 1 AND site = 'pre_ln'"))
    assert set(half) == set(full)
    a, b = np.array([half[n] for n in full]), np.array(list(full.values()))
    assert np.corrcoef(a, b)[0, 1] > 0.95 and np.median(np.abs(a - b) / np.abs(b)) < 0.05  # bfloat16 rounding


def test_fetch_offline_finds_a_cached_model_and_names_a_missing_one(hub, capsys):
    assert main(["fetch", "solu-1l"]) == 0
    out = capsys.readouterr().out
    assert f"{SOLU}@{COMMIT}" in out and f"tokenizer {TOKENIZER}@" in out
    assert main(["fetch", "solu-2l"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "solu fetch solu-2l" in err[0] and "NeelNanda/SoLU_2L512W_C4_Code" in err[0]


# ------------------------------------------------------------------ bad specs

def one_line_error(args, capsys) -> str:
    code = main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    return err[0]


@pytest.fixture
def bad_index(tmp_path, tiny_corpus):
    return lambda model: ["index", str(model), "--db", str(tmp_path / "x.duckdb"), "--dataset", str(tiny_corpus),
                          "--tokens", "300", "--no-progress"]


def test_missing_model_offline_names_it_and_how_to_fetch_it(hub, bad_index, capsys, tmp_path):
    line = one_line_error(bad_index("gelu-2l"), capsys)
    assert "NeelNanda/GELU_2L512W_C4_Code" in line and "HF_HUB_OFFLINE" in line and "solu fetch gelu-2l" in line
    line = one_line_error(bad_index("EleutherAI/pythia-70m"), capsys)
    assert "'EleutherAI/pythia-70m' is not a directory, and the Hugging Face model EleutherAI/pythia-70m is not in " \
           "the local Hugging Face cache" in line and "solu fetch EleutherAI/pythia-70m" in line
    assert not (tmp_path / "x.duckdb").exists()


def test_unknown_name_and_a_directory_that_is_not_a_model(hub, bad_index, capsys, tmp_path):
    line = one_line_error(bad_index("solu-13l"), capsys)
    assert "unknown TransformerLens pretrained name 'solu-13l'" in line and "solu-12l" in line
    assert "not a directory" in one_line_error(bad_index("not a/valid id!"), capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is not a model directory: no config.json" in one_line_error(bad_index(empty), capsys)
    (empty / "config.json").write_text('{"hello": 1}')
    assert "is not a model directory" in one_line_error(bad_index(empty), capsys)
    assert "not found" in one_line_error(bad_index(tmp_path / "gone"), capsys)


def test_models_whose_mlp_cannot_be_read(hub, bad_index, capsys, tmp_path):
    line = one_line_error(bad_index("attn-only-1l"), capsys)
    assert "cannot read the MLP neurons of attn-only-1l" in line and "attention-only" in line
    moe = mixtral_dir(tmp_path / "tiny-moe")
    capsys.readouterr()
    line = one_line_error(bad_index(moe), capsys)
    assert "cannot read the MLP neurons" in line and "mixture of experts" in line


def test_name_must_not_collide_with_another_model_in_the_database(indexed, gpt2, tiny_corpus, tmp_path, capsys):
    import shutil

    db = tmp_path / "copy.duckdb"
    shutil.copy(indexed, db)
    args = ["index", str(gpt2), "--db", str(db), "--dataset", str(tiny_corpus), "--tokens", "300", "--no-progress",
            "--name", "solu-1l"]
    line = one_line_error(args, capsys)
    assert "'solu-1l' is already in the database from NeelNanda/SoLU_1L512W_C4_Code" in line and "--name" in line


# ------------------------------------------------------------------ the docs' commands

def readme_commands() -> list[list[str]]:
    """The `solu` commands of docs/datasets.md's section on the paper's models."""
    text = (Path(__file__).parent.parent / "docs" / "datasets.md").read_text()
    section = text.split("## The paper's models", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("solu ")]


def test_readme_commands_parse_and_fail_offline_with_the_documented_line(hub, tmp_path, monkeypatch, capsys):
    from solu.cli import build_parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    commands = readme_commands()
    assert {c[0] for c in commands} >= {"fetch", "index", "compare", "app"}
    for args in commands:
        build_parser().parse_args(args)  # every flag exists
        if args[0] in ("fetch", "index"):
            line = one_line_error(args, capsys)
            assert "solu fetch " in line and "HF_HUB_OFFLINE is set" in line, line


# ------------------------------------------------------------------ token strings

def sentencepiece_style_tokenizer():
    """A BPE with sentencepiece's Metaspace ('▁') pieces and byte fallback ('<0xC3>')."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  special_tokens=["<unk>", "<s>"] + [f"<0x{b:02X}>" for b in range(256)])
    tok.train_from_iterator(["the cat sat on the mat\n", "a dog and the cat\n"] * 20, trainer)
    return tok


def test_token_strings_are_the_text_of_byte_level_and_sentencepiece_pieces():
    from solu.tokenizer import token_strings, train_tokenizer

    bpe = train_tokenizer(["the cat sat\n  on é the mat\n"] * 30, 300)
    ids = bpe.encode("the cat\n  é").ids
    assert any(p.startswith("Ġ") for p in map(bpe.id_to_token, ids)) and "Ċ" in "".join(map(bpe.id_to_token, ids))
    assert "".join(token_strings(bpe, ids)) == "the cat\n  é" and " cat" in token_strings(bpe, ids)
    sp = sentencepiece_style_tokenizer()
    text = "the cat\nsat é"
    ids = sp.encode(text).ids
    pieces = [sp.id_to_token(i) for i in ids]
    assert pieces[:3] == ["▁the", "▁cat\n", "sat"] and pieces[-2:] == ["<0xC3>", "<0xA9>"]  # é by byte fallback
    assert token_strings(sp, ids) == [" the", " cat\n", "sat", " ", "\ufffd", "\ufffd"]
    assert sp.decode([ids[0]]) == "the"  # what decoding one piece alone shows: its space is lost


# ------------------------------------------------------------------ the app

def test_app_shows_where_models_came_from_and_probes_them_live(indexed, hub, monkeypatch):
    from helpers.explorer_fixtures import app_at, html_text, no_exception

    monkeypatch.setenv("SOLU_DB", str(indexed))
    at = app_at("models")
    no_exception(at)
    table = at.dataframe[0].value.set_index("model_id")
    assert table.loc["solu-1l", "source_kind"] == "TransformerLens pretrained" and table.loc["solu-1l", "revision"] == COMMIT
    assert table.loc["tiny-gpt2", "source_kind"] == "Hugging Face" and table.loc["solu-1l", "source"] == SOLU
    for model_id, site in (("solu-1l", "pre_ln"), ("tiny-gpt2", "post")):
        at = app_at("probe", model=model_id, layer=1, neuron=3, site=site)
        no_exception(at)
        assert not at.error, [e.value for e in at.error]
        assert 'class="heatmap"' in html_text(at) and len(at.dataframe[0].value) > 0


def test_compare_prints_pretrained_models_beside_a_checkpoint(hub, gpt2, tiny_checkpoints, capsys):
    assert main(["compare", "solu-1l", str(gpt2), str(tiny_checkpoints["gelu"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith(f"{SOLU}@{COMMIT[:10]}") and "solu_ln" in lines[2] and "2L d32 mlp64" in lines[2]
    assert lines[3].startswith(str(gpt2.resolve())) and "gelu_new" in lines[3]
    assert "gelu" in lines[4] and len(lines) == 5


def test_automatic_batch_size_keeps_activations_within_budget():
    from index.engine.pipeline import BATCH_BYTES, fit_batch_size
    from solu.sources import ModelShape

    gpt2 = ModelShape("gelu_new", 12, 768, 3072, 12, 1024, 50257)
    solu_12l = ModelShape("solu_ln", 12, 1536, 6144, 24, 1024, 48262)
    ours = ModelShape("solu_ln", 1, 128, 512, 4, 128, 4096)
    assert [fit_batch_size(gpt2, 12), fit_batch_size(solu_12l, 24), fit_batch_size(ours, 2)] == [1, 1, 32]
    rows = fit_batch_size(gpt2, 12)
    assert rows * 1024 * 3072 * 12 * 4 <= BATCH_BYTES < (rows + 1) * 1024 * 3072 * 12 * 4


def test_on_cuda_the_batch_fills_the_device(monkeypatch):
    """The rule for a GPU, without one: torch.cuda.mem_get_info answers what a device would."""
    import torch

    from index.engine.pipeline import GPU_BATCH_TOKENS, fit_batch_size
    from solu.sources import ModelShape

    gpt2 = ModelShape("gelu_new", 12, 768, 3072, 12, 1024, 50257)
    ours = ModelShape("solu_ln", 1, 128, 512, 4, 128, 4096)
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (130 * 2**30, 140 * 2**30))
    assert fit_batch_size(ours, 2, cuda) == GPU_BATCH_TOKENS // 128 == 512  # the token target
    assert fit_batch_size(gpt2, 12, cuda) == 64
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 140 * 2**30))
    rows = fit_batch_size(gpt2, 12, cuda)  # a busy device: the memory bound
    assert 2 * rows * 1024 * 3072 * 12 * 4 <= 2 * 2**30 < 2 * (rows + 1) * 1024 * 3072 * 12 * 4
    assert fit_batch_size(ours, 2, torch.device("cpu")) == fit_batch_size(ours, 2) == 32  # CPU keeps its rule
