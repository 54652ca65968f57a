"""Data-parallel training: two torchrun processes on the CPU (gloo) train like one process
with the same global batch, stop together and resume; the GPU path's functions on the CPU."""
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

from solu.batches import TrainStream, eval_rows
from solu.cli import build_parser, main
from solu.commands import rank_argv
from solu.config import ModelConfig, TrainConfig
from solu.corpus import DocumentOrder
from solu.device import autocast_dtype, enable_tf32, to_device
from solu.model import build_model
from solu.tokenizer import load_tokenizer
from solu.train import evaluate, train
from helpers.corpora import make_corpus

pytestmark = pytest.mark.integration  # torchrun ranks

SHAPE = dict(act_fn="solu_ln", n_layers=1, d_model=32, d_mlp=64, n_heads=2, n_ctx=32, d_vocab=300)
STEPS, BATCH = 160, 8
FLAGS = ["--act", "solu_ln", "--layers", "1", "--d-model", "32", "--d-mlp", "64", "--heads", "2", "--ctx", "32",
         "--vocab", "300", "--batch-size", str(BATCH), "--eval-tokens", "512", "--warmup-tokens", "512",
         "--tokens", str(STEPS * BATCH * 32), "--checkpoint-every", "5", "--device", "cpu"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, global batch 8, trained in this process."""
    root = tmp_path_factory.mktemp("ddp")
    corpus = make_corpus(root / "corpus.jsonl", n_docs=120)
    cfg = TrainConfig(dataset=str(corpus), tokens=STEPS * BATCH * 32, batch_size=BATCH, warmup_tokens=512,
                      eval_tokens=512, checkpoint_every=5, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(ModelConfig(**SHAPE), cfg, root / "one")
    finally:
        torch.set_num_threads(threads)
    return root


def loss_rows(path) -> dict[int, dict]:
    with open(path / "loss.csv") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def test_two_torchrun_processes_train_like_one_and_resume(one_process):
    corpus, one, two = one_process / "corpus.jsonl", one_process / "one", one_process / "two"
    cmd = [sys.executable, "-m", "solu.cli", "train", *FLAGS, "--dataset", str(corpus),
           "--tokenizer", str(one / "tokenizer.json"), "--nproc", "2", "--out", str(two)]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (two / "train_state.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to the launcher: it passes the signal to both ranks once
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [errors[0]] and "checkpoint saved, continue with --resume" in errors[0]  # rank 0 only
    assert "Traceback" not in err and "torch.distributed" not in err
    stopped = json.loads((two / "config.json").read_text())
    assert not stopped["complete"] and 0 < stopped["steps"] < STEPS and stopped["processes"] == 2

    resume = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "solu.cli", "train", "--resume", "--out", str(two)]
    done = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    meta_one, meta_two = (json.loads((p / "config.json").read_text()) for p in (one, two))
    for key in ("steps", "tokens_seen", "eval_tokens", "complete"):
        assert meta_two[key] == meta_one[key], key
    rows_one, rows_two = loss_rows(one), loss_rows(two)
    assert set(rows_one) <= set(rows_two)  # the stop added one row
    for step, row in rows_one.items():
        for key in ("tokens", "lr"):
            assert float(rows_two[step][key]) == float(row[key]), (step, key)  # same schedule
        for key in ("train_loss", "eval_loss"):
            if row[key]:
                assert float(rows_two[step][key]) == pytest.approx(float(row[key]), rel=1e-4), (step, key)
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        # Two ranks sum gradients in another order than one process, and AdamW turns rounding noise in a
        # near-zero gradient into a full-size step: single entries may differ (rare tokens' embedding rows;
        # attention key biases, on which the loss does not depend at all, differ throughout). What is
        # deterministic to float rounding is each tensor as a whole: it stays within 0.1% of one process's.
        if not key.endswith("attn.k.bias"):
            gap = float(torch.linalg.vector_norm(b[key].double() - a[key].double()))
            assert gap <= 1e-3 * float(torch.linalg.vector_norm(a[key].double())) + 1e-4, (key, gap)


def test_ranks_read_disjoint_rows_of_the_same_global_batches(one_process):
    corpus, tok = str(one_process / "corpus.jsonl"), load_tokenizer(one_process / "one" / "tokenizer.json")
    streams = [TrainStream(tok, DocumentOrder(corpus), BATCH, 32, share=(rank, 2)) for rank in range(2)]
    whole = TrainStream(tok, DocumentOrder(corpus), BATCH, 32)
    for _, batch, rank0, rank1 in zip(range(50), whole, *streams):  # more than one epoch
        assert rank0.shape == rank1.shape == (BATCH // 2, 32)
        assert torch.equal(torch.cat([rank0, rank1]), batch)
    assert streams[0].state() == streams[1].state() == whole.state()
    with pytest.raises(ValueError, match="cannot be shared"):
        TrainStream(tok, DocumentOrder(corpus), BATCH, 32, share=(0, 3))


def test_nproc_mistakes_are_one_line(tmp_path, capsys, one_process):
    base = ["train", *FLAGS, "--dataset", str(one_process / "corpus.jsonl")]
    from solu.flags import cores

    for extra, message in [(["--nproc", "2", "--batch-size", "7"],
                            "--batch-size 7 is the global batch and must be a multiple of --nproc 2"),
                           (["--nproc", "0"], f"--nproc must be from 1 to {cores()} (the cores of this machine), got 0"),
                           (["--nproc", str(cores() + 1)],
                            f"--nproc must be from 1 to {cores()} (the cores of this machine), got {cores() + 1}")]:
        assert main([*base, *extra, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"solu train: error: {message}"]
        assert not (tmp_path / "run").exists()


def test_each_rank_runs_the_same_command_without_nproc():
    argv = ["train", "--act", "gelu", "--lr", "0.001", "--nproc", "2", "--out", "runs/x", "--force", "--vocab", "512",
            "--shuffle", "off"]
    args = build_parser().parse_args(argv)
    ranked = rank_argv(args)
    assert "--nproc" not in ranked and ranked[0] == "train"
    again = build_parser().parse_args(ranked)
    drop = {"nproc", "parser", "func"}
    assert {k: v for k, v in vars(again).items() if k not in drop} == {k: v for k, v in vars(args).items()
                                                                          if k not in drop}


def test_precision_picks_bf16_autocast_on_cuda_and_when_asked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cuda, "auto") is torch.bfloat16
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cuda, "fp32") is None
    with pytest.raises(ValueError):
        TrainConfig(precision="fp16")


def test_bf16_autocast_changes_the_arithmetic_not_the_result(one_process):
    tok = load_tokenizer(one_process / "one" / "tokenizer.json")
    rows = eval_rows(tok, DocumentOrder(str(one_process / "corpus.jsonl")), 32, 512)
    model = build_model(ModelConfig(**SHAPE), seed=0)
    fp32, bf16 = evaluate(model, rows, 4, precision="fp32"), evaluate(model, rows, 4, precision="bf16")
    assert fp32 != bf16 and bf16 == pytest.approx(fp32, rel=2e-2)


def test_tf32_is_enabled_for_cuda_only():
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        assert enable_tf32(torch.device("cpu")) is False
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
        assert enable_tf32(torch.device("cuda")) is True
        assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before


def test_host_batches_reach_the_cpu_unchanged():
    batch = torch.arange(12).view(3, 4)
    assert torch.equal(to_device(batch, torch.device("cpu")), batch)
