"""The arc embedding of a scalar feature, its candidate grid and the stability score [reconstructed].

One LN-Net layer ``h ← LN₃(k e₂ (rowᵀh) + e₁ − k s₀ e₂)`` (E = [e₁ e₂] an orthonormal basis of the
plane Σz = 0) sends the feature s = rowᵀh to the point at angle θ = arctan(k(s − s₀)) on the circle
of radius √3: an *arc embedding*, monotone in s. This module holds what every construction stage
shares: the basis, the (s₀, k) candidate grid, the float32/float64 cancellation penalty that ranks
candidates (Ni et al., ICML 2024, arXiv:2406.01255, as reconstructed in ``docs/lnnet.md``), the
runs of equal labels along s, and the error raised when float64 runs out of precision.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

_S2, _S6 = math.sqrt(2.0), math.sqrt(6.0)
#: Orthonormal basis (3×2) of the plane Σz = 0; columns e₁, e₂.
E = np.array([[1 / _S2, 1 / _S6], [-1 / _S2, 1 / _S6], [0.0, -2 / _S6]])
_ROUNDOFF = 6e-8
_ROUNDOFF64 = 1.2e-16
_TIER = 100.0
_T_COARSE = np.linspace(-1.5, 2.5, 11)
_LK_COARSE = np.linspace(-2.0, 4.0, 9)
_TAUS = np.array([0.25, 0.5, 0.75])
# Run folds search the middle of that grid: s0 in [−0.3, 1.3]·range, k·range in [10^−0.5, 10^4]. At
# m = 1000 every fold chosen from the full grid had t in [0, 1] and lk ≥ 0.25 after refinement, and
# this subgrid built nets of the same depth from the same first direction on all 20 data sets of
# ``bench_lnnet.py --robust`` (3 of 20 margins differ) in 1.3–1.9× less CPU time.
_T_BIN = _T_COARSE[3:8]
_LK_BIN = _LK_COARSE[2:]
_SAME_TOL = 1e-9  # relative: same-label values this close count as merged
_DIFF_TOL = 1e-12  # relative: different-label values this close = construction failed


class ConstructionError(RuntimeError):
    """The construction ran out of floating-point precision (different labels collided)."""


class FoldStep(NamedTuple):
    """One planned LN layer: embed s at angle arctan(k(s − s0)), then read the next feature as a fold about ``phi``."""

    s0: float
    k: float
    phi: float


class Grid(NamedTuple):
    """Candidate embeddings, arrays (G,): centre ``s0``, slope ``k``, and their grid coordinates
    ``t`` = (s0 − lo)/R and ``lk`` = log₁₀(kR) (R the range of s)."""

    s0: np.ndarray
    k: np.ndarray
    t: np.ndarray
    lk: np.ndarray


class Runs(NamedTuple):
    """Maximal runs of equal labels along s, ascending: arrays (r,) of run start, run end, label."""

    lo: np.ndarray
    hi: np.ndarray
    lab: np.ndarray


def _runs(s: np.ndarray, lab: np.ndarray) -> Runs:
    """Sorted runs of equal labels along s: (lo, hi, label) arrays."""
    o = np.argsort(s, kind="stable")
    ss, ll = s[o], lab[o]
    cut = np.flatnonzero(ll[1:] != ll[:-1]) + 1
    starts = np.r_[0, cut]
    ends = np.r_[cut - 1, len(ss) - 1]
    return Runs(ss[starts], ss[ends], ll[starts])



def _grid(lo: float, R: float, T: np.ndarray, LK: np.ndarray) -> Grid:
    """All embeddings s0 = lo + t·R, k = 10^lk / R for t in ``T`` × lk in ``LK``."""
    t, lk = np.meshgrid(T, LK, indexing="ij")
    s0 = lo + t.ravel() * R
    k = 10.0 ** lk.ravel() / R
    return Grid(s0, k, t.ravel(), lk.ravel())


def _penalty(s0: np.ndarray, k: np.ndarray, smax: float, roundoff: float = _ROUNDOFF) -> np.ndarray:
    """Cancellation bound 4·u·k·(max|s| + |s0|) of k·s − k·s0 at unit round-off ``roundoff``."""
    return 4 * roundoff * k * (smax + np.abs(s0))


def _score(gap: np.ndarray, s0: np.ndarray, k: np.ndarray, smax: float) -> np.ndarray:
    """Rank key: gap minus the float32 cancellation penalty, offset by +_TIER when positive,
    else gap minus the float64 penalty. s0/k (G,) broadcast against gap (G, ...).

    The float32 tier is what the reconstruction optimises (``docs/lnnet.md``); past m ≈ 50 often no embedding is
    float32-safe and the float64 tier keeps the build exact in float64. Use :func:`_gap_of`
    to recover the penalised gap.
    """
    shape = (-1,) + (1,) * (gap.ndim - 1)
    s32 = gap - _penalty(s0, k, smax).reshape(shape)
    s64 = gap - _penalty(s0, k, smax, _ROUNDOFF64).reshape(shape)
    return np.where(s32 > 0, _TIER + s32, s64)


def _gap_of(score: float) -> float:
    """The penalised gap of a :func:`_score` value (undo the +_TIER offset of the float32 tier)."""
    return score - _TIER if score > _TIER / 2 else score


def _refine(best_t: float, best_lk: float) -> tuple[np.ndarray, np.ndarray]:
    """A 7 × 7 (t, lk) grid around the best coarse candidate, for :func:`_grid`."""
    # s0 shifts matter on the scale 1/(kR) = 10^-lk (in units of the range R)
    dt = min(_T_COARSE[1] - _T_COARSE[0], 10.0 ** -best_lk)
    dl = _LK_COARSE[1] - _LK_COARSE[0]
    return best_t + np.linspace(-dt, dt, 7), best_lk + np.linspace(-dl, dl, 7)


def _local_candidates(lo: np.ndarray, hi: np.ndarray, R: float) -> Grid:
    """Embeddings centred in the gaps near both ends, steep enough to saturate.

    The coarse grid cannot put s0 inside a gap much smaller than the range; a run fold whose end
    run is wide needs exactly that (the end is then compressed near ±π/2).
    """
    n = len(lo)
    idx = sorted({i for i in (*range(min(4, n - 1)), *range(max(0, n - 5), n - 1))})
    mids = np.array([(hi[i] + lo[i + 1]) / 2 for i in idx])
    widths = np.array([lo[i + 1] - hi[i] for i in idx])
    mult = 10.0 ** np.linspace(-1.0, 3.0, 9)
    s0 = np.repeat(mids, len(mult))
    k = (mult[None, :] / widths[:, None]).ravel()
    return Grid(s0, k, (s0 - lo[0]) / R, np.log10(k * R))
