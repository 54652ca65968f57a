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

import warnings
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import pandas as pd

from index.measure.concepts import Concept, concept, regex_concept
from index.measure.records import (CLASSES, N_FEATURES, N_KINDS, Chunk, Positions, RuleKind, Sample, exact, held_out,
                                   line_ends, line_starts, normalise, previous_classes, words)
from index.measure.verdict import TOP_SHARE

BOOTSTRAP = 200
# An explanation is chosen, on the fit records, among the candidates that account for at
# least the verdict's share of the neuron's fit top examples when any does.
TOP_PREFERENCE = TOP_SHARE
NEAR_BEST = 0.5  # ... and whose fit score is at least half of the best candidate's
_SEED = 0x5EED


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


def rule_of(positions: Positions, kind: int, ids: np.ndarray) -> Rule:
    """The Rule a candidate (kind, ids of Positions' features) stands for, in words and tokens."""
    kind = RuleKind(int(kind))
    ids = [int(i) for i in ids if i >= 0]
    names = positions.token_names
    if kind == RuleKind.CONCEPT:
        return Rule(kind.label, positions.concept_args(ids[0]))
    if kind == RuleKind.TOKENS:
        return Rule(kind.label, tuple(names[i] for i in ids))
    if kind == RuleKind.EXACT:
        return Rule(kind.label, tuple(positions.exact_names[i] for i in ids))
    if kind == RuleKind.WORD:
        return Rule(kind.label, (positions.word_names[ids[0]],))
    if kind in (RuleKind.LINE_END, RuleKind.LINE_START):
        return Rule(kind.label, (names[ids[0]],))
    if kind == RuleKind.IN_CONCEPT:
        c, t = divmod(ids[0], positions.n_tokens)
        return Rule(kind.label, (names[t],) + positions.concept_args(c))
    parts = positions.parts[kind - 1][ids[0]]
    if kind == RuleKind.AFTER_CLASS:
        return Rule(kind.label, (CLASSES[parts[0]], names[parts[1]]))
    return Rule(kind.label, tuple(names[i] for i in parts))


def _in_concept_ids(positions: Positions, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into rows, IN_CONCEPT id = concept * n_tokens + token) for every concept bit set."""
    r, c = np.nonzero(positions.bits[rows])
    return r, c.astype(np.int64) * positions.n_tokens + positions.features[rows[r], 0]


def _span(positions: Positions) -> int:
    return max(int(positions.features.max(initial=0)) + 1, positions.bits.shape[1] * positions.n_tokens, 1)


def counts_table(positions: Positions, rows: np.ndarray, record: np.ndarray, n_records: int):
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


def rule_holds(positions: Positions, rows: np.ndarray, kind: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whether each entry's rule (kind (E,), ids (E, 3)) holds at its position row. Each
    kind reads only what it needs (a column of candidates has one kind for every entry)."""
    special = (kind == RuleKind.CONCEPT) | (kind == RuleKind.IN_CONCEPT)
    out = np.zeros(len(rows), dtype=bool)
    for where, holds in ((~special, _feature_holds), (special, _concept_holds)):
        if where.all():
            return holds(positions, rows, kind, ids)
        if where.any():
            out[where] = holds(positions, rows[where], kind[where], ids[where])
    return out


def _column_holds(positions: Positions, rows: np.ndarray, neuron: np.ndarray, kind: np.ndarray,
                  ids: np.ndarray) -> np.ndarray:
    """rule_holds for entries of neurons `neuron` under each neuron's rule (kind (N,), ids (N, 3)):
    a column of candidates where every neuron has the same concept reads that concept's
    bits alone, without gathering each entry's rule."""
    n_concepts = positions.bits.shape[1]
    if (len(kind) and n_concepts and (kind == RuleKind.CONCEPT).all() and ids[0, 0] >= 0
            and (ids[:, 0] == ids[0, 0]).all()):
        return positions.bits[rows, min(int(ids[0, 0]), n_concepts - 1)]
    return rule_holds(positions, rows, kind[neuron], ids[neuron])


def _feature_holds(positions: Positions, rows: np.ndarray, kind: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Kinds TOKENS to EXACT: the position's feature of that kind is one of the ids."""
    feature = positions.features[rows, np.clip(kind - 1, 0, N_FEATURES - 1)]
    return (feature >= 0) & (feature[:, None] == ids).any(axis=1)


def _concept_holds(positions: Positions, rows: np.ndarray, kind: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """CONCEPT: the concept's bit at the position; IN_CONCEPT: that and the token."""
    n_concepts = positions.bits.shape[1]
    if not n_concepts:
        return np.zeros(len(rows), dtype=bool)
    in_concept = kind == RuleKind.IN_CONCEPT
    c = np.where(in_concept, np.maximum(ids[:, 0], 0) // positions.n_tokens, ids[:, 0])
    bit = positions.bits[rows, np.clip(c, 0, n_concepts - 1)] & (ids[:, 0] >= 0)
    if in_concept.any():
        bit &= ~in_concept | (positions.features[rows, 0] == np.maximum(ids[:, 0], 0) % positions.n_tokens)
    return bit


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


class Stat(IntEnum):
    """The sums, over the last axis of a statistics array, that `correlation` reads."""
    N = 0       # tokens
    SUM_P = 1   # the prediction's sum: tokens where the rule holds
    SUM_A = 2   # activations
    SUM_AA = 3  # squared activations
    SUM_PA = 4  # activations where the rule holds


N_STATS = len(Stat)


def correlation(stats: np.ndarray) -> np.ndarray:
    """Pearson r of an indicator prediction p and activations a from the sums in `Stat`
    order over the last axis. A rule that holds everywhere or nowhere predicts nothing: 0.
    NaN where the activations are constant (a dead neuron)."""
    n, sp, sa, saa, spa = (stats[..., k] for k in Stat)
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
        on = rule_holds(positions, rows, kinds[neuron, j], ids[neuron, j])
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


@dataclass
class Fit:
    """Each neuron's explanation, chosen on the fit records: its rule (kind, ids), whether
    it has one, its fit score (r over the fit records), the mean activation where it
    holds (what it predicts there) and the fit tokens."""
    kind: np.ndarray
    ids: np.ndarray
    has_rule: np.ndarray
    score: np.ndarray
    mean: np.ndarray
    tokens: np.ndarray


def choose_on_fit(positions: Positions, sample: Sample, chunk: Chunk, fit_table) -> Fit:
    """Every candidate's correlation over the fit windows and the fit half of the sample,
    and each neuron's choice among them (`choose`)."""
    n = chunk.n
    fit_win = ~held_out(chunk.win_doc)
    tok_fit = fit_win[chunk.tok_window]
    rec_fit = ~held_out(positions.doc[chunk.rec_row])
    n_sample_fit = float((~sample.held).sum())
    kinds, ids = candidates(positions, chunk, fit_win)
    m = kinds.shape[1]
    t_nb, t_row, t_act = chunk.win_neuron[chunk.tok_window][tok_fit], chunk.tok_row[tok_fit], chunk.tok_act[tok_fit]
    r_nb, r_row, r_act = chunk.rec_neuron[rec_fit], chunk.rec_row[rec_fit], chunk.rec_act[rec_fit]
    stats = np.zeros((n, m, N_STATS))
    sum_a, sum_aa = _sums(np.concatenate([t_nb, r_nb]), np.concatenate([t_act, r_act]), n)
    stats[:, :, Stat.N] = (np.bincount(t_nb, minlength=n) + n_sample_fit)[:, None]
    stats[:, :, Stat.SUM_A], stats[:, :, Stat.SUM_AA] = sum_a[:, None], sum_aa[:, None]
    for j in range(m):
        on_tok = _column_holds(positions, t_row, t_nb, kinds[:, j], ids[:, j])
        on_rec = _column_holds(positions, r_row, r_nb, kinds[:, j], ids[:, j])
        in_sample = _lookup(fit_table, np.zeros(1, np.int64), kinds[:, j], ids[:, j])[:, 0]
        stats[:, j, Stat.SUM_P] = np.bincount(t_nb, weights=on_tok, minlength=n) + in_sample
        stats[:, j, Stat.SUM_PA] = (np.bincount(t_nb, weights=on_tok * t_act, minlength=n)
                                    + np.bincount(r_nb, weights=on_rec * r_act, minlength=n))
    fit_r = np.where((ids >= 0).any(axis=2), correlation(stats), np.nan)
    best = choose(fit_r, fit_top_share(positions, chunk, fit_win, kinds, ids))
    pick = np.arange(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = stats[pick, best, Stat.SUM_PA] / stats[pick, best, Stat.SUM_P]
    return Fit(kinds[pick, best], ids[pick, best], ~np.isnan(fit_r[pick, best]), fit_r[pick, best], mean,
               stats[:, 0, Stat.N])


def score_held_out(positions: Positions, sample: Sample, chunk: Chunk, held_table, kind: np.ndarray,
                   rule_ids: np.ndarray, boot: int = BOOTSTRAP) -> dict[str, np.ndarray]:
    """Each neuron's chosen rule scored on its held-out records: per record sums, the
    score (r over every held-out token) and its 95% bootstrap interval over held-out
    documents; the held-out tokens and records."""
    n = chunk.n
    win_held = held_out(chunk.win_doc)
    tok_held = win_held[chunk.tok_window]
    rec = held_out(positions.doc[chunk.rec_row])
    win_slot = _slot(chunk.win_neuron, win_held)
    n_slots = int(win_slot.max(initial=-1)) + 1
    held_records = np.flatnonzero(sample.record_held)
    slot_of_record = np.full(len(sample.record_held), -1)
    slot_of_record[held_records] = n_slots + np.arange(len(held_records))
    stats = np.zeros((n, n_slots + len(held_records), N_STATS))
    nb = chunk.win_neuron[chunk.tok_window][tok_held]
    row, act = chunk.tok_row[tok_held], chunk.tok_act[tok_held]
    slot = win_slot[chunk.tok_window[tok_held]]
    on = rule_holds(positions, row, kind[nb], rule_ids[nb])
    _add(stats, nb, slot, np.ones(len(nb)), on, act)  # a window token counts in n and sum p
    rec_record = sample.record[np.searchsorted(sample.row, chunk.rec_row[rec])] if len(sample.row) else np.zeros(0, int)
    on = rule_holds(positions, chunk.rec_row[rec], kind[chunk.rec_neuron[rec]], rule_ids[chunk.rec_neuron[rec]])
    zero = np.zeros(int(rec.sum()))  # a sample token's n and p come from the counts below
    _add(stats, chunk.rec_neuron[rec], slot_of_record[rec_record], zero, zero, chunk.rec_act[rec], on)
    sizes = np.bincount(sample.record[sample.held], minlength=len(sample.record_held))[held_records]
    stats[:, n_slots:, Stat.N] += sizes[None, :]
    stats[:, n_slots:, Stat.SUM_P] += _lookup(held_table, held_records, kind, rule_ids)
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
    return {"score": score, "score_low": low, "score_high": high, "held_tokens": stats.sum(axis=1)[:, Stat.N],
            "held_records": (stats[:, :, Stat.N] > 0).sum(axis=1)}


def shares(positions: Positions, chunk: Chunk, kind: np.ndarray, rule_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The paper's rule read with each neuron's explanation (the share of its top examples
    whose peak the rule holds at), and the rule's share of its recorded activation mass."""
    n, top = chunk.n, chunk.win_top
    top_on = rule_holds(positions, chunk.win_peak[top], kind[chunk.win_neuron[top]], rule_ids[chunk.win_neuron[top]])
    n_top = np.bincount(chunk.win_neuron[top], minlength=n)
    rec_on = rule_holds(positions, chunk.rec_row, kind[chunk.rec_neuron], rule_ids[chunk.rec_neuron])
    mass = np.bincount(chunk.rec_neuron, weights=np.clip(chunk.rec_act, 0, None), minlength=n)
    mass_on = np.bincount(chunk.rec_neuron, weights=np.clip(chunk.rec_act, 0, None) * rec_on, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"top_share": np.bincount(chunk.win_neuron[top], weights=top_on, minlength=n) / n_top,
                "sample_share": np.where(mass > 0, mass_on / mass, np.nan)}


def score_chunk(positions: Positions, sample: Sample, chunk: Chunk, fit_table, held_table,
                boot: int = BOOTSTRAP) -> pd.DataFrame:
    """Choose each neuron's explanation on the fit records, score it on the held-out
    records, and read its shares. One row per neuron of the chunk (index = neuron's place
    in the chunk); a neuron without a rule gets NaN measures."""
    fit = choose_on_fit(positions, sample, chunk, fit_table)
    measured = {"fit_score": fit.score, "fit_mean": fit.mean,
                **score_held_out(positions, sample, chunk, held_table, fit.kind, fit.ids, boot),
                **shares(positions, chunk, fit.kind, fit.ids)}
    counts = {"held_tokens": measured.pop("held_tokens"), "held_records": measured.pop("held_records")}
    nan = ~fit.has_rule
    return pd.DataFrame({
        "kind": fit.kind, "ids": list(fit.ids), "has_rule": fit.has_rule,
        **{name: np.where(nan, np.nan, measured[name]) for name in
           ("fit_score", "fit_mean", "score", "score_low", "score_high", "top_share", "sample_share")},
        "fit_tokens": fit.tokens, **counts,
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
    """Add entries' sums in `Stat` order (count, p, a, a^2, on * a) into stats[neuron, slot]
    (on defaults to p)."""
    flat = neuron * stats.shape[1] + slot
    size = stats.shape[0] * stats.shape[1]
    on = p if on is None else on
    for k, w in enumerate((count, p.astype(np.float64), act, act * act, on * act)):
        stats[:, :, k] += np.bincount(flat, weights=w, minlength=size).reshape(stats.shape[:2])


def explain_chunk(ctx, chunk: Chunk) -> pd.DataFrame:
    """A chunk's explanations, with the model's shared records (a driver.Context)."""
    return score_chunk(ctx.positions, ctx.sample, chunk, ctx.fit, ctx.held, ctx.boot)


EXPLANATION_COLUMNS = ["model_id", "layer", "neuron", "site", "kind", "explanation", "args", "score", "score_low",
                       "score_high", "fit_score", "fit_mean", "top_share", "sample_share", "fit_tokens",
                       "held_tokens", "held_records", "run_id"]


def explanation_rows(positions: Positions, scored: pd.DataFrame, site: str, layer: int,
                     ids: np.ndarray) -> pd.DataFrame:
    """score_chunk's result as rows for `explanations` (without model and run)."""
    rules = [rule_of(positions, k, i) if ok else None for k, i, ok in zip(scored.kind, scored.ids, scored.has_rule)]
    return scored.drop(columns=["ids", "has_rule"]).assign(
        site=site, layer=layer, neuron=ids, kind=[r.kind if r else None for r in rules],
        explanation=[r.text if r else None for r in rules], args=[list(r.args) if r else None for r in rules])


def finish_explanations(frames: list[pd.DataFrame], model_id: str, run_id: str | None) -> pd.DataFrame:
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EXPLANATION_COLUMNS)
    return out.assign(model_id=model_id, run_id=run_id)[EXPLANATION_COLUMNS]
