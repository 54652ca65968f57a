"""Byte-level BPE tokenizers (Hugging Face `tokenizers`), saved with each checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from solu.errors import UserError

EOT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE whose vocabulary, special token included, is vocab_size."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception for a bad file
        raise UserError(f"cannot load tokenizer {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if tok.token_to_id(EOT) is None:
        raise UserError(f"tokenizer {path} has no {EOT} token")
    return tok


def eot_id(tok: Tokenizer) -> int:
    return tok.token_to_id(EOT)


def token_strings(tok: Tokenizer, ids: Iterable[int]) -> list[str]:
    """Each id as the text it stands for (byte-level pieces decoded one by one)."""
    return [tok.decode([i], skip_special_tokens=False) for i in ids]
