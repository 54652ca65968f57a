"""`solu experiment`: the grid, the same tables however the cells run (in process, on two
worker processes or Ray, resumed after a kill), the report, and its refusals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from index.measure.experiment import QUICK, Grid
from solu.cli import main

SMALL = ["--quick", "--layers", "1", "--seeds", "2", "--no-progress"]  # 4 cells


def tables(db: Path) -> dict[str, pd.DataFrame]:
    """What a run leaves that must not depend on where its cells ran."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            "cells": con.execute("SELECT model_id, act_fn, n_layers, seed, eval_loss FROM experiment_cells "
                                 "ORDER BY model_id").df(),
            "models": con.execute("SELECT model_id, act_fn, n_layers, n_params, eval_loss, tokens_trained FROM models "
                                  "ORDER BY model_id").df(),
            "neurons": con.execute("SELECT model_id, layer, neuron, site, max_act, frac_active FROM neurons "
                                   "ORDER BY ALL").df(),
            "explanations": con.execute("SELECT model_id, layer, neuron, site, explanation, score, top_share "
                                        "FROM explanations ORDER BY model_id, layer, neuron, site").df(),
        }
    finally:
        con.close()


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    for name in a:
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        for col in x.columns:
            if x[col].dtype.kind == "f":
                assert np.allclose(x[col], y[col], atol=atol, equal_nan=True), (name, col)
            elif name != "explanations" or atol == 0.0:
                assert (x[col].fillna("-") == y[col].fillna("-")).all(), (name, col)


def test_grid_round_trips_and_checks_itself():
    grid = Grid(**QUICK)
    assert Grid.from_dict(json.loads(json.dumps(grid.to_dict()))) == grid
    assert [c.model_id for c in grid.cells()][:2] == ["gelu-1l-s0", "solu-1l-s0"] and len(grid.cells()) == 8
    for bad in ({"acts": ("relu",)}, {"layers": (0,)}, {"seeds": ()}, {"heads": 3}, {"tokens": 0}, {"layers": (1, 1)}):
        with pytest.raises(ValueError):
            Grid(**bad)


@pytest.mark.parametrize("flags,needle", [
    (["--workers", "100000"], "--workers must be from 1 to"),
    (["--seeds", "0"], "--seeds: must be from 1 to 100"),
    (["--layers", "0"], "--layers: must be from 1 to 64"),
    (["--acts", "relu"], "--acts takes distinct activations"),
    (["--d-model", "30", "--heads", "4"], "n_heads (4) must divide d_model (30)"),
])
def test_bad_flags_are_one_line_before_any_work(tmp_path, capsys, flags, needle):
    out = tmp_path / "exp"
    assert main(["experiment", "--out", str(out), *SMALL, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential") / "exp"
    assert main(["experiment", "--out", str(out), *SMALL, "--workers", "1"]) == 0
    return out


def test_the_report_and_the_figure(reference):
    text = (reference / "report" / "report.md").read_text()
    assert "## What the grid supports" in text and "The grid supports:" in text
    assert "SoLU minus GELU" in text and "loss_ratio" in text
    assert (reference / "report" / "sizes.png").stat().st_size > 5000
    assert (reference / "report" / "layers.png").stat().st_size > 3000
    cells = tables(reference / "index.duckdb")["cells"]
    assert list(cells.model_id) == ["gelu-1l-s0", "gelu-1l-s1", "solu-1l-s0", "solu-1l-s1"]
    assert not list((reference / "runs").glob("*.duckdb*"))  # the cells' own databases are merged, then removed


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_two_workers_give_the_same_tables(reference, tmp_path, backend):
    """Two worker processes on this machine, or two on a Ray cluster (--address): the
    same tables as one process. The local workers listen on no network address."""
    from helpers.processes import ListeningWatch

    out = tmp_path / "exp"
    extra = []
    if backend == "ray":
        ray = pytest.importorskip("ray")
        import logging

        ray.init(num_cpus=2, object_store_memory=100 * 1024 ** 2, include_dashboard=False,
                 logging_level=logging.ERROR, log_to_driver=False)
        extra = ["--address", ray.get_runtime_context().gcs_address]
    try:
        with ListeningWatch() as watch:
            assert main(["experiment", "--out", str(out), *SMALL, "--workers", "2", *extra]) == 0
    finally:
        if backend == "ray":
            ray.shutdown()
    assert_same(tables(reference / "index.duckdb"), tables(out / "index.duckdb"))
    if backend == "local":
        assert len(watch.workers) >= 2 and watch.network == set(), watch.seen


def test_a_rerun_skips_finished_cells_and_refuses_another_grid(reference, tmp_path, capsys):
    out = tmp_path / "exp"
    import shutil

    shutil.copytree(reference, out)

    def finished_at():
        con = duckdb.connect(str(out / "index.duckdb"), read_only=True)
        try:
            return con.execute("SELECT model_id, finished_at FROM experiment_cells ORDER BY model_id").fetchall()
        finally:
            con.close()

    before = finished_at()
    assert main(["experiment", "--out", str(out), *SMALL, "--workers", "1"]) == 0
    assert len(before) == 4 and finished_at() == before  # no cell ran again
    assert_same(tables(reference / "index.duckdb"), tables(out / "index.duckdb"))
    assert main(["experiment", "--out", str(out), *SMALL, "--tokens", "20000"]) == 2
    assert "other settings (tokens)" in capsys.readouterr().err
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert main(["experiment", "--out", str(stranger), *SMALL]) == 2
    assert (stranger / "notes.txt").read_text() == "mine"


@pytest.mark.integration
def test_killed_mid_training_resumes_from_its_checkpoint(reference, tmp_path):
    """kill -9 while the second cell trains (the first is finished): the rerun keeps the
    first, resumes the second from its checkpoint, and ends with the same tables (the
    resumed weights equal to 1e-6, so scores to a small tolerance)."""
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "solu.cli", "experiment", "--out", str(out), *SMALL, "--workers", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    second = out / "runs" / "solu-1l-s0"
    deadline = time.time() + 180
    caught = False
    while time.time() < deadline and proc.poll() is None:
        config = second / "config.json"
        try:
            if (second / "train_state.pt").exists() and not json.loads(config.read_text())["complete"]:
                caught = True
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert caught, "the second cell was never seen mid-training"
    steps = json.loads((second / "config.json").read_text())["steps"]
    assert main(["experiment", "--out", str(out), *SMALL, "--workers", "1"]) == 0
    done = json.loads((second / "config.json").read_text())
    assert done["complete"] and done["steps"] > steps > 0
    assert_same(tables(reference / "index.duckdb"), tables(out / "index.duckdb"), atol=1e-3)
    a, b = (tables(p / "index.duckdb")["explanations"] for p in (reference, out))
    assert (a.explanation.fillna("-") == b.explanation.fillna("-")).mean() > 0.9
