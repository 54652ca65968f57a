"""Byte-level BPE tokenizers (Hugging Face `tokenizers`), saved with each checkpoint."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from solu.errors import UserError, first_line
from solu.inputs import check_regular

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
    check_regular(path, "tokenizer")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception for a bad file
        raise UserError(f"cannot load tokenizer {path}: {first_line(e)}") from None
    if tok.token_to_id(EOT) is None:
        raise UserError(f"tokenizer {path} has no {EOT} token")
    return tok


def eot_id(tok: Tokenizer) -> int:
    return tok.token_to_id(EOT)


def token_strings(tok: Tokenizer, ids: Iterable[int]) -> list[str]:
    """Each id as the text it stands for, whatever the tokenizer: byte-level BPE pieces
    ('Ġthe', 'Ċ') and sentencepiece pieces ('▁the', '<0x0A>') become ' the' and '\\n'.

    A piece is decoded after an anchor token and the anchor's own text cut off, so a
    decoder that drops the leading space of a text's first piece (sentencepiece's
    Metaspace) still shows it; a piece that is part of a multi-byte character decodes to
    U+FFFD. Special tokens are kept as written."""
    ids = list(ids)
    anchor = _anchor(tok)
    if anchor is None:
        return [tok.decode([i], skip_special_tokens=False) for i in ids]
    base = tok.decode([anchor], skip_special_tokens=False)
    pairs = tok.decode_batch([[anchor, i] for i in ids], skip_special_tokens=False)
    return [text[len(base):] if text.startswith(base) else tok.decode([i], skip_special_tokens=False)
            for i, text in zip(ids, pairs)]


@functools.lru_cache(maxsize=8)  # per tokenizer: a probe in the app asks every time
def _anchor(tok: Tokenizer) -> int | None:
    """A plain letters piece (no space marker) that decodes to itself."""
    for piece, i in sorted(tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1]):
        if piece.isascii() and piece.isalpha() and tok.decode([i], skip_special_tokens=False) == piece:
            return i
    return None
