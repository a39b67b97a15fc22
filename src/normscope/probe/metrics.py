"""Per-token metrics of a norm layer's input x and output z (vectorised, float64 by default).

For a vector v in R^d with μ = mean(v), σ² = mean((v−μ)²) (population) and
RMS = sqrt(mean(v²)) = sqrt(μ² + σ²):

- ``norm``      ‖v‖₂
- ``angle_deg`` θ(v, 𝟙) = atan2(‖v⊥‖, v·1̂) in degrees, with v·1̂ = √d·μ and ‖v⊥‖ = √d·σ
                (the same angle as arccos(μ/RMS), but accurate near 0° and 180°)
- ``mean``, ``std`` (σ), ``rms``
- ``cos2``      cos²θ = μ²/RMS², the fraction of ‖v‖² along 𝟙
- ``rotation_deg`` angle between x and z (Gupta et al. Table 4)
- ``radial_fraction`` ρ on the input: LayerNorm ρ = (1 + ε/σ²)^(−1/2) (Riechers); for RMSNorm the
  analogue ρ = (1 + ε/mean(x²))^(−1/2), the norm of x/sqrt(mean(x²)+ε) over √d. ρ = 0 for a
  zero-variance (LN) or zero (RMS) input with ε > 0.
- ``rms_gap``   ‖z − RMSNorm(x)‖/‖z‖, with RMSNorm(x) = g ⊙ x/sqrt(mean(x²)+ε) + b using the
  layer's own effective gain g, bias b and ε: the relative error of a naive LN → RMSNorm swap
  at this token; rounding level for RMSNorm layers. 0 when z = RMSNorm(x) = 0.
"""

from __future__ import annotations

import math

import torch

__all__ = ["VECTOR_METRICS", "token_metrics", "vector_metrics", "METRIC_ROWS"]

VECTOR_METRICS = ("angle_deg", "norm", "mean", "std", "rms", "cos2")
# row layout of the (15, T) matrix token_metrics returns
METRIC_ROWS = (
    [("input", m) for m in VECTOR_METRICS]
    + [("output", m) for m in VECTOR_METRICS]
    + [(None, "rotation_deg"), (None, "rms_gap"), (None, "radial_fraction")]
)
_DEG = 180.0 / math.pi


def vector_metrics(s: torch.Tensor, ss: torch.Tensor, d: int) -> tuple[torch.Tensor, ...]:
    """Metrics of vectors from their sums s = Σv and ss = Σv² (rows of VECTOR_METRICS order)."""
    mu = s / d
    ms = ss / d
    var = (ms - mu * mu).clamp_(min=0.0)
    std = var.sqrt()
    angle = torch.atan2(std * math.sqrt(d), mu * math.sqrt(d)) * _DEG
    cos2 = torch.where(ms > 0, mu * mu / torch.where(ms > 0, ms, 1.0), torch.zeros_like(ms))
    return angle, ss.sqrt(), mu, std, ms.sqrt(), cos2.clamp_(max=1.0)


def token_metrics(
    x: torch.Tensor,
    z: torch.Tensor,
    *,
    kind: str,
    eps: float,
    gain: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All per-token metrics for inputs x and outputs z of shape (T, d).

    **Returns:** ``(values, finite_in, finite_out)``: ``values`` of shape (15, T) in
    :data:`METRIC_ROWS` order, computed in ``dtype``; ``finite_in``/``finite_out`` are boolean
    (T,) masks of tokens whose input/output contain no NaN/Inf (values of other tokens are
    meaningless and must be dropped by the caller).
    """
    d = x.shape[-1]
    xd = x.to(dtype)
    zd = z.to(dtype)
    g = gain.to(device=xd.device, dtype=dtype)
    sx = xd.sum(-1)
    sxx = torch.linalg.vecdot(xd, xd)
    sz = zd.sum(-1)
    szz = torch.linalg.vecdot(zd, zd)
    sxz = torch.linalg.vecdot(xd, zd)
    fin_in = torch.isfinite(sxx) & torch.isfinite(sx)
    fin_out = torch.isfinite(szz) & torch.isfinite(sz)

    vin = vector_metrics(sx, sxx, d)
    vout = vector_metrics(sz, szz, d)

    sin2 = (sxx * szz - sxz * sxz).clamp_(min=0.0)
    rotation = torch.atan2(sin2.sqrt(), sxz) * _DEG

    ms = sxx / d
    if kind == "layernorm":
        var = vin[3] * vin[3]
        base = var
    else:
        base = ms
    denom = base + eps
    rho = torch.where(denom > 0, (base / torch.where(denom > 0, denom, 1.0)).sqrt(), torch.zeros_like(base))

    r = torch.rsqrt(ms + eps) if eps > 0 else torch.where(ms > 0, torch.rsqrt(ms), torch.zeros_like(ms))
    diff = zd - (xd * r[:, None]) * g
    if bias is not None:
        diff = diff - bias.to(device=xd.device, dtype=dtype)
    gap2 = torch.linalg.vecdot(diff, diff)
    gap = torch.where(szz > 0, (gap2 / torch.where(szz > 0, szz, 1.0)).sqrt(), torch.where(gap2 > 0, math.inf, 0.0))

    values = torch.stack([*vin, *vout, rotation, gap, rho])
    return values, fin_in, fin_out
