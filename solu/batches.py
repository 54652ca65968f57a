"""Pack documents into fixed-length token sequences for training and evaluation.

Documents are joined with an end-of-text token and cut into rows of n_ctx tokens.
Training reads only documents outside the eval split and cycles over the dataset in
epochs when asked for more tokens than it holds. The stream's position is a small
state dict, saved with each checkpoint, so a resumed run continues where it stopped.
The tokenizer's text, the eval split and the training stream all read one
DocumentOrder (solu.corpus), so a shuffled dataset's order is decided once per run.

Under data-parallel training every rank packs the same stream of global batches and
keeps only its own rows of each (`share`), so the ranks read disjoint parts of every
batch, together exactly the batch one process would read, and their stream states stay
equal (rank 0 saves it; any number of ranks can resume it).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from tokenizers import Tokenizer

from solu.corpus import Document, DocumentOrder, is_eval_document
from solu.errors import UserError
from solu.tokenizer import eot_id

ENCODE_BATCH = 64


def _encode_docs(tok: Tokenizer, docs: Iterator[Document]) -> Iterator[list[int]]:
    eot = eot_id(tok)
    batch: list[str] = []
    for doc in docs:
        batch.append(doc.text)
        if len(batch) == ENCODE_BATCH:
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                yield enc.ids + [eot]
            batch = []
    for enc in tok.encode_batch(batch, add_special_tokens=False):
        yield enc.ids + [eot]


def training_texts(docs: Iterable[Document], max_chars: int) -> Iterator[str]:
    """Up to max_chars of training text (outside the eval split), for fitting a tokenizer."""
    seen = 0
    for doc in docs:
        if is_eval_document(doc.text):
            continue
        yield doc.text
        seen += len(doc.text)
        if seen >= max_chars:
            return


def eval_rows(tok: Tokenizer, docs: DocumentOrder, n_ctx: int, n_tokens: int) -> torch.Tensor:
    """The held-out evaluation set: [rows, n_ctx] tokens from eval-split documents."""
    need = -(-n_tokens // n_ctx) * n_ctx
    buf: list[int] = []
    for ids in _encode_docs(tok, (d for d in docs if is_eval_document(d.text))):
        buf.extend(ids)
        if len(buf) >= need:
            break
    rows = len(buf) // n_ctx
    if rows == 0:
        raise UserError(
            f"the eval split of {docs.spec!r} holds {len(buf)} tokens, fewer than one context of {n_ctx}; "
            "use a larger dataset or a smaller --ctx")
    return torch.tensor(buf[: rows * n_ctx], dtype=torch.long).view(rows, n_ctx)


class TrainStream:
    """Yields [batch_size / ranks, n_ctx] token batches from the training split, resumably:
    rows rank * b to (rank + 1) * b of each global batch of batch_size rows, for
    share = (rank, ranks)."""

    def __init__(self, tok: Tokenizer, docs: DocumentOrder, batch_size: int, n_ctx: int, state: dict | None = None,
                 share: tuple[int, int] = (0, 1)):
        rank, ranks = share
        if batch_size % ranks or not 0 <= rank < ranks:
            raise ValueError(f"a batch of {batch_size} rows cannot be shared by rank {rank} of {ranks}")
        self.tok, self.docs = tok, docs
        self.batch_size, self.n_ctx = batch_size, n_ctx
        rows = batch_size // ranks
        self.rows, self.first_token = rows, rank * rows * n_ctx
        state = state or {}
        self.epoch: int = state.get("epoch", 0)
        self.docs_done: int = state.get("docs_done", 0)  # documents consumed in this epoch
        self.buffer: list[int] = list(state.get("buffer", []))

    def state(self) -> dict:
        return {"epoch": self.epoch, "docs_done": self.docs_done, "buffer": list(self.buffer)}

    def _epoch_docs(self) -> Iterator[Document]:
        skip = self.docs_done
        for doc in self.docs:
            if is_eval_document(doc.text):
                continue
            if skip:
                skip -= 1
                continue
            yield doc

    def __iter__(self) -> Iterator[torch.Tensor]:
        need = self.batch_size * self.n_ctx
        while True:
            produced = False
            for ids in _encode_docs(self.tok, self._epoch_docs()):
                self.docs_done += 1
                self.buffer.extend(ids)
                while len(self.buffer) >= need:
                    produced = True
                    mine = self.buffer[self.first_token:self.first_token + self.rows * self.n_ctx]
                    self.buffer = self.buffer[need:]
                    yield torch.tensor(mine, dtype=torch.long).view(self.rows, self.n_ctx)
            if not produced and self.epoch > 0:
                raise UserError(
                    f"dataset {self.docs.spec!r} has too few training tokens for one batch of "
                    f"{self.batch_size} x {self.n_ctx}; use a smaller --batch-size or --ctx")
            self.epoch += 1
            self.docs_done = 0
