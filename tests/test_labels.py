"""Labels: the CLI, export, history, concurrent writers, and surviving a re-index."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import duckdb

from explorer import db
from helpers.explorer_fixtures import GELU, SOLU, app_at, html_text, labels_of
from index.store import queries
from index.store.connection import replace_database
from helpers.synthetic_index import build_synthetic_index
from solu.cli import main


def test_label_cli_appends_and_shows_history(synth_db, capsys):
    assert main(["label", "--db", str(synth_db), GELU, "1", "5", "digits", "--note", "0-9", "--author", "ana"]) == 0
    assert main(["label", "--db", str(synth_db), GELU, "1", "5", "digits and '='"]) == 0
    assert [r[1] for r in labels_of(synth_db, GELU, 1, 5)] == ["digits", "digits and '='"]
    capsys.readouterr()
    assert main(["label", "--db", str(synth_db), GELU, "1", "5"]) == 0
    out = capsys.readouterr().out
    assert out.index("digits and '='") < out.index("ana")  # newest first, authors kept


def test_label_cli_refuses_unknown_neurons(synth_db, capsys):
    assert main(["label", "--db", str(synth_db), GELU, "9", "0", "x"]) == 2
    assert "no neuron gelu-synth L9 N0" in capsys.readouterr().err
    assert main(["label", "--db", str(synth_db.with_name("missing.duckdb")), GELU, "0", "0", "x"]) == 2


def test_labels_export_csv_and_jsonl(synth_db, tmp_path, capsys):
    main(["label", "--db", str(synth_db), SOLU, "0", "2", 'people, "quoted"\nnewline'])
    capsys.readouterr()
    assert main(["labels", "export", "--db", str(synth_db), "--format", "csv"]) == 0
    csv_text = capsys.readouterr().out
    assert csv_text.splitlines()[0] == "model_id,layer,neuron,label,note,source,author,score,status,created_at"
    assert '"people, ""quoted""\nnewline"' in csv_text and "numbers of people" not in csv_text
    out = tmp_path / "labels.jsonl"
    assert main(["labels", "export", "--db", str(synth_db), "--format", "jsonl", "--history", "--source", "human",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows if r["neuron"] == 2] == ["numbers of people", 'people, "quoted"\nnewline']
    assert all(r["source"] == "human" for r in rows) and rows[0]["created_at"].startswith("2025-01-01")


CLI_WRITER = """
import sys
from solu.cli import main
db, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    assert main(["label", "--db", db, "gelu-synth", "1", "9", f"cli {i}", "--author", "cli"]) == 0
"""


def test_concurrent_writers_lose_nothing(synth_db):
    """Two browser tabs (threads of the app process), a reader and the CLI (another process)."""
    n = 12
    cli = subprocess.Popen([sys.executable, "-c", CLI_WRITER, str(synth_db), str(n)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors: list[Exception] = []

    def tab(name: str):
        try:
            for i in range(n):
                db.write_label(synth_db, GELU, 1, 9, f"{name} {i}", author=name)
                db.read(synth_db, queries.label_history, GELU, 1, 9)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=tab, args=(name,)) for name in ("tab1", "tab2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cli.wait(timeout=120) == 0, cli.stderr.read()
    assert not errors
    db.close()
    rows = labels_of(synth_db, GELU, 1, 9)
    assert sorted(r[1] for r in rows) == sorted(f"{w} {i}" for w in ("tab1", "tab2", "cli") for i in range(n))
    con = duckdb.connect(str(synth_db), read_only=True)
    ids = [r[0] for r in con.execute("SELECT label_id FROM labels").fetchall()]
    con.close()
    assert len(ids) == len(set(ids))


def test_reindex_keeps_labels_and_the_app_sees_the_new_index(synth_db, tmp_path):
    at = app_at("neuron", model=GELU, layer=0, neuron=7, site="post")
    at.text_input[0].input("saved before re-index")
    [b for b in at.button if b.label == "Save label"][0].click().run()
    new = build_synthetic_index(tmp_path / "new.duckdb", seed=5, labels=False)
    replace_database(new, synth_db)
    at = app_at("neuron", model=GELU, layer=0, neuron=7, site="post")
    assert "saved before re-index" in html_text(at)
    con = duckdb.connect(str(synth_db), read_only=True)
    max_act = con.execute("SELECT max_act FROM neurons WHERE model_id = ? AND layer = 0 AND neuron = 7",
                          [GELU]).fetchone()[0]
    con.close()
    assert f"{max_act:.4g}" in [m.value for m in at.metric]  # the new index's numbers, not cached old ones


def test_export_out_writes_new_files_and_replaces_only_with_force(tmp_path, capsys):
    db = build_synthetic_index(tmp_path / "index.duckdb")
    out = tmp_path / "labels.csv"
    assert main(["labels", "export", "--db", str(db), "--out", str(out)]) == 0
    first = out.read_text()
    assert first.startswith("model_id,") and len(first.splitlines()) > 1
    out.write_text("edited by hand\n")
    assert main(["labels", "export", "--db", str(db), "--out", str(out)]) == 2
    assert out.read_text() == "edited by hand\n"
    assert main(["labels", "export", "--db", str(db), "--out", str(out), "--force"]) == 0
    assert out.read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.duckdb", "labels.csv"]


def test_a_failed_export_write_leaves_nothing(tmp_path, monkeypatch, capsys):
    import errno
    import os

    db = build_synthetic_index(tmp_path / "index.duckdb")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["labels", "export", "--db", str(db), "--out", str(tmp_path / "labels.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "No space left" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.duckdb"]
