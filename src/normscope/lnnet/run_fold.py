"""Binary LN-Net construction by run folds [reconstructed; ours, see ``docs/lnnet.md``].

Reading the next feature as s' = pᵀh with p = E(cos φ, sin φ)/√3 gives s' = cos(θ − φ): a *fold*
of the arc about φ. With the labels read along s forming alternating runs R₁..R_r, fold the last
run onto R_{r−2} (or, mirrored, the first onto R₃) so that R_{r−1} folds onto itself: every fold
removes exactly one run, and r ≤ 3 runs can be read out by a chord, so at most r − 2 ≤ m − 2 LN
layers. Only run end-points matter, so one fold costs O(r) per candidate embedding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from normscope.lnnet.embedding import (
    _DIFF_TOL,
    _LK_BIN,
    _ROUNDOFF64,
    _T_BIN,
    _TAUS,
    _TIER,
    ConstructionError,
    FoldStep,
    _grid,
    _local_candidates,
    _penalty,
    _refine,
    _runs,
)


class Fold(NamedTuple):
    """One run fold: embedding (``s0``, ``k``) at grid coordinates (``t``, ``lk``); fold the last
    run (``side`` = 1) or the first (``side`` = −1) about the angle ``phi``."""

    s0: float
    k: float
    side: int
    phi: float
    t: float
    lk: float


class FoldCandidate(NamedTuple):
    """A ranked fold: ``rank`` (float32-safe first, see :func:`_binary_step`), penalised smallest
    different-label ``gap`` after the fold, and the ``fold`` itself (``None``: no feasible fold)."""

    rank: float
    gap: float
    fold: Fold | None


class BinaryPlan(NamedTuple):
    """Result of :func:`_build_binary`: the fold ``steps`` and the ≤ 3 final runs (lo, hi, lab)."""

    steps: list[FoldStep]
    lo: np.ndarray
    hi: np.ndarray
    lab: np.ndarray


class _Ends:
    """Run-end (cos θ, sin θ) for G candidate embeddings, arrays (G, r), and θ at the 4 runs
    nearest each end (all the fold window needs). ``mirrored()`` is the same data seen with
    θ → −θ and the run order reversed: folding the first run becomes folding the last."""

    def __init__(self, lo=None, hi=None, s0=None, k=None):
        if lo is None:
            return
        tl = k[:, None] * (lo[None, :] - s0[:, None])
        th = k[:, None] * (hi[None, :] - s0[:, None])
        self.cl, self.ch = 1 / np.sqrt(1 + tl * tl), 1 / np.sqrt(1 + th * th)
        self.sl, self.sh = tl * self.cl, th * self.ch
        n = min(4, tl.shape[1])
        self.Tl = np.concatenate([np.arctan(tl[:, :n]), np.arctan(tl[:, -n:])], 1)  # (G, 2n): head | tail
        self.Th = np.concatenate([np.arctan(th[:, :n]), np.arctan(th[:, -n:])], 1)
        self.n = n

    def tail(self, which: str) -> np.ndarray:
        """θ of the last n run ends (lo or hi), ascending order."""
        return (self.Tl if which == "lo" else self.Th)[:, self.n :]

    def mirrored(self) -> "_Ends":
        m = _Ends()
        m.cl, m.ch = self.ch[:, ::-1], self.cl[:, ::-1]
        m.sl, m.sh = -self.sh[:, ::-1], -self.sl[:, ::-1]
        n = self.n
        m.Tl = np.concatenate([-self.Th[:, n:][:, ::-1], -self.Th[:, :n][:, ::-1]], 1)
        m.Th = np.concatenate([-self.Tl[:, n:][:, ::-1], -self.Tl[:, :n][:, ::-1]], 1)
        m.n = n
        return m


def _fold_window(e: _Ends):
    """Feasible fold angles (a, c1) for folding R_r onto R_{r−2}: φ ∈ (a, c1), a < c1 required."""
    Tl, Th = e.tail("lo"), e.tail("hi")
    c1 = (Tl[:, -1] + Tl[:, -2]) / 2  # R_r lands beyond R_{r−1}'s mirror
    c2 = (Th[:, -2] + Th[:, -3]) / 2  # R_{r−1}'s right part stays inside the B window
    c3 = (Th[:, -1] + Th[:, -4]) / 2  # R_r does not reach R_{r−3}
    return np.maximum(c2, c3), c1


def _fold_tail(e: _Ends, phi, sel=slice(None)):
    """s' = cos(θ − φ) at the end of R_{r−3}, and the (lo, hi) of A' = R_{r−2} ∪ R_r and B' = R_{r−1}."""
    Tl, Th = e.tail("lo")[sel], e.tail("hi")[sel]
    if phi.ndim == 2:
        Tl, Th = Tl[:, None, :], Th[:, None, :]
    left_hi = np.cos(phi - Th[..., -4])
    dA_max = np.maximum(phi - Tl[..., -3], Th[..., -1] - phi)
    dA_min = np.minimum(phi - Th[..., -3], Tl[..., -1] - phi)
    dB_lo, dB_hi = np.abs(phi - Tl[..., -2]), np.abs(Th[..., -2] - phi)
    dB_max = np.maximum(dB_lo, dB_hi)
    dB_min = np.where((Tl[..., -2] <= phi) & (phi <= Th[..., -2]), 0.0, np.minimum(dB_lo, dB_hi))
    return left_hi, np.cos(dA_max), np.cos(dA_min), np.cos(dB_max), np.cos(dB_min)


def _run_fold_scores(e: _Ends, taus: np.ndarray):
    """Smallest new different-label gap (G, P) of the run fold at φ = a + (c1 − a)·τ, and φ.

    Left of the fold the runs keep their order and s' = cos φ cos θ + sin φ sin θ (exactly what
    the next layer's pᵀh computes), so their gaps are cos φ·Δcos θ + sin φ·Δsin θ.
    −inf where the fold is infeasible (R_r wider than the window it must land in).
    """
    a, c1 = _fold_window(e)
    phi = a[:, None] + (c1 - a)[:, None] * taus[None, :]
    left_hi, A_lo, A_hi, B_lo, _ = _fold_tail(e, phi)
    gap = np.minimum(A_lo - left_hi, B_lo - A_hi)
    r = e.cl.shape[1]
    if r > 4:
        dC = e.cl[:, 1 : r - 3] - e.ch[:, : r - 4]
        dS = e.sl[:, 1 : r - 3] - e.sh[:, : r - 4]
        cp, sp = np.cos(phi), np.sin(phi)
        gl = np.empty_like(phi)
        buf, buf2 = np.empty_like(dC), np.empty_like(dC)
        for j in range(phi.shape[1]):  # one φ column at a time: (G, r) temporaries stay in cache
            np.multiply(dC, cp[:, j, None], out=buf)
            np.multiply(dS, sp[:, j, None], out=buf2)
            buf += buf2
            gl[:, j] = buf.min(-1)
        gap = np.minimum(gap, gl)
    return np.where((a < c1)[:, None], gap, -np.inf), phi


def _binary_step(lo: np.ndarray, hi: np.ndarray, smax: float, top: int = 1) -> list[FoldCandidate]:
    """The ``top`` best next run folds, best first (one ``FoldCandidate(-inf, -inf, None)`` if none is feasible).

    Rank: float32-safe candidates first (gap > float32 penalty), then the penalised smallest gap
    (the reconstruction's objective). We also tried ranking by the mean log gap (quantised smallest gap
    first): no better in float64, worse in float32. Each of the ``top`` best coarse candidates
    (embedding grid + steep embeddings centred in the gaps near both ends) is refined locally.
    """
    R = float(hi[-1] - lo[0])

    def evaluate(s0, k, tt, ll, keep):
        p32 = _penalty(s0, k, smax)[:, None]
        p64 = _penalty(s0, k, smax, _ROUNDOFF64)[:, None]
        ends = _Ends(lo, hi, s0, k)
        ranks, gaps, phis = [], [], []
        for side, e in ((1, ends), (-1, ends.mirrored())):
            gmin, phi = _run_fold_scores(e, _TAUS)
            safe32 = gmin - p32 > 0
            gpen = np.where(safe32, gmin - p32, gmin - p64)
            rank = np.where(gpen > _DIFF_TOL, gpen + _TIER * safe32, -np.inf)
            p = rank.argmax(1)
            g = np.arange(len(s0))
            ranks.append(rank[g, p]), gaps.append(gpen[g, p]), phis.append(side * phi[g, p])
        ranks, gaps, phis = np.concatenate(ranks), np.concatenate(gaps), np.concatenate(phis)
        G = len(s0)
        out = []
        for i in np.argsort(-ranks)[:keep]:
            if not np.isfinite(ranks[i]):
                break
            gi, side = i % G, 1 if i < G else -1
            fold = Fold(float(s0[gi]), float(k[gi]), side, float(phis[i]), tt[gi], ll[gi])
            out.append(FoldCandidate(float(ranks[i]), float(gaps[i]), fold))
        return out

    coarse = evaluate(*(np.r_[a, b] for a, b in zip(_grid(lo[0], R, _T_BIN, _LK_BIN), _local_candidates(lo, hi, R))), keep=top)
    best = []
    for c in coarse:
        fine = evaluate(*_grid(lo[0], R, *_refine(c.fold.t, c.fold.lk)), keep=len(_TAUS) * 200)
        fine = [f for f in fine if f.fold.side == c.fold.side][:1] + [c]
        best.append(max(fine, key=lambda f: f.rank))
    best.sort(key=lambda c: -c.rank)
    return best or [FoldCandidate(-np.inf, -np.inf, None)]


def _apply_binary(lo: np.ndarray, hi: np.ndarray, fold: Fold) -> tuple[np.ndarray, np.ndarray]:
    """Run ends after ``fold``: (lo', hi') ascending, one run fewer."""
    e = _Ends(lo, hi, np.array([fold.s0]), np.array([fold.k]))
    phi = fold.phi
    if fold.side == -1:
        e, phi = e.mirrored(), -phi
    cp, sp = math.cos(phi), math.sin(phi)
    left_lo = cp * e.cl[0, :-3] + sp * e.sl[0, :-3]
    left_hi = cp * e.ch[0, :-3] + sp * e.sh[0, :-3]
    _, A_lo, A_hi, B_lo, B_hi = _fold_tail(e, np.array([phi]), slice(0, 1))
    return np.r_[left_lo, A_lo, B_lo], np.r_[left_hi, A_hi, B_hi]



def _build_binary(
    s: np.ndarray, codes: np.ndarray, lookahead: int = 4, lookahead_folds: int = 24, wide_folds: int = 10
) -> BinaryPlan:
    """Run folds until ≤ 3 runs remain; returns the fold steps and the final runs.

    For the first ``lookahead_folds`` folds (while more than 100 runs remain), among the
    ``lookahead`` best folds (twice as many for the first ``wide_folds``) take the one whose *next*
    fold keeps the larger gap (a two-fold look-ahead). At m ≈ 1000 the smallest gap falls from
    ~1e-6 to ~1e-11 within the first ~10 folds (each fold squashes the gaps next to its axis
    quadratically, and both ends get folded before the gaps settle); this is where builds die, and
    later folds are stable. Within the first 12 folds, of the 12 best first directions of two
    m = 1000 random-label data sets each, greedy choice died for 21 of 24, the 4-wide look-ahead
    for 16 of 24 (same two data sets), the 8-wide one for 11 of 24 (two data sets, one shared).
    A dead direction costs ≈ 0.5 CPU-s, so :func:`construct` simply tries the next one.
    """
    lo, hi, lab = _runs(s, codes)
    plan = []
    while len(lo) > 3:
        smax = float(max(abs(lo[0]), abs(hi[-1])))
        ahead = 0
        if len(plan) < lookahead_folds and len(lo) > 100:
            ahead = 2 * lookahead if len(plan) < wide_folds else lookahead
        cands = _binary_step(lo, hi, smax, top=max(1, ahead))
        if ahead and len(lo) > 4:
            scored = []
            for c in cands:
                if c.fold is None:
                    continue
                nl, nh = _apply_binary(lo, hi, c.fold)
                nxt = _binary_step(nl, nh, float(max(abs(nl[0]), abs(nh[-1]))))[0].gap
                scored.append((min(c.gap, nxt), c))
            if scored:
                cands = [max(scored, key=lambda sc: sc[0])[1]]
        _, score, fold = cands[0]
        if fold is None or not score > _DIFF_TOL:
            raise ConstructionError(
                f"run fold {len(plan) + 1}: no embedding keeps differently-labelled features apart "
                f"(best gap {score:.2e}, {len(lo)} runs left)"
            )
        nl, nh = _apply_binary(lo, hi, fold)
        lab = lab[:-1] if fold.side == 1 else lab[::-1][:-1]
        plan.append(FoldStep(fold.s0, fold.k, fold.phi))
        lo, hi = nl, nh
    return BinaryPlan(plan, lo, hi, lab)
