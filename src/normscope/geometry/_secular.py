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


def _solve_reduced(dpole: np.ndarray, wpole: np.ndarray, *, rows: bool):
    """All eigenvalues of diag(dpole) − wpole wpoleᵀ, dpole strictly descending, wpole > 0.

    Uses ``dlasd4`` on cI − M = diag(D̃²) + wwᵀ, D̃ = √(c − d) ascending, c = max d.
    Returns ζ (descending, index q matching pole q from above: d_{q+1} < ζ_q < d_q), and,
    with ``rows``, E[q, j] = ζ_q − d̃_j (relative-accurate) and D̃.
    """
    n = dpole.size
    c = float(dpole[0])
    dt = np.sqrt(np.maximum(c - dpole, 0.0))
    dt[0] = 0.0
    zeta = np.empty(n)
    E = np.empty((n, n)) if rows else None
    for q in range(n):
        delta, _sigma, work, info = dlasd4(q, dt, wpole)
        if info != 0:
            raise RuntimeError(f"LAPACK dlasd4 failed for root {q} (info={info})")
        # ζ_q − d̃_j = D̃_j² − σ_q² = delta_j·work_j; take ζ from the nearer pole for accuracy.
        e_q = delta[q] * work[q]
        if q + 1 < n:
            e_up = delta[q + 1] * work[q + 1]
            zeta[q] = dpole[q] + e_q if abs(e_q) <= abs(e_up) else dpole[q + 1] + e_up
        else:
            zeta[q] = dpole[q] + e_q
        if rows:
            np.multiply(delta, work, out=E[q])
    return zeta, E, dt


def _loewner_vectors(E: np.ndarray, dt: np.ndarray, keep_rows: int) -> torch.Tensor:
    """Unit eigenvectors (rows) from the Gu–Eisenstat coupling ŵ; only the first ``keep_rows``."""
    n = dt.size
    Et = torch.from_numpy(E)
    Dt = torch.from_numpy(dt)
    # d̃_q − d̃_j = D̃_j² − D̃_q² = (D̃_j − D̃_q)(D̃_j + D̃_q)
    ratio = Dt[None, :] - Dt[:, None]
    ratio.mul_(Dt[None, :] + Dt[:, None])
    diag = torch.diagonal(ratio)
    diag.fill_(-1.0)
    torch.div(Et, ratio, out=ratio)
    # ŵ_j² = −E[j,j] ∏_{q≠j} E[q,j]/(d̃_q − d̃_j): the diagonal was set so that ratio[j,j] = −E[j,j]
    what = torch.sqrt(torch.abs(torch.prod(ratio, dim=0)))
    del ratio
    V = torch.div(what[None, :], Et[:keep_rows])
    V.mul_(torch.linalg.vector_norm(V, dim=1).reciprocal_().neg_()[:, None])
    return V


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
    if not np.any(g):
        return np.zeros(0), (np.zeros((n, 0)) if directions else None)
    keep, groups, tol, n_null = _deflate(g)
    n_axes = n - max(n_null, 1)
    if method == "dense":
        M = np.diag(g * g) - np.outer(g, g) / n
        if directions:
            z, V = np.linalg.eigh(M)
            z, V = z[::-1][:n_axes], V[:, ::-1][:, :n_axes]
        else:
            z, V = np.linalg.eigvalsh(M)[::-1][:n_axes], None
        return np.sqrt(n * np.maximum(z, 0.0)), V
    if method != "secular":
        raise ValueError(f"method must be 'secular' or 'dense', got {method!r}")

    d = g * g
    w = g / math.sqrt(n)
    npole = len(groups)
    dpole = np.array([d[gr].mean() for gr in groups])
    wpole = np.array([np.linalg.norm(w[gr]) for gr in groups])
    drop_bottom = n_null == 0  # then ζ = 0 (normal α) is the smallest root: not an axis
    n_sec = npole - 1 if drop_bottom else npole

    zeta, E, dt = _solve_reduced(dpole, wpole, rows=directions)
    zeta = zeta[:n_sec]
    tie_groups = [(p, gr) for p, gr in enumerate(groups) if gr.size > 1]
    tie_zeta = np.concatenate([np.full(gr.size - 1, dpole[p]) for p, gr in tie_groups]) if tie_groups else np.zeros(0)
    all_zeta = np.concatenate([zeta, tie_zeta])
    order = np.argsort(-all_zeta, kind="stable")
    lengths = np.sqrt(n * np.maximum(all_zeta[order], 0.0))
    if not directions:
        return lengths, None

    Vq = _loewner_vectors(E, dt, n_sec)  # (n_sec, npole), rows unit in the reduced space
    # Embed: entry n of root q is u_n · Vq[q, p(n)], u = w_group/‖w_group‖ (a sign if m = 1).
    pole_of = np.repeat(np.arange(npole), [gr.size for gr in groups])
    u = w[keep] / wpole[pole_of]
    A = torch.zeros((n_axes, n), dtype=torch.float64)
    sec_rows = torch.from_numpy(np.argsort(order, kind="stable")[:n_sec])
    block = Vq.index_select(1, torch.from_numpy(pole_of)).mul_(torch.from_numpy(u)[None, :])
    if n_sec == n_axes and keep.size == n:
        A.index_copy_(1, torch.from_numpy(keep), block.index_select(0, torch.argsort(sec_rows)))
        if not np.array_equal(sec_rows.numpy(), np.arange(n_sec)):
            pass
    else:
        A[sec_rows[:, None], torch.from_numpy(keep)[None, :]] = block
    if tie_groups:
        inv = np.argsort(order, kind="stable")
        r = n_sec
        for p, gr in tie_groups:
            rows = torch.from_numpy(inv[r : r + gr.size - 1])
            A[rows[:, None], torch.from_numpy(gr)[None, :]] = torch.from_numpy(_tie_vectors(w[gr]))
            r += gr.size - 1
    return lengths, A.numpy().T
