"""Outputs never clobber (issue 30, cause 2): a folder a command writes into is new, empty,
or one it wrote before (its manifest says so). A user's files there are refused, or with
--force left alone while the command writes beside them; a user's file is never replaced.
A failed write leaves nothing half-made."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from helpers.measure_db import build_measure_db
from solu.cli import main
from solu.outputs import MANIFEST, OutputFolder


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_measure_db(tmp_path_factory.mktemp("noclobber") / "m.duckdb")


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def compare(db, out, *extra):
    return main(["compare", "--db", str(db), "gelu-m", "solu-m", "--out", str(out), *extra])


def test_compare_refuses_a_folder_of_the_users_and_never_replaces_their_files(db, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    (out / "sparsity.png").write_bytes(b"my own plot")
    before = files(out)
    for extra in ([], ["--force"]):  # --force writes beside a user's files, never over them
        assert compare(db, out, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("never replaced" if extra else "did not write") in err[0], err
        assert files(out) == before


def test_force_writes_beside_other_files_and_a_rerun_replaces_only_its_own(db, tmp_path, capsys):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert compare(db, out) == 2 and "notes.txt" in capsys.readouterr().err
    assert compare(db, out, "--force") == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["command"] == "compare" and "report.md" in manifest["files"] and "notes.txt" not in manifest["files"]
    assert (out / "notes.txt").read_text() == "keep me"
    fresh = tmp_path / "fresh"
    assert compare(db, fresh) == 0 and compare(db, fresh) == 0  # its own folder: rerun in place
    assert not [p for p in fresh.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_report_leaves_no_folder_and_no_temporary_file(db, tmp_path, monkeypatch, capsys):
    from index.measure import report

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "plot_sparsity", full_disk)
    out = tmp_path / "new"
    assert compare(db, out) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not out.exists()
    kept = tmp_path / "kept"  # a folder of its own from an earlier run keeps what it had
    monkeypatch.undo()
    assert compare(db, kept) == 0
    before = files(kept)
    monkeypatch.setattr(report, "plot_sparsity", full_disk)
    assert compare(db, kept) == 2
    assert files(kept) == before


def test_another_commands_folder_is_not_this_ones(tmp_path):
    from solu.errors import UserError

    out = tmp_path / "exp"
    OutputFolder(out, "--out", "experiment").write("report.md", lambda tmp: tmp.write_text("x"))
    with pytest.raises(UserError, match="did not write"):
        OutputFolder(out, "--out", "compare")
    OutputFolder(out, "--out", "experiment")  # its own


def test_demo_refuses_a_users_folder_before_any_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "index.duckdb").write_bytes(b"someone else's database")
    before = files(out)
    monkeypatch.setattr("explorer.demo.train_model", lambda *a, **k: pytest.fail("the demo started training"))
    for extra in ([], ["--force"]):
        assert main(["demo", "--out", str(out), "--quick", "--no-app", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "index.duckdb" in err[0], err
    assert files(out) == before
