"""The training loop: AdamW, warmup + cosine decay, gradient clipping, a held-out eval
split, periodic checkpoints and resumption after an interruption."""
from __future__ import annotations

import csv
import math
import shutil
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import solu
from solu.batches import TrainStream, eval_rows, training_texts
from solu.checkpoint import CONFIG, read_meta, save_checkpoint, write_atomic
from solu.config import ModelConfig, TrainConfig
from solu.corpus import check_dataset
from solu.errors import UserError
from solu.model import build_model, resolve_device
from solu.tokenizer import load_tokenizer, train_tokenizer

STATE = "train_state.pt"
LOG_EVERY = 10  # steps between rows of the loss curve
LOSS_CSV, LOSS_PNG = "loss.csv", "loss.png"
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
def evaluate(model, rows: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size].to(model.cfg.device)
        total += lm_loss(model, batch).item() * len(batch)
        count += len(batch)
    model.train()
    return total / count


def prepare_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a run by accident; checked before anything is written."""
    if resume and force:
        raise UserError("--resume and --force contradict each other; pick one")
    if resume:
        if not (out / STATE).exists():
            raise UserError(f"nothing to resume in {out}: no {STATE}")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists; pass --resume to continue it or --force to replace it")


def train(model_cfg: ModelConfig | None, train_cfg: TrainConfig | None, out: Path, *, resume: bool = False,
          force: bool = False, tokenizer_path: str | None = None, tokens: int | None = None) -> dict:
    """Train into `out`. With resume=True the configs come from `out` (pass None), and
    `tokens`, if given, raises the token budget."""
    out = Path(out)
    prepare_out(out, resume, force)
    if resume:
        meta = read_meta(out)
        model_cfg, train_cfg = ModelConfig.from_dict(meta["model"]), _resumed_train_cfg(meta, tokens)
    device = resolve_device(train_cfg.device)
    check_dataset(train_cfg.dataset, train_cfg.text_column, train_cfg.seed)

    if resume:
        tok = load_tokenizer(out / "tokenizer.json")
    elif tokenizer_path:
        tok = load_tokenizer(tokenizer_path)
    else:
        print(f"training a {model_cfg.d_vocab}-token byte-level BPE on {train_cfg.dataset}", file=sys.stderr)
        tok = train_tokenizer(training_texts(train_cfg.dataset, train_cfg.text_column, train_cfg.seed,
                                             TOKENIZER_CHARS), model_cfg.d_vocab)
    if tok.get_vocab_size() > model_cfg.d_vocab:
        raise UserError(f"the tokenizer has {tok.get_vocab_size()} tokens, more than --vocab {model_cfg.d_vocab}")
    eval_set = eval_rows(tok, train_cfg.dataset, train_cfg.text_column, train_cfg.seed,
                         model_cfg.n_ctx, train_cfg.eval_tokens)

    # every input is valid: from here on the output directory is written
    if force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(model_cfg, seed=train_cfg.seed, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, betas=(0.9, 0.95),
                            weight_decay=train_cfg.weight_decay)
    state = torch.load(out / STATE, map_location=device, weights_only=False) if resume else {}
    if resume:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    stream = TrainStream(tok, train_cfg.dataset, train_cfg.text_column, train_cfg.seed,
                         train_cfg.batch_size, model_cfg.n_ctx, state.get("stream"))
    history: list[dict] = state.get("history", [])
    step, elapsed = state.get("step", 0), state.get("elapsed", 0.0)
    tokens_per_step = train_cfg.batch_size * model_cfg.n_ctx
    total_steps = max(1, train_cfg.tokens // tokens_per_step)
    warmup_steps = max(1, train_cfg.warmup_tokens // tokens_per_step)
    n_params = sum(p.numel() for p in model.parameters())

    def meta(train_loss: float | None, eval_loss: float | None, complete: bool) -> dict:
        return {
            "model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "act_fn": model_cfg.act_fn,
            "n_params": n_params, "tokens_seen": step * tokens_per_step, "steps": step,
            "train_loss": train_loss, "eval_loss": eval_loss, "eval_tokens": int(eval_set.numel()),
            "tokens_per_s": round(step * tokens_per_step / elapsed, 1) if elapsed else None,
            "train_seconds": round(elapsed, 1), "complete": complete, "dataset": train_cfg.dataset,
            "package_version": solu.__version__, "device": str(device),
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def checkpoint(train_loss: float | None, complete: bool) -> float:
        eval_loss = evaluate(model, eval_set, train_cfg.batch_size)
        if history and history[-1]["step"] == step:
            history[-1]["eval_loss"] = eval_loss
        else:
            history.append(_row(step, tokens_per_step, train_loss, eval_loss, opt.param_groups[0]["lr"]))
        training_state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                          "elapsed": elapsed, "stream": stream.state(), "history": history}
        write_atomic(out / STATE, lambda p: torch.save(training_state, p))
        save_checkpoint(out, model, tok, meta(train_loss, eval_loss, complete))
        write_loss_curve(out, history, f"{out.name} ({model_cfg.act_fn})")
        return eval_loss

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc=f"train {model_cfg.act_fn}", unit="step")
    batches = iter(stream)
    train_loss = history[-1]["train_loss"] if history else None
    with StopRequest() as stop:
        while step < total_steps:
            tokens = next(batches).to(device)
            start = time.perf_counter()
            lr = lr_at(step, total_steps, warmup_steps, train_cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = lm_loss(model, tokens)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            value = loss.item()
            train_loss = value if train_loss is None else 0.95 * train_loss + 0.05 * value  # smoothed
            if step % LOG_EVERY == 0:
                history.append(_row(step, tokens_per_step, train_loss, None, lr))
            elapsed += time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{step * tokens_per_step / max(elapsed, 1e-9):,.0f}",
                            refresh=False)
            if stop.requested:
                bar.close()
                checkpoint(train_loss, complete=False)
                raise UserError(f"stopped at step {step}/{total_steps}; checkpoint saved, "
                                "continue with --resume")
            if step % train_cfg.checkpoint_every == 0 and step < total_steps:
                checkpoint(train_loss, complete=False)
    bar.close()
    eval_loss = checkpoint(train_loss, complete=True)
    if stream.stats.summary():
        print(stream.stats.summary(), file=sys.stderr)
    return meta(train_loss, eval_loss, True)


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
    saved = TrainConfig.from_dict(meta["train"])
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

