"""The training loop: AdamW, warmup + cosine decay, gradient clipping, a held-out eval
split, periodic checkpoints and resumption after an interruption.

train() reads top to bottom: setup() builds a Run (configs, tokenizer, eval split, model,
optimizer, data stream, progress), step() trains on one batch, log() adds a row to the
loss curve, save() evaluates and writes a checkpoint.

Under torchrun (solu.data_parallel) every rank runs this same loop on its share of each
global batch (--batch-size is the global batch, so token counts and the learning-rate
schedule are those of one process); gradients are averaged by DistributedDataParallel,
the eval loss and the logged train loss are averaged over ranks, and rank 0 writes.
On CUDA the step runs under bf16 autocast with TF32 matmuls (solu.device), and a step's
loss is read back from the device only every LOG_EVERY steps.
"""
from __future__ import annotations

import csv
import gc
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

import solu
from solu import data_parallel
from solu.batches import TrainStream, eval_rows, training_texts
from solu.checkpoint import LOSS_CSV, LOSS_PNG, STATE, TOKENIZER, read_meta, save_checkpoint
from solu.config import ModelConfig, TrainConfig
from solu.corpus import DocumentOrder, check_dataset, dataset_hash
from solu.data_parallel import World
from solu.device import autocast, enable_tf32, to_device
from solu.errors import UserError
from solu.inputs import check_regular
from solu.model import build_model, check_fits, resolve_device
from solu.outputs import remove_stale_temps, write_atomic
from solu.tokenizer import load_tokenizer, train_tokenizer

LOG_EVERY = 10  # steps between rows of the loss curve
TOKENIZER_CHARS = 8_000_000  # text the tokenizer is fitted on


def lr_at(step: int, total_steps: int, warmup_steps: int, cfg: TrainConfig) -> float:
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def lm_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens, return_type="logits")
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


@torch.inference_mode()
def evaluate(model, rows: torch.Tensor, batch_size: int, world: World = World(), precision: str = "fp32") -> float:
    """Mean next-token loss over the eval split. Each rank scores its own `rows` (on the
    model's device); the sums are added over ranks."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=rows.device)  # loss x rows, rows
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        with autocast(rows.device, precision):
            loss = lm_loss(model, batch)
        sums[0] += loss.double() * len(batch)
        sums[1] += len(batch)
    model.train()
    world.sum(sums)
    return (sums[0] / sums[1]).item()


def prepare_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a run by accident; checked before anything is written."""
    from solu.outputs import check_out_dir

    if resume and force:
        raise UserError("--resume and --force contradict each other; pick one")
    check_out_dir(out, "--out")
    if resume:
        if not (out / STATE).exists():
            raise UserError(f"nothing to resume in {out}: no {STATE}")
    elif not force and out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists; pass --resume to continue it or --force to replace it")


@dataclass
class Run:
    """One training run as this rank holds it: what it trains, on what, and how far it got."""

    out: Path
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    world: World
    device: torch.device
    tok: Tokenizer
    eval_set: torch.Tensor  # this rank's share of the eval rows, on the device
    eval_tokens: int  # the whole eval split's
    model: torch.nn.Module  # the TransformerLens bridge that is saved
    net: torch.nn.Module  # what a step calls: the model, or DistributedDataParallel around it
    opt: torch.optim.Optimizer
    stream: TrainStream
    history: list[dict]  # the loss curve's rows
    step: int = 0
    elapsed: float = 0.0  # seconds spent in steps
    train_loss: float | None = None  # smoothed over steps
    unread: list[torch.Tensor] = field(default_factory=list)  # step losses not yet read back from the device

    @property
    def tokens_per_step(self) -> int:  # the global batch
        return self.train_cfg.batch_size * self.model_cfg.n_ctx

    @property
    def total_steps(self) -> int:
        return max(1, self.train_cfg.tokens // self.tokens_per_step)

    @property
    def warmup_steps(self) -> int:
        return max(1, self.train_cfg.warmup_tokens // self.tokens_per_step)


def _load_state(path: Path, device) -> dict:
    """The saved training state, or one clear line if it is damaged (a truncated file)."""
    check_regular(path, "training state", max_bytes=None)
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise UserError(f"{path} is damaged and cannot be resumed ({type(e).__name__}); "
                        f"start again with --force") from None
    if not isinstance(state, dict) or not {"model", "optimizer"} <= state.keys():
        raise UserError(f"{path} is not a solu training state; start again with --force")
    return state


def train(model_cfg: ModelConfig | None, train_cfg: TrainConfig | None, out: Path, *, resume: bool = False,
          force: bool = False, tokenizer_path: str | None = None, tokens: int | None = None) -> dict:
    """Train into `out`. With resume=True the configs come from `out` (pass None), and
    `tokens`, if given, raises the token budget. Under torchrun every rank calls this."""
    out = Path(out)
    prepare_out(out, resume, force)
    if resume:
        meta = read_meta(out)
        model_cfg, train_cfg = ModelConfig.from_dict(meta["model"]), _resumed_train_cfg(meta, tokens)
    ranks = data_parallel.world_size()
    if train_cfg.batch_size % ranks:
        raise UserError(f"--batch-size {train_cfg.batch_size} is the global batch and must be a multiple of "
                        f"the {ranks} processes")
    try:
        device = resolve_device(train_cfg.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    world = data_parallel.join(device)
    created = not out.exists()
    run = None
    try:
        run = setup(model_cfg, train_cfg, out, world, world.device(device), resume, force, tokenizer_path)
        eval_loss = train_to_budget(run)
        return describe(run, eval_loss, complete=True)
    except BaseException:
        if created and world.is_main and not (out / STATE).exists():  # nothing to resume: leave no folder
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        # DistributedDataParallel's reducer holds the process group: free it while the group
        # lives, or its gloo threads are joined later under the GIL they wait for (a hang)
        del run
        gc.collect()
        world.leave()


def setup(model_cfg: ModelConfig, train_cfg: TrainConfig, out: Path, world: World, device: torch.device,
          resume: bool, force: bool, tokenizer_path: str | None) -> Run:
    """Check every input, then (rank 0) create the output directory, and build the run."""
    check_fits(model_cfg, training=True)
    if tokenizer_path is not None and not str(tokenizer_path).strip():
        raise UserError("--tokenizer takes a tokenizer.json path, got an empty one")
    state = _load_state(out / STATE, device) if resume else {}
    check_dataset(train_cfg.dataset, train_cfg.text_column, train_cfg.seed)
    docs = DocumentOrder(train_cfg.dataset, train_cfg.text_column, train_cfg.seed, train_cfg.shuffle)
    tok = _tokenizer(model_cfg, train_cfg, out, world, resume, tokenizer_path, docs)
    eval_set = eval_rows(tok, docs, model_cfg.n_ctx, train_cfg.eval_tokens)
    if world.is_main and eval_set.numel() < train_cfg.eval_tokens:
        print(f"solu train: the eval split of {train_cfg.dataset} holds {eval_set.numel():,} tokens in whole contexts "
              f"({train_cfg.eval_tokens:,} asked); evaluating on those", file=sys.stderr)
    world.barrier()  # every rank has checked its inputs: from here on the output directory is written
    if world.is_main:
        if force and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)  # a killed run's half-written files
    enable_tf32(device)
    model = build_model(model_cfg, seed=train_cfg.seed, device=device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, betas=(0.9, 0.95),
                            weight_decay=train_cfg.weight_decay)
    if resume:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    stream = TrainStream(tok, docs, train_cfg.batch_size, model_cfg.n_ctx, state.get("stream"),
                         share=(world.rank, world.size))
    history = state.get("history", [])
    return Run(out, model_cfg, train_cfg, world, device, tok,
               eval_set=eval_set.tensor_split(world.size)[world.rank].to(device), eval_tokens=int(eval_set.numel()),
               model=model, net=world.wrap(model), opt=opt, stream=stream, history=history,
               step=state.get("step", 0), elapsed=state.get("elapsed", 0.0),
               train_loss=history[-1]["train_loss"] if history else None)


def _tokenizer(model_cfg: ModelConfig, train_cfg: TrainConfig, out: Path, world: World, resume: bool,
               tokenizer_path: str | None, docs: DocumentOrder) -> Tokenizer:
    """The run's tokenizer: saved with it, given, or trained (by rank 0, sent to the others)."""
    if resume:
        tok = load_tokenizer(out / TOKENIZER)
    elif tokenizer_path:
        tok = load_tokenizer(tokenizer_path)
    else:
        tok = None
        if world.is_main:
            print(f"training a {model_cfg.d_vocab}-token byte-level BPE on {train_cfg.dataset}", file=sys.stderr)
            tok = train_tokenizer(training_texts(docs, TOKENIZER_CHARS), model_cfg.d_vocab)
        if world.size > 1:
            tok = Tokenizer.from_str(world.from_main(tok.to_str() if tok else None))
    if tok.get_vocab_size() > model_cfg.d_vocab:
        raise UserError(f"the tokenizer has {tok.get_vocab_size()} tokens, more than --vocab {model_cfg.d_vocab}")
    return tok


def train_to_budget(run: Run) -> float:
    """Step until the token budget is spent, saving on the way; returns the final eval loss.
    Ctrl-C or SIGTERM (on any rank) stops every rank after the same step, with a checkpoint."""
    batches = iter(run.stream)
    bar = tqdm(total=run.total_steps, initial=run.step, desc=f"train {run.model_cfg.act_fn}", unit="step",
               disable=not run.world.is_main)
    with StopRequest() as stop:
        while run.step < run.total_steps:
            step(run, next(batches))
            bar.update(1)
            if run.step % LOG_EVERY == 0:
                log(run, bar)
            if run.world.any(stop.requested):
                bar.close()
                save(run, complete=False)
                raise UserError(f"stopped at step {run.step}/{run.total_steps}; checkpoint saved, "
                                "continue with --resume")
            if run.step % run.train_cfg.checkpoint_every == 0 and run.step < run.total_steps:
                save(run, complete=False)
    bar.close()
    eval_loss = save(run, complete=True)
    if run.world.is_main and run.stream.docs.stats.summary():
        print(run.stream.docs.stats.summary(), file=sys.stderr)
    return eval_loss


def step(run: Run, batch: torch.Tensor) -> None:
    """One optimizer step on this rank's rows of a global batch. The loss stays on the
    device (no host sync) until read_losses()."""
    tokens = to_device(batch, run.device)
    start = time.perf_counter()
    lr = lr_at(run.step, run.total_steps, run.warmup_steps, run.train_cfg)
    for group in run.opt.param_groups:
        group["lr"] = lr
    with autocast(run.device, run.train_cfg.precision):
        loss = lm_loss(run.net, tokens)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.train_cfg.grad_clip)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    run.step += 1
    run.unread.append(loss.detach())
    run.elapsed += time.perf_counter() - start


def read_losses(run: Run) -> None:
    """Fold the losses of the steps since the last read into the smoothed train loss:
    one device sync, and one all-reduce averaging the ranks' losses."""
    if not run.unread:
        return
    start = time.perf_counter()
    losses = torch.stack(run.unread)
    run.unread.clear()
    losses = run.world.sum(losses) / run.world.size
    for value in losses.tolist():
        run.train_loss = value if run.train_loss is None else 0.95 * run.train_loss + 0.05 * value
    run.elapsed += time.perf_counter() - start


def log(run: Run, bar: tqdm) -> None:
    read_losses(run)
    run.history.append(_row(run.step, run.tokens_per_step, run.train_loss, None, run.opt.param_groups[0]["lr"]))
    bar.set_postfix(loss=f"{run.train_loss:.3f}",
                    tok_s=f"{run.step * run.tokens_per_step / max(run.elapsed, 1e-9):,.0f}", refresh=False)


def save(run: Run, complete: bool) -> float:
    """Evaluate (every rank), then rank 0 writes the checkpoint, the training state for
    --resume and the loss curve; returns the eval loss."""
    read_losses(run)
    eval_loss = evaluate(run.model, run.eval_set, run.stream.rows, run.world, run.train_cfg.precision)
    if run.history and run.history[-1]["step"] == run.step:
        run.history[-1]["eval_loss"] = eval_loss
    else:
        run.history.append(_row(run.step, run.tokens_per_step, run.train_loss, eval_loss,
                                run.opt.param_groups[0]["lr"]))
    if not run.world.is_main:
        return eval_loss
    training_state = {"model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "step": run.step,
                      "elapsed": run.elapsed, "stream": run.stream.state(), "history": run.history}
    write_atomic(run.out / STATE, lambda p: torch.save(training_state, p))
    save_checkpoint(run.out, run.model, run.tok, describe(run, eval_loss, complete))
    write_loss_curve(run.out, run.history, f"{run.out.name} ({run.model_cfg.act_fn})")
    return eval_loss


def describe(run: Run, eval_loss: float | None, complete: bool) -> dict:
    """The checkpoint's config.json (less its format tag)."""
    tokens_seen = run.step * run.tokens_per_step
    return {
        "model": run.model_cfg.to_dict(), "train": run.train_cfg.to_dict(), "act_fn": run.model_cfg.act_fn,
        "n_params": sum(p.numel() for p in run.model.parameters()), "tokens_seen": tokens_seen,
        "steps": run.step, "train_loss": run.train_loss, "eval_loss": eval_loss, "eval_tokens": run.eval_tokens,
        "tokens_per_s": round(tokens_seen / run.elapsed, 1) if run.elapsed else None,
        "train_seconds": round(run.elapsed, 1), "complete": complete, "dataset": run.train_cfg.dataset,
        "dataset_sha256": dataset_hash(run.train_cfg.dataset, run.train_cfg.seed),
        "package_version": solu.__version__, "device": str(run.device), "processes": run.world.size,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _row(step: int, tokens_per_step: int, train_loss, eval_loss, lr: float) -> dict:
    return {"step": step, "tokens": step * tokens_per_step, "train_loss": train_loss,
            "eval_loss": eval_loss, "lr": lr}


class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step, so the checkpoint
    it then saves is consistent; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        self._old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _resumed_train_cfg(meta: dict, tokens: int | None) -> TrainConfig:
    """A resumed run keeps its saved config; only the token budget may be raised."""
    saved = TrainConfig.from_dict({"shuffle": False, **meta["train"]})  # runs from before --shuffle read in order
    if tokens is None or tokens == saved.tokens:
        return saved
    if tokens < saved.tokens:
        raise UserError(f"--tokens {tokens} is below the run's budget of {saved.tokens}; it can only be raised")
    return TrainConfig.from_dict({**saved.to_dict(), "tokens": tokens})


def write_loss_curve(out: Path, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def write_csv(path):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "tokens", "train_loss", "eval_loss", "lr"])
            writer.writeheader()
            writer.writerows(history)

    write_atomic(out / LOSS_CSV, write_csv)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, style in (("train_loss", "-"), ("eval_loss", "o-")):  # train loss is smoothed
        points = [(h["tokens"], h[key]) for h in history if h[key] is not None]
        if points:
            ax.plot(*zip(*points), style, label=key.replace("_", " "))
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    write_atomic(out / LOSS_PNG, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)

