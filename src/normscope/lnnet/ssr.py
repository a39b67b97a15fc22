"""SSR / LSSR: a linear-invariant lower bound that LayerNorm breaks (Ni et al., ICML 2024).

The names "Sum of Squares Ratio" (SSR) and "Linear Invariant Lower Bound" (LSSR) are the paper's;
its formulas were not available to us. These are our reconstructions, derived in
``docs/lnnet.md`` [reconstructed]:

.. math::
    \\mathrm{SSR}_a = \\frac{\\sum_i (a^\\top x_i - a^\\top \\mu_{y_i})^2}{\\sum_i (a^\\top x_i - a^\\top \\mu)^2},
    \\qquad \\mathrm{LSSR} = \\min_a \\mathrm{SSR}_a ,

the within-class over total sum of squares of a 1-D projection, minimised over directions in the
span of the centred data (the smallest generalised eigenvalue of (S_within, S_total)). For any
affine g(x) = Wx + b, SSR_a(g(X)) = SSR_{Wᵀa}(X) ≥ LSSR(X), so **no linear network of any depth
lowers LSSR**; one width-3 Linear + LayerNorm layer takes XOR from LSSR = 1 to 0 (:func:`xor_demo`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

from normscope.nn import LayerNorm

_E = np.array([[1 / math.sqrt(2), 1 / math.sqrt(6)], [-1 / math.sqrt(2), 1 / math.sqrt(6)], [0.0, -2 / math.sqrt(6)]])


def _check(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (len(X),):
        raise ValueError(f"need X (m, d) and y (m,), got {X.shape} and {y.shape}")
    if len(X) < 2:
        raise ValueError(f"need m >= 2 points, got {len(X)}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN/Inf")
    return X, y


def scatter(X, y) -> tuple[np.ndarray, np.ndarray]:
    """(S_within, S_total): Σ_c Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ and Σ_i (x_i − μ)(x_i − μ)ᵀ."""
    X, y = _check(X, y)
    Xc = X - X.mean(0)
    St = Xc.T @ Xc
    Sw = np.zeros_like(St)
    for c in np.unique(y):
        D = X[y == c] - X[y == c].mean(0)
        Sw += D.T @ D
    return Sw, St


def ssr(X, y, a) -> float:
    """SSR_a: within-class / total sum of squares of the projection Xa. NaN if Xa is constant."""
    X, y = _check(X, y)
    p = X @ np.asarray(a, dtype=np.float64)
    tot = float(((p - p.mean()) ** 2).sum())
    within = sum(float(((p[y == c] - p[y == c].mean()) ** 2).sum()) for c in np.unique(y))
    return within / tot if tot > 0 else math.nan


def lssr(X, y, *, rtol: float = 1e-10) -> float:
    """LSSR = min_a SSR_a over a in the span of the centred data (reconstructed definition).

    Eigendecompose S_total, keep eigenvectors with eigenvalue > ``rtol``·max (basis U), return the
    smallest generalised eigenvalue of (UᵀS_wU, UᵀS_tU), clipped to [0, 1].
    """
    Sw, St = scatter(X, y)
    w, V = np.linalg.eigh(St)
    if w[-1] <= 0:
        raise ValueError("all points are identical: LSSR is undefined")
    U = V[:, w > rtol * w[-1]]
    lam = scipy.linalg.eigh(U.T @ Sw @ U, U.T @ St @ U, eigvals_only=True)
    return float(np.clip(lam[0], 0.0, 1.0))


def xor_demo(*, n_affine: int = 200, seed: int = 0) -> dict:
    """XOR {(±1, ±1)}, label sign(x₁x₂): LSSR 1 → 0 with one width-3 Linear + LayerNorm [reconstructed].

    - Input LSSR is 1 (both class means are 0, so every projection has SSR = 1).
    - ``n_affine`` random affine maps ℝ² → ℝ³, and random 3-layer linear nets, leave it at 1
      (the invariance lemma; a numerical illustration, the lemma is the proof).
    - The layer z = E(x − (2, 2)), h = LN₃(z) (ε = 0, no affine) puts both class-A points on the
      same ray; the read-out s = pᵀh − 0.95 with p = E(cos 225°, sin 225°)/√3 scores
      (+0.05, +0.05, −0.056, −0.056).

    **Returns:** dict with the input LSSR, the smallest LSSR after the random linear maps, the
    LSSR and read-out SSR after LN, the angles after LN, the read-out scores and the accuracy.
    """
    X = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    y = np.array([1, 1, 0, 0])  # 1: sign(x1 x2) = +1
    rng = np.random.default_rng(seed)
    lin_min = math.inf
    for i in range(n_affine):
        if i % 2 == 0:
            Z = X @ rng.standard_normal((2, 3)) + rng.standard_normal(3)
        else:  # a deep linear net: still affine
            Z = X
            for _ in range(3):
                Z = Z @ rng.standard_normal((Z.shape[1], 3)) + rng.standard_normal(3)
        lin_min = min(lin_min, lssr(Z, y))
    ln = LayerNorm(3, eps=0.0, affine=False)
    Z = torch.from_numpy((X - 2.0) @ _E.T)
    with torch.no_grad():
        H = ln(Z).numpy()
    C = H @ _E / math.sqrt(3)  # unit-circle coordinates
    angles = np.degrees(np.arctan2(C[:, 1], C[:, 0]))
    phi = math.radians(225.0)
    p = _E @ np.array([math.cos(phi), math.sin(phi)]) / math.sqrt(3)
    scores = H @ p - 0.95
    return {
        "lssr_input": lssr(X, y),
        "lssr_after_linear_min": lin_min,
        "n_linear_maps": n_affine,
        "lssr_after_ln": lssr(H, y),
        "ssr_readout_after_ln": ssr(H, y, p),
        "angles_deg": angles.tolist(),
        "scores": scores.tolist(),
        "labels": y.tolist(),
        "accuracy": float(np.mean((scores > 0).astype(int) == y)),
    }
