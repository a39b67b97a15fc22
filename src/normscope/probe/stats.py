"""Streaming, mergeable statistics with fixed-bin histograms.

:class:`StreamStats` keeps, for each of M metrics, the count, mean and M2 (sum of squared
deviations), min, max and a fixed-bin histogram. Memory is independent of the number of values
seen. Batches are folded in and states merged with Chan et al.'s parallel update::

    n = na + nb,  δ = mean_b − mean_a,  mean = mean_a + δ·nb/n,  M2 = M2a + M2b + δ²·na·nb/n

Quantiles (p01, p50, p99) are interpolated linearly inside the histogram bin (in the bin's own
scale), clamped to [min, max]: their error is at most one bin width. ``std`` is the population
SD, sqrt(M2/n).

Each metric has a fixed histogram range on one of three scales: ``linear`` (angles, fractions),
``log10`` (positive, many decades: norms, RMS, cos², gaps) and ``asinh`` (signed, many decades:
means; t = asinh(v/param)). Values outside go to underflow/overflow counters (log10 of 0 is an
underflow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["HistSpec", "StreamStats", "SPECS", "BINS"]

BINS = 2000


@dataclass(frozen=True)
class HistSpec:
    scale: str  # "linear" | "log10" | "asinh"
    lo: float  # in transformed units
    hi: float
    param: float = 1.0  # asinh scale
    bins: int = BINS

    def transform(self, v: torch.Tensor) -> torch.Tensor:
        if self.scale == "linear":
            return v
        if self.scale == "log10":
            return torch.log10(v)  # v <= 0 -> -inf / nan -> underflow
        return torch.asinh(v / self.param)

    def inverse(self, t: torch.Tensor) -> torch.Tensor:
        if self.scale == "linear":
            return t
        if self.scale == "log10":
            return torch.pow(10.0, t)
        return torch.sinh(t) * self.param

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins


# fixed ranges per metric kind (documented in SCHEMA.md)
SPECS = {
    "angle_deg": HistSpec("linear", 0.0, 180.0),
    "rotation_deg": HistSpec("linear", 0.0, 180.0),
    "norm": HistSpec("log10", -8.0, 8.0),
    "rms": HistSpec("log10", -8.0, 8.0),
    "std": HistSpec("log10", -8.0, 8.0),
    "mean": HistSpec("asinh", -33.0, 33.0, param=1e-6),
    "cos2": HistSpec("log10", -16.0, 0.0),
    "radial_fraction": HistSpec("linear", 0.0, 1.0),
    "rms_gap": HistSpec("log10", -12.0, 2.0),
}


class StreamStats:
    """Mergeable statistics of M metrics (rows) over a stream of values."""

    def __init__(self, specs: Sequence[HistSpec]):
        self.specs = list(specs)
        m = len(self.specs)
        self.bins = self.specs[0].bins
        if any(s.bins != self.bins for s in self.specs):
            raise ValueError("all metrics of one StreamStats need the same bin count")
        self.n = torch.zeros(m, dtype=torch.int64)
        self.mean = torch.zeros(m, dtype=torch.float64)
        self.m2 = torch.zeros(m, dtype=torch.float64)
        self.min = torch.full((m,), math.inf, dtype=torch.float64)
        self.max = torch.full((m,), -math.inf, dtype=torch.float64)
        self.hist = torch.zeros(m, self.bins + 2, dtype=torch.int64)  # [underflow, bins..., overflow]
        self._lo = torch.tensor([s.lo for s in self.specs], dtype=torch.float64)
        self._w = torch.tensor([s.width for s in self.specs], dtype=torch.float64)
        self._hi = torch.tensor([s.hi for s in self.specs], dtype=torch.float64)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(self.specs):
            groups.setdefault((s.scale, s.param), []).append(i)
        self._groups = [(self.specs[idx[0]], torch.tensor(idx)) for idx in groups.values()]

    # -- updating ----------------------------------------------------------------------------
    def update(self, values: torch.Tensor) -> None:
        """Fold in ``values`` of shape (M, T) (any float dtype/device; NaN rows entries skipped)."""
        v = values.detach().to("cpu", torch.float64)
        if v.ndim != 2 or v.shape[0] != len(self.specs):
            raise ValueError(f"expected values of shape ({len(self.specs)}, T), got {tuple(v.shape)}")
        if v.shape[1] == 0:
            return
        finite = torch.isfinite(v)
        if bool(finite.all()):
            self._update_dense(v)
        else:  # rare: per-row masking
            for i in range(v.shape[0]):
                row = v[i][finite[i]]
                if row.numel():
                    self._update_rows(row[None, :], torch.tensor([i]))

    def _update_dense(self, v: torch.Tensor) -> None:
        self._update_rows(v, None)

    def _update_rows(self, v: torch.Tensor, rows: torch.Tensor | None) -> None:
        m, t = v.shape
        mb = v.mean(1)
        m2b = ((v - mb[:, None]) ** 2).sum(1)
        vmin, vmax = v.amin(1), v.amax(1)  # 10x faster than aminmax along the contiguous axis on CPU
        sel = slice(None) if rows is None else rows
        na = self.n[sel].to(torch.float64)
        n = na + t
        delta = mb - self.mean[sel]
        self.mean[sel] = self.mean[sel] + delta * (t / n)
        self.m2[sel] = self.m2[sel] + m2b + delta * delta * (na * t / n)
        self.n[sel] += t
        self.min[sel] = torch.minimum(self.min[sel], vmin)
        self.max[sel] = torch.maximum(self.max[sel], vmax)
        self.hist[sel] += self._histogram(v, rows)

    def _histogram(self, v: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        m = v.shape[0]
        idx_rows = torch.arange(len(self.specs)) if rows is None else rows
        tv = torch.empty_like(v)
        if rows is None:
            for spec, idx in self._groups:
                tv[idx] = spec.transform(v[idx])
        else:
            for j, r in enumerate(rows.tolist()):
                tv[j] = self.specs[r].transform(v[j])
        lo, w, hi = self._lo[idx_rows, None], self._w[idx_rows, None], self._hi[idx_rows, None]
        pos = torch.floor((tv - lo) / w)
        pos = torch.where(tv == hi, torch.full_like(pos, self.bins - 1), pos)  # hi edge inclusive
        pos = torch.nan_to_num(pos, nan=-1.0).clamp_(-1, self.bins) + 1  # 0 = underflow, bins+1 = overflow
        flat = (pos.long() + (torch.arange(m) * (self.bins + 2))[:, None]).reshape(-1)
        return torch.bincount(flat, minlength=m * (self.bins + 2)).view(m, self.bins + 2)

    # -- merging -----------------------------------------------------------------------------
    def merge(self, other: "StreamStats") -> "StreamStats":
        """Fold ``other`` into ``self`` (Chan et al.); returns self."""
        if other.specs != self.specs:
            raise ValueError("cannot merge statistics with different metrics/histogram ranges")
        na = self.n.to(torch.float64)
        nb = other.n.to(torch.float64)
        n = na + nb
        safe = torch.where(n > 0, n, torch.ones_like(n))
        delta = other.mean - self.mean
        self.mean = torch.where(n > 0, self.mean + delta * nb / safe, self.mean)
        self.m2 = self.m2 + other.m2 + torch.where(n > 0, delta * delta * na * nb / safe, torch.zeros_like(n))
        self.n = self.n + other.n
        self.min = torch.minimum(self.min, other.min)
        self.max = torch.maximum(self.max, other.max)
        self.hist = self.hist + other.hist
        return self

    def state(self) -> dict:
        """Plain-tensor state (for all_gather / pickling)."""
        return {k: getattr(self, k).clone() for k in ("n", "mean", "m2", "min", "max", "hist")}

    @classmethod
    def from_state(cls, specs: Sequence[HistSpec], state: dict) -> "StreamStats":
        s = cls(specs)
        for k, v in state.items():
            setattr(s, k, v.clone())
        return s

    # -- summaries ---------------------------------------------------------------------------
    def quantile(self, i: int, q: float) -> float:
        """Quantile q in [0, 1] of metric i, interpolated inside its histogram bin."""
        n = int(self.n[i])
        if n == 0:
            return math.nan
        spec = self.specs[i]
        h = self.hist[i].numpy()
        cum = np.cumsum(h)
        target = q * n
        k = min(int(np.searchsorted(cum, target, side="left")), len(cum) - 1)
        while k < len(cum) - 1 and h[k] == 0:
            k += 1
        before = float(cum[k] - h[k])
        frac = 0.0 if h[k] == 0 else min(max((target - before) / float(h[k]), 0.0), 1.0)
        vmin, vmax = float(self.min[i]), float(self.max[i])
        if k == 0:  # underflow: between min and the low edge
            hi_v = float(spec.inverse(torch.tensor(spec.lo, dtype=torch.float64)))
            val = vmin + frac * (min(hi_v, vmax) - vmin) if math.isfinite(vmin) else vmin
        elif k == len(cum) - 1:  # overflow: between the high edge and max
            lo_v = float(spec.inverse(torch.tensor(spec.hi, dtype=torch.float64)))
            val = lo_v + frac * (vmax - lo_v)
        else:
            t = spec.lo + (k - 1 + frac) * spec.width
            val = float(spec.inverse(torch.tensor(t, dtype=torch.float64)))
        return min(max(val, vmin), vmax)

    def summary(self, i: int, *, with_hist: bool = True) -> dict:
        """JSON-ready summary of metric i (see SCHEMA.md)."""
        n = int(self.n[i])
        out: dict = {"count": n}
        if n == 0:
            out.update({k: None for k in ("mean", "std", "min", "max", "p01", "p50", "p99")})
            return out
        out["mean"] = float(self.mean[i])
        out["std"] = math.sqrt(max(float(self.m2[i]) / n, 0.0))
        out["min"] = float(self.min[i])
        out["max"] = float(self.max[i])
        for name, q in (("p01", 0.01), ("p50", 0.5), ("p99", 0.99)):
            out[name] = self.quantile(i, q)
        if with_hist:
            out["hist"] = self.hist_summary(i)
        return out

    def hist_summary(self, i: int) -> dict:
        """Histogram trimmed to its non-empty span (see :func:`hist_edges` for its bin edges).

        Linear-scale histograms store only ``lo``/``hi`` (first and last edge, metric units);
        others store their ``edges`` (7 significant digits). This keeps stats.json small.
        """
        spec = self.specs[i]
        h = self.hist[i]
        inner = h[1:-1]
        nz = torch.nonzero(inner).flatten()
        if nz.numel():
            a, b = int(nz[0]), int(nz[-1]) + 1
        else:
            a = b = 0
        t_edges = spec.lo + torch.arange(a, b + 1, dtype=torch.float64) * spec.width
        edges = spec.inverse(t_edges) if b > a else torch.zeros(0, dtype=torch.float64)
        counts = inner[a:b].tolist()
        span = (
            {"lo": float(edges[0]), "hi": float(edges[-1])} if edges.numel() else {"lo": None, "hi": None}
        ) if spec.scale == "linear" else {"edges": [float(f"{e:.7g}") for e in edges.tolist()]}
        return {
            "scale": spec.scale,
            "param": spec.param,
            "bin_width": spec.width,
            **span,
            "counts": counts,
            "underflow": int(h[0]),
            "overflow": int(h[-1]),
        }


def hist_edges(h: dict) -> np.ndarray:
    """Bin edges (metric units) of a histogram dict from :meth:`StreamStats.hist_summary`."""
    counts = h.get("counts") or []
    if "edges" in h:
        return np.asarray(h["edges"], dtype=float)
    if h.get("lo") is None or not counts:
        return np.zeros(0)
    return np.linspace(float(h["lo"]), float(h["hi"]), len(counts) + 1)


TAIL_K = 8
TAIL_FACTORS = (10, 100)  # thresholds c/d on the share, c × the isotropic baseline 1/d
TAIL_POSITIONS = 5  # positions 0, 1, 2, 3 and >= 4 pooled


class TailStats:
    """The tokens whose input carries the largest share of its squared norm along 𝟙.

    share = (Σx)²/(d‖x‖²) = cos²θ(x, 𝟙) (the ``cos2`` metric; 1/d for an isotropic random vector).
    Keeps the k largest shares with their location — ``batch`` (index of the batch in the whole
    stream; under ``torch.distributed`` the round-robin index of :func:`normscope.probe.shard`),
    ``window`` (row in the batch), ``position`` (in the window) and ``row`` (flat row of the norm's
    input, a tie-break for per-head inputs) — plus the share summed and counted by position
    (0, 1, 2, 3, ≥ 4) and the counts above 10/d and 100/d. Ties are broken by location, so the
    result does not depend on how the batches were split between processes. Per batch: one
    ``topk``, two ``bincount``s; merging keeps the k best of both.
    """

    def __init__(self, d: int, k: int = TAIL_K):
        self.d, self.k = d, k
        self.top_share = torch.zeros(0, dtype=torch.float64)
        self.top_where = torch.zeros(0, 4, dtype=torch.int64)  # batch, window, position, row
        self.pos_sum = torch.zeros(TAIL_POSITIONS, dtype=torch.float64)
        self.pos_n = torch.zeros(TAIL_POSITIONS, dtype=torch.int64)
        self.above = torch.zeros(len(TAIL_FACTORS), dtype=torch.int64)
        self.shapes: dict[int, tuple[int, int]] = {}  # batch -> (windows, positions per window)

    def update(self, share: torch.Tensor, batch: int, window: torch.Tensor, position: torch.Tensor,
               row: torch.Tensor, shape: tuple[int, int]) -> None:
        """Fold in the shares (T,) of one batch with each token's window, position and row (T,)."""
        self.shapes[batch] = shape
        if share.numel() == 0:
            return
        share = share.to(torch.float64)
        bucket = position.clamp(max=TAIL_POSITIONS - 1)
        self.pos_sum += torch.bincount(bucket, weights=share, minlength=TAIL_POSITIONS)
        self.pos_n += torch.bincount(bucket, minlength=TAIL_POSITIONS)
        for j, c in enumerate(TAIL_FACTORS):
            self.above[j] += int((share > c / self.d).sum())
        if share.numel() > self.k:  # everything tied with the k-th largest stays a candidate
            kth = torch.topk(share, self.k, sorted=True).values[-1]
            sel = torch.nonzero(share >= kth).flatten()
            share, window, position, row = share[sel], window[sel], position[sel], row[sel]
        where = torch.stack([torch.full_like(window, batch), window, position, row], 1)
        self._keep(torch.cat([self.top_share, share]), torch.cat([self.top_where, where]))

    def _keep(self, share: torch.Tensor, where: torch.Tensor) -> None:
        order = torch.arange(share.numel())
        for col in (3, 2, 1, 0):  # lexicographic by location (stable sorts, last key first) ...
            order = order[torch.sort(where[order, col], stable=True).indices]
        order = order[torch.sort(-share[order], stable=True).indices]  # ... then by share, descending
        order = order[: self.k]
        self.top_share, self.top_where = share[order], where[order]

    def merge(self, other: "TailStats") -> "TailStats":
        """Fold ``other`` into ``self``; returns self."""
        self.pos_sum = self.pos_sum + other.pos_sum
        self.pos_n = self.pos_n + other.pos_n
        self.above = self.above + other.above
        self.shapes.update(other.shapes)
        self._keep(torch.cat([self.top_share, other.top_share]), torch.cat([self.top_where, other.top_where]))
        return self

    def state(self) -> dict:
        return {"d": self.d, "k": self.k, "top_share": self.top_share.clone(), "top_where": self.top_where.clone(),
                "pos_sum": self.pos_sum.clone(), "pos_n": self.pos_n.clone(), "above": self.above.clone(),
                "shapes": dict(self.shapes)}

    @classmethod
    def from_state(cls, state: dict) -> "TailStats":
        t = cls(state["d"], state["k"])
        for key in ("top_share", "top_where", "pos_sum", "pos_n", "above"):
            setattr(t, key, state[key].clone())
        t.shapes = dict(state["shapes"])
        return t

    def summary(self) -> dict:
        """JSON-ready ``tail`` block (SCHEMA.md). ``token`` is the global index of the token in the
        stream of all batches (window-major, special tokens and skipped positions included)."""
        offsets, acc = {}, 0
        for b in sorted(self.shapes):
            offsets[b] = acc
            acc += self.shapes[b][0] * self.shapes[b][1]
        top = []
        for v, (b, w, p, _) in zip(self.top_share.tolist(), self.top_where.tolist()):
            seq = self.shapes.get(b, (0, 0))[1]
            top.append({"share": v, "position": p, "window": w, "batch": b,
                        "token": offsets.get(b, 0) + w * seq + p})
        n = int(self.pos_n.sum())
        labels = ("0", "1", "2", "3", ">=4")
        return {
            "k": self.k,
            "share": "(Σx)²/(d‖x‖²) = cos²θ(x, 𝟙); isotropic baseline 1/d",
            "top": top,
            "mean_share_by_position": {lab: (float(self.pos_sum[i] / self.pos_n[i]) if int(self.pos_n[i]) else None)
                                       for i, lab in enumerate(labels)},
            "count_by_position": {lab: int(self.pos_n[i]) for i, lab in enumerate(labels)},
            **{f"frac_above_{c}_over_d": (int(self.above[j]) / n if n else None) for j, c in enumerate(TAIL_FACTORS)},
        }


def token_locations(shape: tuple[int, ...], seq_dim: int | None, first: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(window, position) of each row of a norm input of leading ``shape`` (the shape without d),
    flattened in row order, and the batch's (windows, positions per window). ``first`` is the
    position of the first row along the sequence axis (1 after ``skip_first``). ``seq_dim`` is the
    token axis (None: axis 1 of a (batch, seq) input; otherwise the rows in order, as one window);
    the window axis is 0, or 1 when the token axis is 0 (``nn.Transformer*`` without batch_first)."""
    if len(shape) == 2 and seq_dim is None:
        seq_dim = 1
    if len(shape) <= 1 or seq_dim is None or not 0 <= seq_dim < len(shape):
        n = math.prod(shape) if shape else 1
        return torch.zeros(n, dtype=torch.int64), torch.arange(first, first + n), (1, n + first)
    sd, wd = seq_dim, (0 if seq_dim != 0 else 1)
    idx = torch.arange(first, first + shape[sd]).view([-1 if i == sd else 1 for i in range(len(shape))])
    win = torch.arange(shape[wd]).view([-1 if i == wd else 1 for i in range(len(shape))])
    return win.expand(shape).reshape(-1), idx.expand(shape).reshape(-1), (shape[wd], shape[sd] + first)
