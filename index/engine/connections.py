"""Connected neurons across layers, from the weights alone (virtual weights).

Neuron i of layer l writes W_out[l][i] into the residual stream; neuron j of a later
layer m reads it through block m's LayerNorm (ln2) and W_in[m][:, j]. Their virtual
weight is (W_out[l][i] * ln2_m.weight) . W_in[m][:, j]: how much a unit of i's
activation moves j's pre-activation through the direct residual path (attention and
the LayerNorm's division by the residual's norm are left out, so weights compare
within a model, not as activations). For a LayerNorm, W_out[l][i] is centred first
(the norm subtracts the mean over d_model); an RMSNorm does not centre.

For every neuron this keeps its K strongest positive and negative partners downstream
(in any later layer) and upstream (in any earlier layer). Cost: one
[d_mlp, d_model] x [d_model, d_mlp] product per pair of layers, n_layers (n_layers - 1)
/ 2 of them; float32.
"""
from __future__ import annotations

import numpy as np
import torch

from solu.model import final_norm, mlp_in_weights, mlp_norm_weight, mlp_out_weights
from solu.sources import LoadedModel

COLUMNS = ("layer", "neuron", "direction", "sign", "rank", "other_layer", "other_neuron", "weight")


def virtual_weights(model, source: int, target: int) -> torch.Tensor:
    """[d_mlp of source, d_mlp of target]: each source neuron's virtual weight into each
    target neuron (target > source)."""
    kind, _ = final_norm(model)
    w_out = mlp_out_weights(model, source).float()
    if kind == "LN":
        w_out = w_out - w_out.mean(1, keepdim=True)
    scale = mlp_norm_weight(model, target)
    if scale is not None:
        w_out = w_out * scale.float()
    return w_out @ mlp_in_weights(model, target).float()


def connections(ckpt: LoadedModel, k: int, layers: list[int]) -> dict[str, np.ndarray]:
    """Each neuron's top and bottom k partners, downstream and upstream, among `layers`."""
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    layers = sorted(layers)
    if k == 0 or len(layers) < 2:
        return {c: np.zeros(0) for c in COLUMNS}
    model = ckpt.model
    with torch.inference_mode():
        for layer in layers:
            down = [virtual_weights(model, layer, m) for m in layers if m > layer]
            up = [virtual_weights(model, m, layer).T for m in layers if m < layer]
            for direction, blocks, others in (("downstream", down, [m for m in layers if m > layer]),
                                              ("upstream", up, [m for m in layers if m < layer])):
                if not blocks:
                    continue
                weights = torch.cat(blocks, dim=1)  # [d_mlp, sum of the other layers' d_mlp]
                other_layer = np.concatenate([np.full(b.shape[1], m) for b, m in zip(blocks, others)])
                other_neuron = np.concatenate([np.arange(b.shape[1]) for b in blocks])
                top = min(k, weights.shape[1])
                for sign, largest in (("pos", True), ("neg", False)):
                    value, index = torch.topk(weights, top, dim=1, largest=largest)
                    index = index.cpu().numpy()
                    n = weights.shape[0]
                    rows["layer"].append(np.full(n * top, layer))
                    rows["neuron"].append(np.repeat(np.arange(n), top))
                    rows["direction"].append(np.full(n * top, direction, dtype=object))
                    rows["sign"].append(np.full(n * top, sign, dtype=object))
                    rows["rank"].append(np.tile(np.arange(1, top + 1), n))
                    rows["other_layer"].append(other_layer[index].ravel())
                    rows["other_neuron"].append(other_neuron[index].ravel())
                    rows["weight"].append(value.cpu().numpy().ravel())
    return {c: np.concatenate(v) for c, v in rows.items()}
