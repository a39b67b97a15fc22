"""Per-token metrics of a norm layer's input x and output z (vectorised; float32 passes, float64 per token).

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
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All per-token metrics for inputs x and outputs z of shape (T, d).

    The (T, d) passes run in ``dtype`` (default: float32, or float64 for float64 inputs); every
    per-token quantity derived from the sums is computed in float64. float32 sums carry a
    relative error of about 1e-7; the variance σ² = mean(x²) − μ² would lose digits when
    |μ| ≫ σ, so tokens with cos²θ > 0.5 are recomputed with a centred two-pass formula in
    float64 (exact to float64 rounding everywhere).

    **Returns:** ``(values, finite_in, finite_out)``: ``values`` float64 of shape (15, T) in
    :data:`METRIC_ROWS` order; ``finite_in``/``finite_out`` boolean (T,) masks of tokens whose
    input/output contain no NaN/Inf (their values are meaningless; the caller drops them).
    """
    d = x.shape[-1]
    x, z = x.detach(), z.detach()
    if dtype is None:
        dtype = torch.float64 if torch.float64 in (x.dtype, z.dtype) else torch.float32
    f64 = torch.float64
    xd = x.to(dtype)
    zd = z.to(dtype)
    # vector_norm is a fused reduction (no (T, d) temporary), several times faster than vecdot
    sx = xd.sum(-1).to(f64)
    sxx = torch.linalg.vector_norm(xd, dim=-1).to(f64).square()
    sz = zd.sum(-1).to(f64)
    szz = torch.linalg.vector_norm(zd, dim=-1).to(f64).square()
    work = _workspace(xd.shape, dtype, xd.device)
    sxz = torch.mul(xd, zd, out=work).sum(-1).to(f64)
    fin_in = torch.isfinite(sxx) & torch.isfinite(sx)
    fin_out = torch.isfinite(szz) & torch.isfinite(sz)

    vin = list(vector_metrics(sx, sxx, d))
    vout = list(vector_metrics(sz, szz, d))
    if dtype != f64:
        _refine(vin, xd, d)
        _refine(vout, zd, d)

    sin2 = (sxx * szz - sxz * sxz).clamp_(min=0.0)
    rotation = torch.atan2(sin2.sqrt(), sxz) * _DEG
    _refine_rotation(rotation, xd, zd, sxx, szz)

    ms = sxx / d
    base = vin[3] * vin[3] if kind == "layernorm" else ms
    denom = base + eps
    rho = torch.where(denom > 0, (base / torch.where(denom > 0, denom, 1.0)).sqrt(), torch.zeros_like(base))

    r = torch.rsqrt(ms + eps) if eps > 0 else torch.where(ms > 0, torch.rsqrt(ms), torch.zeros_like(ms))
    g = gain.to(device=xd.device, dtype=dtype)
    # z − x ⊙ (r gᵀ): one contiguous (T, d) outer product; broadcasting x * r[:, None] is slow on CPU
    diff = torch.outer(r.to(dtype), g, out=work)
    diff = torch.addcmul(zd, xd, diff, value=-1.0, out=diff)
    if bias is not None:
        diff -= bias.to(device=xd.device, dtype=dtype)
    gap2 = torch.linalg.vector_norm(diff, dim=-1).to(f64).square()
    zero = torch.zeros_like(gap2)
    gap = torch.where(szz > 0, (gap2 / torch.where(szz > 0, szz, 1.0)).sqrt(), torch.where(gap2 > 0, math.inf, zero))

    values = torch.stack([*vin, *vout, rotation, gap, rho])
    return values, fin_in, fin_out


_WORK: dict = {}


def _workspace(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused (T, d) scratch buffer. Fresh multi-MB allocations are returned to the OS and
    page-faulted back in on every call, which costs more than the arithmetic itself on CPU."""
    n = shape[0] * shape[1]
    key = (dtype, device)
    buf = _WORK.get(key)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):  # a normal tensor: writable in and outside inference mode
            buf = torch.empty(n, dtype=dtype, device=device)
        _WORK[key] = buf
    return buf[:n].view(shape)


def _refine_rotation(rotation: torch.Tensor, x: torch.Tensor, z: torch.Tensor, sxx: torch.Tensor, szz: torch.Tensor) -> None:
    """Small angles (< 5°) lose digits in sin² = 1 − cos²; recompute them in float64 from the
    chord between the unit vectors, θ = 2·asin(‖x/‖x‖ − z/‖z‖‖/2)."""
    rows = torch.nonzero((rotation < 5.0) & (sxx > 0) & (szz > 0)).flatten()
    if rows.numel() == 0:
        return
    xs = x[rows].to(torch.float64) * sxx[rows].rsqrt()[:, None]
    zs = z[rows].to(torch.float64) * szz[rows].rsqrt()[:, None]
    chord = torch.linalg.vector_norm(xs - zs, dim=-1)
    rotation[rows] = 2.0 * torch.asin((chord / 2).clamp(max=1.0)) * _DEG


def _refine(metrics: list[torch.Tensor], v: torch.Tensor, d: int) -> None:
    """Recompute σ, θ and cos²θ in float64 with a centred two-pass formula where cos²θ > 0.5."""
    rows = torch.nonzero(metrics[5] > 0.5).flatten()
    if rows.numel() == 0:
        return
    sub = v[rows].to(torch.float64)
    mu = sub.mean(-1)
    c = sub - mu[:, None]
    var = torch.linalg.vecdot(c, c) / d
    ms = torch.linalg.vecdot(sub, sub) / d
    std = var.sqrt()
    metrics[0][rows] = torch.atan2(std * math.sqrt(d), mu * math.sqrt(d)) * _DEG
    metrics[1][rows] = (ms * d).sqrt()
    metrics[2][rows] = mu
    metrics[3][rows] = std
    metrics[4][rows] = ms.sqrt()
    metrics[5][rows] = torch.where(ms > 0, mu * mu / torch.where(ms > 0, ms, 1.0), torch.zeros_like(ms)).clamp(max=1.0)
