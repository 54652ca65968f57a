"""Labels, the human data a writer appends: one short write-locked transaction each
(index.store.connection.open_write), never deleted by the indexer."""
from __future__ import annotations

from pathlib import Path

from index.store.connection import open_write
from solu.errors import UserError


def append_label(db: str | Path, model_id: str, layer: int, neuron: int, label: str, note: str = "",
                 source: str = "human", author: str | None = None, score: float | None = None,
                 status: str | None = None) -> None:
    """Append one label row; earlier rows stay as the label's history. Text fields lose
    control characters (NUL and the like; tabs and newlines stay)."""
    label, note, author = (clean_text(v, what) for v, what in ((label, "label"), (note, "note"), (author, "author")))
    with open_write(db) as con:
        con.execute(
            "INSERT INTO labels (label_id, model_id, layer, neuron, label, note, source, author, score, status) "
            "SELECT coalesce(max(label_id), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM labels",
            [model_id, layer, neuron, label, note, source, author, score, status])


MAX_TEXT_CHARS = 10_000
_CONTROL = dict.fromkeys(c for c in range(32) if chr(c) not in "\t\n")
_CONTROL.update({127: None})


def clean_text(value: str | None, what: str = "text") -> str | None:
    """Human text for the database: valid UTF-8, no control characters but tab and
    newline, at most MAX_TEXT_CHARS characters."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"the {what} is not valid UTF-8 text") from None
    value = value.translate(_CONTROL)
    if len(value) > MAX_TEXT_CHARS:
        raise UserError(f"the {what} is {len(value):,} characters long; at most {MAX_TEXT_CHARS:,}")
    return value
