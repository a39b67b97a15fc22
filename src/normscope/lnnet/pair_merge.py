"""Multi-class LN-Net construction by pair merges [reconstructed, ``docs/lnnet.md``].

Each layer folds the arc about the mid-angle of two same-label points, so that they land on the
same value of the next feature, until each class is one circular run; at most m − c + 1 LN layers
for c classes. Same-label values closer than ``_SAME_TOL`` (relative) count as merged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from normscope.lnnet.embedding import (
    _DIFF_TOL,
    _LK_COARSE,
    _SAME_TOL,
    _T_COARSE,
    _TIER,
    ConstructionError,
    FoldStep,
    _gap_of,
    _grid,
    _refine,
    _score,
)


class PairMerge(NamedTuple):
    """The chosen merge: ranking ``key``, embedding (``s0``, ``k``), fold angle ``phi``, and the
    distinct feature values ``u`` and labels ``lab`` after it."""

    key: tuple
    s0: float
    k: float
    phi: float
    u: np.ndarray
    lab: np.ndarray


class MulticlassPlan(NamedTuple):
    """Result of :func:`_build_multiclass`: the merge ``steps`` and the final distinct values and labels."""

    steps: list[FoldStep]
    u: np.ndarray
    lab: np.ndarray


def _distinct(s: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct (value, label) with same-label near-ties merged; raises on label clashes."""
    o = np.argsort(s, kind="stable")
    ss, ll = s[o], lab[o]
    scale = max(1.0, float(np.abs(ss).max()))
    keep = np.ones(len(ss), bool)
    d = np.diff(ss)
    same = (ll[1:] == ll[:-1]) & (d <= _SAME_TOL * scale)
    keep[1:] = ~same
    return ss[keep], ll[keep]


def _circ_runs(lab: np.ndarray) -> int:
    """Number of runs of equal labels on the circle (first and last run join when their labels agree)."""
    r = 1 + int((lab[1:] != lab[:-1]).sum())
    if r > 1 and lab[0] == lab[-1]:
        r -= 1
    return r


def _pair_step(u: np.ndarray, lab: np.ndarray, smax: float) -> PairMerge:
    """Best pair merge for sorted distinct u."""
    n = len(u)
    # consecutive same-label pairs
    pairs = []
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        pairs += list(zip(idx[:-1], idx[1:]))
    pairs = np.array(pairs)
    R = float(u[-1] - u[0])

    def evaluate(s0, k):
        T = np.arctan(k[:, None] * (u[None, :] - s0[:, None]))  # (G, n)
        phi = (T[:, pairs[:, 0]] + T[:, pairs[:, 1]]) / 2  # (G, P)
        sp = np.cos(T[:, None, :] - phi[..., None])  # (G, P, n)
        o = np.argsort(sp, -1, kind="stable")
        ss = np.take_along_axis(sp, o, -1)
        ll = lab[o]
        dd = np.diff(ss, axis=-1)
        diff = ll[..., 1:] != ll[..., :-1]
        gap = np.where(diff, dd, np.inf).min(-1)
        return _score(gap, s0, k, smax)

    s0, k, tt, ll = _grid(u[0], R, _T_COARSE, _LK_COARSE)
    sc = evaluate(s0, k)
    # per pair: best coarse embedding, then refine the best few pairs
    best_g = sc.argmax(0)
    order = np.argsort(-sc[best_g, np.arange(len(pairs))])[: min(6, len(pairs))]
    results = []
    for p in order:
        g = best_g[p]
        s0r, kr, _, _ = _grid(u[0], R, *_refine(tt[g], ll[g]))
        merge = _refined_merge(u, lab, pairs[p], np.r_[s0[g], s0r], np.r_[k[g], kr], smax)
        if merge is not None:
            results.append(merge)
    if not results:
        raise ConstructionError(f"pair merge: every candidate fold collides different labels ({n} points left)")
    return max(results, key=lambda r: r.key)


def _refined_merge(u, lab, pair, s0a: np.ndarray, ka: np.ndarray, smax: float) -> PairMerge | None:
    """Best of the candidate embeddings (s0a, ka) for merging ``pair``; None if all collide different labels."""
    T = np.arctan(ka[:, None] * (u[None, :] - s0a[:, None]))
    i, j = pair
    phi = (T[:, i] + T[:, j]) / 2
    sp = np.cos(T - phi[:, None])
    o = np.argsort(sp, -1, kind="stable")
    ss = np.take_along_axis(sp, o, -1)
    lo_ = lab[o]
    gap = np.where(lo_[:, 1:] != lo_[:, :-1], np.diff(ss, axis=-1), np.inf).min(-1)
    gsc = _score(gap, s0a, ka, smax)
    b = int(np.argmax(gsc))
    raw = float(gsc[b])
    score = _gap_of(raw)
    if not np.isfinite(score) or score <= _DIFF_TOL * max(1.0, smax):
        return None
    newu, newl = _distinct(sp[b], lab)
    key = (raw > _TIER / 2, math.floor(math.log10(score) * 4) / 4, -_circ_runs(newl), -len(newu), score)
    return PairMerge(key, float(s0a[b]), float(ka[b]), float(phi[b]), newu, newl)


def _build_multiclass(s: np.ndarray, codes: np.ndarray, n_classes: int) -> MulticlassPlan:
    """Pair merges until each present class is one circular run."""
    u, lab = _distinct(s, codes)
    plan = []
    c_present = len(np.unique(lab))
    while _circ_runs(lab) > c_present:
        smax = float(np.abs(u).max())
        merge = _pair_step(u, lab, smax)
        if len(merge.u) >= len(u):
            raise ConstructionError("pair merge did not merge any points (numerical failure)")
        plan.append(FoldStep(merge.s0, merge.k, merge.phi))
        u, lab = merge.u, merge.lab
    return MulticlassPlan(plan, u, lab)
