"""Fixtures for the explorer's tests: synthetic indexes and AppTest helpers.

Import them into a test module with `from explorer_fixtures import *`.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from helpers.synthetic_index import build_synthetic_index

APP = Path(__file__).resolve().parents[2] / "explorer" / "app.py"
GELU, SOLU = "gelu-synth", "solu-synth"


@pytest.fixture
def synth_db(tmp_path, monkeypatch) -> Path:
    """A small synthetic index (2 models x 2 layers x 64 neurons), given to the app via SOLU_DB."""
    db = build_synthetic_index(tmp_path / "index.duckdb")
    monkeypatch.setenv("SOLU_DB", str(db))
    return db


@pytest.fixture
def probe_db(tmp_path, monkeypatch, tiny_checkpoints) -> Path:
    """A synthetic index whose models point at the two tiny trained checkpoints, so the
    text probe can run them (same shapes: 2 layers x 64 neurons)."""
    models = (("gelu-tiny", "gelu"), ("solu-tiny", "solu_ln"))
    db = build_synthetic_index(tmp_path / "index.duckdb", models=models, post_ln=True)
    con = duckdb.connect(str(db))
    for model_id, act in models:
        con.execute("UPDATE models SET source = ? WHERE model_id = ?", [str(tiny_checkpoints[act]), model_id])
    con.close()
    monkeypatch.setenv("SOLU_DB", str(db))
    return db


HOSTILE_DOCS = ("x = {i}\n<script>alert({i})</script>\n", "y = {i}\n<img src=x onerror=alert({i})>\n",
                "z = {i}\n**bold** $x^2$ _it_ \\(y\\) [a](javascript:alert({i})) `c` &amp;\n")


@pytest.fixture(scope="session")
def real_index(tmp_path_factory, tiny_corpus, tiny_checkpoints) -> Path:
    """A real `solu index` output: the two tiny checkpoints indexed on the tiny corpus plus
    documents full of HTML, Markdown and LaTeX, so some neurons' snippets hold them."""
    import json

    from index.build import build_index
    from index.engine.config import IndexConfig

    root = tmp_path_factory.mktemp("real-index")
    corpus = root / "corpus.jsonl"
    lines = tiny_corpus.read_text().splitlines()
    hostile = [json.dumps({"text": HOSTILE_DOCS[i % 3].format(i=i)}) for i in range(60)]
    mixed = [line for pair in zip(lines, hostile + [None] * len(lines)) for line in pair if line]
    corpus.write_text("\n".join(mixed) + "\n")
    cfg = IndexConfig(dataset=str(corpus), tokens=3_000, top_k=10, bands=3, per_band=2, random=2,
                      sample_tokens=1_024, device="cpu")
    db = root / "index.duckdb"
    build_index([tiny_checkpoints["gelu"], tiny_checkpoints["solu_ln"]], cfg, db, progress=False)
    return db


def copy_db(db: Path, to: Path) -> Path:
    """A private copy of a session-wide index, for a test that writes labels."""
    import shutil

    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db, to)
    return to


SCRIPT_PATTERNS = ("<script>alert(",)
IMG_PATTERNS = ("<img src=x onerror=alert(",)
MARKDOWN_PATTERNS = ("**bold**", "$x^2$")


def hostile_snippet(db: Path, patterns: tuple[str, ...]) -> dict:
    """The top snippet holding the most of `patterns` (the strongest among equals), with its
    position among its neuron's top snippets in rank order."""
    score = " + ".join("contains(text, ?)::INT" for _ in patterns)
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(f"""
            SELECT model_id, layer, neuron, site, position, tokens, acts, {score} AS hits
            FROM (SELECT *, array_to_string(tokens, '') AS text,
                         row_number() OVER (PARTITION BY model_id, layer, neuron, site ORDER BY rank) - 1 AS position
                  FROM examples WHERE kind = 'top')
            ORDER BY hits DESC, max_act DESC LIMIT 1""", list(patterns)).fetchone()
    finally:
        con.close()
    return dict(zip(("model_id", "layer", "neuron", "site", "position", "tokens", "acts", "hits"), row))


def app_at(page: str | None = None, **params):
    """An AppTest of the explorer, run once, then switched to views/<page>.py with the given
    query parameters and run again."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    if page:
        for key, value in params.items():
            at.query_params[key] = str(value)
        at.switch_page(f"views/{page}.py").run()
    return at


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def html_text(at) -> str:
    return "\n".join(h.value for h in at.html)


def labels_of(db: Path, model_id: str, layer: int, neuron: int) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT source, label, note, author, status FROM labels WHERE model_id = ? AND layer = ? "
                           "AND neuron = ? ORDER BY label_id", [model_id, layer, neuron]).fetchall()
    finally:
        con.close()
