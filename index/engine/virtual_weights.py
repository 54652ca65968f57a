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

from index.engine.topk import merge_top
from solu.model import final_norm, mlp_read, mlp_written
from solu.sources import LoadedModel

COLUMNS = ("layer", "neuron", "direction", "sign", "rank", "other_layer", "other_neuron", "weight")


def virtual_weights(model, source: int, target: int) -> torch.Tensor:
    """[d_mlp of source, d_mlp of target]: each source neuron's virtual weight into each
    target neuron (target > source)."""
    return mlp_written(model, source, final_norm(model)[0]) @ mlp_read(model, target)


def connections(ckpt: LoadedModel, k: int, layers: list[int]) -> dict[str, np.ndarray]:
    """Each neuron's top and bottom k partners, downstream and upstream, among `layers`:
    each pair of layers' product once, kept as a running top-k per (layer, direction,
    sign), so memory stays at one [d_mlp, d_mlp] block (each target's W_in is read again
    for every source: a [d_model, d_mlp] scaling, against caching every layer's)."""
    layers = sorted(layers)
    if k == 0 or len(layers) < 2:
        return {c: np.zeros(0) for c in COLUMNS}
    model, d_mlp = ckpt.model, ckpt.model_cfg.d_mlp
    kept: dict[tuple, tuple] = {}
    with torch.inference_mode():
        norm = final_norm(model)[0]
        for i, source in enumerate(layers):
            written = mlp_written(model, source, norm)
            for target in layers[i + 1:]:
                block = written @ mlp_read(model, target)
                for layer, direction, weights, other in ((source, "downstream", block, target),
                                                         (target, "upstream", block.T, source)):
                    for sign, flip in (("pos", 1.0), ("neg", -1.0)):
                        # this block's own top k first: the running merge then reads [d_mlp, 2k]
                        value, at = torch.topk(weights, min(k, weights.shape[1]), dim=1, largest=flip > 0)
                        key = (layer, direction, sign)
                        kept[key] = merge_top(*kept.get(key, (None, None)), flip * value, other * d_mlp + at, k)
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    for (layer, direction, sign), (value, label) in sorted(kept.items()):
        n, top = value.shape
        label = label.numpy()
        rows["layer"].append(np.full(n * top, layer))
        rows["neuron"].append(np.repeat(np.arange(n), top))
        rows["direction"].append(np.full(n * top, direction, dtype=object))
        rows["sign"].append(np.full(n * top, sign, dtype=object))
        rows["rank"].append(np.tile(np.arange(1, top + 1), n))
        rows["other_layer"].append((label // d_mlp).ravel())
        rows["other_neuron"].append((label % d_mlp).ravel())
        rows["weight"].append((value.numpy() * (1.0 if sign == "pos" else -1.0)).ravel())
    return {c: np.concatenate(v) for c, v in rows.items()}
