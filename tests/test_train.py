"""`solu train` end to end on tiny models: bad input, interruption and resumption, outputs."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from solu.cli import main
from helpers.corpora import make_corpus

TINY = ["--layers", "1", "--d-model", "32", "--d-mlp", "64", "--heads", "2", "--ctx", "32", "--vocab", "300",
        "--batch-size", "8", "--eval-tokens", "512", "--warmup-tokens", "512", "--device", "cpu"]


def run_cli(capsys, *args):
    """Exit code and the error line; progress lines may come before it, a traceback never."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    return code, errors


@pytest.fixture
def corpus(tmp_path):
    return str(make_corpus(tmp_path / "corpus.jsonl", n_docs=120))


@pytest.mark.parametrize("args, message", [
    (["--act", "relu"], "unknown act_fn 'relu'"),
    (["--act", "gelu", "--heads", "3"], "n_heads (3) must divide d_model (32)"),
    (["--act", "gelu", "--ctx", "8192"], "fewer than one context of 8192"),
    (["--act", "gelu", "--tokens", "0"], "tokens must be a positive integer"),
    (["--act", "gelu", "--precision", "fp16"], "precision must be one of auto, fp32, bf16"),
])
def test_bad_model_or_training_flags(tmp_path, capsys, corpus, args, message):
    out = tmp_path / "run"
    code, err = run_cli(capsys, "train", *TINY, *args, "--dataset", corpus, "--out", str(out))
    assert code == 2
    assert len(err) == 1 and message in err[0] and err[0].startswith("solu train: error:")
    assert not out.exists()


def test_bad_datasets(tmp_path, capsys):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n' * 50 + "{broken\n")
    no_column = tmp_path / "nocol.jsonl"
    no_column.write_text('{"body": "x"}\n')
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x89PNG\x00\x00")
    nuls = tmp_path / "nuls.jsonl"  # valid JSON whose only document is escaped NULs
    nuls.write_text('{"text": "\\u0000\\u0000\\u0000"}\n')
    cases = [
        (str(tmp_path / "missing.jsonl"), "not found"),
        (str(empty), "contains no usable text"),
        (str(binary), "contains no usable text (skipped 1 binary or non-UTF-8 file"),
        (str(nuls), f"dataset '{nuls}' contains no usable text (nothing but white space and control characters)"),
        (str(bad_json), "bad.jsonl:51: not a JSON object"),
        (str(no_column), "nocol.jsonl:1: no 'text' field"),
        ("hf:nobody/nothing", "cannot load Hugging Face dataset 'nobody/nothing'"),
    ]
    for dataset, message in cases:
        out = tmp_path / "run"
        code, err = run_cli(capsys, "train", *TINY, "--act", "gelu", "--dataset", dataset, "--out", str(out))
        assert code == 2, dataset
        assert len(err) == 1 and message in err[0], (dataset, err)
        assert not out.exists()


def test_existing_out_needs_resume_or_force(tmp_path, capsys, corpus):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, err = run_cli(capsys, "train", *TINY, "--act", "gelu", "--dataset", corpus, "--out", str(out))
    assert code == 2 and "already exists; pass --resume" in err[0]
    assert (out / "precious.txt").read_text() == "keep me"
    code, err = run_cli(capsys, "train", "--resume", "--dataset", corpus, "--out", str(out))
    assert code == 2 and "nothing to resume" in err[0]
    code, err = run_cli(capsys, "train", *TINY, "--act", "gelu", "--dataset", corpus, "--tokens", "512",
                        "--out", str(out), "--force")
    assert code == 0 and not err
    assert not (out / "precious.txt").exists() and json.loads((out / "config.json").read_text())["steps"] == 2


def test_an_eval_split_shorter_than_asked_is_said(tmp_path, capsys, corpus):
    code = main(["train", *TINY, "--act", "gelu", "--dataset", corpus, "--tokens", "256", "--eval-tokens", "100000000",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0 and "(100,000,000 asked); evaluating on those" in err
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert 0 < meta["eval_tokens"] < 100_000_000 and f"holds {meta['eval_tokens']:,} tokens" in err


def _train_cmd(corpus, out, *extra):
    return [sys.executable, "-m", "solu.cli", "train", *TINY, "--act", "solu_ln", "--dataset", corpus,
            "--tokens", str(120 * 8 * 32), "--checkpoint-every", "5", "--out", str(out), *extra]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, capsys, corpus):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(_train_cmd(corpus, interrupted), env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (interrupted / "train_state.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "checkpoint saved, continue with --resume" in err.strip().splitlines()[-1]
    stopped = json.loads((interrupted / "config.json").read_text())
    assert not stopped["complete"] and 0 < stopped["steps"] < 120

    assert main(["train", "--resume", "--out", str(interrupted)]) == 0
    straight = tmp_path / "straight"
    assert subprocess.run(_train_cmd(corpus, straight), env=env, capture_output=True).returncode == 0

    a, b = load_file(str(interrupted / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    done = json.loads((interrupted / "config.json").read_text())
    assert done["complete"] and done["steps"] == 120 and done["tokens_seen"] == 120 * 8 * 32


def test_outputs_of_a_finished_run(tiny_checkpoints):
    path = tiny_checkpoints["solu_ln"]
    meta = json.loads((path / "config.json").read_text())
    assert meta["format"] == "solu-checkpoint" and meta["complete"]
    assert meta["model"]["act_fn"] == "solu_ln" and meta["tokens_seen"] == 40 * 8 * 32
    assert meta["eval_loss"] < 5.0 < torch.log(torch.tensor(320.0)).item() + 0.1  # it learned something
    with open(path / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert (path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (path / "tokenizer.json").exists() and (path / "model.safetensors").exists()


def test_compare_prints_checkpoints_side_by_side(tiny_checkpoints, capsys):
    assert main(["compare", str(tiny_checkpoints["gelu"]), str(tiny_checkpoints["solu_ln"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["checkpoint", "act_fn", "shape"]
    assert "gelu" in lines[2] and "solu_ln" in lines[3]


def test_a_model_is_refused_only_when_its_weights_cannot_fit(monkeypatch):
    """check_fits compares the float32 weights with the memory available now; where that
    is unknown it refuses nothing."""
    from solu import model
    from solu.config import ModelConfig
    from solu.errors import UserError

    cfg = ModelConfig(act_fn="gelu", n_layers=2, d_model=256, d_mlp=1024, n_heads=4, n_ctx=128, d_vocab=4096)
    need = cfg.n_params_estimate() * 4
    monkeypatch.setattr(model, "available_memory", lambda: need - 1)
    with pytest.raises(UserError, match="needs about .* GB for its weights"):
        model.check_fits(cfg)
    for have in (need + 1, None):
        monkeypatch.setattr(model, "available_memory", lambda have=have: have)
        model.check_fits(cfg)
    # training holds gradients and Adam's moments too (16 bytes a parameter), in every process
    monkeypatch.setattr(model, "available_memory", lambda: 4 * need - 1)
    with pytest.raises(UserError, match="needs about .* GB for its weights, gradients and optimiser state;"):
        model.check_fits(cfg, training=True)
    monkeypatch.setattr(model, "available_memory", lambda: 4 * need + 1)
    model.check_fits(cfg, training=True)
    with pytest.raises(UserError, match="in each of 2 processes"):
        model.check_fits(cfg, training=True, copies=2)


def test_a_rerun_removes_what_a_killed_run_half_wrote(tmp_path, tiny_checkpoints, tiny_corpus):
    """kill -9 skips every cleanup and leaves write_atomic's temporary files; the next run
    in that --out removes those of dead processes (a running writer's stay)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_checkpoints["gelu"], out)
    dead = out / ".model.safetensors.999999999.tmp"  # beyond any pid
    live = out / f".notes.txt.{os.getppid()}.tmp"  # a running process's
    for stale in (dead, live):
        stale.write_bytes(b"half")
    assert main(["train", "--resume", "--out", str(out), "--tokens", str(41 * 8 * 32)]) == 0
    assert not dead.exists() and live.exists()

