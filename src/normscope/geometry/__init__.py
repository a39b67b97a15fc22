"""LayerNorm geometry (Riechers, "Geometry and Dynamics of LayerNorm", arXiv:2405.04134; ``docs/geometry.md``).

- :class:`LayerNormGeometry` — output hyperplane (normal α̂, αₙ = 1/gₙ; offset αᵀb), the
  N-ellipsoid (semi-axes √N|gₙ|), the (N−1)-ellipsoid's principal axes from M = GΠG
  (O(N²) secular solver, or the k longest/shortest in O(N·k)), the radial fraction ρ,
  membership up to the data's dtype, and the closed-form Jacobian.
- :func:`principal_axes` — the axes solver on its own (``"secular"`` or ``"dense"``), returning
  :class:`Axes` ``(lengths, directions)``; scale-free, any finite gains that are not all zero.
- :func:`rho_cdf`, :func:`rho_quantile` — the χ² law of ρ for Gaussian inputs.

The paper's Drazin-inverse recipe for zero gains is wrong (g = (0, 1, 1): it gives √3, √3; the
true semi-axes are 1, √3); everything here uses M = diag(g²) − ggᵀ/N, which is correct for
zero, repeated and negative gains.
"""

from normscope.geometry._rho import rho_cdf, rho_quantile
from normscope.geometry._secular import Axes, principal_axes
from normscope.geometry.layernorm import LayerNormGeometry

__all__ = ["Axes", "LayerNormGeometry", "principal_axes", "rho_cdf", "rho_quantile"]
