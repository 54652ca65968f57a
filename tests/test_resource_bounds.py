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
    from helpers.measure_db import build_measure_db

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


# flags whose value sizes no work: a seed picks, a layer or neuron names, a port is checked against 65535
NOT_A_RESOURCE = {"seed", "layer", "neuron", "min_lr_ratio", "lr", "weight_decay", "grad_clip", "threshold"}


def numeric_flags():
    """(command words, option string, dest) for every int or float option of every command."""
    import argparse

    from solu.cli import build_parser

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*words, name])
            elif action.option_strings and action.dest not in NOT_A_RESOURCE and (
                    action.type in (int, float) or getattr(action.type, "__name__", "") == "count"):
                yield words, action.option_strings[0], action.dest

    return list(walk(build_parser(), []))


def required_args(words, tmp_path, db):
    ckpt = str(tmp_path / "ckpt")
    return {
        "train": ["--act", "gelu", "--out", str(tmp_path / "m"), "--device", "cpu"],
        "index": [ckpt, "--db", str(tmp_path / "i.duckdb")],
        "sql": ["SELECT 1", "--db", db],
        "autolabel": ["--db", db],
        "study create": ["s", "--db", db, "--models", "gelu"],
        "experiment": ["--out", str(tmp_path / "e"), "--quick"],
        "match": ["--db", db, "gelu", "solu"],
        "app": ["--db", db],
        "demo": ["--out", str(tmp_path / "d")],
        "compare": ["--db", db, "gelu", "solu"],
    }[" ".join(words)]


def test_every_numeric_flag_of_every_command_has_a_stated_bound(tmp_path, capsys, no_children):
    """An absurd value (10^13, far below the generic 10^15 cut) for each count flag of each
    command: exit 2, one line naming the bound, nothing started and nothing written."""
    from helpers.measure_db import build_measure_db

    db = str(build_measure_db(tmp_path / "m.duckdb"))
    before = sorted(p.name for p in tmp_path.iterdir())
    flags = numeric_flags()
    assert len(flags) > 40  # the walk found the commands' flags
    for words, flag, dest in flags:
        argv = [*words, *required_args(words, tmp_path, db), flag, str(10**13)]
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, argv
        assert len(err) == 1 and ("at most" in err[0] or " to " in err[0] or "between" in err[0]), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_launch_that_fails_part_way_ends_the_ranks_it_started(tmp_path, monkeypatch):
    """The second rank cannot start (as under a process cap): the first, already waiting for
    it at the rendezvous, is ended, and the user gets one line."""
    from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler

    from solu import data_parallel
    from solu.errors import UserError

    started = []
    real = subprocess_handler.SubprocessHandler._popen

    def popen_once(self, args, env):
        if started:
            raise OSError(11, "Resource temporarily unavailable")
        started.append(real(self, args, env))
        return started[-1]

    monkeypatch.setattr(subprocess_handler.SubprocessHandler, "_popen", popen_once)
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text to train on, repeated. " * 2000)
    argv = ["train", "--act", "gelu", "--layers", "1", "--d-model", "32", "--d-mlp", "64", "--heads", "2",
            "--ctx", "32", "--vocab", "300", "--batch-size", "8", "--tokens", "100000", "--device", "cpu",
            "--dataset", str(corpus), "--out", str(tmp_path / "run")]
    before = set(data_parallel.descendants())
    with pytest.raises(UserError, match="could not start 2 training processes: Resource temporarily unavailable"):
        data_parallel.launch(2, argv)
    assert len(started) == 1
    assert started[0].poll() is not None  # the rank that did start was ended
    left = [pid for pid in set(data_parallel.descendants()) - before if data_parallel._running(pid)]
    assert left == []


def test_train_threads_sets_torchs_threads_and_the_cli_shortens_openmps_spin(monkeypatch, tmp_path):
    import torch

    from solu import commands

    seen = {}

    def fake_train(args):
        seen["threads"] = torch.get_num_threads()
        return {"act_fn": "gelu", "eval_loss": 1.0, "tokens_seen": 1, "tokens_per_s": 1.0}

    monkeypatch.setattr(commands, "_train", fake_train)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["train", "--act", "gelu", "--out", str(tmp_path / "m"), "--device", "cpu", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": 1}
    assert os.environ["GOMP_SPINCOUNT"] == "3000"  # set before torch loads in a fresh `solu` process
