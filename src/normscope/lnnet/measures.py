"""Nonlinearity of group LayerNorm (LN-G) as a function of the number of groups [reconstructed].

Ni et al. (ICML 2024) prove that grouping amplifies LN's nonlinearity "under a mild assumption";
their measure and theorem were not available to us. Two measures of ours (``docs/lnnet.md``):

- **Hessian energy** Σ_k ‖∇²ₓ f_k(x)‖_F². For LN-G with unit gain, zero bias and ε = 0 it has the
  closed form Σ_groups 3n(n − 2)/r_g⁴, n the group size and r_g the norm of the centred group
  (f = √n·y/‖y‖ on each group's (n−1)-dim centred subspace: the radial output component
  contributes (n−2)/r⁴, each of the n−2 tangential ones 2/r⁴). Checked against
  ``torch.func.hessian`` in the tests.
- **Linear residual** 1 − R² of the best affine least-squares fit of LN-G(x) from x.
"""

from __future__ import annotations

import torch
from torch.func import hessian

from normscope.nn import GroupLayerNorm


def hessian_energy(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Closed-form Σ_k ‖∇²f_k(x)‖_F² of LN-G (unit gain, zero bias, ε = 0): Σ_g 3n(n−2)/r_g⁴.

    **Arguments:** ``x`` (..., d), ``num_groups`` dividing d. **Returns:** (...,) energies
    (0 for group size n ≤ 2: the map is piecewise constant there).
    """
    d = x.shape[-1]
    if num_groups < 1 or d % num_groups:
        raise ValueError(f"num_groups must divide d = {d}, got {num_groups}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN/Inf")
    n = d // num_groups
    g = x.unflatten(-1, (num_groups, n))
    r2 = ((g - g.mean(-1, keepdim=True)) ** 2).sum(-1)
    if (r2 <= 0).any():
        raise ValueError("a group of x is constant: LN-G is not differentiable there")
    return (3.0 * n * (n - 2) / r2**2).sum(-1)


def hessian_energy_autograd(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ_k ‖∇²ₓ module(x)_k‖_F² by ``torch.func.hessian`` for one x of shape (d,)."""
    if x.ndim != 1:
        raise ValueError(f"x must be one vector (d,), got shape {tuple(x.shape)}")
    H = hessian(module)(x)  # (d_out, d, d)
    return (H**2).sum()


def linear_residual(module: torch.nn.Module, X: torch.Tensor) -> float:
    """1 − R²: the fraction of Var(module(X)) (summed over outputs) no affine map of X explains."""
    X = X.to(torch.float64)
    with torch.no_grad():
        Y = module(X).to(torch.float64)
    A = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    coef = torch.linalg.lstsq(A, Y).solution
    res = ((Y - A @ coef) ** 2).sum()
    tot = ((Y - Y.mean(0)) ** 2).sum()
    return float(res / tot)


def nonlinearity_table(d: int = 64, groups=(1, 2, 4, 8, 16, 32), *, n_samples: int = 20000, seed: int = 0) -> list[dict]:
    """Linear residual and median √(Hessian energy) of GroupLayerNorm(d, g, eps=0, affine=False), x ~ N(0, I_d).

    Expected shape [reconstructed, ``docs/lnnet.md``]: both grow with g; the Hessian is 0 at
    group size 2 (a sign function), whose residual is 1 − 2/π.
    """
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n_samples, d, generator=gen, dtype=torch.float64)
    rows = []
    for g in groups:
        m = GroupLayerNorm(d, g, eps=0.0, affine=False)
        rows.append(
            {
                "groups": g,
                "group_size": d // g,
                "linear_residual": linear_residual(m, X),
                "median_hessian_fro": float(hessian_energy(X, g).sqrt().median()),
            }
        )
    return rows
