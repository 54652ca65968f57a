"""The records layer of the measures: what the index holds about a model's neurons, read
into flat arrays that the explanations (index.measure.explain) and the concept scores
(index.measure.autolabel) both read.

* The held-out split: a hash of a record's doc_id puts every record of a document on the
  fit half or the held-out half (`held_out`), so the two never share a document.
* Positions: every (doc_id, pos) a model's windows and activation sample cover, with the
  feature ids rules read there (one column per RuleKind from TOKENS to EXACT) and the
  concept bits, computed on the longest stretch of consecutive positions known.
* Chunks: a chunk of neurons' windows (top examples, interval and random samples) and
  recorded activations, as flat arrays indexing Positions.
* The sample: the activation sample's positions and records.
* The readers that build each from the index (`read_positions`, `read_sample`,
  `read_chunk`, `chunk_plan`).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import pandas as pd

from index.measure.concepts import Concept, concept_masks

class RuleKind(IntEnum):
    """A rule's kind. Kinds 1-7 read one feature column of Positions.features (column
    kind - 1); CONCEPT reads a concept bit; IN_CONCEPT a concept bit and the token."""
    CONCEPT = 0      # a concept detector or user regex holds at the token
    TOKENS = 1       # the token is one of 1-2 given tokens
    CONTEXT = 2      # a given token right after a given token
    WORD = 3         # the token is a piece of a given word of two or more tokens
    LINE_END = 4     # a given token ending a line (the next token starts a new line)
    LINE_START = 5   # a given token starting a line (the first non-blank token after a newline)
    AFTER_CLASS = 6  # a given token right after a newline, a number, punctuation or a capitalised word
    CONTEXT2 = 7     # a given token right after two given tokens
    EXACT = 8        # the token is one of 1-2 given tokens, case kept ("Test", not "test")
    IN_CONCEPT = 9   # a given token where a concept holds (a digit inside a copyright line)

    @property
    def label(self) -> str:
        return self.name.lower()

N_KINDS = len(RuleKind)
N_FEATURES = 8  # feature columns: one per kind from TOKENS to EXACT
CHUNK = 256  # neurons scored together
CLASSES = ("newline", "number", "punctuation", "capitalised word")  # what AFTER_CLASS reads before a token


def held_out(doc_id) -> np.ndarray:
    """True where a document's records are held out (half of the documents, by a hash)."""
    x = np.asarray(doc_id, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((x ^ (x >> np.uint64(31))) & np.uint64(1)).astype(bool)


def exact(token: str) -> str:
    """A token as exact rules compare it: without surrounding space, case kept."""
    return token.strip() or token


def normalise(token: str) -> str:
    """A token as rules compare it: without surrounding space, lower case (a token of
    only whitespace stays as it is)."""
    return token.strip().lower() or token


def words(tokens: list[str]) -> list[str | None]:
    """For each token, the word of two or more tokens it is a piece of (normalised), or
    None. A token continues the word before it when it starts with a letter or digit and
    the token before ends with one ("sub" + "str" = "substr"; " sub" + " str" are two)."""
    out: list[str | None] = [None] * len(tokens)
    start = 0
    for i in range(1, len(tokens) + 1):
        joins = i < len(tokens) and tokens[i][:1].isalnum() and tokens[i - 1][-1:].isalnum()
        if not joins:
            if i - start >= 2:
                word = "".join(tokens[start:i]).strip().lower()
                out[start:i] = [word] * (i - start)
            start = i
    return out


def line_ends(tokens: list[str]) -> np.ndarray:
    """Tokens that end a line: not blank, and the next token holds a newline with only
    spaces before it. The last token of a stretch is not known to end one."""
    out = np.zeros(len(tokens), dtype=bool)
    for i in range(len(tokens) - 1):
        head, newline, _ = tokens[i + 1].partition("\n")
        out[i] = bool(tokens[i].strip()) and bool(newline) and not head.strip()
    return out


def line_starts(tokens: list[str]) -> np.ndarray:
    """Tokens that start a line: the first token that is not blank after a newline (and
    nothing but spaces between). Before a stretch's first newline none is known."""
    out = np.zeros(len(tokens), dtype=bool)
    fresh = False
    for i, t in enumerate(tokens):
        if "\n" in t:
            out[i] = False
            fresh = not t.rpartition("\n")[2].strip()
        elif t.strip():
            out[i], fresh = fresh, False
    return out


def token_class(token: str, word: str | None) -> int:
    """The CLASSES index of a token (read with the word it is a piece of), or -1."""
    if "\n" in token:
        return 0
    text = (word or token).strip()
    if not text:
        return -1
    if text.replace(".", "").replace(",", "").isdigit():
        return 1
    if not any(c.isalnum() for c in text):
        return 2
    if len(text) >= 2 and text.isalpha() and text[0].isupper() and any(c.islower() for c in text[1:]):
        return 3
    return -1


def previous_classes(tokens: list[str]) -> np.ndarray:
    """For each token, the class of the token before it (-1: none, or the stretch starts)."""
    word = words(tokens)
    out = np.full(len(tokens), -1, np.int64)
    for i in range(1, len(tokens)):
        out[i] = token_class(tokens[i - 1], word[i - 1])
    return out


# ---------------------------------------------------------------- the positions a model's records cover

@dataclass
class Positions:
    """Every (doc_id, pos) that a model's records cover, sorted, with what rules read:
    a feature id per position for each kind from TOKENS to EXACT (column kind - 1;
    -1 where it has none) and concept bits. Features and concepts are read on the
    longest known stretch of consecutive positions, so a window sees the context the
    index holds around it."""
    doc: np.ndarray        # (P,) doc_id
    pos: np.ndarray        # (P,) position in the document
    features: np.ndarray   # (P, N_FEATURES) int64
    bits: np.ndarray       # (P, C) bool: concept masks
    token_names: list[str]
    parts: dict            # feature column -> (n_ids, k) array: what a composite id is made of
    word_names: list[str]
    concept_names: list[str]
    concept_patterns: list[str | None]  # a user regex's pattern; None for a built-in detector
    exact_names: list[str]  # the EXACT column's ids: tokens without surrounding space, case kept

    def find(self, doc: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Row of each (doc, pos); every one must be present."""
        key = position_key(np.asarray(doc, np.int64), np.asarray(pos, np.int64))
        rows = np.searchsorted(self._keys, key)
        if len(key) and (rows.max(initial=0) >= len(self._keys) or (self._keys[rows] != key).any()):
            raise ValueError("a record holds a position the positions table lacks")
        return rows

    def __post_init__(self):
        self._keys = position_key(self.doc, self.pos)

    @property
    def n_tokens(self) -> int:
        return max(len(self.token_names), 1)

    def concept_args(self, c: int) -> tuple[str, ...]:
        """A concept's name, and its pattern for a user regex (how a Rule names it)."""
        pattern = self.concept_patterns[c]
        return (self.concept_names[c],) + ((pattern,) if pattern is not None else ())


def position_key(doc: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """One sortable int64 per (doc_id, pos) (positions below 2^24, checked by build_positions)."""
    return (doc.astype(np.int64) << 24) + pos.astype(np.int64)


def _composite(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ids for tuples of non-negative ids (a row with any -1 gets -1), and each id's parts."""
    stacked = np.stack(columns, axis=1)
    ok = (stacked >= 0).all(axis=1)
    out = np.full(len(stacked), -1, np.int64)
    if not ok.any():
        return out, np.zeros((0, len(columns)), np.int64)
    parts, inverse = np.unique(stacked[ok], axis=0, return_inverse=True)
    out[ok] = np.asarray(inverse).reshape(-1)
    return out, parts


def build_positions(doc: np.ndarray, pos: np.ndarray, token: list[str], concepts: list[Concept]) -> Positions:
    """Positions from (doc_id, pos, token) rows sorted by (doc_id, pos), no repeats."""
    doc, pos = np.asarray(doc, np.int64), np.asarray(pos, np.int64)
    if len(pos) and pos.max() >= 1 << 24:
        raise ValueError("document positions beyond 2^24 tokens")
    n = len(doc)
    norm = [normalise(t) for t in token]
    token_names, token_id = np.unique(np.array(norm, dtype=object), return_inverse=True) if n else ([], np.zeros(0))
    token_id = np.asarray(token_id, np.int64).reshape(-1)
    new = np.ones(n, dtype=bool)
    new[1:] = (doc[1:] != doc[:-1]) | (pos[1:] != pos[:-1] + 1)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    bits = np.zeros((n, len(concepts)), dtype=bool)
    word_of: list[str | None] = [None] * n
    at_end, at_start = np.zeros(n, bool), np.zeros(n, bool)
    prev_class = np.full(n, -1, np.int64)
    for a, b in zip(starts, ends):
        piece = list(token[a:b])
        masks = concept_masks(piece, concepts)
        for j, c in enumerate(concepts):
            bits[a:b, j] = masks[c.name]
        word_of[a:b] = words(piece)
        at_end[a:b], at_start[a:b], prev_class[a:b] = line_ends(piece), line_starts(piece), previous_classes(piece)
    prev = np.where(new, -1, np.roll(token_id, 1))
    new2 = new | np.roll(new, 1)
    prev2 = np.where(new2, -1, np.roll(token_id, 2))
    pair_id, pairs = _composite([prev, token_id])
    class_id, classes = _composite([prev_class, token_id])
    context2_id, contexts2 = _composite([prev2, prev, token_id])
    has_word = np.array([w is not None for w in word_of], dtype=bool)
    word_names, inverse = np.unique(np.array([w for w in word_of if w is not None], dtype=object),
                                    return_inverse=True) if has_word.any() else ([], np.zeros(0, np.int64))
    word_id = np.full(n, -1, np.int64)
    word_id[has_word] = np.asarray(inverse).reshape(-1)
    exact_names, exact_id = (np.unique(np.array([exact(t) for t in token], dtype=object), return_inverse=True)
                             if n else ([], np.zeros(0)))
    columns = [token_id, pair_id, word_id, np.where(at_end, token_id, -1), np.where(at_start, token_id, -1),
               class_id, context2_id, np.asarray(exact_id, np.int64).reshape(-1)]
    features = np.stack(columns, axis=1) if n else np.zeros((0, N_FEATURES), np.int64)
    return Positions(doc, pos, features.astype(np.int64), bits, [str(t) for t in token_names],
                     {RuleKind.CONTEXT - 1: pairs, RuleKind.AFTER_CLASS - 1: classes,
                      RuleKind.CONTEXT2 - 1: contexts2},
                     [str(w) for w in word_names], [c.name for c in concepts], [c.pattern for c in concepts],
                     [str(t) for t in exact_names])


# ---------------------------------------------------------------- a chunk of neurons

@dataclass
class Chunk:
    """What the index holds for a chunk of neurons, as flat arrays. Windows: one row per
    window token (its neuron, window, position row, activation); recorded: one row per
    recorded activation of the activation sample."""
    n: int                      # neurons in the chunk
    win_neuron: np.ndarray      # (W,) per window
    win_doc: np.ndarray
    win_top: np.ndarray         # bool: a top example
    win_peak: np.ndarray        # position row of the window's largest activation
    tok_window: np.ndarray      # (T,) per window token
    tok_row: np.ndarray
    tok_act: np.ndarray
    rec_neuron: np.ndarray      # (A,) per recorded activation
    rec_row: np.ndarray
    rec_act: np.ndarray


@dataclass
class Sample:
    """The activation sample's positions: their rows, the record (segment) of each, and
    where each contiguous run of positions starts (a document, or a piece of one: the
    indexer samples segments of long documents)."""
    row: np.ndarray
    record: np.ndarray          # record index, 0..n_records-1
    record_held: np.ndarray     # (n_records,) bool
    starts: np.ndarray          # (S,) bool
    record_doc: np.ndarray      # (n_records,) the doc_id of each record

    @property
    def held(self) -> np.ndarray:
        """Whether each position's record is held out."""
        return self.record_held[self.record]


# ---------------------------------------------------------------- reading the index

def read_positions(con, model_id: str, concepts: list[Concept]) -> Positions:
    """Every position a model's windows (at every site) and activation sample cover. The
    windows are unnested in the select list (generate_subscripts): a lateral join over
    `range` made DuckDB group by the token lists, 15x slower at GPT-2-small scale."""
    rows = con.execute("""
        WITH covered AS (
            SELECT doc_id, start_pos + i - 1 AS pos, tokens[i] AS token
            FROM (SELECT doc_id, start_pos, tokens, generate_subscripts(tokens, 1) AS i
                  FROM examples WHERE model_id = ?)
            UNION ALL SELECT doc_id, pos, token FROM tokens WHERE model_id = ?)
        SELECT doc_id, pos, any_value(token) AS token FROM covered GROUP BY doc_id, pos ORDER BY doc_id, pos""",
                       [model_id, model_id]).fetchnumpy()
    return build_positions(rows["doc_id"], rows["pos"], list(rows["token"]), concepts)


def read_sample(con, model_id: str, positions: Positions) -> Sample:
    rows = con.execute("SELECT doc_id, pos, coalesce(segment, 0) AS segment FROM tokens WHERE model_id = ? "
                       "ORDER BY doc_id, pos", [model_id]).fetchnumpy()
    row = positions.find(rows["doc_id"], rows["pos"])
    keys = np.stack([np.asarray(rows["doc_id"], np.int64), np.asarray(rows["segment"], np.int64)], axis=1)
    unique, record = np.unique(keys, axis=0, return_inverse=True) if len(row) else (np.zeros((0, 2), np.int64),
                                                                                  np.zeros(0, np.int64))
    doc, pos = np.asarray(rows["doc_id"], np.int64), np.asarray(rows["pos"], np.int64)
    starts = np.ones(len(doc), dtype=bool)
    starts[1:] = (doc[1:] != doc[:-1]) | (pos[1:] != pos[:-1] + 1)
    return Sample(row, np.asarray(record, np.int64).reshape(-1), held_out(unique[:, 0]), starts,
                  np.asarray(unique[:, 0], np.int64))


def read_chunk(con, model_id: str, positions: Positions, site: str, layer: int, neurons: np.ndarray) -> Chunk:
    """The windows and recorded activations of `neurons` (sorted) of one layer at one site."""
    lo, hi = int(neurons[0]), int(neurons[-1])
    win = con.execute("""
        SELECT e.neuron, e.kind = 'top' AS top, e.doc_id, e.start_pos, e.acts
        FROM examples e
        WHERE e.model_id = ? AND e.site = ? AND e.layer = ? AND e.neuron BETWEEN ? AND ? AND len(e.acts) > 0
        ORDER BY e.neuron, e.kind, e.band, e.rank""", [model_id, site, layer, lo, hi]).fetchnumpy()
    rec = con.execute("""
        SELECT a.neuron, a.doc_id, a.pos, a.act
        FROM activations a
        WHERE a.model_id = ? AND a.site = ? AND a.layer = ? AND a.neuron BETWEEN ? AND ?""",
                      [model_id, site, layer, lo, hi]).fetchnumpy()
    acts = [np.asarray(a, np.float64) for a in win["acts"]]
    lengths = np.array([len(a) for a in acts], np.int64)
    peak = np.array([int(np.nanargmax(a)) if len(a) and not np.isnan(a).all() else 0 for a in acts], np.int64)
    tok_window = np.repeat(np.arange(len(acts)), lengths)
    offset = np.arange(len(tok_window)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    start, doc = np.asarray(win["start_pos"], np.int64), np.asarray(win["doc_id"], np.int64)
    local = np.searchsorted(neurons, np.asarray(win["neuron"], np.int64))
    rec_local = np.searchsorted(neurons, np.asarray(rec["neuron"], np.int64))
    keep = (local < len(neurons)) & (neurons[np.minimum(local, len(neurons) - 1)] == win["neuron"])
    if not keep.all():
        raise ValueError("examples of a neuron outside the chunk")
    return Chunk(
        n=len(neurons), win_neuron=local, win_doc=doc, win_top=np.asarray(win["top"], bool),
        win_peak=positions.find(doc, start + peak),
        tok_window=tok_window, tok_row=positions.find(doc[tok_window], start[tok_window] + offset),
        tok_act=np.concatenate(acts) if acts else np.zeros(0), rec_neuron=rec_local,
        rec_row=positions.find(rec["doc_id"], rec["pos"]), rec_act=np.asarray(rec["act"], np.float64))


def chunk_plan(con, model_id: str, chunk: int = CHUNK) -> tuple[pd.DataFrame, list[tuple[str, int, np.ndarray]]]:
    """A model's neurons at every site (SoLU: pre_ln, the primary site, and post_ln), and
    (site, layer, neuron ids) chunks of at most `chunk`, in the same order."""
    neurons = con.execute("SELECT layer, neuron, site FROM neurons WHERE model_id = ? "
                          "ORDER BY NOT is_primary, site, layer, neuron", [model_id]).df()
    parts = [(str(site), int(layer), group.neuron.to_numpy(np.int64)[i:i + chunk])
             for (site, layer), group in neurons.groupby(["site", "layer"], sort=False)
             for i in range(0, len(group), chunk)]
    return neurons, parts
