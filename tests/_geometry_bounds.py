"""Rounding bounds shared by the geometry tests: every tolerance is derived here, none is tuned.

ε = 2⁻⁵² (float64 machine epsilon). ‖M‖₂ ≤ max gₙ² for M = GΠG (‖Π‖ = 1), the scale used below.

- Eigenvalues. Both solvers are backward stable: they return the exact eigenvalues of M + E with
  ‖E‖₂ ≤ C·N·ε·‖M‖₂. Dense ``eigh`` (Householder tridiagonalisation + QR/divide and conquer):
  the worst-case bound is a small multiple of N·ε·‖M‖ (Higham, *Accuracy and Stability of
  Numerical Algorithms*, 2nd ed., §19.3 and Thm 19.4). The secular solver: each deflation
  perturbs M by at most 8ε‖M‖ (LAPACK dlaed2's criterion; the perturbations sit in disjoint
  coordinates, so together they stay ≤ 8ε‖M‖ in 2-norm), and dlaed4's iteration (ours is it,
  vectorised) stops at a secular residual of O(N·ε) relative (Li, LAPACK Working Note 89). C = 8 covers both (LAPACK's own constant in
  these criteria). Weyl: |Δζ| ≤ ‖E‖₂ per side, so two sides differ by ≤ 2·8·N·ε·‖M‖.
- Eigenvectors/eigenspaces (Davis–Kahan sin Θ): a spectral projector of a cluster separated by a
  gap δ from the rest moves by ≤ ‖E‖/(δ − 2‖E‖) in 2-norm per side (max-abs entry ≤ 2-norm).
- Orthogonality and residual of our directions: Gu–Eisenstat vectors from dlaed4's relative
  differences are orthonormal to O(N·ε) and have residual O(N·ε·‖M‖) (Gu & Eisenstat, SIAM J.
  Matrix Anal. Appl. 16 (1995) 172, Thm 3.3): C = 8 as above, per entry of VᵀV − I / MV − VZ.
"""

import numpy as np

EPS = float(np.finfo(np.float64).eps)
C = 8.0  # LAPACK's constant in the deflation (dlaed2) and secular stopping (dlaed4) criteria


def backward_error(n: int, norm_m: float) -> float:
    """‖E‖₂ bound of one backward-stable symmetric eigensolver: C·N·ε·‖M‖."""
    return C * n * EPS * norm_m


def eig_tol(n: int, norm_m: float) -> float:
    """|ζ_ours − ζ_ref| bound: two backward-stable solvers, Weyl on each side."""
    return 2.0 * backward_error(n, norm_m)


def orth_tol(n: int) -> float:
    """max |VᵀV − I| bound for Gu–Eisenstat / QR vectors: C·N·ε."""
    return C * n * EPS


def projector_tol(n: int, norm_m: float, gap: float) -> float:
    """max-abs bound of P_ours − P_ref for a cluster isolated by ``gap`` (Davis–Kahan, two sides)."""
    e = backward_error(n, norm_m)
    return 2.0 * e / (gap - 2.0 * e)


def clusters(zeta: np.ndarray, n: int, norm_m: float) -> list[tuple[int, int, float]]:
    """(start, stop, gap) of eigenvalue clusters (descending ζ): neighbours closer than 64·‖E‖ are
    merged, so every cluster's gap to the rest is ≥ 64‖E‖ and its projector tolerance ≤ 2/62."""
    sep = 64.0 * backward_error(n, norm_m)
    cuts = [0] + [i + 1 for i in range(zeta.size - 1) if zeta[i] - zeta[i + 1] > sep] + [zeta.size]
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        left = zeta[a - 1] - zeta[a] if a > 0 else np.inf
        right = zeta[b - 1] - zeta[b] if b < zeta.size else np.inf
        out.append((a, b, min(left, right)))
    return out


def dense_reference(g: np.ndarray, vectors: bool = True):
    """All N eigenpairs of M = GΠG (descending), computed on g·2⁻ᵉ (exact scaling) and rescaled.

    Returns ``(zeta, V, e)``: ζ of the scaled matrix, eigenvectors, and e (ζ_true = ζ·4ᵉ).
    """
    e = int(np.frexp(np.max(np.abs(g)))[1])
    gt = np.ldexp(g, -e)
    n = g.size
    M = np.diag(gt * gt) - np.outer(gt, gt) / n
    if vectors:
        z, V = np.linalg.eigh(M)
        return z[::-1], V[:, ::-1], e
    return np.linalg.eigvalsh(M)[::-1], None, e


def scaled_zeta(lengths: np.ndarray, n: int, e: int) -> np.ndarray:
    """ζ of the 2⁻ᵉ-scaled matrix from lengths ℓ = 2ᵉ√(Nζ) (exact rescaling, no overflow)."""
    return np.ldexp(lengths, -e) ** 2 / n


def rounded_evaluation_tol(n: int, kappa: float = 1.0) -> float:
    """Bound for a float64 quantity evaluated by O(N) rounded operations with condition κ:
    the standard γ_{cN} = c·N·u/(1 − c·N·u) summation bound (Higham Thm 3.1, 4.3) with c = C = 8
    covering the few elementwise operations around the length-N reductions."""
    return C * n * EPS * kappa


def ln_condition(x, g, b, eps) -> float:
    """κ of LayerNorm outputs for :func:`rounded_evaluation_tol`: ‖x‖∞/√(σ² + ε) (the centring and
    1/σ amplify rounding of x by it) plus the bias's size relative to the gains (y = g·x̂ + b)."""
    x = np.asarray(x, dtype=np.float64)
    sd = np.sqrt(x.var(-1) + eps)
    nz = np.abs(np.asarray(g))[np.asarray(g) != 0]
    return float(np.max(np.abs(x).max(-1) / sd)) + float(np.abs(b).max() / nz.min()) + 1.0
