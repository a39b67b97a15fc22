"""Unselectable keys: keys that can never receive the strictly highest attention score.

Brody, Alon & Yahav, "On the Expressivity Role of LayerNorm in Transformers' Attention",
Findings of ACL 2023 (arXiv:2305.02582), Section 3.2. Key k_i of a finite set K is *selectable*
if some query q gives q·k_i > q·k_j for every j != i; otherwise it is *unselectable*. By Gordan's
alternative applied to p_j = k_j - k_i, exactly one holds: a q with q·p_j < 0 for all j, or
0 ∈ conv{p_j}, i.e. k_i ∈ conv(K \\ {k_i}). So a key is unselectable iff it lies in the convex hull
of the *other* keys, points on an edge or face of that hull included (they tie or lose), and a
repeated key is unselectable (two equal keys always tie).

**The decision, to a stated tolerance.** Let δ_i = dist(k_i, conv(K \\ {k_i})). Key i is declared
unselectable iff δ_i ≤ tol·ρ_i, where ρ_i = ‖k_i‖ + Σ_j λ_j ‖k_j‖ for the convex weights λ of the
nearest point. ρ_i is the magnitude the rounding of k_i and of the combination Σλ_j k_j scales
with (each coordinate of a float is off by ≤ u·|coordinate|, u = 2^-53), so the criterion is
relative: it merges neither distinct keys whose norms span 1e12 nor keys at any scale 1e±150
(an absolute rounding of the keys would). ``tol`` = 1e-9 by default: ≈ 2^23·u, room for the
input's own rounding (a midpoint (a+b)/2 is off by ≤ u·ρ) and for the least-squares solver's
error (≤ n·cond·u) on all but near-singular sets, while real keys at a relative distance below
1e-9 from the others' hull are, for attention in float32/bfloat16, indistinguishable from it.

Procedure (every verdict backed by a certificate checked in float64):

1. pre-filter: a key that is the strict arg-max of a query q with a gap > tol·(‖k_i‖ + max‖k‖)·‖q‖
   plus the dot products' rounding (d·u·‖q‖·max‖k‖) is selectable (the gap bounds δ_i from below).
   Queries: each key, each centred key, ``n_random`` Gaussian directions;
2. each remaining key: column generation over a growing set S of other keys. Non-negative
   least squares on [p_S; M·𝟙ᵀ] λ ≈ [0; M] (p_j = k_j - k_i, M = max‖p_j‖) returns s·λ̂ with λ̂
   the convex weights of the point of conv(S) nearest to k_i (the objective is homogeneous in
   λ), so δ_S = ‖Σλ̂_j p_j‖. δ_S ≤ tol·ρ_i + 4(|S| + d)·u·M (the last term: the solver's
   rounding): unselectable (conv(S) ⊂ conv(others)). Hence norms may span up to ~tol/u ≈ 1e7
   *within* one key's neighbourhood, any range across coordinates (rescaled exactly) or overall.
   Otherwise q = -Σλ̂_j p_j is a strict witness against S (KKT); if it beats every key by the margin
   of step 1, k_i is selectable; else the keys that beat it join S (so at most n rounds; with S
   all the others, δ_S = δ_i decides).

``method="lp"`` runs the LP (F1) {q : (k_j - k_i)·q <= -1 for all j != i} with
``scipy.optimize.linprog(method="highs")`` for every key (the baseline of Brody et al.'s code,
Gurobi there); it decides with HiGHS's own feasibility tolerance (1e-7) instead of ``tol``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linprog, nnls

__all__ = ["unselectable", "unselectable_fraction"]

_CHUNK = 1024  # queries scored per matrix product in the pre-filter
_U = np.finfo(np.float64).eps / 2  # unit roundoff of float64


def _as_keys(keys: Any) -> np.ndarray:
    if hasattr(keys, "detach"):  # torch.Tensor without importing torch
        keys = keys.detach().cpu().double().numpy()
    x = np.asarray(keys, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"keys must be a 2-D (n, d) array, got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError("keys must have at least one feature (d >= 1)")
    if not np.isfinite(x).all():
        raise ValueError("keys contain NaN or Inf; drop or fix those rows first")
    return x


def _strict_winners(x: np.ndarray, queries: np.ndarray, tol: float) -> np.ndarray:
    """Keys that are the strict arg-max of some query column by more than the certified margin
    tol·(‖k_i‖ + max‖k‖)·‖q‖ + rounding (so δ_i > tol·ρ_i, see the module docstring)."""
    n, d = x.shape
    if n < 2:
        return np.arange(n)
    norms = np.sqrt((x * x).sum(axis=1))
    big = norms.max()
    found = []
    for start in range(0, queries.shape[1], _CHUNK):
        q = queries[:, start : start + _CHUNK]
        qn = np.linalg.norm(q, axis=0)
        scores = x @ q
        top2 = np.partition(scores, n - 2, axis=0)[n - 2 :]
        best = np.argmax(scores, axis=0)
        margin = (tol * (norms[best] + big) + 4 * (d + 2) * _U * big) * qn
        strict = (top2[1] - top2[0] > margin) & (qn > 0)
        if strict.any():
            found.append(best[strict])
    return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.intp)


def _lp_selectable(x: np.ndarray, i: int) -> bool:
    """LP (F1): is {q : (k_j - k_i)·q <= -1 for all j != i} non-empty? (HiGHS)"""
    others = np.delete(x, i, axis=0) - x[i]
    d = x.shape[1]
    res = linprog(np.zeros(d), A_ub=others, b_ub=-np.ones(len(others)), bounds=[(None, None)] * d, method="highs")
    if res.status == 0:
        return True
    if res.status == 2:
        return False
    # Numerical trouble in F1: hull membership (F2): λ >= 0, Σλ = 1, Σλ_j k_j = k_i.
    a_eq = np.vstack([np.delete(x, i, axis=0).T, np.ones(len(others))])
    res2 = linprog(np.zeros(len(others)), A_eq=a_eq, b_eq=np.append(x[i], 1.0), bounds=(0, None), method="highs")
    if res2.status in (0, 2):
        return res2.status == 2
    raise RuntimeError(f"HiGHS could not decide key {i}: {res.message} / {res2.message}")


def _hull_distance(x: np.ndarray, norms: np.ndarray, i: int, s_idx: np.ndarray) -> tuple[float, float, np.ndarray, float]:
    """(δ_S, ρ_i, w, floor): distance of k_i to conv(k_S), its scale ρ_i, w = Σ λ̂_j (k_j - k_i), and
    the rounding floor of δ_S.

    The augmented NNLS minimiser is λ = s·λ̂ with λ̂ the nearest point's convex weights
    (positive homogeneity of λ ↦ Σλ_j p_j), so δ_S = ‖Σ λ̂_j p_j‖ evaluated directly, which
    upper-bounds the distance (it is a point of the hull). ``floor`` = 4(|S| + d)·u·M bounds the
    error of a backward-stable least-squares solve of a matrix of norm ~M (Lawson–Hanson NNLS
    leaves weights of ~u instead of exact zeros, e.g. 7e-17 where 0 is exact).
    """
    p = x[s_idx] - x[i]  # (|S|, d)
    pn = np.sqrt((p * p).sum(axis=1))
    m = float(pn.max())
    if m == 0.0:  # every key of S equals k_i
        return 0.0, float(norms[i]), np.zeros(x.shape[1]), 0.0
    a = np.vstack([p.T, np.full(len(s_idx), m)])
    b = np.zeros(x.shape[1] + 1)
    b[-1] = m
    try:
        lam, _ = nnls(a, b, maxiter=50 * (len(s_idx) + x.shape[1]))
    except RuntimeError:  # no convergence: let the caller fall back to the LP
        return math.nan, math.nan, np.zeros(x.shape[1]), math.nan
    total = lam.sum()
    if not total > 0:
        return math.nan, math.nan, np.zeros(x.shape[1]), math.nan
    lam = lam / total
    w = lam @ p
    rho = float(norms[i] + lam @ norms[s_idx])
    floor = 4 * (len(s_idx) + x.shape[1]) * _U * m
    return float(np.linalg.norm(w)), rho, w, floor


def _decide(x: np.ndarray, tol: float, n_random: int, seed: int) -> np.ndarray:
    """Selectable mask (see the module docstring) for keys x (n, d), already scaled to max-abs ~1."""
    n, d = x.shape
    if n == 1:
        return np.ones(1, dtype=bool)
    norms = np.sqrt((x * x).sum(axis=1))
    big = float(norms.max())
    rng = np.random.default_rng(seed)
    centred = x - x.mean(axis=0)
    queries = np.hstack([x.T, centred.T, rng.standard_normal((d, n_random))])
    selectable = np.zeros(n, dtype=bool)
    selectable[_strict_winners(x, queries, tol)] = True
    decided = selectable.copy()
    # Outer keys first: they are more likely vertices, and the vertices found seed every S.
    order = np.argsort(-(centred * centred).sum(axis=1))
    for i in order:
        if decided[i]:
            continue
        dist = ((x - x[i]) ** 2).sum(axis=1)
        dist[i] = np.inf
        start = set(np.argpartition(dist, min(d, n - 2))[: min(d, n - 2) + 1].tolist())  # nearest keys
        known = np.flatnonzero(selectable)
        known = known[known != i]
        if known.size > 4 * d:  # the known vertices most aligned with k_i
            known = known[np.argpartition(-(centred[known] @ centred[i]), 4 * d)[: 4 * d]]
        start.update(known.tolist())
        start.discard(int(i))
        in_s = np.zeros(n, dtype=bool)
        in_s[list(start)] = True
        verdict: bool | None = None
        for _ in range(n):  # each round adds >= 1 key to S
            s_idx = np.flatnonzero(in_s)
            delta, rho, w, floor = _hull_distance(x, norms, i, s_idx)
            if math.isnan(delta):
                break
            if delta <= tol * rho + floor:
                verdict = False  # within tol·ρ_i of conv(S) ⊂ conv(others)
                break
            q = -w
            qn = float(np.linalg.norm(q))
            scores = (x - x[i]) @ q  # q·(k_j - k_i): all < -margin certifies k_i
            scores[i] = -np.inf
            margin = (tol * (norms[i] + big) + 4 * (d + 2) * _U * big) * qn
            if qn > 0 and scores.max() < -margin:
                verdict = True
                break
            beaters = np.flatnonzero((scores >= -margin) & ~in_s)
            if beaters.size == 0:
                verdict = True if in_s.sum() == n - 1 else None  # S = all others: δ_S = δ_i > tol·ρ_i
                break
            in_s[beaters[np.argsort(-scores[beaters])[: max(4, d // 4)]]] = True
        if verdict is None:
            verdict = _lp_selectable(x, i)
        selectable[i] = verdict
        decided[i] = True
    return selectable


def unselectable(
    keys: Any,
    *,
    method: str = "auto",
    tol: float = 1e-9,
    n_random: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Mask of keys that can never get the strictly highest score q·k for any query q.

    Brody et al. (arXiv:2305.02582), Sec. 3.2: k_i is unselectable iff k_i ∈ conv(K \\ {k_i}),
    points on the boundary of that hull included, repeated keys included (they always tie).
    Decided as dist(k_i, conv(K \\ {k_i})) ≤ tol·ρ_i with ρ_i = ‖k_i‖ + Σλ_j‖k_j‖, the scale of
    the rounding of k_i and of its nearest convex combination (module docstring). A single key
    (n = 1) is selectable. Works for any n and d >= 1, rank-deficient sets included (no rank
    decision is made), and for keys at any scale (each coordinate is first divided by a power of
    two near its largest |value|, which is exact and changes no verdict).

    **Arguments:**

    - ``keys``: (n, d) array or tensor (converted to float64).
    - ``method``: ``"auto"`` (certified pre-filter + column generation, LP only if NNLS fails to
      converge) or ``"lp"`` (the LP F1 for every key, HiGHS's tolerances).
    - ``tol``: relative tolerance of the distance criterion (default 1e-9, see above).
    - ``n_random``, ``seed``: random Gaussian pre-filter queries.

    **Returns:** boolean array (n,), True where the key is unselectable.
    """
    if method not in ("auto", "lp"):
        raise ValueError(f"method must be 'auto' or 'lp', got {method!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    x = _as_keys(keys)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    # Divide each coordinate by a power of two near its largest |value| (exact, and an invertible
    # linear map, which leaves selectability unchanged): the criterion then holds coordinate-wise
    # relative, as float rounding does, for keys whose coordinates span any range of scales.
    _, e = np.frexp(np.abs(x).max(axis=0))
    x = np.ldexp(x, -e)
    if method == "lp":
        sel = np.array([True] if n == 1 else [_lp_selectable(x, i) for i in range(n)])
    else:
        sel = _decide(x, tol, n_random, seed)
    return ~sel


def unselectable_fraction(keys: Any, **kwargs: Any) -> float:
    """Fraction of keys that are unselectable (see :func:`unselectable`)."""
    mask = unselectable(keys, **kwargs)
    return float(mask.mean()) if mask.size else float("nan")
