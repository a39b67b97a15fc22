r"""Principal axes of LayerNorm's output ellipsoid from the secular equation of M = GΠG.

The (N−1)-dimensional output ellipsoid of LayerNorm with gain g has semi-axis lengths
ℓ = √(Nζ) and directions v for the eigenpairs (ζ > 0, v) of

    M = G Π G = diag(d) − w wᵀ,    d = g²,  w = g/√N     (diagonal minus rank one)

(M⁺ = Π₂G⁻²Π₂ when every gain is nonzero, the matrix of Riechers, arXiv:2405.04134, §3; see
``docs/geometry.md``). M never inverts g, so zero, tiny, repeated and negative gains need no
special case in the mathematics. Numerically:

- **scale**: g is first scaled exactly by a power of two, g̃ = g·2⁻ᵉ with max|g̃| ∈ [½, 1)
  (ℓ is scale-covariant: ℓ(cg) = |c|ℓ(g)), so any finite nonzero gains work from 1e−308 to
  1e308 with no underflow of g² and the same relative accuracy at every scale;
- **deflation** (as LAPACK ``dlaed2``): |w̃ⱼ|·‖w̃‖ ≤ τ = 8ε (zero or negligible gains) makes eⱼ a
  null direction; |g̃| values whose squares agree within τ form a tie group: a Householder
  reflection inside the group gives m−1 exact eigenvectors with ζ = g̃², and the group becomes
  one pole with coupling ‖w̃_group‖;
- **roots**: the remaining problem with distinct poles, −M̃ = diag(−d̃) + ρ zzᵀ with LAPACK's
  normalisation ‖z‖ = 1 and ρ = ‖w̃‖², is solved for all roots between poles at once by
  ``_roots.interior_roots``: LAPACK ``dlaed4``'s iteration (Li's "middle way", origin at the
  nearer pole so that ζᵢ − dⱼ keeps full relative accuracy, dlaed4's stopping test) vectorised
  over roots in torch, with steps on a local model (nearest poles exact); problems with fewer
  than 1536 poles, the root below all poles, 2 × 2 problems and any root left unconverged go to
  ``dlaed4`` itself, called from ``scipy.linalg.cython_lapack`` through ctypes;
- **directions**: all of them with the Gu–Eisenstat (Löwner) recomputation of the coupling,
  ŵⱼ² = −∏ᵢ(ζᵢ − dⱼ)/∏_{l≠j}(d_l − dⱼ), vᵢ ∝ ŵ/(d − ζᵢ), orthonormal to O(N·ε) without
  reorthogonalisation; a top-k subset (``k=``) as vᵢ ∝ w/(d − ζᵢ) from the k roots alone,
  reorthogonalised by a k-column QR, in O(N·k) without ever forming an N×N array.

Cost: O(N²) flops and O(N) memory for all lengths, O(N²) for all directions (writing the N×N
answer), O(N·k) for k axes. See ``benchmarks/bench_geometry.py`` for measured speed-ups.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from ._lapack import dlaed4_roots, have_dlaed4
from ._roots import differences, interior_roots

_EPS = float(np.finfo(np.float64).eps)
_TAU = 8.0 * _EPS  # deflation tolerance relative to max g̃² (LAPACK dlaed2 uses 8·eps·max|d|)


class Axes(NamedTuple):
    """Semi-axes of the output ellipsoid: ``lengths`` (m,) longest first, ``directions`` (N, m) or None."""

    lengths: np.ndarray
    directions: np.ndarray | None


class _Deflated(NamedTuple):
    """The reduced problem: poles (strictly descending d̃), couplings, and where everything goes."""

    keep: np.ndarray  # non-negligible coordinates, sorted by d̃ descending
    starts: np.ndarray  # pole p is keep[starts[p] : starts[p] + sizes[p]] (its tie group)
    sizes: np.ndarray
    dpole: np.ndarray  # pole values d̃_p (group means), strictly descending
    wpole: np.ndarray  # couplings ‖w̃_group‖ > 0
    n_null: int  # negligible coordinates (null directions)


def _deflate(d: np.ndarray, w: np.ndarray) -> _Deflated:
    """Deflate diag(d) − wwᵀ (max d ∈ [¼, 1)): negligible couplings and tie groups (see module doc)."""
    wnorm = math.sqrt(float(np.dot(w, w)))
    small = np.abs(w) * wnorm <= _TAU
    keep = np.flatnonzero(~small)
    keep = keep[np.argsort(-d[keep], kind="stable")]
    breaks = np.flatnonzero(-np.diff(d[keep]) > _TAU) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64) if keep.size else np.zeros(0, np.int64)
    sizes = np.diff(np.append(starts, keep.size)).astype(np.int64)
    if keep.size:
        dpole = np.add.reduceat(d[keep], starts) / sizes
        wpole = np.sqrt(np.add.reduceat(w[keep] ** 2, starts))
    else:
        dpole = wpole = np.zeros(0)
    return _Deflated(keep, starts, sizes, dpole, wpole, int(small.sum()))


_BLOCK = 32  # roots per vectorised update in _roots: 32 rows of N doubles stay in L2 up to N ~ 8k


def _n_threads(n_roots: int) -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1, n_roots // 256))


def _small_roots(dpole: np.ndarray, wpole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K ≤ 2: ζ descending and rows E with −w/E_q ∝ the q-th eigenvector (so that ŵ = w below).

    For K = 2 ``dlaed4`` (through ``dlaed5``) returns λ and the unit eigenvector z/(D − λ) itself
    in DELTA, both accurate even for nearly equal poles (ζ − d from an eigvalsh root would not be).
    """
    if dpole.size == 1:
        return np.array([dpole[0] - wpole[0] ** 2]), np.array([[-(wpole[0] ** 2)]])
    rho = float(np.dot(wpole, wpole))
    D, z = np.ascontiguousarray(-dpole), np.ascontiguousarray(wpole / math.sqrt(rho))
    delta = np.empty((2, 2))
    zeta = -dlaed4_roots(D, z, rho, np.arange(2), deltas=delta)
    with np.errstate(divide="ignore"):
        return zeta, -wpole[None, :] / delta


# Poles from which the vectorised iteration runs; below, dlaed4 root by root (threaded) is as fast
# or faster: the vectorised steps have a fixed cost of ~4 ms (measured with one thread: equal at
# 1024 poles for the lengths; from 1536 on 1.3–1.5× faster for the lengths, 1.1–1.2× with directions).
_VECTOR_MIN = 1536


def _solve(D: np.ndarray, z: np.ndarray, rho: float, qs: np.ndarray, *, defer: bool):
    """Roots ``qs`` of diag(D) + ρzzᵀ (n ≥ 3): from ``_VECTOR_MIN`` poles on the interior ones all
    at once (``_roots``), the root above the largest pole and any the vectorised iteration leaves
    unconverged by ``dlaed4``; below, every root by ``dlaed4``.

    Returns (origin, τ, scalar): λ = origin + τ and D − λ = ``differences`` per position, except at
    the positions ``scalar`` (a boolean mask), which are ``dlaed4``'s: solved here (λ in origin),
    or with ``defer`` left for the caller, which wants their D − λ rows from the same call."""
    n = D.size
    origin, tau = np.zeros(qs.size), np.zeros(qs.size)
    scalar = np.ones(qs.size, dtype=bool)
    inner = np.flatnonzero(qs < n - 1) if n >= _VECTOR_MIN else np.zeros(0, dtype=np.int64)
    if inner.size:
        r = interior_roots(D, z, rho, qs[inner])
        origin[inner], tau[inner] = r.origin.numpy(), r.tau.numpy()
        scalar[inner] = False
        scalar[inner[r.unconverged.numpy()]] = True
    tau[scalar] = 0.0
    if not defer:
        origin[scalar] = dlaed4_roots(D, z, rho, qs[scalar], threads=_n_threads(int(scalar.sum())))
    return origin, tau, scalar


def _roots(
    dpole: np.ndarray, wpole: np.ndarray, qs: np.ndarray, *, delta_rows: np.ndarray | None = None,
    out: np.ndarray | None = None, out_rows: np.ndarray | None = None, col_pole: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Roots ζ_q (q in ``qs``) of diag(dpole) − wpole wpoleᵀ, root q ∈ (d_{q+1}, d_q).

    With D = −dpole ascending this is −(diag(D) + ρzzᵀ), z = wpole/‖wpole‖, ρ = ‖wpole‖², so
    ``dlaed4`` root q+1 is −ζ_q and its DELTA row is e_q = ζ_q − d (relative-accurate).

    - ``delta_rows`` (len(qs), npole): receives e_q for each q (top-k directions).
    - ``out``: all roots requested; the Gu–Eisenstat coupling ŵⱼ² = −e_j[j]·∏_{q≠j} e_q[j]/(d_q − dⱼ)
      is accumulated row by row, and for every q with ``out_rows[q] >= 0`` the row 1/e_q gathered
      through ``col_pole`` (coordinate → pole; ``len(dpole)`` marks a null coordinate, giving 0)
      is written to ``out[out_rows[q]]``.

    Returns ``(ζ[qs], ŵ)`` (ŵ None without ``out``).
    """
    n = dpole.size
    if n <= 2:
        zeta, E = _small_roots(dpole, wpole)
        if delta_rows is not None:
            delta_rows[:] = E[qs]
        if out is None:
            return zeta[qs], None
        for q in range(n):
            if out_rows[q] >= 0:
                out[out_rows[q]] = 1.0 / np.append(E[q], np.inf)[col_pole]
        return zeta[qs], wpole.copy()  # rows of E already carry the exact vectors: ŵ = w

    D = np.ascontiguousarray(-dpole)
    rho = float(np.dot(wpole, wpole))
    z = np.ascontiguousarray(wpole / math.sqrt(rho))
    want_rows = out is not None or delta_rows is not None
    origin, tau, scalar = _solve(D, z, rho, qs, defer=want_rows)
    lam = origin + tau  # dlaed4's roots are filled in by the blocks below
    if not want_rows:
        return -lam, None
    chunks = np.array_split(np.arange(qs.size), _n_threads(qs.size))

    def work(js: np.ndarray) -> np.ndarray | None:
        # Roots in blocks of B: their rows e_q = D − λ_q into ``buf``, then vectorised updates
        # of the Löwner product and the output rows per block.
        nb_max = min(_BLOCK, js.size)
        if nb_max == 0:
            return np.ones(n) if out is not None else None
        buf = np.empty((nb_max, n + 1))
        buf[:, n] = np.inf  # gathered through col_pole == n: null coordinates get 1/inf = 0
        acc = np.ones(n) if out is not None else None
        den = np.empty((nb_max, n)) if out is not None else None
        for start in range(0, js.size, nb_max):
            blk = js[start : start + nb_max]
            nb = blk.size
            qb = qs[blk]
            by_lapack = scalar[blk]
            if by_lapack.all():  # one dlaed4 call per root, rows written in place
                lam[blk] = dlaed4_roots(D, z, rho, qb, deltas=buf[:nb, :n])
            else:
                differences(D, origin[blk], tau[blk], buf[:nb, :n])
                for b in np.flatnonzero(by_lapack).tolist():
                    lam[blk[b]] = dlaed4_roots(D, z, rho, qb[b : b + 1], deltas=buf[b : b + 1, :n])[0]
            E = buf[:nb, :n]  # e_q = D − λ_q = ζ_q − d, one row per root
            if delta_rows is not None:
                delta_rows[blk] = E
            if acc is None:
                continue
            ratio = den[:nb]
            ar = np.arange(nb)
            np.subtract(dpole[qb][:, None], dpole[None, :], out=ratio)
            ratio[ar, qb] = 1.0
            np.divide(E, ratio, out=ratio)
            ratio[ar, qb] = -E[ar, qb]
            acc *= ratio.prod(axis=0)
            rows = out_rows[qb]
            if rows[0] >= 0 and np.array_equal(rows, rows[0] + ar):
                dst = out[rows[0] : rows[0] + nb]
                np.take(buf[:nb], col_pole, axis=1, out=dst, mode="clip")
                np.reciprocal(dst, out=dst)
            else:
                for b in np.flatnonzero(rows >= 0).tolist():
                    np.take(buf[b], col_pole, out=out[rows[b]], mode="clip")
                    np.reciprocal(out[rows[b]], out=out[rows[b]])
        return acc

    if len(chunks) == 1:
        accs = [work(chunks[0])]
    else:
        with ThreadPoolExecutor(len(chunks)) as pool:
            accs = list(pool.map(work, chunks))
    if out is None:
        return -lam, None
    acc = accs[0]
    for a in accs[1:]:
        acc = acc * a
    return -lam, np.sqrt(np.abs(acc))


def _output(shape: tuple[int, int], *, zero: bool) -> np.ndarray:
    """The (m, N) float64 output array, allocated by torch rather than numpy: numpy asks the
    kernel for transparent huge pages on arrays ≥ 4 MB, and where THP defrag is ``madvise`` (a
    common default) the first fault after other large allocations compacts memory synchronously:
    measured 470–530 ms instead of 220 ms for the 134 MB directions at N = 4096, one call in
    two in a benchmark interleaved with ``eigh``. Plain pages cost ~45 ms more, every time."""
    t = torch.zeros(shape, dtype=torch.float64) if zero else torch.empty(shape, dtype=torch.float64)
    return t.numpy()


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


def _check(gain, method: str, k: int | None, which: str) -> np.ndarray:
    g = np.asarray(gain, dtype=np.float64)
    if g.ndim != 1 or g.size < 2:
        raise ValueError(f"gain must be a vector with N >= 2 entries, got shape {g.shape}")
    bad = ~np.isfinite(g)
    if bad.any():
        raise ValueError(f"gain contains {int(bad.sum())} NaN/Inf value(s) out of {g.size} (first at index "
                         f"{int(np.argmax(bad))}); the layer's weights are corrupt, fix or reload them")
    if not np.any(g):
        raise ValueError("gain is all zero: the layer outputs its bias for every input, so its output ellipsoid "
                         "is a single point with no axes; check that the layer's weights were loaded")
    if method not in ("secular", "dense"):
        raise ValueError(f"method must be 'secular' or 'dense', got {method!r}")
    if which not in ("longest", "shortest"):
        raise ValueError(f"which must be 'longest' or 'shortest', got {which!r}")
    if k is not None and (int(k) != k or k < 1):
        raise ValueError(f"k must be a positive integer or None (all axes), got {k!r}")
    return g


def principal_axes(
    gain: np.ndarray, *, directions: bool = False, method: str = "secular", k: int | None = None,
    which: str = "longest",
) -> Axes:
    r"""Semi-axes of LayerNorm's (N−1)-dimensional output ellipsoid, longest first.

    The lengths are ℓ = √(Nζ) for the eigenvalues ζ > 0 of M = GΠG = diag(g²) − ggᵀ/N and
    the directions are the matching unit eigenvectors (Riechers, arXiv:2405.04134, §3, via
    M⁺ = Π₂G⁻²Π₂; the paper's Drazin-inverse recipe for zero gains is wrong and is *not*
    used: with k zero gains M has rank N − k and gives the correct axes; ``docs/geometry.md``).
    Scale-covariant and computed scale-free: ℓ(cg) = |c|·ℓ(g) for any finite c ≠ 0.

    **Arguments:**

    - ``gain``: g, shape (N,), finite, N ≥ 2, not all zero.
    - ``directions``: also return the unit directions as the columns of an (N, m) array.
    - ``method``: ``"secular"`` (O(N²) for all axes, O(N·k) for k: deflation + dlaed4's iteration +
      Gu–Eisenstat vectors) or ``"dense"`` (``numpy.linalg.eigh`` of M, O(N³), the reference).
    - ``k``: only the k longest (or shortest) axes; None: all of them.
    - ``which``: ``"longest"`` or ``"shortest"`` (with ``k``); the result is longest first either way.

    **Returns:** :class:`Axes` ``(lengths, directions)``: m = N − 1 axes when no gain is
    (numerically) zero, else N − k₀ for k₀ negligible gains (m = min(k, that) with ``k``);
    ``directions`` is None unless asked for. Signs of the directions are arbitrary.

    **Raises:** ValueError for NaN/Inf or all-zero gains (one line naming the problem).
    """
    g = _check(gain, method, k, which)
    n = g.size
    expo = int(np.frexp(np.max(np.abs(g)))[1])
    gt = np.ldexp(g, -expo)  # exact: max|g̃| ∈ [½, 1)
    d, w = gt * gt, gt / math.sqrt(n)
    defl = _deflate(d, w)
    n_axes = n - max(defl.n_null, 1)
    m = n_axes if k is None else min(int(k), n_axes)
    sel = slice(0, m) if which == "longest" else slice(n_axes - m, n_axes)
    if method == "secular" and not have_dlaed4():
        warnings.warn("LAPACK dlaed4 is not reachable through this scipy; using dense eigh (O(N^3)) instead")
        method = "dense"

    def lengths_of(zeta: np.ndarray) -> np.ndarray:
        return np.ldexp(np.sqrt(n * np.maximum(zeta, 0.0)), expo)

    if method == "dense":
        M = np.diag(d) - np.outer(w, w)
        if directions:
            z, V = np.linalg.eigh(M)
            return Axes(lengths_of(z[::-1][:n_axes][sel]), np.ascontiguousarray(V[:, ::-1][:, :n_axes][:, sel]))
        return Axes(lengths_of(np.linalg.eigvalsh(M)[::-1][:n_axes][sel]), None)

    dpole, wpole, sizes = defl.dpole, defl.wpole, defl.sizes
    npole = sizes.size
    n_sec = npole - 1 if defl.n_null == 0 else npole  # no null gain: ζ = 0 (normal α) is the last root
    tie_pole = np.repeat(np.arange(npole), sizes - 1)
    # descending order: the ties of pole p (ζ = d_p), then root p ∈ (d_{p+1}, d_p)
    order = np.argsort(np.concatenate([np.arange(n_sec) + 0.5, tie_pole]), kind="stable")[sel]
    row_of = np.empty(n_sec + tie_pole.size, dtype=np.int64)
    row_of[order] = np.arange(order.size)
    root_q = order[order < n_sec]  # ascending
    ties = order[order >= n_sec] - n_sec
    zeta_all = np.empty(m)
    zeta_all[row_of[n_sec + ties]] = dpole[tie_pole[ties]]
    if not directions:
        zeta_all[row_of[root_q]] = _roots(dpole, wpole, root_q)[0]
        return Axes(lengths_of(zeta_all), None)

    col_pole = np.full(n, npole, dtype=np.int64)
    col_pole[defl.keep] = np.repeat(np.arange(npole), sizes)
    if m == n_axes:  # all axes: Gu–Eisenstat vectors (needs every root of the reduced problem)
        out_rows = np.full(npole, -1, dtype=np.int64)
        out_rows[:n_sec] = row_of[:n_sec]
        col_coef = np.zeros(n)
        col_coef[defl.keep] = w[defl.keep] / wpole[col_pole[defl.keep]]
        A = _output((m, n), zero=bool(tie_pole.size))
        zeta, what = _roots(dpole, wpole, np.arange(npole), out=A, out_rows=out_rows, col_pole=col_pole)
        zeta_all[row_of[:n_sec]] = zeta[:n_sec]
        _finish_vectors(A, row_of[:n_sec], np.append(what, 0.0)[col_pole] * col_coef)
    else:  # top-k: vᵢ ∝ w/(d − ζᵢ) from the k roots, then a k-column QR
        A = _output((m, n), zero=True)
        delta = np.empty((root_q.size, npole))
        zeta_all[row_of[root_q]] = _roots(dpole, wpole, root_q, delta_rows=delta)[0]
        if root_q.size:
            keep = defl.keep
            R = np.zeros((n, root_q.size))
            R[keep] = -w[keep, None] / delta.T[col_pole[keep]]
            R /= np.linalg.norm(R, axis=0)
            Q, T = np.linalg.qr(R)
            A[row_of[root_q]] = (Q * np.where(np.diag(T) < 0, -1.0, 1.0)).T
    for p in np.flatnonzero(sizes > 1).tolist():  # tie vectors: exact, orthogonal to w_group
        gr = defl.keep[defl.starts[p] : defl.starts[p] + sizes[p]]
        start = int(defl.starts[p]) - p  # ties before pole p: Σ_{q<p} (size_q − 1)
        cnt = gr.size - 1
        want = (ties >= start) & (ties < start + cnt)
        if want.any():
            local = ties[want] - start
            A[np.ix_(row_of[n_sec + ties[want]], gr)] = _tie_vectors(w[gr])[local]
    return Axes(lengths_of(zeta_all), A.T)
