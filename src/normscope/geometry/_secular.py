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
  ``dlaed4`` (Bunch–Nielsen–Sorensen / Li's "middle way", on −M = diag(−d) + wwᵀ; no shift,
  so small ζ keep full relative accuracy), which also returns ζᵢ − dⱼ to full relative
  accuracy. It is called through ``scipy.linalg.cython_lapack`` with ctypes, which releases
  the GIL, so the roots are split over ``torch.get_num_threads()`` threads;
- eigenvectors use the Gu–Eisenstat (Löwner) recomputation of the coupling,
  ŵⱼ² = −∏ᵢ(ζᵢ − dⱼ)/∏_{l≠j}(d_l − dⱼ), and vᵢ ∝ ŵ/(d − ζᵢ), which makes them orthonormal
  to O(N·machine-ε) without reorthogonalisation (the product is accumulated while the roots
  are found, so no N×N temporary is needed).

Cost: O(N²) for all directions (optimal for an explicit N×N matrix: one pass to write it plus
the root finding), O(N²) flops and O(N) memory for the lengths alone. See
``benchmarks/bench_geometry.py`` for measured speed-ups over dense ``eigh``.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

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


def _capsule_function(name: str, restype, *argtypes):
    """A LAPACK routine from ``scipy.linalg.cython_lapack`` as a ctypes function (releases the GIL)."""
    from scipy.linalg import cython_lapack

    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    capsule = cython_lapack.__pyx_capi__[name]
    return ctypes.CFUNCTYPE(restype, *argtypes)(api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule)))


_INT_P = ctypes.POINTER(ctypes.c_int)
_DBL_P = ctypes.POINTER(ctypes.c_double)
# DLAED4(K, I, D, Z, DELTA, RHO, DLAM, INFO): I-th eigenvalue of diag(D) + ρzzᵀ, D ascending;
# DELTA(j) = D(j) − λ_I to full relative accuracy (Bunch–Nielsen–Sorensen, Li's middle way).
@functools.cache
def _dlaed4():
    return _capsule_function("dlaed4", None, _INT_P, _INT_P, _DBL_P, _DBL_P, _DBL_P, _DBL_P, _DBL_P, _INT_P)


@functools.cache
def _have_dlaed4() -> bool:
    try:
        _dlaed4()
    except (KeyError, AttributeError, OSError, ValueError, TypeError):
        return False
    return True


def _n_threads(n_roots: int) -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1, n_roots // 256))


def _roots_and_vectors(
    dpole: np.ndarray, wpole: np.ndarray, *, out: np.ndarray | None = None, out_rows: np.ndarray | None = None,
    col_pole: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigenvalues (descending) of diag(dpole) − wpole wpoleᵀ, and optionally its eigenvectors.

    ``dpole`` strictly descending, ``wpole`` > 0 (poles and couplings after deflation). With
    D = −dpole ascending this is −(diag(D) + wwᵀ), so ``dlaed4`` root q is ζ_q ∈ (d_{q+1}, d_q)
    (the last one below d_{n−1}) and its DELTA row is e_q = ζ_q − d (relative-accurate).

    With ``out``: the Gu–Eisenstat coupling ŵⱼ² = −e_j[j]·∏_{q≠j} e_q[j]/(d_q − dⱼ) is accumulated
    row by row, and for every q with ``out_rows[q] >= 0`` the row 1/e_q gathered through
    ``col_pole`` (original coordinate → pole; ``len(dpole)`` marks a null coordinate, giving 0) is
    written to ``out[out_rows[q]]``. Roots are split over threads (ctypes releases the GIL).
    Returns ``(ζ, ŵ)`` (ŵ None without ``out``).
    """
    n = dpole.size
    if n <= 2:  # dlaed4 returns eigenvector data, not D − λ, in DELTA for K ≤ 2: solve directly
        M = np.diag(dpole) - np.outer(wpole, wpole)
        zeta = np.linalg.eigvalsh(M)[::-1].copy()
        if n == 1:
            zeta[0] = dpole[0] - wpole[0] ** 2
        E = zeta[:, None] - dpole[None, :]
        acc = np.ones(n)
        for q in range(n):
            ratio = np.ones(n)
            mask = np.arange(n) != q
            ratio[mask] = E[q, mask] / (dpole[q] - dpole[mask])
            ratio[q] = -E[q, q]
            acc *= ratio
            if out is not None and out_rows[q] >= 0:
                out[out_rows[q]] = 1.0 / np.append(E[q], np.inf)[col_pole]
        return zeta, (np.sqrt(np.abs(acc)) if out is not None else None)

    dlaed4 = _dlaed4()
    D = np.ascontiguousarray(-dpole)
    z = np.ascontiguousarray(wpole)
    lam = np.empty(n)
    chunks = np.array_split(np.arange(n), _n_threads(n))

    def work(qs: np.ndarray) -> np.ndarray | None:
        k, i, info, rho = ctypes.c_int(n), ctypes.c_int(0), ctypes.c_int(0), ctypes.c_double(1.0)
        ext = np.empty(n + 1)
        ext[n] = np.inf
        e = ext[:n]
        args = (ctypes.byref(k), ctypes.byref(i), D.ctypes.data_as(_DBL_P), z.ctypes.data_as(_DBL_P),
                e.ctypes.data_as(_DBL_P), ctypes.byref(rho))
        lam_base = lam.ctypes.data
        acc = np.ones(n) if out is not None else None
        ratio = np.empty(n)
        for q in qs.tolist():
            i.value = q + 1
            dlaed4(*args, ctypes.cast(lam_base + 8 * q, _DBL_P), ctypes.byref(info))
            if info.value != 0:
                raise RuntimeError(f"LAPACK dlaed4 did not converge for root {q} (info={info.value})")
            if acc is None:
                continue
            # e = D − λ_q = ζ_q − d
            np.subtract(dpole[q], dpole, out=ratio)
            ratio[q] = 1.0
            np.divide(e, ratio, out=ratio)
            ratio[q] = -e[q]
            acc *= ratio
            r = out_rows[q]
            if r >= 0:
                row = out[r]
                np.take(ext, col_pole, out=row, mode="clip")
                np.reciprocal(row, out=row)
        return acc

    if len(chunks) == 1:
        accs = [work(chunks[0])]
    else:
        with ThreadPoolExecutor(len(chunks)) as pool:
            accs = list(pool.map(work, chunks))
    zeta = -lam
    if out is None:
        return zeta, None
    acc = accs[0]
    for a in accs[1:]:
        acc = acc * a
    return zeta, np.sqrt(np.abs(acc))


def _tie_vectors(w_grp: np.ndarray) -> np.ndarray:
    """Orthonormal basis (rows) of {v : w_grpᵀv = 0} from a Householder reflection."""
    m = w_grp.size
    u = w_grp / np.linalg.norm(w_grp)
    v = u.copy()
    v[0] += math.copysign(1.0, u[0])
    h = np.eye(m) - (2.0 / float(v @ v)) * np.outer(v, v)
    return h[:, 1:].T


def _finish_vectors(A: np.ndarray, rows: np.ndarray, scale: np.ndarray) -> None:
    """Rows ``rows`` of A hold 1/(ζ_q − d_p(n)); make them −ŵ_p(n)u_n/(ζ_q − d_p(n)) normalised (torch, all threads)."""
    full = torch.from_numpy(A)
    idx = torch.from_numpy(rows)
    contiguous = idx.numel() == full.shape[0] and bool(torch.equal(idx, torch.arange(full.shape[0])))
    V = full if contiguous else full.index_select(0, idx)
    V.mul_(torch.from_numpy(scale)[None, :])
    V.mul_(torch.linalg.vector_norm(V, dim=1).reciprocal_()[:, None])
    if not contiguous:
        full.index_copy_(0, idx, V)


def principal_axes(
    gain: np.ndarray, *, directions: bool = False, method: str = "secular"
) -> tuple[np.ndarray, np.ndarray | None]:
    r"""Semi-axes of LayerNorm's (N−1)-dimensional output ellipsoid, descending.

    The lengths are ℓ = √(Nζ) for the eigenvalues ζ > 0 of M = GΠG = diag(g²) − ggᵀ/N and
    the directions are the matching unit eigenvectors (Riechers, arXiv:2405.04134, §3, via
    M⁺ = Π₂G⁻²Π₂; the paper's Drazin-inverse recipe for zero gains is wrong and is *not*
    used: with k zero gains M has rank N − k and gives the correct axes).

    **Arguments:**

    - ``gain``: g, shape (N,), finite, N ≥ 2.
    - ``directions``: also return the unit directions as the columns of an (N, m) array.
    - ``method``: ``"secular"`` (O(N²), deflation + ``dlaed4`` + Löwner) or ``"dense"``
      (``numpy.linalg.eigh`` of M, O(N³), the reference implementation).

    **Returns:** ``(lengths, V)``; m = N − 1 axes when no gain is (numerically) zero, else
    N − k; ``V`` is None unless ``directions``. Signs of the directions are arbitrary.
    """
    g = np.asarray(gain, dtype=np.float64)
    n = g.size
    if g.ndim != 1 or n < 2:
        raise ValueError(f"gain must be a vector with N >= 2 entries, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError(f"gain contains {int(np.sum(~np.isfinite(g)))} NaN/Inf value(s) out of {n}")
    if method not in ("secular", "dense"):
        raise ValueError(f"method must be 'secular' or 'dense', got {method!r}")
    if not np.any(g):
        return np.zeros(0), (np.zeros((n, 0)) if directions else None)
    keep, groups, _tol, n_null = _deflate(g)
    n_axes = n - max(n_null, 1)
    if method == "secular" and not _have_dlaed4():
        warnings.warn("LAPACK dlaed4 is not reachable through this scipy; using dense eigh (O(N^3)) instead")
        method = "dense"
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
        zeta = _roots_and_vectors(dpole, wpole)[0][:n_sec]
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
    zeta, what = _roots_and_vectors(dpole, wpole, out=A, out_rows=out_rows, col_pole=col_pole)
    zeta = zeta[:n_sec]
    _finish_vectors(A, pos[:n_sec], np.append(what, 0.0)[col_pole] * col_coef)
    all_zeta = np.empty(n_axes)
    all_zeta[pos[:n_sec]] = zeta
    r = n_sec
    for p, gr in tie_groups:
        rows = pos[r : r + gr.size - 1]
        all_zeta[rows] = dpole[p]
        A[np.ix_(rows, gr)] = _tie_vectors(w[gr])
        r += gr.size - 1
    return np.sqrt(n * np.maximum(all_zeta, 0.0)), A.T
