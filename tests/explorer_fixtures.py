"""Fixtures for the explorer's tests: synthetic indexes and AppTest helpers.

Import them into a test module with `from explorer_fixtures import *`.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from index.synthetic import build_synthetic_index

APP = Path(__file__).resolve().parents[1] / "explorer" / "app.py"
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
