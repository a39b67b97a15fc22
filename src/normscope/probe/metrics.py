"""Per-token metrics of a norm layer's input x and output z (vectorised; float32 passes, float64 per token).

For a vector v in R^d with μ = mean(v), σ² = mean((v−μ)²) (population) and
RMS = sqrt(mean(v²)) = sqrt(μ² + σ²):

- ``norm``      ‖v‖₂
- ``angle_deg`` θ(v, 𝟙) = atan2(‖v⊥‖, v·1̂) in degrees, with v·1̂ = √d·μ and ‖v⊥‖ = √d·σ
                (the same angle as arccos(μ/RMS), but accurate near 0° and 180°)
- ``mean``, ``std`` (σ), ``rms``
- ``cos2``      cos²θ = μ²/RMS² = (Σv)²/(d‖v‖²), the fraction of ‖v‖² along 𝟙
- ``rotation_deg`` angle between x and z (Gupta et al., arXiv:2409.12951, Table 4)
- ``radial_fraction`` ρ on the input: LayerNorm ρ = (1 + ε/σ²)^(−1/2) (Riechers, arXiv:2405.04134);
  for RMSNorm the analogue ρ = (1 + ε/mean(x²))^(−1/2), the norm of x/sqrt(mean(x²)+ε) over √d.
  ρ = 0 for a zero-variance (LN) or zero (RMS) input with ε > 0.
- ``rms_gap``   ‖z − RMSNorm(x)‖/‖z‖, with RMSNorm(x) = g ⊙ x/sqrt(mean(x²)+ε) + b using the
  layer's own effective gain g, bias b and ε: the relative error of a naive LN → RMSNorm swap
  at this token; rounding level for RMSNorm layers. 0 when z = RMSNorm(x) = 0.

All of them derive from six per-token sums, Σx, Σx², Σz, Σz², Σxz and ‖z − RMSNorm(x)‖²
(:func:`token_sums`), taken block by block over tokens so x and z stay in cache (single-threaded:
~20% faster at 4096 × 576; with several threads one block, since per-block parallel regions cost
more than they save); each sum is a row reduction, so the blocking changes no bit. With
``NORMSCOPE_COMPILE=1`` the six sums are one ``torch.compile``d kernel (falls back to the eager
passes if compilation fails).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import NamedTuple

import torch

from normscope.nn import _autotune

__all__ = ["VECTOR_METRICS", "METRIC_ROWS", "ROW", "VectorMetrics", "TokenSums", "TokenMetrics",
           "token_metrics", "token_sums", "vector_metrics"]

VECTOR_METRICS = ("angle_deg", "norm", "mean", "std", "rms", "cos2")
# row layout of the (15, T) matrix TokenMetrics.values
METRIC_ROWS = (
    [("input", m) for m in VECTOR_METRICS]
    + [("output", m) for m in VECTOR_METRICS]
    + [(None, "rotation_deg"), (None, "rms_gap"), (None, "radial_fraction")]
)
ROW = {key: i for i, key in enumerate(METRIC_ROWS)}  # (side, metric) -> row of TokenMetrics.values
_DEG = 180.0 / math.pi
_BLOCK_BYTES = 1 << 21  # tokens per block: x, z and a scratch block of this size together stay in L2/L3


class VectorMetrics(NamedTuple):
    """Per-token metrics of one side (input or output), float64 tensors of shape (T,)."""

    angle_deg: torch.Tensor
    norm: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    rms: torch.Tensor
    cos2: torch.Tensor


class TokenSums(NamedTuple):
    """Per-token sums (float64, shape (T,)) from which every metric follows."""

    sx: torch.Tensor  # Σx
    sxx: torch.Tensor  # Σx²
    sz: torch.Tensor  # Σz
    szz: torch.Tensor  # Σz²
    sxz: torch.Tensor  # Σxz
    gap2: torch.Tensor  # ‖z − (g ⊙ x/sqrt(mean(x²)+ε) + b)‖²


class TokenMetrics(NamedTuple):
    """Result of :func:`token_metrics`.

    ``values``: float64 (15, T) in :data:`METRIC_ROWS` order (read rows by name with
    :meth:`get`); ``finite_in`` / ``finite_out``: boolean (T,) masks of tokens whose input/output
    contain no NaN/Inf (their values are meaningless; the caller drops them).
    """

    values: torch.Tensor
    finite_in: torch.Tensor
    finite_out: torch.Tensor

    def get(self, side: str | None, metric: str) -> torch.Tensor:
        """The (T,) row of ``metric`` on ``side`` ("input", "output", or None for the paired metrics)."""
        return self.values[ROW[(side, metric)]]


def vector_metrics(s: torch.Tensor, ss: torch.Tensor, d: int) -> VectorMetrics:
    """Metrics of vectors from their sums s = Σv and ss = Σv² (float64, shape (T,))."""
    mu = s / d
    ms = ss / d
    var = (ms - mu * mu).clamp_(min=0.0)
    std = var.sqrt()
    angle = torch.atan2(std * math.sqrt(d), mu * math.sqrt(d)) * _DEG
    cos2 = torch.where(ms > 0, mu * mu / torch.where(ms > 0, ms, 1.0), torch.zeros_like(ms))
    return VectorMetrics(angle, ss.sqrt(), mu, std, ms.sqrt(), cos2.clamp_(max=1.0))


def _rsqrt_ms(sxx: torch.Tensor, d: int, eps: float) -> torch.Tensor:
    """r = 1/sqrt(mean(x²) + ε) (0 where mean(x²) + ε = 0)."""
    ms = sxx / d
    return torch.rsqrt(ms + eps) if eps > 0 else torch.where(ms > 0, torch.rsqrt(ms), torch.zeros_like(ms))


def _sums_eager(x: torch.Tensor, z: torch.Tensor, g: torch.Tensor, b: torch.Tensor | None, eps: float) -> TokenSums:
    """The six sums with one pass per sum over (T, d) (torch's fused reductions), blocked over
    tokens (x, z and a scratch block stay in cache) when single-threaded and T·d is large;
    with several threads one block (per-block parallel regions cost more than they save)."""
    t, d = x.shape
    step = max(1, _BLOCK_BYTES // max(1, d * x.element_size())) if torch.get_num_threads() == 1 else t
    if step >= t:
        return _sums_block(x, z, g, b, eps, _workspace(x.shape, x.dtype, x.device))
    work = _workspace((step, d), x.dtype, x.device)
    parts = [_sums_block(x[a:a + step], z[a:a + step], g, b, eps, work[: min(step, t - a)]) for a in range(0, t, step)]
    return TokenSums(*(torch.cat(col) for col in zip(*parts)))


def _sums_block(x, z, g, b, eps, work) -> TokenSums:
    f64 = torch.float64
    d = x.shape[-1]
    # vector_norm is a fused reduction (no (T, d) temporary), several times faster than vecdot
    sx = x.sum(-1).to(f64)
    sxx = torch.linalg.vector_norm(x, dim=-1).to(f64).square()
    sz = z.sum(-1).to(f64)
    szz = torch.linalg.vector_norm(z, dim=-1).to(f64).square()
    sxz = torch.mul(x, z, out=work).sum(-1).to(f64)
    # z − x ⊙ (r gᵀ): one contiguous (T, d) outer product; broadcasting x * r[:, None] is slow on CPU
    diff = torch.outer(_rsqrt_ms(sxx, d, eps).to(x.dtype), g, out=work)
    diff = torch.addcmul(z, x, diff, value=-1.0, out=diff)
    if b is not None:
        diff -= b
    gap2 = torch.linalg.vector_norm(diff, dim=-1).to(f64).square()
    return TokenSums(sx, sxx, sz, szz, sxz, gap2)


def _sums_fused(x: torch.Tensor, z: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """The same six sums as one expression (compiled into one kernel by :func:`torch.compile`)."""
    d = x.shape[-1]
    sxx = (x * x).sum(-1)
    ms = sxx.double() / d
    r = torch.where(ms + eps > 0, torch.rsqrt(ms + eps), torch.zeros_like(ms)).to(x.dtype)
    diff = z - x * r[:, None] * g - b
    return torch.stack([x.sum(-1), sxx, z.sum(-1), (z * z).sum(-1), (x * z).sum(-1), (diff * diff).sum(-1)])


# the torch.compile'd _sums_fused (dynamic token count), built on first use with NORMSCOPE_COMPILE=1
compiled_sums = _autotune.LazyCompiled(
    _sums_fused, lambda k: k(torch.ones(2, 4), torch.ones(2, 4), torch.ones(4), torch.zeros(4), 1e-5),
    "the probe's per-token metrics", dynamic=True)


def _compiled_sums(x, z, g, b, eps) -> TokenSums | None:
    """:func:`_sums_fused` compiled, or None (not opted in, or no compiler: the eager sweep)."""
    fn = compiled_sums() if _autotune.opted_in() else None
    if fn is None:
        return None
    try:
        o = fn(x, z, g, b if b is not None else torch.zeros_like(g), float(eps)).to(torch.float64)
    except Exception as err:  # noqa: BLE001 - the compiler rejected this call: eager from now on
        compiled_sums.fail(err)
        return None
    return TokenSums(o[0], o[1], o[2], o[3], o[4], o[5])


def token_sums(x: torch.Tensor, z: torch.Tensor, *, eps: float, gain: torch.Tensor,
               bias: torch.Tensor | None) -> TokenSums:
    """The six per-token sums of :class:`TokenSums` for (T, d) inputs x and outputs z, taken in
    x's dtype and returned in float64 (``gain``/``bias`` are cast to x's dtype and device)."""
    g = gain.to(device=x.device, dtype=x.dtype)
    b = None if bias is None else bias.to(device=x.device, dtype=x.dtype)
    s = _compiled_sums(x, z, g, b, eps) if x.shape[0] > 0 else None
    return s if s is not None else _sums_eager(x, z, g, b, eps)


def token_metrics(
    x: torch.Tensor,
    z: torch.Tensor,
    *,
    kind: str,
    eps: float,
    gain: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype | None = None,
) -> TokenMetrics:
    """All per-token metrics for inputs x and outputs z of shape (T, d).

    The (T, d) passes run in ``dtype`` (default: float32, or float64 for float64 inputs); every
    per-token quantity derived from the sums is computed in float64. float32 sums carry a
    relative error of about 1e-7; the variance σ² = mean(x²) − μ² would lose digits when
    |μ| ≫ σ, so tokens with cos²θ > 0.5 are recomputed with a centred two-pass formula in
    float64 (exact to float64 rounding everywhere); rotations below 5° likewise.

    **Arguments:** ``x``, ``z`` (T, d); ``kind`` ("layernorm" or an RMSNorm kind; decides ρ);
    ``eps``, ``gain``, ``bias``: the layer's effective parameters; ``dtype`` of the passes.

    **Returns:** :class:`TokenMetrics` ``(values, finite_in, finite_out)``.
    """
    d = x.shape[-1]
    x, z = x.detach(), z.detach()
    if dtype is None:
        dtype = torch.float64 if torch.float64 in (x.dtype, z.dtype) else torch.float32
    f64 = torch.float64
    xd = _as_dtype(x, dtype, "x")
    zd = _as_dtype(z, dtype, "z")
    s = token_sums(xd, zd, eps=eps, gain=gain, bias=bias)
    fin_in = torch.isfinite(s.sxx) & torch.isfinite(s.sx)
    fin_out = torch.isfinite(s.szz) & torch.isfinite(s.sz)

    vin = vector_metrics(s.sx, s.sxx, d)
    vout = vector_metrics(s.sz, s.szz, d)
    if dtype != f64:
        vin = _refine(vin, xd, d)
        vout = _refine(vout, zd, d)

    sin2 = (s.sxx * s.szz - s.sxz * s.sxz).clamp_(min=0.0)
    rotation = torch.atan2(sin2.sqrt(), s.sxz) * _DEG
    _refine_rotation(rotation, xd, zd, s.sxx, s.szz)

    base = vin.std * vin.std if kind == "layernorm" else s.sxx / d
    denom = base + eps
    rho = torch.where(denom > 0, (base / torch.where(denom > 0, denom, 1.0)).sqrt(), torch.zeros_like(base))

    zero = torch.zeros_like(s.gap2)
    szz = s.szz
    gap = torch.where(szz > 0, (s.gap2 / torch.where(szz > 0, szz, 1.0)).sqrt(),
                      torch.where(s.gap2 > 0, math.inf, zero))

    values = torch.stack([*vin, *vout, rotation, gap, rho])
    if not _LOCAL.keep:
        _LOCAL.work.clear()  # a one-off call keeps no scratch memory; a probe run keeps it (workspace())
    return TokenMetrics(values, fin_in, fin_out)


class _Scratch(threading.local):
    """Per-thread scratch (two threads probing at once never share a buffer): ``work`` maps
    (slot, dtype, device) to a buffer; ``keep`` is set inside :func:`workspace`."""

    def __init__(self) -> None:
        self.work: dict = {}
        self.keep = False


_LOCAL = _Scratch()


def _workspace(shape: tuple, dtype: torch.dtype, device: torch.device, slot: str = "scratch") -> torch.Tensor:
    """A reused scratch buffer per (slot, dtype, device) and thread. Fresh multi-MB allocations are returned
    to the OS and page-faulted back in on every call, which costs more than the arithmetic itself
    on CPU. Kept between calls only inside :func:`workspace` (the runner's forward loop)."""
    n = shape[0] * shape[1]
    key = (slot, dtype, device)
    work = _LOCAL.work
    buf = work.get(key)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):  # a normal tensor: writable in and outside inference mode
            buf = torch.empty(n, dtype=dtype, device=device)
        work[key] = buf
    return buf[:n].view(shape)


@contextlib.contextmanager
def workspace() -> Iterator[None]:
    """Keep this thread's scratch buffers of :func:`token_metrics` between calls inside the block
    (a probe run: same shapes every batch, no page faults), and free them when it ends. Outside
    such a block every call frees its buffers before returning."""
    outer = _LOCAL.keep
    _LOCAL.keep = True
    try:
        yield
    finally:
        _LOCAL.keep = outer
        if not outer:
            _LOCAL.work.clear()


def _as_dtype(v: torch.Tensor, dtype: torch.dtype, slot: str) -> torch.Tensor:
    """``v`` in ``dtype``: itself when it already is, else a copy in the ``slot`` scratch buffer."""
    if v.dtype == dtype:
        return v
    return _workspace(tuple(v.shape), dtype, v.device, slot).copy_(v)


def _refine_rotation(rotation: torch.Tensor, x: torch.Tensor, z: torch.Tensor, sxx: torch.Tensor, szz: torch.Tensor) -> None:
    """Small angles (< 5°) lose digits in sin² = 1 − cos²; recompute them in float64 from the
    chord between the unit vectors, θ = 2·asin(c/2) with c = ‖x/‖x‖ − z/‖z‖‖ taken as
    ‖x·(‖z‖/‖x‖) − z‖/‖z‖, norms included in float64 (a float32 norm would leak its ~1e-7
    relative error into c), in float64 scratch buffers (no allocation per call)."""
    rows = torch.nonzero((rotation < 5.0) & (sxx > 0) & (szz > 0)).flatten()
    if rows.numel() == 0:
        return
    every = rows.numel() == x.shape[0]
    xs, zs = (x, z) if every else (x[rows], z[rows])
    xd = _as_dtype(xs, torch.float64, "f64")
    zd = _as_dtype(zs, torch.float64, "f64z")
    nx, nz = torch.linalg.vector_norm(xd, dim=-1), torch.linalg.vector_norm(zd, dim=-1)
    diff = torch.mul(xd, (nz / nx)[:, None], out=xd) if xd is not x else xd * (nz / nx)[:, None]
    chord = torch.linalg.vector_norm(diff.sub_(zd), dim=-1) / nz
    rotation[rows] = 2.0 * torch.asin((chord / 2).clamp(max=1.0)) * _DEG


def _refine(m: VectorMetrics, v: torch.Tensor, d: int) -> VectorMetrics:
    """Recompute σ, θ and cos²θ in float64 with a centred two-pass formula where cos²θ > 0.5."""
    rows = torch.nonzero(m.cos2 > 0.5).flatten()
    if rows.numel() == 0:
        return m
    sub = v[rows].to(torch.float64)
    mu = sub.mean(-1)
    c = sub - mu[:, None]
    var = torch.linalg.vecdot(c, c) / d
    ms = torch.linalg.vecdot(sub, sub) / d
    std = var.sqrt()
    m.angle_deg[rows] = torch.atan2(std * math.sqrt(d), mu * math.sqrt(d)) * _DEG
    m.norm[rows] = (ms * d).sqrt()
    m.mean[rows] = mu
    m.std[rows] = std
    m.rms[rows] = ms.sqrt()
    m.cos2[rows] = torch.where(ms > 0, mu * mu / torch.where(ms > 0, ms, 1.0), torch.zeros_like(ms)).clamp(max=1.0)
    return m
