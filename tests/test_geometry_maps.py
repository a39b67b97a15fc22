"""The maps of ``LayerNormGeometry``: closed-form Jacobian vs autograd, and the χ² law of ρ.

Tolerances are derived (``tests/_geometry_bounds.py``), or are the printed precision of the
reference tables, or Monte-Carlo standard errors.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _geometry_bounds import ln_condition, rounded_evaluation_tol
from normscope.geometry import LayerNormGeometry, rho_cdf, rho_quantile


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.3])
@pytest.mark.parametrize("n", [5, 40])
def test_jacobian_matches_autograd(eps, n):
    rng = np.random.default_rng(n)
    g = rng.standard_normal(n)
    b = rng.standard_normal(n)
    geo = LayerNormGeometry(g, b, eps)
    x = torch.from_numpy(rng.standard_normal((3, n)) * 1.7 + 0.4)
    gt, bt = torch.from_numpy(g), torch.from_numpy(b)
    J = geo.jacobian(x)
    assert J.shape == (3, n, n) and J.dtype == torch.float64
    ah = torch.from_numpy(geo.normal)
    for i in range(3):
        ref = torch.func.jacrev(lambda v: F.layer_norm(v, (n,), gt, bt, eps))(x[i])
        # entries of J are O(N) rounded operations on x̂ (condition κ) times max|J|; J·𝟙 and α̂ᵀJ sum
        # N such entries (‖𝟙‖₁ = N, ‖α̂‖₁ ≤ √N), so their bounds carry that factor too
        tol = rounded_evaluation_tol(n, ln_condition(x[i : i + 1].numpy(), g, 0 * b, eps)) * float(ref.abs().max())
        assert (J[i] - ref).abs().max() <= 2 * tol  # both sides rounded
        assert (J[i] @ torch.ones(n, dtype=torch.float64)).abs().max() <= n * tol
        assert (ah @ J[i]).abs().max() <= float(ah.abs().sum()) * tol
        # rank: singular values below N·tol are rounding (exact zeros), the rest are far above it
        sv = torch.linalg.svdvals(J[i])
        rank = n - 2 if eps == 0 else n - 1
        assert float(sv[rank - 1]) > 1e3 * n * tol and float(sv[rank:].max()) <= n * tol
    # numpy in -> numpy out, single vector
    Jn = geo.jacobian(x[0].numpy())
    assert isinstance(Jn, np.ndarray) and Jn.shape == (n, n)


def test_jacobian_float32_and_degenerate_input():
    geo = LayerNormGeometry(np.ones(4), eps=0.0)
    J = geo.jacobian(torch.tensor([1.0, 2.0, 3.0, 5.0]))
    assert J.dtype == torch.float32
    with pytest.raises(ValueError, match="proportional"):
        geo.jacobian(torch.ones(4, dtype=torch.float64))
    assert torch.isnan(geo.input_radial_fraction(torch.ones(4, dtype=torch.float64)))
    assert float(LayerNormGeometry(np.ones(4), eps=1e-3).input_radial_fraction(torch.ones(4, dtype=torch.float64))) == 0


@pytest.mark.parametrize(
    "n, eps, r0, expected",
    [
        (3, 1e-1, 0.9, 4.7243e-1),
        (3, 1e-1, 0.99, 9.9938e-1),
        (3, 1e-3, 0.9, 6.3743e-3),
        (3, 1e-3, 0.99, 7.1214e-2),
        (3, 1e-3, 0.999, 5.2710e-1),
        (3, 1e-5, 0.9, 6.3945e-5),
        (3, 1e-5, 0.99, 7.3850e-4),
        (3, 1e-5, 0.999, 7.4608e-3),
        (768, 1e-1, 0.9, 1.67e-48),
    ],
)
def test_rho_cdf_reference_table(n, eps, r0, expected):
    assert rho_cdf(r0, n, eps) == pytest.approx(expected, rel=2e-4)


def test_rho_law_monte_carlo_and_quantile():
    n, eps, s = 3, 1e-3, 0.7
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200_000, n)) * s + 2.0
    geo = LayerNormGeometry(np.ones(n), eps=eps)
    rho = geo.input_radial_fraction(a)
    for r0 in (0.9, 0.99, 0.999):
        p = float(geo.rho_cdf(r0, scale=s))
        assert np.mean(rho < r0) == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / a.shape[0]) + 1e-4)
    p = np.array([0.01, 0.5, 0.99])
    # round trip through scipy's χ² cdf/ppf (cephes igam/igami, peak relative error ~1e-14 per call):
    # the cdf amplifies the quantile's error by its condition κ = q·f(q)/F(q), so ≤ 1e-14·(2 + κ)·4
    from scipy.stats import chi2

    q = chi2.ppf(p, n - 1)
    kappa = q * chi2.pdf(q, n - 1) / p
    np.testing.assert_allclose(rho_cdf(rho_quantile(p, n, eps, s), n, eps, s), p, rtol=4e-14 * (2 + kappa.max()))
    # Monte-Carlo quantiles: standard error √(p(1−p)/M)/f_ρ(r); 5 standard errors, f_ρ from the law
    r = geo.rho_quantile(p, scale=s)
    dens = np.gradient(geo.rho_cdf(np.clip(r[:, None] + np.array([-1e-6, 0, 1e-6]), 0, 1), scale=s), 1e-6, axis=1)[:, 1]
    se = np.sqrt(p * (1 - p) / a.shape[0]) / dens
    assert np.all(np.abs(np.quantile(rho, p) - r) <= 5 * se)
    assert rho_cdf(0.5, 10, 0.0) == 0.0 and rho_cdf(1.0, 10, 0.0) == 0.0 and rho_cdf(1.0, 10, 1e-3) == 1.0
