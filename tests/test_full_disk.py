"""A full disk: every writing command says so in one line (exit 2, no traceback) and
leaves no log, temporary or half-written file behind, and the database as it was. Runs
on a 16 MB tmpfs filled to the last byte (skipped where this process cannot mount one)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.db_files import digest
from solu.cli import main
from helpers.synthetic_index import build_synthetic_index

pytestmark = pytest.mark.integration  # a tmpfs mount

M = "gelu-synth"


@pytest.fixture(scope="module")
def full(tmp_path_factory, tiny_checkpoints, tiny_corpus):
    root = tmp_path_factory.mktemp("full-disk")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        db = build_synthetic_index(root / "index.duckdb")
        shutil.copytree(tiny_checkpoints["gelu"], root / "ckpt")
        shutil.copyfile(tiny_corpus, root / "corpus.jsonl")
        assert main(["label", "--db", str(db), M, "0", "0", "before the disk filled"]) == 0  # its lock file exists
        with open(root / "filler", "wb", buffering=0) as f:  # to the last byte
            for size in (65536, 4096, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    pass
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


def listing(root: Path) -> dict[str, int]:
    """Every file with its size, and every folder."""
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("args", [
    ["label", "--db", "{db}", M, "0", "1", "a label"],
    ["autolabel", "--db", "{db}"],
    ["study", "create", "--db", "{db}", "s1", "--models", M, "solu-synth"],
    ["compare", "--db", "{db}", M, "solu-synth", "--out", "{root}/report"],
    ["index", "{root}/ckpt", "--db", "{db}", "--dataset", "{root}/corpus.jsonl", "--tokens", "300", "--no-progress"],
    ["train", "--act", "gelu", "--dataset", "{root}/corpus.jsonl", "--tokens", "2000", "--vocab", "300",
     "--layers", "1", "--d-model", "32", "--d-mlp", "64", "--heads", "2", "--ctx", "32", "--out", "{root}/run"],
], ids=lambda a: a[0] if a[0] != "study" else "study-create")
def test_a_full_disk_is_one_line_and_leaves_nothing(full, capsys, args):
    db = full / "index.duckdb"
    before, db_digest = listing(full), digest(db)
    code = main([a.format(db=db, root=full) for a in args])
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line or "Traceback" in line]
    assert code == 2 and len(err) == 1 and "space" in err[0].lower(), err
    assert digest(db) == db_digest
    assert listing(full) == before  # no .wal, .tmp, .indexing, 0-byte PNG, state file or --out folder
