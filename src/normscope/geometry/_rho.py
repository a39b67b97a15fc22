"""The law of LayerNorm's radial fraction ρ for Gaussian inputs (``docs/geometry.md``).

ρ = (1 + Nε/‖Πa‖²)^(−1/2) measures how far out along the ray from b an output lands
(Riechers, arXiv:2405.04134, §3, writes the output radius through it); for a ~ 𝒩(m𝟙, s²I),
‖Πa‖²/s² ~ χ²_{N−1}, which gives the closed forms below.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from normscope.nn._checks import check_eps

ArrayLike = Any  # numpy array, torch tensor or nested sequence


def rho_cdf(r0: ArrayLike, n: int, eps: float, scale: float = 1.0) -> np.ndarray:
    r"""P(ρ < r₀) for Gaussian inputs a ~ 𝒩(m𝟙, s²I) (any m): the χ² law of the radial fraction.

    ‖Πa‖² ~ s²·χ²_{N−1}, and ρ = (1 + Nε/‖Πa‖²)^(−1/2), hence

        P(ρ < r₀) = F_{χ²_{N−1}}( N ε r₀² / (s² (1 − r₀²)) ).

    (``docs/geometry.md``; reconstructed and checked by Monte Carlo; not in Riechers, arXiv:2405.04134.)

    **Arguments:** ``r0`` in [0, 1] (array-like), ``n`` = N ≥ 2, ``eps`` ≥ 0, ``scale`` = s > 0.

    **Returns:** the probabilities, same shape as ``r0``.
    """
    n, eps, scale = _check_law(n, eps, scale)
    r = np.asarray(r0, dtype=np.float64)
    if np.any(~np.isfinite(r)) or np.any((r < 0) | (r > 1)):
        raise ValueError("r0 must lie in [0, 1]")
    if eps == 0.0:  # ρ = 1 almost surely, so P(ρ < r₀) = 0 for every r₀ ≤ 1
        return np.zeros_like(r)
    from scipy.stats import chi2

    with np.errstate(divide="ignore"):
        arg = np.where(r >= 1.0, np.inf, n * eps * r * r / (scale * scale * (1.0 - r) * (1.0 + r)))
    return chi2.cdf(arg, n - 1)


def rho_quantile(p: ArrayLike, n: int, eps: float, scale: float = 1.0) -> np.ndarray:
    r"""Inverse of :func:`rho_cdf`: the r₀ with P(ρ < r₀) = p, r₀² = q s²/(Nε + q s²), q = F⁻¹_{χ²_{N−1}}(p)."""
    n, eps, scale = _check_law(n, eps, scale)
    pr = np.asarray(p, dtype=np.float64)
    if np.any(~np.isfinite(pr)) or np.any((pr < 0) | (pr > 1)):
        raise ValueError("p must lie in [0, 1]")
    if eps == 0.0:
        return np.ones_like(pr)
    from scipy.stats import chi2

    q = chi2.ppf(pr, n - 1) * scale * scale
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(q), 1.0, np.sqrt(q / (n * eps + q)))


def _check_law(n: int, eps: float, scale: float) -> tuple[int, float, float]:
    if int(n) != n or n < 2:
        raise ValueError(f"N must be an integer >= 2, got {n!r}")
    check_eps(eps)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale (input std s) must be finite and > 0, got {scale!r}")
    return int(n), float(eps), float(scale)
