"""The demo's promise: autolabel names a base64 neuron, and that neuron's strongest
firings really are inside base64. "Inside base64" is judged here by a regex of this
test's own, not by the project's detector: a run of 20 or more base64 characters that
mixes upper case, lower case and digits, and the peak token's characters lie in it. A
run may go on across a line break, as MIME and PEM wrap base64 (their decoders skip
line breaks), so a peak at the start of a wrapped line near the window's edge counts.

Fast: the planted corpus, with a synthetic neuron that fires where the corpus put its
base64. Slow: the index `solu demo` builds (set SOLU_DEMO_DIR to reuse a demo folder;
otherwise it is built in a temporary folder, which trains two models)."""
from __future__ import annotations

import os
import re

import duckdb
import numpy as np
import pytest

from index.measure.autolabel import autolabel
from helpers.measure_db import build_planted_db
from helpers.planted_corpus import planted_documents_with_base64

RUN = re.compile(r"[A-Za-z0-9+/]+(?:\r?\n[A-Za-z0-9+/]+)*={0,2}")
MIN_RUN = 20
TOP = 20
REQUIRED = 0.9


def in_base64_run(tokens: list[str], position: int) -> bool:
    """Whether most characters of tokens[position] lie in a base64-looking run of the window."""
    text = "".join(tokens)
    start = sum(len(t) for t in tokens[:position])
    end = start + len(tokens[position])
    for m in RUN.finditer(text):
        run = re.sub(r"\s", "", m.group())
        if len(run.rstrip("=")) < MIN_RUN or not (re.search(r"[A-Z]", run) and re.search(r"[a-z]", run)
                                                 and re.search(r"\d", run)):
            continue
        overlap = min(end, m.end()) - max(start, m.start())
        solid = len(tokens[position].strip()) or 1
        if overlap > 0 and overlap >= solid / 2:
            return True
    return False


def base64_neurons(db) -> dict[str, list[tuple[int, int, float]]]:
    """Per model, each neuron automatically labelled base64, with the share of its top-20
    examples whose peak token is in a base64 run by this test's regex."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        labelled = con.execute("""
            SELECT l.model_id, l.layer, l.neuron, n.site FROM current_labels l
            JOIN neurons n ON n.model_id = l.model_id AND n.layer = l.layer AND n.neuron = l.neuron AND n.is_primary
            WHERE l.source = 'auto' AND l.status = 'suggested' AND l.label = 'base64'
            ORDER BY ALL""").fetchall()
        models = [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY model_id").fetchall()]
        found: dict[str, list] = {m: [] for m in models}
        for model_id, layer, neuron, site in labelled:
            top = con.execute("SELECT tokens, acts FROM examples WHERE model_id = ? AND layer = ? AND neuron = ? "
                              "AND site = ? AND kind = 'top' ORDER BY rank LIMIT ?",
                              [model_id, layer, neuron, site, TOP]).fetchall()
            inside = [in_base64_run(list(tokens), int(np.argmax(acts))) for tokens, acts in top]
            found[model_id].append((layer, neuron, float(np.mean(inside)) if inside else 0.0))
    finally:
        con.close()
    return found


def report(found: dict) -> str:
    return "; ".join(f"{m}: " + (", ".join(f"L{layer}/N{n} {share:.0%}" for layer, n, share in rows) or "none")
                     for m, rows in found.items())


def test_the_regex_of_this_test():
    tokens = ["key", ":", " dGhl", "IHF1", "aWNr", "IGJy", "b3du", "IGZveA", "==", "\n", " getElements", "ByTagName"]
    assert in_base64_run(tokens, 4) and in_base64_run(tokens, 8)  # inside the run, and its padding
    assert not in_base64_run(tokens, 1) and not in_base64_run(tokens, 9)  # the colon, the newline
    assert not in_base64_run(tokens, 10) and not in_base64_run(tokens, 11)  # an identifier has no digit
    wrapped = ["x = ", "VTIE9GCiBNRVJDSE", "\n", "RVJ", "D", "SEF", "\n\n", "so", " Ab1", "\n", "Cd2"]
    assert in_base64_run(wrapped, 4)  # one run across a line break
    assert not in_base64_run(wrapped, 8)  # a blank line ends a run; "Ab1\nCd2" is short


def test_planted_corpus_base64_neuron_is_labelled_and_peaks_in_base64(tmp_path):
    db = build_planted_db(tmp_path / "planted.duckdb", planted_documents_with_base64(300, seed=0))
    autolabel(db)
    found = base64_neurons(db)
    print(f"\nplanted corpus, base64 neurons and their top-{TOP} share inside base64 runs: {report(found)}")
    for model_id in ("gelu-p", "solu-p"):
        assert (0, 0) in [(layer, n) for layer, n, _ in found[model_id]], report(found)
        assert max(share for _, _, share in found[model_id]) >= REQUIRED, report(found)
    # and no random neuron gets the label
    assert all(n == 0 for rows in found.values() for _, n, _ in rows), report(found)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    from explorer.demo import run_demo

    out = os.environ.get("SOLU_DEMO_DIR") or tmp_path_factory.mktemp("demo")
    return run_demo(out)


@pytest.mark.slow
def test_demo_solu_model_has_a_base64_neuron(demo_db):
    found = base64_neurons(demo_db)
    print(f"\nsolu demo, base64 neurons and their top-{TOP} share inside base64 runs: {report(found)}")
    con = duckdb.connect(str(demo_db), read_only=True)
    acts = dict(con.execute("SELECT model_id, act_fn FROM models").fetchall())
    con.close()
    solu = [m for m, a in acts.items() if a == "solu_ln"]
    assert solu and any(share >= REQUIRED for m in solu for _, _, share in found[m]), report(found)
