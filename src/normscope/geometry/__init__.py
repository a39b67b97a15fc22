"""LayerNorm geometry (Riechers, "Geometry and Dynamics of LayerNorm", arXiv:2405.04134).

- :class:`LayerNormGeometry` — output hyperplane (normal α̂, αₙ = 1/gₙ; offset αᵀb), the
  N-ellipsoid (semi-axes √N|gₙ|), the (N−1)-ellipsoid's principal axes from M = GΠG
  (O(N²) secular solver), the radial fraction ρ, membership, and the closed-form Jacobian.
- :func:`principal_axes` — the axes solver on its own (``"secular"`` or ``"dense"``).
- :func:`rho_cdf`, :func:`rho_quantile` — the χ² law of ρ for Gaussian inputs.

The paper's Drazin-inverse recipe for zero gains is wrong (g = (0, 1, 1): it gives √3, √3; the
true semi-axes are 1, √3); everything here uses M = diag(g²) − ggᵀ/N, which is correct for
zero, repeated and negative gains.
"""

from normscope.geometry._secular import principal_axes
from normscope.geometry.layernorm import LayerNormGeometry, rho_cdf, rho_quantile

__all__ = ["LayerNormGeometry", "principal_axes", "rho_cdf", "rho_quantile"]
