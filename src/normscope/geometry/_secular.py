"""Principal axes of LayerNorm's output ellipsoid from the secular equation of M = GΠG.

The (N−1)-dimensional output ellipsoid of LayerNorm with gain g has semi-axis lengths
ℓ = √(Nζ) and directions v for the eigenpairs (ζ > 0, v) of

    M = G Π G = diag(d) − w wᵀ,    d = g²,  w = g/√N     (diagonal minus rank one),

(the reference's §6.3; M⁺ = Π₂G⁻²Π₂ when every gain is nonzero, the matrix of Riechers,
arXiv:2405.04134, §3). M never inverts g, so zero, tiny, repeated and negative gains need no
special case in the mathematics; numerically they are *deflated* (reference §8.3):

- |wⱼ|·‖w‖ ≤ tol (zero or negligible gains): eⱼ is a null direction, not an axis;
- |g| values equal within tol: a Householder reflection inside the group gives m−1 exact
  eigenvectors with ζ = g², and the group becomes one pole with coupling ‖w_group‖;
- the remaining DPR1 problem with distinct poles is solved root by root with LAPACK
  ``dlasd4`` (Bunch–Nielsen–Sorensen / Li's "middle way", on cI − M = diag(c − d) + wwᵀ),
  which also returns the differences ζᵢ − dⱼ to full relative accuracy;
- eigenvectors use the Gu–Eisenstat (Löwner) recomputation of the coupling,
  ŵⱼ² = −∏ᵢ(ζᵢ − d̃ⱼ)/∏_{l≠j}(d̃_l − d̃ⱼ), and vᵢ ∝ ŵ/(d̃ − ζᵢ), which makes them orthonormal
  to O(N·machine-ε) without reorthogonalisation.

Cost: O(N²) for all directions (optimal for an explicit N×N matrix), with the N×N assembly
done in vectorised torch ops on all torch threads; lengths only: one ``dlasd4`` call per root.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg.lapack import dlasd4

_EPS = float(np.finfo(np.float64).eps)


def _deflate(g: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], float, int]:
    """Split the indices of ``g``: negligible couplings, and tie groups sorted by g² descending.

    Returns ``(keep, groups, tol, n_null)``: ``keep`` are the non-negligible indices sorted by
    g² descending, ``groups`` lists index arrays (into ``g``) of consecutive ties, ``tol`` the
    deflation tolerance on d = g², ``n_null`` the number of negligible gains.
    """
    n = g.size
    d = g * g
    scale = float(d.max())
    tol = 8.0 * _EPS * scale
    wnorm = math.sqrt(float(d.sum()) / n)
    small = np.abs(g) / math.sqrt(n) * wnorm <= tol
    keep = np.flatnonzero(~small)
    keep = keep[np.argsort(-d[keep], kind="stable")]
    if keep.size == 0:
        return keep, [], tol, n
    breaks = np.flatnonzero(-np.diff(d[keep]) > tol) + 1
    groups = np.split(keep, breaks)
    return keep, groups, tol, int(small.sum())


def _tie_vectors(w_grp: np.ndarray) -> np.ndarray:
    """Orthonormal basis (rows) of {v : w_grpᵀv = 0} from a Householder reflection."""
    m = w_grp.size
    u = w_grp / np.linalg.norm(w_grp)
    v = u.copy()
    v[0] += math.copysign(1.0, u[0])
    h = np.eye(m) - (2.0 / float(v @ v)) * np.outer(v, v)
    return h[:, 1:].T


def _secular_roots(dpole: np.ndarray, wpole: np.ndarray) -> np.ndarray:
    """Eigenvalues of diag(dpole) − wpole wpoleᵀ (dpole strictly descending, wpole > 0), descending.

    Root q lies in (d_{q+1}, d_q) (the last one below d_{n−1}). ``dlasd4`` solves the equivalent
    positive update cI − M = diag(D̃²) + wwᵀ with D̃ = √(c − d) ascending and c = max d; its
    ``delta·work`` = D̃ⱼ² − σ_q² = ζ_q − d̃ⱼ to full relative accuracy, so ζ_q is read off the
    nearer pole.
    """
    n = dpole.size
    if n == 1:  # dlasd4 returns delta = work = 1 for n = 1; the root is explicit
        return dpole - wpole**2
    dt = _shifted_poles(dpole)
    zeta = np.empty(n)
    for q in range(n):
        delta, _s, work, info = dlasd4(q, dt, wpole)
        _check_info(info, q)
        zeta[q] = _nearest(dpole, delta, work, q)
    return zeta


def _shifted_poles(dpole: np.ndarray) -> np.ndarray:
    dt = np.sqrt(np.maximum(dpole[0] - dpole, 0.0))
    dt[0] = 0.0
    return dt


def _check_info(info: int, q: int) -> None:
    if info != 0:
        raise RuntimeError(f"LAPACK dlasd4 did not converge for root {q} (info={info})")


def _nearest(dpole: np.ndarray, delta: np.ndarray, work: np.ndarray, q: int) -> float:
    e_q = delta[q] * work[q]
    if q + 1 < dpole.size:
        e_up = delta[q + 1] * work[q + 1]
        if abs(e_up) < abs(e_q):
            return float(dpole[q + 1] + e_up)
    return float(dpole[q] + e_q)


def _secular_vectors(
    dpole: np.ndarray, wpole: np.ndarray, col_pole: np.ndarray, col_coef: np.ndarray, out: np.ndarray, out_rows: np.ndarray
) -> np.ndarray:
    """Roots and unit eigenvectors of the reduced DPR1 problem, written into rows of ``out``.

    Column n of ``out`` (an original coordinate) takes the entry of pole ``col_pole[n]`` times
    ``col_coef[n]`` (u_n = w_n/‖w_group‖; 0 for deflated null coordinates, whose ``col_pole`` is
    ``len(dpole)``). Root q is written to row ``out_rows[q]`` (skipped if negative).

    Gu–Eisenstat: ŵⱼ² = −(ζⱼ − d̃ⱼ)·∏_{q≠j}(ζ_q − d̃ⱼ)/(d̃_q − d̃ⱼ), accumulated row by row
    while ``dlasd4`` runs, with d̃_q − d̃ⱼ = (D̃ⱼ − D̃_q)(D̃ⱼ + D̃_q) exactly as in the shifted problem;
    then vᵢ ∝ ŵ/(d̃ − ζᵢ) and rows are normalised in torch (all threads).
    """
    n = dpole.size
    zeta = np.empty(n)
    if n == 1:
        zeta[0] = dpole[0] - wpole[0] ** 2
        what = wpole.copy()
        e_rows = {0: np.array([-wpole[0] ** 2])}
    else:
        dt = _shifted_poles(dpole)
        acc = np.ones(n)
        ext = np.empty(n + 1)
        ext[n] = np.inf
        ratio = np.empty(n)
        tmp = np.empty(n)
        for q in range(n):
            delta, _s, work, info = dlasd4(q, dt, wpole)
            _check_info(info, q)
            zeta[q] = _nearest(dpole, delta, work, q)
            e = np.multiply(delta, work, out=ext[:n])
            np.subtract(dt, dt[q], out=ratio)
            np.add(dt, dt[q], out=tmp)
            ratio *= tmp
            ratio[q] = 1.0
            np.divide(e, ratio, out=ratio)
            ratio[q] = -e[q]
            acc *= ratio
            r = out_rows[q]
            if r >= 0:
                row = out[r]
                np.take(ext, col_pole, out=row, mode="clip")
                np.reciprocal(row, out=row)
        what = np.sqrt(np.abs(acc))
        e_rows = None
    if e_rows is not None and out_rows[0] >= 0:
        out[out_rows[0]] = 1.0 / np.append(e_rows[0], np.inf)[col_pole]
    # v_q[n] = −u_n ŵ_{p(n)} / e_q[p(n)], then normalise (the reduced and full norms agree)
    scale = np.append(what, 0.0)[col_pole] * col_coef
    rows = torch.from_numpy(out_rows[out_rows >= 0])
    full = torch.from_numpy(out)
    contiguous = rows.numel() == full.shape[0] and bool(torch.equal(rows, torch.arange(full.shape[0])))
    V = full if contiguous else full.index_select(0, rows)
    V.mul_(torch.from_numpy(scale)[None, :])
    V.mul_(torch.linalg.vector_norm(V, dim=1).reciprocal_().neg_()[:, None])
    if not contiguous:
        full.index_copy_(0, rows, V)
    return zeta


def _tie_vectors(w_grp: np.ndarray) -> np.ndarray:
    """Orthonormal basis (rows) of {v : w_grpᵀv = 0} from a Householder reflection."""
    m = w_grp.size
    u = w_grp / np.linalg.norm(w_grp)
    v = u.copy()
    v[0] += math.copysign(1.0, u[0])
    h = np.eye(m) - (2.0 / float(v @ v)) * np.outer(v, v)
    return h[:, 1:].T


def principal_axes(
    gain: np.ndarray, *, directions: bool = False, method: str = "secular"
) -> tuple[np.ndarray, np.ndarray | None]:
    r"""Semi-axes of LayerNorm's (N−1)-dimensional output ellipsoid, descending.

    The lengths are ℓ = √(Nζ) for the eigenvalues ζ > 0 of M = GΠG = diag(g²) − ggᵀ/N and
    the directions are the matching unit eigenvectors (Riechers, arXiv:2405.04134, §3, via
    M⁺ = Π₂G⁻²Π₂; the paper's Drazin-inverse recipe for zero gains is wrong and is *not*
    used: with k zero gains M has rank N − k and gives the correct axes).

    **Arguments:**

    - ``gain``: float64 array (N,), finite, N ≥ 2 (validated by the caller).
    - ``directions``: also return the unit directions as the columns of an (N, m) array.
    - ``method``: ``"secular"`` (O(N²), deflation + ``dlasd4`` + Löwner) or ``"dense"``
      (``numpy.linalg.eigh`` of M, O(N³), the reference implementation).

    **Returns:** ``(lengths, V)``; m = N − 1 axes when no gain is (numerically) zero, else
    N − k; ``V`` is None unless ``directions``. Signs of the directions are arbitrary.
    """
    g = np.asarray(gain, dtype=np.float64)
    n = g.size
    if method not in ("secular", "dense"):
        raise ValueError(f"method must be 'secular' or 'dense', got {method!r}")
    if not np.any(g):
        return np.zeros(0), (np.zeros((n, 0)) if directions else None)
    keep, groups, _tol, n_null = _deflate(g)
    n_axes = n - max(n_null, 1)
    if method == "dense":
        M = np.diag(g * g) - np.outer(g, g) / n
        if directions:
            z, V = np.linalg.eigh(M)
            z, V = z[::-1][:n_axes], V[:, ::-1][:, :n_axes]
        else:
            z, V = np.linalg.eigvalsh(M)[::-1][:n_axes], None
        return np.sqrt(n * np.maximum(z, 0.0)), V

    d = g * g
    w = g / math.sqrt(n)
    npole = len(groups)
    sizes = np.array([gr.size for gr in groups])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    dpole = np.add.reduceat(d[keep], starts) / sizes
    wpole = np.sqrt(np.add.reduceat(w[keep] ** 2, starts))
    n_sec = npole - 1 if n_null == 0 else npole  # no null gain: ζ = 0 (normal α) is the last root
    tie_groups = [(p, gr) for p, gr in enumerate(groups) if gr.size > 1]
    tie_zeta = np.array([dpole[p] for p, gr in tie_groups for _ in range(gr.size - 1)])

    if not directions:
        zeta = _secular_roots(dpole, wpole)[:n_sec]
        all_zeta = np.concatenate([zeta, tie_zeta])
        return np.sqrt(n * np.maximum(np.sort(all_zeta)[::-1], 0.0)), None

    # Output row of every eigenpair: secular roots descend already; ties are merged in by ζ.
    if tie_groups:
        pos = np.empty(n_sec + tie_zeta.size, dtype=np.int64)
        # root q lies strictly below pole q and above pole q+1; a tie ζ equals its pole: sort keys
        keys = np.concatenate([np.arange(n_sec) + 0.5, [p for p, gr in tie_groups for _ in range(gr.size - 1)]])
        pos[np.argsort(keys, kind="stable")] = np.arange(keys.size)
    else:
        pos = np.arange(n_sec)
    out_rows = np.full(npole, -1, dtype=np.int64)
    out_rows[:n_sec] = pos[:n_sec]
    col_pole = np.full(n, npole, dtype=np.int64)
    col_coef = np.zeros(n)
    col_pole[keep] = np.repeat(np.arange(npole), sizes)
    col_coef[keep] = w[keep] / wpole[col_pole[keep]]
    A = np.zeros((n_axes, n)) if tie_groups else np.empty((n_axes, n))
    zeta = _secular_vectors(dpole, wpole, col_pole, col_coef, A, out_rows)[:n_sec]
    all_zeta = np.empty(n_axes)
    all_zeta[pos[:n_sec]] = zeta
    r = n_sec
    for p, gr in tie_groups:
        rows = pos[r : r + gr.size - 1]
        all_zeta[rows] = dpole[p]
        A[np.ix_(rows, gr)] = _tie_vectors(w[gr])
        r += gr.size - 1
    return np.sqrt(n * np.maximum(all_zeta, 0.0)), A.T
