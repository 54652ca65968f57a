"""Which units each neuron keeps: pure selection functions over tensors.

A unit is a segment of a document, named by its unit id (index.engine.batching). Every
function takes candidates laid out [n, C] (one row per neuron, C candidate units: the
list kept so far followed by a batch's units) and returns, per neuron, the indices of
the candidates to keep, EMPTY (-1) for an unfilled slot. The caller gathers what
travels with a candidate (position, window) with those indices, so selection never
copies activations.

Order is total, so results do not depend on the order units arrive in:

- top_k ranks by value, highest first; equal values go to the lower unit id. Selecting
  from the union of two kept lists therefore equals selecting from the union of the
  two unit sets: top_k(top_k(A) + top_k(B)) == top_k(A + B), which is what makes
  batches, and shards of a dataset, merge exactly.
- sample_groups keeps, within each group (an activation interval, or one group for a
  plain random sample), the units of lowest priority, a hash of (unit id, neuron,
  seed): a uniform random sample without replacement that any merge order reproduces.

Keys are packed into int64 so one torch.topk or torch.sort does the work; the ids
ranked must fit in 32 bits: they are segment unit ids, doc_id << 8 | segment
(index.engine.batching), so a run holds at most 2**24 documents.
"""
from __future__ import annotations

import torch

EMPTY = -1
_LOW32 = 0xFFFFFFFF
_MIN64 = torch.iinfo(torch.int64).min
_MAX64 = torch.iinfo(torch.int64).max
NO_SAMPLE = _MAX64  # the sample_key of an empty slot: above every real key


def _sortable_bits(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 with the same order (IEEE bits, negatives flipped)."""
    bits = (values.float() + 0.0).contiguous().view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into 0.0
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def top_key(values: torch.Tensor, units: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One int64 per candidate: larger means better (higher value, then lower unit id)."""
    key = (_sortable_bits(values) << 32) | (_LOW32 - (units & _LOW32))
    return torch.where(valid, key, _MIN64)


def top_k(values: torch.Tensor, units: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """[n, C] candidates -> [n, k] indices of the k best, best first."""
    key = top_key(values, units, valid)
    take = min(k, key.shape[1])
    best, idx = torch.topk(key, take, dim=1, largest=True, sorted=True)
    idx = torch.where(best == _MIN64, EMPTY, idx)
    if take < k:
        idx = torch.cat([idx, idx.new_full((idx.shape[0], k - take), EMPTY)], dim=1)
    return idx


def sample_groups(groups: torch.Tensor, priority: torch.Tensor, units: torch.Tensor, valid: torch.Tensor,
                  n_groups: int, per_group: int) -> torch.Tensor:
    """Keep the `per_group` lowest-priority candidates of each group.

    groups: [n, C] group of each candidate in [0, n_groups); priority: [n, C] 32-bit
    hashes. Returns [n, n_groups * per_group]: slot g * per_group + r holds the
    candidate of rank r in group g."""
    if n_groups >= 127:
        raise ValueError("at most 126 groups")
    key = torch.where(valid, sample_key(groups, priority, units), _MAX64)
    key, order = torch.sort(key, dim=1)
    group = torch.where(key == _MAX64, n_groups, key >> 56)
    col = torch.arange(key.shape[1], device=key.device).expand_as(key)
    starts = torch.ones_like(group, dtype=torch.bool)
    starts[:, 1:] = group[:, 1:] != group[:, :-1]
    rank = col - torch.cummax(torch.where(starts, col, 0), dim=1).values
    keep = (rank < per_group) & (group < n_groups)
    out = order.new_full((key.shape[0], n_groups * per_group + 1), EMPTY)
    slot = torch.where(keep, group * per_group + rank, n_groups * per_group)  # the spare last column
    out.scatter_(1, slot, torch.where(keep, order, EMPTY))
    return out[:, :-1]


def sample_key(groups, priority: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """The order sample_groups keeps: group, then priority, then unit id (its low 24 bits)."""
    groups = torch.as_tensor(groups, dtype=torch.int64, device=units.device)
    return (groups << 56) | ((priority & _LOW32) << 24) | (units & 0xFFFFFF)


def value_bands(values: torch.Tensor, max_act: torch.Tensor, n_bands: int) -> torch.Tensor:
    """Equal-width band of each value: band b holds (b * max / n, (b + 1) * max / n].
    max_act: [n]. Values <= 0 get band -1 (in no band)."""
    scaled = values.double() / max_act.double().clamp_min(1e-30)[:, None] * n_bands
    band = (torch.ceil(scaled) - 1).clamp(0, n_bands - 1).to(torch.int64)
    return torch.where(values > 0, band, -1)


def mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32), computed in int64 without overflow."""
    h = h & _LOW32
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _LOW32
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _LOW32
    return h ^ (h >> 16)


def unit_priority(units: torch.Tensor, neuron_keys: torch.Tensor, seed: int) -> torch.Tensor:
    """32-bit priorities of units `units` [n, C] for neurons `neuron_keys` [n]."""
    if units.dim() == 2 and units.shape[0] > 1 and units.stride(0) == 0:  # one row of units for every neuron
        units = units[:1]
    unit_hash = mix32(mix32(units & _LOW32) ^ (units >> 32) ^ mix32(torch.tensor(seed)))
    neuron_hash = mix32(neuron_keys.to(torch.int64) + 0x9E3779B9)
    return mix32(unit_hash ^ neuron_hash[:, None])


def merge_top(values: torch.Tensor | None, labels: torch.Tensor | None, new_values: torch.Tensor,
              new_labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k largest of the kept (values, labels) and the new candidates
    ([rows, m] each): a running top-k over candidates that arrive in blocks."""
    if values is not None:
        new_values, new_labels = torch.cat([values, new_values], 1), torch.cat([labels, new_labels], 1)
    top, at = torch.topk(new_values, min(k, new_values.shape[1]), dim=1)
    return top, torch.gather(new_labels, 1, at)
