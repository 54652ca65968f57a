"""Flags that start processes or threads are bounded by this machine (or, sent to a Ray
cluster, by a stated cap) and refused before any work: one line, exit 2, and no child
process, Ray or torchrun started (issue 30, its first cause)."""
from __future__ import annotations

import multiprocessing
import os
import subprocess

import pytest

from solu.cli import main
from solu.flags import MAX_CLUSTER_WORKERS, cores


@pytest.fixture
def no_children(monkeypatch):
    """Any attempt to start a process fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a child process was started")

    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.Process, "start", refuse)


def cases(tmp_path, db):
    ckpt = str(tmp_path / "ckpt")
    huge = "100000"
    return [
        (["autolabel", "--db", db, "--workers", huge], "--workers must be from 1 to"),
        (["autolabel", "--db", db, "--workers", "0"], "--workers must be from 1 to"),
        (["train", "--act", "gelu", "--out", str(tmp_path / "m"), "--nproc", "2048", "--device", "cpu"],
         "--nproc must be from 1 to"),
        (["index", ckpt, "--db", str(tmp_path / "i.duckdb"), "--workers", huge], "--workers must be from 1 to"),
        (["index", ckpt, "--db", str(tmp_path / "i.duckdb"), "--threads", huge], "--threads must be from 1 to"),
        (["index", ckpt, "--db", str(tmp_path / "i.duckdb"), "--workers", str(MAX_CLUSTER_WORKERS + 1),
          "--ray-address", "127.0.0.1:1"], f"--workers must be from 1 to {MAX_CLUSTER_WORKERS:,}"),
        (["experiment", "--out", str(tmp_path / "e"), "--quick", "--workers", huge], "--workers must be from 1 to"),
        (["experiment", "--out", str(tmp_path / "e"), "--quick", "--threads", huge], "--threads must be from 1 to"),
    ]


def test_every_process_flag_is_bounded_before_any_work(tmp_path, capsys, no_children):
    from measure_db import build_measure_db

    db = str(build_measure_db(tmp_path / "m.duckdb"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, needle in cases(tmp_path, db):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
        assert "the cores of this machine" in err[0] or "cluster" in err[0] or "GPUs" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was written either


def test_the_bound_is_the_cores_this_process_may_use():
    assert 1 <= cores() <= (os.cpu_count() or 1)
