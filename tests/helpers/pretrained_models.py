"""Tiny stand-ins for pretrained models, in the layouts the real ones have, built offline.

- `tl_legacy_repo`: a TransformerLens-format repo like NeelNanda/SoLU_2L512W_C4_Code (a
  TransformerLens config.json and a `*final.pth` state dict in the legacy (pre-4.x)
  TransformerLens property format, attention masks included), placed in a Hugging Face cache directory
  (models--ORG--NAME/snapshots/COMMIT, refs/main) as `hf download` leaves it.
- `tokenizer_repo`: a small byte-level BPE saved with transformers' save_pretrained, in
  the same cache (the legacy repos name theirs in config.json's tokenizer_name).
- `gpt2_dir`: a GPT-2-architecture model and its tokenizer saved with save_pretrained as
  a local directory.
Random weights: the tests check the loading and indexing code, not what the model knows.
"""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import torch

from solu.tokenizer import EOT, train_tokenizer

VOCAB = 400
TL_SHAPE = dict(n_layers=2, d_model=32, d_mlp=64, d_head=16, n_heads=2, n_ctx=32, d_vocab=VOCAB)


def training_text() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [(stdlib / name).read_text() for name in ("textwrap.py", "string.py", "colorsys.py")]


def hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(training_text(), VOCAB),
                                   bos_token=EOT, eos_token=EOT, unk_token=EOT)


def cache_repo(cache: Path, repo: str, commit: str) -> Path:
    """The snapshot folder of `repo` at `commit` in a Hugging Face cache, with refs/main."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def tokenizer_repo(cache: Path, repo: str, commit: str = "1" * 40) -> Path:
    snap = cache_repo(cache, repo, commit)
    hf_tokenizer().save_pretrained(str(snap))
    return snap


def tl_state_dict(act_fn: str, seed: int, n_layers: int, d_model: int, d_mlp: int, d_head: int, n_heads: int,
                  n_ctx: int, d_vocab: int) -> dict[str, torch.Tensor]:
    """Random weights with legacy TransformerLens property names and per-head shapes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, scale=0.2: torch.randn(*shape, generator=g) * scale  # noqa: E731
    ln = lambda n: (1 + r(n, scale=0.1), r(n, scale=0.1))  # noqa: E731
    sd = {"embed.W_E": r(d_vocab, d_model), "pos_embed.W_pos": r(n_ctx, d_model)}
    for i in range(n_layers):
        p = f"blocks.{i}."
        sd[p + "ln1.w"], sd[p + "ln1.b"] = ln(d_model)
        for w in "QKV":
            sd[p + f"attn.W_{w}"], sd[p + f"attn.b_{w}"] = r(n_heads, d_model, d_head), r(n_heads, d_head)
        sd[p + "attn.W_O"], sd[p + "attn.b_O"] = r(n_heads, d_head, d_model), r(d_model)
        sd[p + "attn.mask"] = torch.tril(torch.ones(n_ctx, n_ctx)).bool()
        sd[p + "attn.IGNORE"] = torch.tensor(-1e5)
        sd[p + "ln2.w"], sd[p + "ln2.b"] = ln(d_model)
        sd[p + "mlp.W_in"], sd[p + "mlp.b_in"] = r(d_model, d_mlp, scale=1.0), r(d_mlp)
        if act_fn == "solu_ln":
            sd[p + "mlp.ln.w"], sd[p + "mlp.ln.b"] = ln(d_mlp)
        sd[p + "mlp.W_out"], sd[p + "mlp.b_out"] = r(d_mlp, d_model), r(d_model)
    sd["ln_final.w"], sd["ln_final.b"] = ln(d_model)
    sd["unembed.W_U"], sd["unembed.b_U"] = r(d_model, d_vocab), r(d_vocab)
    return sd


def tl_legacy_repo(cache: Path, repo: str, act_fn: str, tokenizer_name: str, seed: int = 0,
                   commit: str = "a" * 40, attn_only: bool = False, **shape) -> Path:
    """A legacy TransformerLens repo in the cache; returns its snapshot folder."""
    shape = {**TL_SHAPE, **shape}
    snap = cache_repo(cache, repo, commit)
    config = {**shape, "act_fn": act_fn, "normalization_type": "LN", "attn_only": attn_only,
              "tokenizer_name": tokenizer_name, "shortformer_pos": False, "positional_embedding_type": "standard",
              "n_tokens": 123_456, "seed": seed}
    (snap / "config.json").write_text(json.dumps(config))
    state = tl_state_dict(act_fn, seed, **shape)
    if attn_only:
        state = {k: v for k, v in state.items() if ".mlp." not in k and ".ln2." not in k}
    torch.save(state, snap / f"{repo.split('/')[-1]}_final.pth")
    return snap


def gpt2_dir(path: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (GELU-new MLP) and its tokenizer, saved as a Hugging Face directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = hf_tokenizer()
    eot = tok.convert_tokens_to_ids(EOT)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=2, n_head=2, n_inner=64,
                     bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def mixtral_dir(path: Path, seed: int = 0) -> Path:
    """A 1-layer mixture-of-experts model: an MLP whose neurons the tool cannot read."""
    from transformers import MixtralConfig, MixtralForCausalLM

    tok = hf_tokenizer()
    eot = tok.convert_tokens_to_ids(EOT)
    cfg = MixtralConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1,
                        max_position_embeddings=32, bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(seed)
    MixtralForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
