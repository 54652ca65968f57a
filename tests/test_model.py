"""The model builder and the neuron sites, checked on the installed TransformerLens."""
import torch
import torch.nn.functional as F

from solu.checkpoint import load_checkpoint
from solu.config import ModelConfig
from solu.model import build_model, neuron_sites

SHAPE = dict(n_layers=3, d_model=32, d_mlp=64, n_heads=4, n_ctx=16, d_vocab=300)


def test_solu_sites_equal_x_softmax_x_and_its_layernorm_at_every_layer():
    cfg = ModelConfig(act_fn="solu_ln", **SHAPE)
    model = build_model(cfg, seed=1).eval()
    tokens = torch.randint(0, cfg.d_vocab, (2, cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    pre_names = [f"blocks.{layer}.mlp.hook_pre" for layer in range(cfg.n_layers)]
    site_hooks = [s.hook for s in neuron_sites(model, cfg.act_fn)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in pre_names + site_hooks)
    state = model.state_dict()
    for site in neuron_sites(model, cfg.act_fn):
        pre = cache[f"blocks.{site.layer}.mlp.hook_pre"]
        solu = pre * torch.softmax(pre, dim=-1)
        if site.name == "pre_ln":
            assert site.primary
            torch.testing.assert_close(cache[site.hook], solu)
        else:
            assert site.name == "post_ln" and not site.primary
            w, b = state[f"blocks.{site.layer}.mlp.ln.weight"], state[f"blocks.{site.layer}.mlp.ln.bias"]
            torch.testing.assert_close(cache[site.hook], F.layer_norm(solu, (cfg.d_mlp,), w, b, eps=1e-5))


def test_gelu_site_is_the_gelu_output():
    cfg = ModelConfig(act_fn="gelu", **SHAPE)
    model = build_model(cfg, seed=1).eval()
    tokens = torch.randint(0, cfg.d_vocab, (2, cfg.n_ctx))
    sites = neuron_sites(model, cfg.act_fn)
    assert [s.name for s in sites] == ["post"] * cfg.n_layers
    _, cache = model.run_with_cache(tokens)
    for site in sites:
        pre = cache[f"blocks.{site.layer}.mlp.hook_pre"]
        torch.testing.assert_close(cache[site.hook], F.gelu(pre))


def test_every_site_hook_exists_on_the_installed_transformer_lens():
    for act in ("gelu", "solu_ln"):
        cfg = ModelConfig(act_fn=act, **SHAPE)
        model = build_model(cfg, seed=0)
        assert {s.hook for s in neuron_sites(model, act)} <= set(model.hook_dict)


def test_same_seed_gives_identical_shared_weights_for_gelu_and_solu():
    gelu = build_model(ModelConfig(act_fn="gelu", **SHAPE), seed=7).state_dict()
    solu = build_model(ModelConfig(act_fn="solu_ln", **SHAPE), seed=7).state_dict()
    assert set(gelu) < set(solu)
    assert {k for k in solu if k not in gelu} == {f"blocks.{i}.mlp.ln.{p}" for i in range(3) for p in ("weight", "bias")}
    for key, value in gelu.items():
        assert torch.equal(value, solu[key]), key
    other = build_model(ModelConfig(act_fn="gelu", **SHAPE), seed=8).state_dict()
    assert not torch.equal(gelu["embed.weight"], other["embed.weight"])


def test_checkpoint_reloads_to_the_same_logits(tiny_checkpoints):
    for path in tiny_checkpoints.values():
        first, second = load_checkpoint(path), load_checkpoint(path)
        tokens = torch.randint(0, first.model_cfg.d_vocab, (2, first.model_cfg.n_ctx))
        with torch.inference_mode():
            a, b = first.model(tokens), second.model(tokens)
        assert torch.equal(a, b)
        # and the trained weights differ from a fresh initialisation
        fresh = build_model(first.model_cfg, seed=0)
        with torch.inference_mode():
            assert not torch.allclose(fresh(tokens), a)
