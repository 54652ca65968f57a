"""Per-neuron activation statistics, streamed over tokens and mergeable.

- max, min, mean, std and kurtosis are exact up to float32 rounding: each batch's
  power sums, taken about the running mean (so they hardly cancel), become its central
  moments, which are merged with Pebay's formulas in float64. Kurtosis is m4 / m2**2
  (3 for a Gaussian; higher means rarer, larger activations).
- The histogram counts every token it is given in fine bins on a power-of-two grid: 2 * FINE bins
  of width R / FINE over (-R, R], where R, a power of two, is the smallest that holds
  every activation seen so far. When a larger activation arrives, R doubles and pairs
  of bins merge, which loses nothing because the grid's edges nest. Bins are closed on
  the right, so a bin's edge at 0 separates "active" (> 0) tokens exactly. Scaling by
  a power of two is exact in floating point, so the counts equal numpy's on the same
  edges. The stored histogram groups these fine bins into at most `bins` equal-width
  bins covering [min, max] (edges snapped to the grid).
- frac_active is the exact fraction of tokens > 0; frac_active_rel, the fraction above
  `rel` x max, is read off the fine histogram (the one bin that straddles the
  threshold is split linearly), so it is within one fine bin (max / 64) of exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FINE = 128  # fine histogram bins on each side of zero
MIN_EXP = -40  # the smallest grid, for neurons that are exactly zero everywhere


def grid_exponent(max_abs: torch.Tensor) -> torch.Tensor:
    """The e with 2**e > max_abs (strictly), as int64."""
    _, exp = torch.frexp(max_abs.float())
    return torch.where(max_abs > 0, exp.to(torch.int64), MIN_EXP).clamp_min(MIN_EXP)


def coarsen(hist: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """The histogram on a grid 2**times [n] coarser: natural bin b, which holds
    ((b - FINE) w, (b - FINE + 1) w], goes to FINE + floor((b - FINE) / 2**times).
    No branch on the data, so no host sync on a GPU."""
    k = torch.arange(2 * FINE, device=hist.device) - FINE
    target = torch.div(k[None, :], torch.pow(2, times.clamp(max=62))[:, None], rounding_mode="floor") + FINE
    return torch.zeros_like(hist).scatter_add_(1, target, hist)


@dataclass
class Moments:
    """Count, mean and central moment sums M2, M3, M4 per neuron, float64."""

    count: float
    mean: torch.Tensor
    m2: torch.Tensor
    m3: torch.Tensor
    m4: torch.Tensor

    @classmethod
    def of_sums(cls, n: float, shift: torch.Tensor, sums: list[torch.Tensor]) -> "Moments":
        """From the power sums s1..s4 of x - shift over n tokens (float64, flat)."""
        s1, s2, s3, s4 = sums
        dm = s1 / n  # batch mean minus shift
        m2 = s2 - n * dm ** 2
        m3 = s3 - 3 * dm * s2 + 2 * n * dm ** 3
        m4 = s4 - 4 * dm * s3 + 6 * dm ** 2 * s2 - 3 * n * dm ** 4
        return cls(float(n), shift + dm, m2.clamp_min(0), m3, m4.clamp_min(0))

    def to(self, device) -> "Moments":
        return Moments(self.count, *(t.to(device) for t in (self.mean, self.m2, self.m3, self.m4)))

    def merge(self, b: "Moments") -> "Moments":
        a = self
        if a.count == 0:
            return b
        if b.count == 0:
            return a
        n = a.count + b.count
        d = b.mean - a.mean
        na, nb = a.count, b.count
        m2 = a.m2 + b.m2 + d ** 2 * na * nb / n
        m3 = (a.m3 + b.m3 + d ** 3 * na * nb * (na - nb) / n ** 2 + 3 * d * (na * b.m2 - nb * a.m2) / n)
        m4 = (a.m4 + b.m4 + d ** 4 * na * nb * (na * na - na * nb + nb * nb) / n ** 3
              + 6 * d ** 2 * (na * na * b.m2 + nb * nb * a.m2) / n ** 2 + 4 * d * (na * b.m3 - nb * a.m3) / n)
        return Moments(n, a.mean + d * nb / n, m2, m3, m4)


class Workspace:
    """Scratch buffers reused from batch to batch (a fresh 16 MB tensor per pass costs
    page faults that rival the arithmetic)."""

    def __init__(self):
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, shape, dtype, device) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        buf = self._bufs.get((name, dtype, str(device)))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype, device=device)
            self._bufs[(name, dtype, str(device))] = buf
        return buf[:n].view(shape)


@dataclass
class Duplicates:
    """Entries a batch view holds twice or more, to be taken out again: per site
    values [sites, R, d] that each appear `count` [R] extra times (padding filled with
    a copy of a real activation, so min and max need no mask)."""

    values: torch.Tensor
    count: torch.Tensor


@dataclass
class RowsOf:
    """A batch's hook outputs as whole rows: per site [B, T, d], column 0 the BOS, the
    real tokens of row b at columns 1..row_len[b] (int64 [B], on the CPU)."""

    acts: list[torch.Tensor]
    row_len: torch.Tensor


@dataclass
class RunningStats:
    moments: Moments
    max: torch.Tensor  # [n] float32
    min: torch.Tensor  # [n] float32
    exp: torch.Tensor  # [n] int64: the grid is (-2**exp, 2**exp]
    hist: torch.Tensor  # [n, 2 * FINE] int32, natural order: bin b holds ((b - FINE) w, (b - FINE + 1) w]

    @classmethod
    def empty(cls, n: int, device) -> "RunningStats":
        zeros = lambda: torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
        return cls(Moments(0.0, zeros(), zeros(), zeros(), zeros()),
                   torch.full((n,), -torch.inf, device=device), torch.full((n,), torch.inf, device=device),
                   torch.full((n,), MIN_EXP, dtype=torch.int64, device=device),
                   torch.zeros(n, 2 * FINE, dtype=torch.int32, device=device))

    @property
    def count(self) -> int:
        return int(self.moments.count)

    def update(self, x: torch.Tensor) -> None:
        """Add a batch of activations x: [tokens, n], or [sites, tokens, n] for
        sites * n neurons, site-major."""
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.shape[1] == 0:
            return
        self.add([x[s].unsqueeze(0) for s in range(x.shape[0])], x.shape[1], Workspace())

    def add(self, parts: list[torch.Tensor], n_tokens: int, work: Workspace,
            dup: Duplicates | None = None, hi: torch.Tensor | None = None,
            rows: "RowsOf | None" = None) -> None:
        """Add every entry of `parts`, one [B, L, d] view per site (any strides, read in
        place), less the duplicates; n_tokens, a host int, is the tokens they hold once
        each. hi: the batch's max per neuron [sites * d], when the caller has it.
        rows (CPU tensors only): the parts as whole rows [B, T, d], the real tokens of row
        b at columns 1..row_len[b] (the indexer's batches); min, power sums and histogram
        then come from two compiled passes over the real tokens (index.engine.kernels).
        Without rows every pass is a tensor op, in float32 buffers reused across
        batches, with no host sync (on a GPU)."""
        d = parts[0].shape[-1]
        if hi is None:
            hi = torch.cat([p.amax(1).amax(0) for p in parts])
        # the sums are of x - shift in float32: shift is float32 too, so the moments are about exactly it
        shift = (self.moments.mean if self.count else torch.cat([p[0, 0] for p in parts])).float().double()
        compiled = rows is not None
        if compiled:
            from index.engine import kernels

            lo, sums = kernels.moments(rows.acts, rows.row_len, shift)
        else:
            lo = torch.cat([p.amin(1).amin(0) for p in parts])  # two steps: amin over (0, 1) at once is slow on CPU
            sums = self._power_sums(parts, shift, work, dup)
        self.moments = self.moments.merge(Moments.of_sums(float(n_tokens), shift, sums))
        self.max, self.min = torch.maximum(self.max, hi), torch.minimum(self.min, lo)
        self._regrid(grid_exponent(torch.maximum(hi.abs(), lo.abs())))
        if compiled:
            kernels.histogram(rows.acts, rows.row_len, [self._neg_inverse_width(s, d) for s in range(len(parts))],
                              self.hist)
        else:
            self._add_to_histogram(parts, work, dup)

    def _power_sums(self, parts: list[torch.Tensor], shift: torch.Tensor, work: Workspace,
                    dup: Duplicates | None) -> list[torch.Tensor]:
        """The power sums s1..s4 of x - shift, [sites * d] float64 each, by tensor ops."""
        d = parts[0].shape[-1]
        sums = [torch.cat(s).double() for s in zip(*(_power_sums(p, shift[i * d:(i + 1) * d], work)
                                                     for i, p in enumerate(parts)))]
        if dup is not None:
            c = dup.count.double()[None, :, None]
            dev = dup.values.double() - shift.view(len(parts), 1, d)
            for k in range(4):
                sums[k] -= (c * dev ** (k + 1)).sum(1).reshape(-1)
        return sums

    def _add_to_histogram(self, parts: list[torch.Tensor], work: Workspace, dup: Duplicates | None) -> None:
        d = parts[0].shape[-1]
        for s, part in enumerate(parts):
            hist = self.hist[s * d:(s + 1) * d].view(-1)
            neg_inv = self._neg_inverse_width(s, d)
            index = _bin_index(part, neg_inv, work)
            ones = torch.ones(1, dtype=hist.dtype, device=hist.device).expand(index.numel())
            hist.index_add_(0, index.view(-1), ones)
            if dup is not None and dup.values.shape[1]:
                extra = _bin_index(dup.values[s].unsqueeze(0), neg_inv, Workspace())
                counts = dup.count.to(hist.dtype)[:, None].expand(extra.shape[1:])
                hist.index_add_(0, extra.reshape(-1), -counts.reshape(-1))

    def _neg_inverse_width(self, s: int, d: int) -> torch.Tensor:
        """-1 / bin width for the neurons of site s: a power of two, so x times it is exact."""
        exp = self.exp[s * d:(s + 1) * d]
        return -torch.pow(2.0, (int(np.log2(FINE)) - exp).double()).float()

    def _regrid(self, exp: torch.Tensor) -> None:
        """Coarsen every neuron's grid to hold exp (a no-op where it already does; on a
        CPU, where asking costs nothing, it is skipped when no grid grows)."""
        grow = (exp - self.exp).clamp_min(0)
        if self.hist.device.type == "cpu" and not bool(grow.any()):
            return
        self.hist = coarsen(self.hist, grow)
        self.exp = self.exp + grow

    def to(self, device) -> "RunningStats":
        return RunningStats(self.moments.to(device), *(t.to(device) for t in (self.max, self.min, self.exp, self.hist)))

    def rows(self, rows: slice) -> "RunningStats":
        """The stats of some neurons only."""
        m = self.moments
        return RunningStats(Moments(m.count, m.mean[rows], m.m2[rows], m.m3[rows], m.m4[rows]),
                            self.max[rows], self.min[rows], self.exp[rows], self.hist[rows])

    def merge(self, other: "RunningStats") -> "RunningStats":
        """The stats of both token sets (a new object; neither input changes)."""
        exp = torch.maximum(self.exp, other.exp)
        hist = coarsen(self.hist, exp - self.exp) + coarsen(other.hist, exp - other.exp)
        return RunningStats(self.moments.merge(other.moments) if other.count else self.moments,
                            torch.maximum(self.max, other.max), torch.minimum(self.min, other.min), exp, hist)

    def summary(self, rel: float, bins: int) -> dict[str, np.ndarray]:
        """Numpy arrays per neuron: the columns of the neurons table."""
        hist = self.hist.cpu().numpy().astype(np.int64)
        width = np.ldexp(1.0, self.exp.cpu().numpy() - int(np.log2(FINE)))
        mx, mn = self.max.cpu().double().numpy(), self.min.cpu().double().numpy()
        count = max(self.count, 1)
        m2, m4 = self.moments.m2.cpu().numpy(), self.moments.m4.cpu().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            kurtosis = np.where(m2 > 0, count * m4 / m2 ** 2, np.nan)
        out = {
            "max_act": mx, "min_act": mn, "mean_act": self.moments.mean.cpu().numpy(),
            "std_act": np.sqrt(m2 / count), "kurtosis": kurtosis,
            "frac_active": hist[:, FINE:].sum(1) / count,
            "frac_active_rel": fraction_above(hist, width, rel * mx) / count,
        }
        out.update(grouped_histogram(hist, width, mn, mx, bins))
        return out


def fraction_above(hist: np.ndarray, width: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Tokens above `threshold` per neuron, read off natural-order fine bins
    (the straddling bin split linearly). A threshold <= 0 counts nothing."""
    k = np.ceil(threshold / width) - 1  # the bin that holds the threshold
    b = np.clip(k + FINE, 0, 2 * FINE - 1).astype(np.int64)
    above_bins = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # tokens in bins >= b
    rows = np.arange(len(hist))
    upper = np.where(b + 1 < 2 * FINE, above_bins[rows, np.minimum(b + 1, 2 * FINE - 1)], 0)
    part = ((k + 1) * width - threshold) / width
    count = upper + hist[rows, b] * part
    return np.where(threshold > 0, count, 0.0)


def grouped_histogram(hist: np.ndarray, width: np.ndarray, mn: np.ndarray, mx: np.ndarray,
                      bins: int) -> dict[str, np.ndarray]:
    """At most `bins` equal-width bins covering [min, max], each a run of fine bins."""
    n = len(hist)
    k_lo = np.clip(np.ceil(np.nan_to_num(mn) / width) - 1, -FINE, FINE - 1).astype(np.int64)
    k_hi = np.clip(np.ceil(np.nan_to_num(mx) / width) - 1, -FINE, FINE - 1).astype(np.int64)
    span = np.maximum(k_hi - k_lo + 1, 1)
    group = -(-span // bins)
    n_bins = -(-span // group)
    cum = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(hist, axis=1)], axis=1)
    edges = (k_lo + FINE)[:, None] + group[:, None] * np.arange(bins + 1)[None, :]
    edges = np.minimum(edges, 2 * FINE)
    counts = np.diff(np.take_along_axis(cum, edges, axis=1), axis=1)
    lo = k_lo * width
    return {"hist_lo": lo, "hist_hi": lo + n_bins * group * width,
            "hist_counts": [counts[i, :n_bins[i]] for i in range(n)]}


def _power_sums(part: torch.Tensor, shift: torch.Tensor, work: Workspace) -> list[torch.Tensor]:
    """Sums over (B, L) of (part - shift)**k, k = 1..4, in float32 (part: [B, L, d])."""
    a = work.get("a", part.shape, torch.float32, part.device)
    b = work.get("b", part.shape, torch.float32, part.device)
    torch.sub(part, shift.float(), out=a)
    s1 = a.sum((0, 1))
    torch.mul(a, a, out=b)
    s2 = b.sum((0, 1))
    s3 = a.mul_(b).sum((0, 1))
    s4 = b.mul_(b).sum((0, 1))
    return [s1, s2, s3, s4]


def _bin_index(part: torch.Tensor, neg_inv: torch.Tensor, work: Workspace) -> torch.Tensor:
    """[B, L, d] int32 indices into a site's flat histogram [d * 2 FINE]: neuron j's
    natural bin FINE - 1 + ceil(x / w) = FINE - 1 - floor(-x / w). -x / w is exact (w a
    power of two) and the integers stay below 2**24, so float32 holds them exactly."""
    d = part.shape[-1]
    if d * 2 * FINE >= 2 ** 24:
        raise ValueError(f"at most {2 ** 24 // (2 * FINE) - 1} neurons per site")
    q = work.get("a", part.shape, torch.float32, part.device)
    torch.mul(part, neg_inv, out=q)
    q.floor_()
    base = torch.arange(d, device=part.device, dtype=torch.float32) * (2 * FINE) + (FINE - 1)
    torch.sub(base, q, out=q)
    index = work.get("index", part.shape, torch.int32, part.device)
    index.copy_(q)
    return index
