"""Unselectable keys: keys that can never receive the strictly highest attention score.

Brody, Alon & Yahav, "On the Expressivity Role of LayerNorm in Transformers' Attention",
Findings of ACL 2023, Section 3.2. Key k_i of a finite set K is *selectable* if some query q
gives q·k_i > q·k_j for every j != i; otherwise it is *unselectable*. For finite sets this is
exactly k_i ∈ conv(K \\ {k_i}) (a strict separating hyperplane exists otherwise), so the
selectable keys are the extreme points (vertices) of conv(K).

Both properties are invariant under invertible affine maps of the key space (translations
cancel in q·k_i - q·k_j, and an invertible linear map moves the query by its transpose), so
the test runs on whitened coordinates of the keys' affine hull: rank-deficient sets (LN
outputs live in a (d-1)-dimensional hyperplane; n <= d keys span at most n-1 dimensions) need
no special case and no rank assertion.

Decision procedure (steps 3–4 decide only with a checked certificate):

1. duplicates (equal after rounding, see ``decimals``) are unselectable under the strict
   definition: two equal keys always tie;
2. affinely independent sets (n_unique <= rank + 1) are all vertices;
   planar sets (rank 2) use Andrew's monotone chain with the same relative tolerance;
3. pre-filter: strict arg-max of the scores under a batch of queries (each key itself, each
   whitened key, ``n_random`` Gaussian directions); a strict winner is a vertex;
4. each undecided key i: column generation with non-negative least squares over a growing set
   S of other keys. ``nnls`` gives either barycentric weights λ >= 0 with Σλ = 1 and
   Σλ_j k_j = k_i (to ``tol``): unselectable; or the residual u = k_i - Σλ_j k_j, which (by the
   KKT conditions) is a strict witness query against S; if k_i wins under u against all keys,
   it is selectable, else the keys that beat it join S (at least one new key per round, so at
   most n rounds);
5. anything left ambiguous (numerically) is settled by the exact LP (F1) with
   ``scipy.optimize.linprog(method="highs")``: {q : (k_j - k_i)·q <= -1 for all j != i} is
   non-empty iff k_i is selectable.

``method="lp"`` skips 3–4 and runs the LP (F1) for every unique key (the reference baseline).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linprog, nnls

__all__ = ["unselectable", "unselectable_fraction"]

_CHUNK = 1024  # queries scored per matrix product in the pre-filter


def _as_keys(keys: Any) -> np.ndarray:
    if hasattr(keys, "detach"):  # torch.Tensor without importing torch
        keys = keys.detach().cpu().double().numpy()
    x = np.asarray(keys, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"keys must be a 2-D (n, d) array, got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError("keys must have at least one feature (d >= 1)")
    if not np.isfinite(x).all():
        raise ValueError("keys contain NaN or Inf")
    return x


def _whiten(x: np.ndarray, rank_rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Whitened coordinates z (m, r) of the points in their affine hull, and the map
    ``coeff`` (r, d) with x - mean(x) ≈ z @ coeff (so a query q acts on z as coeff @ q)."""
    m, d = x.shape
    centred = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    if s.size == 0 or s[0] == 0.0:
        return np.zeros((m, 0)), np.zeros((0, d))
    r = int(np.count_nonzero(s > rank_rtol * s[0]))
    return u[:, :r] * np.sqrt(m), (s[:r, None] / np.sqrt(m)) * vt[:r]


def _strict_winners(z: np.ndarray, queries: np.ndarray, tol: float) -> np.ndarray:
    """Indices of keys that are the strict arg-max (by a relative margin) of some query column."""
    n = z.shape[0]
    if n < 2:
        return np.arange(n)
    scale = 1.0 + np.sqrt((z * z).sum(axis=1).max())
    found = []
    for start in range(0, queries.shape[1], _CHUNK):
        q = queries[:, start : start + _CHUNK]
        scores = z @ q
        top2 = np.partition(scores, n - 2, axis=0)[n - 2 :]
        margin = tol * scale * np.linalg.norm(q, axis=0)
        strict = top2[1] - top2[0] > margin
        if strict.any():
            found.append(np.argmax(scores[:, strict], axis=0))
    return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.intp)


def _lp_selectable(z: np.ndarray, i: int) -> bool:
    """Exact test (F1): is {q : (z_j - z_i)·q <= -1 for all j != i} non-empty? (HiGHS)"""
    others = np.delete(z, i, axis=0) - z[i]
    r = z.shape[1]
    res = linprog(
        np.zeros(r), A_ub=others, b_ub=-np.ones(len(others)), bounds=[(None, None)] * r, method="highs"
    )
    if res.status == 0:
        return True
    if res.status == 2:
        return False
    # Numerical trouble in F1: fall back to hull membership (F2): λ >= 0, Σλ = 1, Σλ_j z_j = z_i.
    a_eq = np.vstack([np.delete(z, i, axis=0).T, np.ones(len(others))])
    res2 = linprog(
        np.zeros(len(others)), A_eq=a_eq, b_eq=np.append(z[i], 1.0), bounds=(0, None), method="highs"
    )
    if res2.status in (0, 2):
        return res2.status == 2
    raise RuntimeError(f"HiGHS could not decide key {i}: {res.message} / {res2.message}")


def _hull_2d(z: np.ndarray, tol: float) -> np.ndarray:
    """Strict vertices of a planar hull: Andrew's monotone chain, dropping points within a
    relative ``tol`` of collinear (points on an edge are not vertices: they tie or lose)."""
    n = z.shape[0]
    order = np.lexsort((z[:, 1], z[:, 0]))
    eps = tol * (1.0 + float(np.sqrt((z * z).sum(axis=1).max())))

    xs, ys = z[:, 0].tolist(), z[:, 1].tolist()

    def chain(idx):
        out: list[int] = []
        for i in idx:
            xi, yi = xs[i], ys[i]
            while len(out) >= 2:
                o, a = out[-2], out[-1]
                cross = (xs[a] - xs[o]) * (yi - ys[o]) - (ys[a] - ys[o]) * (xi - xs[o])
                # keep a only if it lies strictly (by eps) left of the line o -> i
                if cross <= eps * math.hypot(xi - xs[o], yi - ys[o]):
                    out.pop()
                else:
                    break
            out.append(i)
        return out

    lower, upper = chain(order.tolist()), chain(order[::-1].tolist())
    sel = np.zeros(n, dtype=bool)
    sel[lower[:-1] + upper[:-1]] = True
    return sel


def _decide_unique(z: np.ndarray, method: str, tol: float, n_random: int, seed: int, queries: np.ndarray | None) -> np.ndarray:
    """Selectable mask for distinct points with full-rank whitened coordinates z (n, r)."""
    n, r = z.shape
    if r == 0:
        return np.ones(n, dtype=bool)  # a single distinct point
    if n <= r + 1:
        return np.ones(n, dtype=bool)  # affinely independent: every point is a vertex
    if r == 1:
        sel = np.zeros(n, dtype=bool)
        sel[[np.argmin(z[:, 0]), np.argmax(z[:, 0])]] = True
        return sel
    if method == "lp":
        return np.array([_lp_selectable(z, i) for i in range(n)])
    if r == 2:
        return _hull_2d(z, tol)

    rng = np.random.default_rng(seed)
    parts = [z.T, rng.standard_normal((r, n_random))]
    if queries is not None:
        parts.append(queries)
    selectable = np.zeros(n, dtype=bool)
    selectable[_strict_winners(z, np.hstack(parts), tol)] = True
    decided = selectable.copy()

    scale = 1.0 + np.sqrt((z * z).sum(axis=1).max())
    atol = tol * scale
    zaug = np.hstack([z, np.ones((n, 1))])  # [z_j, 1]: NNLS rows for Σλ_j z_j = z_i and Σλ_j = 1
    # Outer keys first: they are more likely vertices, and the vertices found grow every S.
    order = np.argsort(-(z * z).sum(axis=1))
    for i in order:
        if decided[i]:
            continue
        s_idx = np.flatnonzero(selectable)
        s_idx = s_idx[s_idx != i]
        if s_idx.size == 0:
            s_idx = np.delete(np.arange(n), i)
        elif s_idx.size > 8 * r:  # start from the known vertices most aligned with z_i
            s_idx = s_idx[np.argpartition(-(z[s_idx] @ z[i]), 8 * r)[: 8 * r]]
        in_s = np.zeros(n, dtype=bool)
        in_s[s_idx] = True
        verdict: bool | None = None
        for _ in range(n):  # each round adds >= 1 key to S, so this bound is never reached
            a = zaug[s_idx].T
            try:
                lam, _ = nnls(a, zaug[i], maxiter=50 * a.shape[1])
            except RuntimeError:
                break
            u = z[i] - lam @ z[s_idx]
            gap = 1.0 - lam.sum()
            unorm = np.linalg.norm(u)
            if unorm <= atol and abs(gap) <= tol:
                verdict = False  # z_i = Σλ_j z_j with λ in the simplex: inside the hull of others
                break
            if unorm <= atol:
                break  # degenerate witness: let the LP decide
            scores = z @ u
            si = scores[i]
            scores[i] = -np.inf
            margin = tol * scale * unorm
            if si - scores.max() > margin:
                verdict = True
                break
            beaters = np.flatnonzero((scores >= si - margin) & ~in_s)
            if beaters.size == 0:
                break
            top = np.argmax(scores)
            # The strict arg-max of any query is a vertex of the whole set.
            second = max(np.partition(scores, n - 2)[n - 2], si)
            if scores[top] - second > margin and not selectable[top]:
                selectable[top] = decided[top] = True
            add = beaters[np.argsort(-scores[beaters])[: max(4, r // 4)]]
            in_s[add] = True
            s_idx = np.flatnonzero(in_s)
        if verdict is None:
            verdict = _lp_selectable(z, i)
        selectable[i] = verdict
        decided[i] = True
    return selectable


def unselectable(
    keys: Any,
    *,
    method: str = "auto",
    tol: float = 1e-9,
    rank_rtol: float = 1e-10,
    decimals: int | None = 12,
    n_random: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Mask of keys that can never get the strictly highest score q·k for any query q.

    Brody et al. (2023), Sec. 3.2: k_i is unselectable iff k_i ∈ conv(K \\ {k_i}). Exact up to
    the relative tolerance ``tol`` on whitened coordinates (certificates: a witness query with
    a strict relative margin ``tol``, or convex weights reproducing k_i to ``tol``; the HiGHS
    LP with its own 1e-7 feasibility tolerance settles numerically ambiguous keys).

    **Conventions.** Duplicates: keys that coincide (after rounding the keys, scaled to unit
    max-abs, to ``decimals`` places; ``None`` = exact equality) are all unselectable, since
    they always tie (the strict definition; the original code's LP does not flag them).
    A single key (n = 1) is selectable. Directions of the keys' affine hull whose singular
    value is below ``rank_rtol`` times the largest are treated as zero; for vectors projected
    in float32 (e.g. LN outputs), re-project in float64 first, or float32 residue along 𝟙 will
    count as a real dimension. Works for any n and d >= 1 (n <= d: the hull is at most
    (n-1)-dimensional and handled exactly).

    **Arguments:** ``keys`` (n, d) array or tensor (converted to float64); ``method`` "auto"
    (pre-filters + certified column generation + LP fallback) or "lp" (the LP F1 for every
    key); ``n_random`` random Gaussian pre-filter queries; ``seed`` for those queries.

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
    amax = np.abs(x).max()
    xs = x / amax if amax > 0 else x
    key = np.round(xs, decimals) if decimals is not None else xs
    _, first, inverse, counts = np.unique(key, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    uniq = xs[first]
    z, coeff = _whiten(uniq, rank_rtol)
    # Each original key as a query (q = k_i: decisive for keys on a sphere), mapped into
    # whitened coordinates, is a cheap pre-filter.
    needed = method == "auto" and z.shape[1] > 2 and len(uniq) > z.shape[1] + 1
    queries = coeff @ uniq.T if needed else None
    sel_unique = _decide_unique(z, method, tol, n_random, seed, queries)
    sel_unique &= counts == 1
    return ~sel_unique[inverse]


def unselectable_fraction(keys: Any, **kwargs: Any) -> float:
    """Fraction of keys that are unselectable (see :func:`unselectable`)."""
    mask = unselectable(keys, **kwargs)
    return float(mask.mean()) if mask.size else float("nan")
