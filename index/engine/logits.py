"""Each neuron's direct effect on the logits, from the weights alone."""
from __future__ import annotations

import numpy as np
import torch

from solu.model import final_norm, mlp_written, unembed
from solu.sources import LoadedModel

NEURON_BLOCK = 512  # neurons whose effects on every token are held at once


def direct_logits(ckpt: LoadedModel, k: int, n_vocab: int, layers: list[int] | None = None,
                  progress: bool = False) -> dict[str, np.ndarray]:
    """Top and bottom tokens of each neuron's direct effect on the logits.

    The effect of neuron n is W_out[n] through the final norm into W_U. The norm is
    linearised: W_out[n] is centred (a LayerNorm subtracts the mean over d_model; an
    RMSNorm does not) and scaled by the norm's weight; its division by the residual's
    norm is taken as a constant, and its bias (the same for every neuron) dropped. So
    weights compare within a model, not as logits. Computed in float32. Tokens beyond
    the tokenizer's vocabulary are skipped.
    """
    model = ckpt.model
    norm, w_ln = final_norm(model)
    w_ln = w_ln.float() if w_ln is not None else 1.0
    w_u = unembed(model)[:, :n_vocab].float()
    rows: dict[str, list] = {k_: [] for k_ in ("layer", "neuron", "sign", "rank", "token_id", "weight")}
    k = min(k, n_vocab)
    if k == 0:
        return {k_: np.zeros(0) for k_ in rows}
    with torch.inference_mode():
        for layer in _layer_progress(progress, layers if layers is not None else range(ckpt.model_cfg.n_layers),
                                     ckpt.name):
            written = mlp_written(model, layer, norm) * w_ln
            for sign, largest in (("pos", True), ("neg", False)):
                # NEURON_BLOCK neurons at a time: GPT-2's [3,072 x 50,257] effects would be 617 MB
                weight, token = (torch.cat(c) for c in zip(*(
                    torch.topk(written[i:i + NEURON_BLOCK] @ w_u, k, dim=1, largest=largest)
                    for i in range(0, len(written), NEURON_BLOCK))))
                d_mlp = len(written)
                rows["layer"].append(np.full(d_mlp * k, layer))
                rows["neuron"].append(np.repeat(np.arange(d_mlp), k))
                rows["sign"].append(np.full(d_mlp * k, sign, dtype=object))
                rows["rank"].append(np.tile(np.arange(k), d_mlp))
                rows["token_id"].append(token.cpu().numpy().ravel())
                rows["weight"].append(weight.float().cpu().numpy().ravel())
    return {k_: np.concatenate(v) for k_, v in rows.items()}


def _layer_progress(enabled: bool, layers, name: str):
    from tqdm import tqdm

    return tqdm(list(layers), desc=f"logit effects {name}", unit="layer", disable=not enabled, dynamic_ncols=True,
                leave=False)
