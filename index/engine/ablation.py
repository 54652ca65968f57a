"""What ablating a neuron costs: the change in next-token loss on its top examples.

For every neuron of the indexed layers and each of its top-K windows (the tokens the
examples table shows, after a BOS token, as the model's whole context), the model runs
once as it is and once with the neuron's output zeroed (its activation where it enters
W_out: `hook_post`, after SoLU's LayerNorm), and once with it held at its mean
activation over the run (the stats' mean at that site). Stored per window token: the
loss of predicting that token from the tokens before it (in the window), and the change
each ablation makes. Rows of different neurons share a batch: each row zeroes its own
neuron. Cost: 3 forward passes over K x (window length + 1) tokens per neuron.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from index.engine.hooks import site_key

COLUMNS = ("layer", "neuron", "rank", "window_pos", "token_id", "loss", "delta_zero", "delta_mean")
ROW_TOKENS = 4096  # tokens per forward pass


def window_rows(valid: np.ndarray, tokens: np.ndarray, room: int):
    """(neuron, rank, first window position, token ids) of every filled slot's window,
    its -1 padding removed and, if it is longer, cut to its last `room` tokens."""
    for neuron, slot in zip(*np.nonzero(valid)):
        ids = tokens[neuron, slot]
        ids = ids[ids >= 0]
        yield int(neuron), int(slot) + 1, max(0, len(ids) - room), ids[-room:]


def losses(model, rows: torch.Tensor, lengths: torch.Tensor, hook: str | None = None,
           neuron: torch.Tensor | None = None, value: torch.Tensor | None = None) -> torch.Tensor:
    """Per row and position t >= 1, the loss of predicting rows[:, t] from rows[:, :t];
    with `hook`, row i's activation of neuron[i] at that hook is replaced by value[i]."""
    hooks = []
    if hook is not None:
        def ablate(x, hook):
            x = x.clone()
            x[torch.arange(x.shape[0]), :, neuron] = value[:, None].to(x.dtype)
            return x
        hooks = [(hook, ablate)]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        logits = model(rows)
    loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), rows[:, 1:], reduction="none")
    inside = torch.arange(rows.shape[1] - 1, device=rows.device)[None, :] < (lengths[:, None] - 1)
    return torch.where(inside, loss, torch.nan)


def ablation_effects(ckpt, sites, by_site: dict, device: torch.device, progress: bool = False) -> dict:
    """Rows for the `ablations` table (COLUMNS), for each layer's primary site's top examples."""
    from tqdm import tqdm

    out: dict[str, list] = {c: [] for c in COLUMNS}
    # the site that reads hook_post (where the activation enters W_out) holds the mean to ablate to
    post = {s.layer: s for s in sites if s.hook == f"blocks.{s.layer}.mlp.hook_post"}
    primary = [s for s in sites if s.primary and s.layer in post]
    room = ckpt.model_cfg.n_ctx - 1  # a BOS token comes first
    per_layer = {}
    for site in primary:
        pool = by_site[site_key(site)].top
        per_layer[site.layer] = list(window_rows(pool.valid.cpu().numpy(), pool.windows()[1].cpu().numpy(), room))
    total = sum(len(w) for w in per_layer.values())
    with tqdm(total=total, desc=f"ablation {ckpt.name}", unit="window", disable=not progress, leave=False) as bar:
        for layer, windows in per_layer.items():
            means = by_site[site_key(post[layer])].stats.moments.mean.float().cpu().numpy()
            width = 1 + max((len(w[3]) for w in windows), default=0)
            per_batch = max(1, ROW_TOKENS // width)
            for i in range(0, len(windows), per_batch):
                batch = windows[i:i + per_batch]
                rows = torch.zeros((len(batch), width), dtype=torch.long)
                rows[:, 0] = ckpt.bos_id
                for r, (_, _, _, ids) in enumerate(batch):
                    rows[r, 1:len(ids) + 1] = torch.from_numpy(ids.astype(np.int64))
                lengths = torch.tensor([len(w[3]) + 1 for w in batch])
                neurons = np.array([w[0] for w in batch])
                rows, lengths, held = rows.to(device), lengths.to(device), torch.from_numpy(neurons).to(device)
                clean = losses(ckpt.model, rows, lengths)
                zero = losses(ckpt.model, rows, lengths, post[layer].hook, held,
                              torch.zeros(len(batch), device=device))
                mean = losses(ckpt.model, rows, lengths, post[layer].hook, held,
                              torch.from_numpy(means[neurons]).to(device))
                clean, zero, mean = (x.cpu().numpy() for x in (clean, zero, mean))  # one transfer per batch
                for r, (neuron, rank, first, ids) in enumerate(batch):
                    n = len(ids)
                    out["layer"].append(np.full(n, layer))
                    out["neuron"].append(np.full(n, neuron))
                    out["rank"].append(np.full(n, rank))
                    out["window_pos"].append(first + np.arange(n))
                    out["token_id"].append(ids)
                    out["loss"].append(clean[r, :n])
                    out["delta_zero"].append(zero[r, :n] - clean[r, :n])
                    out["delta_mean"].append(mean[r, :n] - clean[r, :n])
                bar.update(len(batch))
    return {c: np.concatenate(v) if v else np.zeros(0) for c, v in out.items()}
