"""Explanations scored on held-out records across each neuron's whole activation range.

The paper's rule reads only the top of a neuron's range; a neuron whose top examples are
base64 but which fires as strongly on other text passes it. Here each neuron, at every
site the index holds (SoLU: before and after its LayerNorm), gets an explanation chosen
on one half of what the index holds about it and a score on the other half, in the
spirit of OpenAI's simulation scoring without a language model:

* Records. The neuron's windows (top examples, interval samples of every band, random
  samples: tokens with their activations) and the activation sample's segments (every
  token of the sampled text; activations above the index threshold are recorded, the
  others count as 0). A hash of the record's doc_id puts every record of a document on
  the fit split or the held-out split (`held_out`), so the two never share a document.
* Explanations, a family of rules over a token and its neighbours (`Rule`, `RuleKind`):
  a concept detector or user regex; a token rule (the token, compared case- and
  space-insensitively, is one of 1-2 given tokens); a token after a given token, or after
  two; a piece of a given word; a token at a line end or a line start; a token after a
  token class (a newline, a number, punctuation, a capitalised word); a token inside a
  concept (a digit inside a copyright line). Candidates come from the peaks of the fit
  top examples. A rule predicts a token's activation as its indicator times the mean
  activation where it held on the fit split.
* Choice (`choose`). Among the candidates that hold at the peak of at least the
  verdict's share of the fit top examples and correlate with the fit records nearly as
  well as the best one, the one that holds at the most fit top examples; when none does,
  the one whose prediction correlates best with the fit records' activations.
* Score. The correlation (Pearson) between predicted and actual activations over every
  token of the held-out records, with a 95% bootstrap interval that resamples held-out
  documents (Poisson weights shared by every record of a document). A sparse neuron that fires only where its rule holds scores
  near 1; one that fires as strongly where it does not scores low; a random one near 0.
  index.measure.verdict turns the score and the top share into the verdict.

Scoring runs a chunk of neurons at a time (memory stays flat as the index grows) on a
pool of processes (every core).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import pandas as pd

from index.measure.concepts import Concept, concept, concept_masks, regex_concept
from index.measure.verdict import TOP_SHARE

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
BOOTSTRAP = 200
CHUNK = 256  # neurons scored together
# An explanation is chosen, on the fit records, among the candidates that account for at
# least the verdict's share of the neuron's fit top examples when any does.
TOP_PREFERENCE = TOP_SHARE
NEAR_BEST = 0.5  # ... and whose fit score is at least half of the best candidate's
CLASSES = ("newline", "number", "punctuation", "capitalised word")  # what AFTER_CLASS reads before a token
_SEED = 0x5EED


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


_TEXT = {  # how each kind of rule reads, from its quoted args q and raw args a
    RuleKind.CONCEPT: lambda q, a: a[0],
    RuleKind.TOKENS: lambda q, a: " / ".join(q),
    RuleKind.EXACT: lambda q, a: " / ".join(q) + " (case kept)",
    RuleKind.CONTEXT: lambda q, a: f"{q[1]} after {q[0]}",
    RuleKind.WORD: lambda q, a: f"a piece of {q[0]}",
    RuleKind.LINE_END: lambda q, a: f"{q[0]} at a line end",
    RuleKind.LINE_START: lambda q, a: f"{q[0]} at a line start",
    RuleKind.AFTER_CLASS: lambda q, a: f"{q[1]} after a {a[0]}",
    RuleKind.CONTEXT2: lambda q, a: f"{q[2]} after {q[0]} {q[1]}",
    RuleKind.IN_CONCEPT: lambda q, a: f"{q[0]} inside {a[1]}",
}


@dataclass(frozen=True)
class Rule:
    """One explanation: its kind (a RuleKind's label) and its arguments, normalised tokens
    and names: the token set; [previous, token]; [word]; [token] for line_end and
    line_start; [class, token] for after_class; [first, second, token] for context2;
    [concept name] or [name, pattern] for a user regex; [token, concept name] or
    [token, name, pattern] for in_concept."""
    kind: str
    args: tuple[str, ...]

    @property
    def text(self) -> str:
        q = [f"`{repr(a)[1:-1]}`" for a in self.args]
        return _TEXT[RuleKind[self.kind.upper()]](q, self.args)

    def _concept(self, args: tuple[str, ...]) -> Concept:
        return regex_concept(*args) if len(args) == 2 else concept(args[0])

    def mask(self, tokens: list[str]) -> np.ndarray:
        """Where the rule holds on a stretch of consecutive tokens (the definition the
        scorer vectorises over Positions)."""
        norm = [normalise(t) for t in tokens]
        kind, a = RuleKind[self.kind.upper()], self.args
        token_is = np.array([n == a[-1] for n in norm], dtype=bool)
        if kind == RuleKind.CONCEPT:
            return self._concept(a).mask(tokens)
        if kind == RuleKind.TOKENS:
            return np.array([n in a for n in norm], dtype=bool)
        if kind == RuleKind.EXACT:
            return np.array([exact(t) in a for t in tokens], dtype=bool)
        if kind == RuleKind.CONTEXT:
            return token_is & np.array([i > 0 and norm[i - 1] == a[0] for i in range(len(norm))], dtype=bool)
        if kind == RuleKind.WORD:
            return np.array([w == a[0] for w in words(tokens)], dtype=bool)
        if kind == RuleKind.LINE_END:
            return token_is & line_ends(tokens)
        if kind == RuleKind.LINE_START:
            return token_is & line_starts(tokens)
        if kind == RuleKind.AFTER_CLASS:
            return token_is & (previous_classes(tokens) == CLASSES.index(a[0]))
        if kind == RuleKind.CONTEXT2:
            return token_is & np.array([i > 1 and (norm[i - 2], norm[i - 1]) == a[:2] for i in range(len(norm))],
                                       dtype=bool)
        return np.array([n == a[0] for n in norm], dtype=bool) & self._concept(a[1:]).mask(tokens)


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

    def _concept_args(self, c: int) -> tuple[str, ...]:
        pattern = self.concept_patterns[c]
        return (self.concept_names[c],) + ((pattern,) if pattern is not None else ())

    def rule(self, kind: int, ids: np.ndarray) -> Rule:
        kind = RuleKind(int(kind))
        ids = [int(i) for i in ids if i >= 0]
        names = self.token_names
        if kind == RuleKind.CONCEPT:
            return Rule(kind.label, self._concept_args(ids[0]))
        if kind == RuleKind.TOKENS:
            return Rule(kind.label, tuple(names[i] for i in ids))
        if kind == RuleKind.EXACT:
            return Rule(kind.label, tuple(self.exact_names[i] for i in ids))
        if kind == RuleKind.WORD:
            return Rule(kind.label, (self.word_names[ids[0]],))
        if kind in (RuleKind.LINE_END, RuleKind.LINE_START):
            return Rule(kind.label, (names[ids[0]],))
        if kind == RuleKind.IN_CONCEPT:
            c, t = divmod(ids[0], self.n_tokens)
            return Rule(kind.label, (names[t],) + self._concept_args(c))
        parts = self.parts[kind - 1][ids[0]]
        if kind == RuleKind.AFTER_CLASS:
            return Rule(kind.label, (CLASSES[parts[0]], names[parts[1]]))
        return Rule(kind.label, tuple(names[i] for i in parts))


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


def _in_concept_ids(positions: Positions, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into rows, IN_CONCEPT id = concept * n_tokens + token) for every concept bit set."""
    r, c = np.nonzero(positions.bits[rows])
    return r, c.astype(np.int64) * positions.n_tokens + positions.features[rows[r], 0]


def _span(positions: Positions) -> int:
    return max(int(positions.features.max(initial=0)) + 1, positions.bits.shape[1] * positions.n_tokens, 1)


def _counts_table(positions: Positions, rows: np.ndarray, record: np.ndarray, n_records: int):
    """Sorted keys and counts of (record, kind, id) over the given positions: how often each
    feature, concept and (concept, token) occurs in each record."""
    span = _span(positions)
    keys = []
    for kind in range(1, N_FEATURES + 1):
        f = positions.features[rows, kind - 1]
        ok = f >= 0
        keys.append((record[ok] * N_KINDS + kind) * span + f[ok])
    r, c = np.nonzero(positions.bits[rows])
    keys.append((record[r] * N_KINDS + RuleKind.CONCEPT) * span + c)
    r, ids = _in_concept_ids(positions, rows)
    keys.append((record[r] * N_KINDS + RuleKind.IN_CONCEPT) * span + ids)
    values, counts = np.unique(np.concatenate(keys).astype(np.int64), return_counts=True)
    return values, counts, span


def _lookup(table, record: np.ndarray, kind: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """How many positions of `record` satisfy each rule (kind (N,), ids (N, 3)): an (N, R) array."""
    values, counts, span = table
    total = np.zeros((len(kind), len(record)), dtype=np.float64)
    for j in range(ids.shape[1]):
        i = ids[:, j]
        use = (i >= 0) & ((kind == RuleKind.TOKENS) | (kind == RuleKind.EXACT) | (j == 0))
        key = (record[None, :] * N_KINDS + kind[:, None]) * span + np.maximum(i, 0)[:, None]
        at = np.minimum(np.searchsorted(values, key), len(values) - 1) if len(values) else np.zeros_like(key)
        found = (values[at] == key) if len(values) else np.zeros(key.shape, bool)
        total += np.where(found & use[:, None], counts[at] if len(values) else 0, 0)
    return total


def _holds(positions: Positions, rows: np.ndarray, kind: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whether each entry's rule (kind (E,), ids (E, 3)) holds at its position row."""
    feature = positions.features[rows, np.clip(kind - 1, 0, N_FEATURES - 1)]
    match = (feature >= 0) & (feature[:, None] == ids).any(axis=1)
    n_concepts = positions.bits.shape[1]
    if n_concepts:
        c = np.where(kind == RuleKind.IN_CONCEPT, np.maximum(ids[:, 0], 0) // positions.n_tokens, ids[:, 0])
        bit = positions.bits[rows, np.clip(c, 0, n_concepts - 1)] & (ids[:, 0] >= 0)
    else:
        bit = np.zeros(len(rows), bool)
    token = positions.features[rows, 0] == np.maximum(ids[:, 0], 0) % positions.n_tokens
    return np.select([kind == RuleKind.CONCEPT, kind == RuleKind.IN_CONCEPT], [bit, bit & token], match)


def _top_ids(neuron: np.ndarray, ids: np.ndarray, n: int, k: int) -> np.ndarray:
    """Per neuron, the k ids most frequent among its rows (ties: the smaller id), -1 padded."""
    out = np.full((n, k), -1, np.int64)
    ok = ids >= 0
    if not ok.any():
        return out
    pairs, counts = np.unique(np.stack([neuron[ok], ids[ok]], axis=1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))
    pairs = pairs[order]
    first = np.searchsorted(pairs[:, 0], pairs[:, 0], side="left")
    rank = np.arange(len(pairs)) - first
    keep = rank < k
    out[pairs[keep, 0], rank[keep]] = pairs[keep, 1]
    return out


def candidates(positions: Positions, chunk: Chunk, fit_win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each neuron's candidate rules, kind (N, M) and ids (N, M, 3): every concept, and for
    each other kind the ids most frequent at its fit top examples' peaks: token sets of
    the most frequent peak token alone or with the second or the third (a set of three
    unrelated tokens reads to people as no rule), three (concept, token) pairs, and one of
    each other kind. Unusable candidates have ids -1."""
    n, n_concepts = chunk.n, positions.bits.shape[1]
    peaks = chunk.win_top & fit_win
    neuron, rows = chunk.win_neuron[peaks], chunk.win_peak[peaks]
    kinds, ids = [], []

    def add(kind: RuleKind, found: np.ndarray) -> None:
        kinds.append(np.full(n, int(kind), np.int64))
        ids.append(np.concatenate([found, np.full((n, 3 - found.shape[1]), -1)], axis=1))

    for c in range(n_concepts):
        add(RuleKind.CONCEPT, np.full((n, 1), c))
    for kind in (RuleKind.TOKENS, RuleKind.EXACT):  # the most frequent peak token, alone or with the 2nd or 3rd
        tops = _top_ids(neuron, positions.features[rows, kind - 1], n, 3)
        for other in (None, 1, 2):
            chosen = tops[:, [0] if other is None else [0, other]]
            chosen = np.where((chosen >= 0).all(axis=1, keepdims=True), chosen, -1)
            add(kind, chosen)
    for kind in range(RuleKind.CONTEXT, RuleKind.CONTEXT2 + 1):
        add(RuleKind(kind), _top_ids(neuron, positions.features[rows, kind - 1], n, 1))
    r, in_concept = _in_concept_ids(positions, rows)  # a token often lies in several concepts: try three
    for found in _top_ids(neuron[r], in_concept, n, 3).T:
        add(RuleKind.IN_CONCEPT, found[:, None])
    return np.stack(kinds, axis=1), np.stack(ids, axis=1)


def correlation(stats: np.ndarray) -> np.ndarray:
    """Pearson r of an indicator prediction p and activations a from sums over the last
    axis: (n, sum p, sum a, sum a^2, sum p*a). A rule that holds everywhere or nowhere
    predicts nothing: 0. NaN where the activations are constant (a dead neuron)."""
    n, sp, sa, saa, spa = np.moveaxis(stats, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp, ma = sp / n, sa / n
        var_p, var_a = mp - mp * mp, saa / n - ma * ma
        r = (spa / n - mp * ma) / np.sqrt(np.maximum(var_p * var_a, 1e-300))
    scale = np.maximum(saa / np.maximum(n, 1), 1e-30)  # relative tolerance for a constant
    return np.where(var_a > 1e-9 * scale, np.where(var_p > 1e-12, np.clip(r, -1, 1), 0.0), np.nan)


def fit_top_share(positions: Positions, chunk: Chunk, fit_win: np.ndarray, kinds: np.ndarray,
                  ids: np.ndarray) -> np.ndarray:
    """(N, M): the share of each neuron's fit top examples whose peak token each candidate holds at."""
    peaks = chunk.win_top & fit_win
    neuron, rows = chunk.win_neuron[peaks], chunk.win_peak[peaks]
    n_top = np.bincount(neuron, minlength=chunk.n)
    out = np.zeros(kinds.shape)
    for j in range(kinds.shape[1]):
        on = _holds(positions, rows, kinds[neuron, j], ids[neuron, j])
        out[:, j] = np.bincount(neuron, weights=on, minlength=chunk.n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / n_top[:, None]


def choose(fit_r: np.ndarray, top_share: np.ndarray) -> np.ndarray:
    """Each neuron's explanation, on the fit records. The preferred candidates hold at the
    peak of at least TOP_PREFERENCE of its fit top examples and have a positive fit score
    of at least NEAR_BEST of the best candidate's; among them the one that holds at the
    most fit top examples wins (a rule a reader would give for the top), the fit score
    breaking ties. When none is preferred, the best fit score wins."""
    valid = ~np.isnan(fit_r)
    best = np.where(valid, fit_r, -np.inf).max(axis=1, keepdims=True)
    preferred = valid & (fit_r > 0) & (fit_r >= NEAR_BEST * best) & (top_share >= TOP_PREFERENCE)
    some = preferred.any(axis=1, keepdims=True)
    key = np.where(some, 100 * np.round(np.nan_to_num(top_share), 2) + fit_r, fit_r)  # top share first
    pool = np.where(some, preferred, valid)
    return np.where(pool.any(axis=1), np.argmax(np.where(pool, key, -np.inf), axis=1), 0)


def score_chunk(positions: Positions, sample: Sample, chunk: Chunk, fit_table, held_table,
                boot: int = BOOTSTRAP) -> pd.DataFrame:
    """Choose each neuron's explanation on the fit records and score it on the held-out
    records. One row per neuron of the chunk (index = neuron's place in the chunk)."""
    n = chunk.n
    win_held = held_out(chunk.win_doc)
    fit_win = ~win_held
    tok_fit = fit_win[chunk.tok_window]
    rec_held = held_out(positions.doc[chunk.rec_row])
    sample_doc_held = sample.held
    n_sample_fit = float((~sample_doc_held).sum())

    kinds, ids = candidates(positions, chunk, fit_win)
    m = kinds.shape[1]
    # ---- fit: every candidate's correlation over the fit windows and the fit half of the sample
    t_nb, t_row, t_act = chunk.tok_window, chunk.tok_row, chunk.tok_act
    t_nb = chunk.win_neuron[t_nb]
    fit_stats = np.zeros((n, m, 5))
    base = _sums(np.concatenate([t_nb[tok_fit], chunk.rec_neuron[~rec_held]]),
                 np.concatenate([t_act[tok_fit], chunk.rec_act[~rec_held]]), n)
    fit_stats[:, :, 0] = (np.bincount(t_nb[tok_fit], minlength=n) + n_sample_fit)[:, None]
    fit_stats[:, :, 2], fit_stats[:, :, 3] = base[0][:, None], base[1][:, None]
    fit_sum_on = np.zeros((n, m))
    fit_count_on = np.zeros((n, m))
    for j in range(m):
        on_tok = _holds(positions, t_row[tok_fit], kinds[t_nb[tok_fit], j], ids[t_nb[tok_fit], j])
        on_rec = _holds(positions, chunk.rec_row[~rec_held], kinds[chunk.rec_neuron[~rec_held], j],
                        ids[chunk.rec_neuron[~rec_held], j])
        in_sample = _lookup(fit_table, np.zeros(1, np.int64), kinds[:, j], ids[:, j])[:, 0]
        count_tok = np.bincount(t_nb[tok_fit], weights=on_tok, minlength=n)
        fit_stats[:, j, 1] = count_tok + in_sample
        act_on = (np.bincount(t_nb[tok_fit], weights=on_tok * t_act[tok_fit], minlength=n)
                  + np.bincount(chunk.rec_neuron[~rec_held], weights=on_rec * chunk.rec_act[~rec_held], minlength=n))
        fit_stats[:, j, 4] = act_on
        fit_sum_on[:, j], fit_count_on[:, j] = act_on, count_tok + in_sample
    usable = (ids >= 0).any(axis=2)
    fit_r = np.where(usable, correlation(fit_stats), np.nan)
    best = choose(fit_r, fit_top_share(positions, chunk, fit_win, kinds, ids))
    pick = np.arange(n)
    kind, rule_ids = kinds[pick, best], ids[pick, best]
    has_rule = ~np.isnan(fit_r[pick, best])
    with np.errstate(invalid="ignore", divide="ignore"):
        fit_mean = fit_sum_on[pick, best] / fit_count_on[pick, best]

    # ---- held-out: per record sums, the score and its bootstrap interval
    win_slot = _slot(chunk.win_neuron, win_held)
    n_slots = int(win_slot.max(initial=-1)) + 1
    held_records = np.flatnonzero(sample.record_held)
    slot_of_record = np.full(len(sample.record_held), -1)
    slot_of_record[held_records] = n_slots + np.arange(len(held_records))
    stats = np.zeros((n, n_slots + len(held_records), 5))
    tok_held = ~tok_fit
    nb, row, act = t_nb[tok_held], t_row[tok_held], t_act[tok_held]
    slot = win_slot[chunk.tok_window[tok_held]]
    on = _holds(positions, row, kind[nb], rule_ids[nb])
    _add(stats, nb, slot, np.ones(len(nb)), on, act)  # a window token counts in n and sum p
    rec = rec_held
    rec_record = sample.record[np.searchsorted(sample.row, chunk.rec_row[rec])] if len(sample.row) else np.zeros(0, int)
    on = _holds(positions, chunk.rec_row[rec], kind[chunk.rec_neuron[rec]], rule_ids[chunk.rec_neuron[rec]])
    zero = np.zeros(int(rec.sum()))  # a sample token's n and p come from the counts below
    _add(stats, chunk.rec_neuron[rec], slot_of_record[rec_record], zero, zero, chunk.rec_act[rec], on)
    sizes = np.bincount(sample.record[sample_doc_held], minlength=len(sample.record_held))[held_records]
    stats[:, n_slots:, 0] += sizes[None, :]
    stats[:, n_slots:, 1] += _lookup(held_table, held_records, kind, rule_ids)
    score = correlation(stats.sum(axis=1))
    # the bootstrap resamples held-out documents: every window and sample record of one
    # document shares its weight (they are not independent)
    slot_doc = np.full((n, stats.shape[1]), -1, np.int64)
    held_win = np.flatnonzero(win_held)
    slot_doc[chunk.win_neuron[held_win], win_slot[held_win]] = chunk.win_doc[held_win]
    slot_doc[:, n_slots:] = sample.record_doc[held_records][None, :]
    docs, doc_index = np.unique(slot_doc, return_inverse=True)
    per_doc = np.random.default_rng(_SEED).poisson(1.0, size=(boot, len(docs))).astype(np.float64)
    weights = per_doc[:, doc_index.reshape(slot_doc.shape)]  # (boot, n, slots)
    draws = correlation(np.einsum("bnr,nrs->nbs", weights, stats))
    with warnings.catch_warnings():  # a dead neuron's draws are all NaN, and so is its interval
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(draws, [2.5, 97.5], axis=1)

    # ---- the paper's rule, read with this explanation, and its share of the sample's mass
    top = chunk.win_top
    top_on = _holds(positions, chunk.win_peak[top], kind[chunk.win_neuron[top]], rule_ids[chunk.win_neuron[top]])
    n_top = np.bincount(chunk.win_neuron[top], minlength=n)
    rec_on = _holds(positions, chunk.rec_row, kind[chunk.rec_neuron], rule_ids[chunk.rec_neuron])
    mass = np.bincount(chunk.rec_neuron, weights=np.clip(chunk.rec_act, 0, None), minlength=n)
    mass_on = np.bincount(chunk.rec_neuron, weights=np.clip(chunk.rec_act, 0, None) * rec_on, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        top_share = np.bincount(chunk.win_neuron[top], weights=top_on, minlength=n) / n_top
        sample_share = np.where(mass > 0, mass_on / mass, np.nan)
    nan = ~has_rule
    return pd.DataFrame({
        "kind": kind, "ids": list(rule_ids), "has_rule": has_rule,
        "fit_score": np.where(nan, np.nan, fit_r[pick, best]), "fit_mean": np.where(nan, np.nan, fit_mean),
        "score": np.where(nan, np.nan, score), "score_low": np.where(nan, np.nan, low),
        "score_high": np.where(nan, np.nan, high), "top_share": np.where(nan, np.nan, top_share),
        "sample_share": np.where(nan, np.nan, sample_share),
        "fit_tokens": fit_stats[:, 0, 0], "held_tokens": stats.sum(axis=1)[:, 0],
        "held_records": (stats[:, :, 0] > 0).sum(axis=1),
    })


def _sums(neuron: np.ndarray, act: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.bincount(neuron, weights=act, minlength=n), np.bincount(neuron, weights=act * act, minlength=n)


def _slot(neuron: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Each held-out window's slot among its neuron's held-out windows (0, 1, ...); -1 for fit."""
    slot = np.full(len(neuron), -1)
    idx = np.flatnonzero(held)
    order = idx[np.argsort(neuron[idx], kind="stable")]
    sorted_neuron = neuron[order]
    first = np.searchsorted(sorted_neuron, sorted_neuron, side="left")
    slot[order] = np.arange(len(order)) - first
    return slot


def _add(stats: np.ndarray, neuron: np.ndarray, slot: np.ndarray, count: np.ndarray, p: np.ndarray,
         act: np.ndarray, on: np.ndarray | None = None) -> None:
    """Add entries' (count, p, a, a^2, on * a) into stats[neuron, slot] (on defaults to p)."""
    flat = neuron * stats.shape[1] + slot
    size = stats.shape[0] * stats.shape[1]
    on = p if on is None else on
    for k, w in enumerate((count, p.astype(np.float64), act, act * act, on * act)):
        stats[:, :, k] += np.bincount(flat, weights=w, minlength=size).reshape(stats.shape[:2])


# ---------------------------------------------------------------- the pool

@dataclass
class Context:
    """What every chunk of a model shares: its positions, its activation sample and the
    sample's counts of each rule's keys (fit half, and per held-out record)."""
    positions: Positions
    sample: Sample
    fit: tuple
    held: tuple
    boot: int = BOOTSTRAP

    @property
    def masks(self) -> np.ndarray:
        """(S, n_concepts): each sample position's concept bits."""
        return self.positions.bits[self.sample.row]

    @classmethod
    def build(cls, positions: Positions, sample: Sample, boot: int = BOOTSTRAP) -> "Context":
        fit_rows = sample.row[~sample.held]
        return cls(positions, sample, _counts_table(positions, fit_rows, np.zeros(len(fit_rows), np.int64), 1),
                   _counts_table(positions, sample.row, sample.record, len(sample.record_held)), boot)


def explain_chunk(ctx: Context, chunk: Chunk) -> pd.DataFrame:
    return score_chunk(ctx.positions, ctx.sample, chunk, ctx.fit, ctx.held, ctx.boot)


_STATE: dict = {}


def _init(ctx: Context, fn) -> None:
    _STATE.update(ctx=ctx, fn=fn)


def _run(chunk: Chunk):
    return _STATE["fn"](_STATE["ctx"], chunk)


def map_chunks(fn, ctx: Context, chunks, workers: int | None = None):
    """fn(ctx, chunk) for every chunk (an iterable of Chunk), results in order, on
    `workers` processes (default: every core; 1 runs in this process). fn must be a
    module-level function (workers receive it by name)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        for chunk in chunks:
            yield fn(ctx, chunk)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_init,
                             initargs=(ctx, fn)) as pool:
        pending = []
        for chunk in chunks:
            pending.append(pool.submit(_run, chunk))
            if len(pending) > 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


# ---------------------------------------------------------------- reading the index

def read_positions(con, model_id: str, concepts: list[Concept]) -> Positions:
    """Every position a model's windows (at every site) and activation sample cover."""
    rows = con.execute("""
        WITH covered AS (
            SELECT e.doc_id, e.start_pos + i - 1 AS pos, e.tokens[i] AS token
            FROM examples e, range(1, len(e.tokens) + 1) r(i)
            WHERE e.model_id = ?
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


EXPLANATION_COLUMNS = ["model_id", "layer", "neuron", "site", "kind", "explanation", "args", "score", "score_low",
                       "score_high", "fit_score", "fit_mean", "top_share", "sample_share", "fit_tokens",
                       "held_tokens", "held_records", "run_id"]


def chunk_plan(con, model_id: str, chunk: int = CHUNK) -> tuple[pd.DataFrame, list[tuple[str, int, np.ndarray]]]:
    """A model's neurons at every site (SoLU: pre_ln, the primary site, and post_ln), and
    (site, layer, neuron ids) chunks of at most `chunk`, in the same order."""
    neurons = con.execute("SELECT layer, neuron, site FROM neurons WHERE model_id = ? "
                          "ORDER BY NOT is_primary, site, layer, neuron", [model_id]).df()
    parts = [(str(site), int(layer), group.neuron.to_numpy(np.int64)[i:i + chunk])
             for (site, layer), group in neurons.groupby(["site", "layer"], sort=False)
             for i in range(0, len(group), chunk)]
    return neurons, parts


def explanation_rows(positions: Positions, scored: pd.DataFrame, site: str, layer: int,
                     ids: np.ndarray) -> pd.DataFrame:
    """score_chunk's result as rows for `explanations` (without model and run)."""
    rules = [positions.rule(k, i) if ok else None for k, i, ok in zip(scored.kind, scored.ids, scored.has_rule)]
    return scored.drop(columns=["ids", "has_rule"]).assign(
        site=site, layer=layer, neuron=ids, kind=[r.kind if r else None for r in rules],
        explanation=[r.text if r else None for r in rules], args=[list(r.args) if r else None for r in rules])


def finish_explanations(frames: list[pd.DataFrame], model_id: str, run_id: str | None) -> pd.DataFrame:
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EXPLANATION_COLUMNS)
    return out.assign(model_id=model_id, run_id=run_id)[EXPLANATION_COLUMNS]
