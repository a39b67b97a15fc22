"""The math of LayerNorm and RMSNorm, written once.

LayerNorm as a composition (Riechers, arXiv:2405.04134, Eq. 6; Brody et al., arXiv:2305.02582, §2):

    (i)   projection   p = Π x = x − mean(x)·𝟙              (onto the hyperplane ⟂ 𝟙)
    (ii)  scaling      x̂ = r · p / √(mean(p²) + ε)           (norm √N·r when ε = 0)
    (iii) linear       G x̂,   G = diag(g)
    (iv)  shift        z = G x̂ + b

With r = 1 ("sqrt_d") this is ``torch.nn.functional.layer_norm``; without (i) it is RMSNorm.
``decompose`` returns every intermediate of one call; the modules use it whenever a fused
torch kernel does not cover the configuration (or overflows, see below), and for ``trace()``.
:func:`reference` is the one float64 reference of every norm kind used across normscope.

**Range.** Squaring |x| ≳ 1.8e19 overflows float32 (and |x| ≳ 1.3e154 float64); torch's fused
kernels then return NaN or zeros. ``decompose`` computes the statistics of each row on the row
divided by a power of two near its largest entry (an exact rescaling), so every finite input
works in every dtype; the modules fall back to it for the rows a fused kernel cannot handle.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from normscope.nn._checks import check_eps, check_float

RADII = {"sqrt_d": "norm √d (RMS 1), as torch LayerNorm", "unit": "norm 1", "inv_sqrt_d": "norm 1/√d (Brody et al. code)"}


class NormTrace(NamedTuple):
    """Intermediate quantities of one normalization call (all broadcastable to the input).

    ``input``: x.  ``projected``: p = x − mean(x) (or x when projection is off).
    ``denom``: √(mean(p²) + ε), shape (..., 1) (ones when scaling is off).
    ``normalized``: the pre-affine vector x̂ = r·p/denom.  ``output``: g ⊙ x̂ + b.
    """

    input: torch.Tensor
    projected: torch.Tensor
    denom: torch.Tensor
    normalized: torch.Tensor
    output: torch.Tensor


def radius_factor(radius: str, d: int) -> float:
    """r such that the scaled vector has norm r·√d (for ε = 0)."""
    if radius == "sqrt_d":
        return 1.0
    if radius == "unit":
        return 1.0 / math.sqrt(d)
    if radius == "inv_sqrt_d":
        return 1.0 / d
    raise ValueError(f"radius must be one of {sorted(RADII)}, got {radius!r}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _pow2_scale(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Per row, s = 2^(e-1) with max|t| = m·2^e, m ∈ [½, 1): dividing by s is exact and puts
    max|t/s| in [1, 2). Rows that are all zero or non-finite get s = 1."""
    amax = t.abs().amax(dim=dims, keepdim=True)
    _, e = torch.frexp(amax)
    s = torch.pow(torch.tensor(2.0, dtype=t.dtype, device=t.device), (e - 1).to(t.dtype))
    ok = torch.isfinite(amax) & (amax > 0) & (s > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s))


def safe_normalize(
    x: torch.Tensor, dims: tuple[int, ...], eps: float, project: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p, p/√(mean(p²)+ε), √(mean(p²)+ε)) with p = x − mean(x) (or x), for any finite x.

    Computed on y = x/s, s a power of two near max|x| per row (exact): with p_y = y − mean(y)
    and ρ = ε/s², p = s·p_y, p/√(mean(p²)+ε) = p_y/√(mean(p_y²)+ρ) and √(mean(p²)+ε) =
    s·√(mean(p_y²)+ρ). No square overflows, none underflows into the subnormals. When ρ
    overflows (s tiny, ε > 0), mean(p_y²) ≤ 16 is negligible against it and the exact results
    are s·p_y/√ε and √ε.
    """
    s = _pow2_scale(x, dims)
    y = x / s
    py = y - y.mean(dim=dims, keepdim=True) if project else y
    rho = torch.full_like(s, eps) / s / s  # tensor division: a scalar/tensor multiplies by 1/s, inf for subnormal s
    root = torch.sqrt(py.square().mean(dim=dims, keepdim=True) + rho)
    finite = torch.isfinite(rho)
    p = py * s
    root_eps = math.sqrt(eps)
    xhat = torch.where(finite, py / root, p / root_eps if eps > 0 else p)
    denom = torch.where(finite, s * root, torch.full_like(s, root_eps))
    return p, xhat, denom


def decompose(
    x: torch.Tensor,
    normalized_shape: tuple[int, ...],
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    project: bool = True,
    scale: bool = True,
    radius: str = "sqrt_d",
    eq5: bool = False,
) -> NormTrace:
    """Run projection → scaling → affine step by step and return every intermediate.

    Computation happens in float32 (float64 for float64 input), like torch's kernels; every
    field of the returned trace is cast back to ``x.dtype``.

    ``eq5=True`` applies Riechers' Eq. 5 convention: an input with zero projected part
    (a ∝ 𝟙 for LayerNorm, a = 0 for RMSNorm) maps to x̂ = 0, so z = b, instead of the
    NaN that torch returns for ε = 0.
    """
    dims = tuple(range(-len(normalized_shape), 0))
    d = math.prod(normalized_shape)
    xc = x.to(_compute_dtype(x))
    if project and eq5:
        flat = xc.flatten(-len(normalized_shape))
        constant = (flat.amax(-1) == flat.amin(-1)).reshape(xc.shape[: xc.ndim - len(dims)] + (1,) * len(dims))
        xc = torch.where(constant, torch.zeros_like(xc), xc)  # p = 0 exactly (Eq. 5)
    p, xhat, denom = safe_normalize(xc, dims, eps, project)
    if scale:
        if eq5:
            zero = denom == 0
            denom = torch.where(zero, torch.ones_like(denom), denom)
            xhat = torch.where(zero, torch.zeros_like(xhat), xhat)
        r = radius_factor(radius, d)
        if r != 1.0:
            xhat = xhat * r
    else:
        denom = torch.ones(p.shape[: p.ndim - len(dims)] + (1,) * len(dims), dtype=p.dtype, device=p.device)
        xhat = p
    z = xhat
    if weight is not None:
        z = z * weight.to(z.dtype)
    if bias is not None:
        z = z + bias.to(z.dtype)
    cast = lambda t: t.to(x.dtype)  # noqa: E731
    return NormTrace(x, cast(p), cast(denom), cast(xhat), cast(z))


def rows_dynamic(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, C) with the rows marked dynamic for ``torch.compile``: one compiled graph
    serves every batch size while the width stays static (a symbolic width makes inductor's
    reductions several times slower, measured)."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] > 1:
        torch._dynamo.mark_dynamic(x2, 0)
    return x2


def exporting() -> bool:
    """Whether ``torch.export`` (or an exporter built on it, such as ``torch.onnx.export(dynamo=True)``)
    is tracing. The norm modules then run their exactly rescaled step-by-step path
    (:func:`decompose`): a fused kernel is followed by :func:`stats_reliable`, a Python branch on
    the data, which an exported graph cannot hold. The exported graph is a few more operations
    than one fused kernel and exact at every scale."""
    return torch.compiler.is_exporting()


def stats_reliable(mean_square_plus_eps: torch.Tensor | None = None, *, rstd: torch.Tensor | None = None) -> bool:
    """Whether a fused kernel's per-row statistics can be trusted: every mean(p²) + ε (or
    1/rstd²) finite and at least tiny/eps of its dtype (2^-103 in float32), below which its
    rounding is no longer relative. One ``aminmax`` over the rows (a few µs) and one read back; when False the
    modules recompute with :func:`safe_normalize`. NaN compares False, so it fails too."""
    v = (rstd if rstd is not None else mean_square_plus_eps).detach()
    if v.numel() == 0:
        return True
    fi = torch.finfo(v.dtype)
    lo, hi = torch.stack(torch.aminmax(v)).tolist()  # one read back (one graph break under torch.compile)
    if rstd is not None:  # 1/rstd² >= tiny/eps  <=>  rstd <= √(eps/tiny); rstd = 0 means overflow
        return lo > 0.0 and hi <= math.sqrt(fi.eps / fi.tiny)
    return lo >= fi.tiny / fi.eps and math.isfinite(hi)


def rms_norm(
    x: torch.Tensor,
    normalized_shape: tuple[int, ...],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """RMSNorm, z = g ⊙ x / √(mean(x²) + ε) + b, in two passes over x.

    Same math as ``torch.nn.functional.rms_norm`` (``eps=None`` means the dtype's machine
    epsilon, as in torch). On CPU, torch 2.13's ``F.rms_norm`` makes several passes and is
    about 3× slower than ``F.layer_norm``; this kernel reads x once for the norm (one
    ``vector_norm``), once to scale, and writes once. See ``benchmarks/bench_nn.py``. Rows whose
    mean square overflows or underflows (|x| ≳ 1e19 or ≲ 1e-19 in float32) are recomputed with
    the exact rescaling of :func:`decompose`, so the result never depends on the input's scale.
    On CPU (float32/float64, nothing to differentiate, a 1-D shape) the same operations run in
    row blocks that stay in cache between the passes (:func:`block_elems`: ~1 MiB in one core's
    L2 with one thread, 4 MiB in the shared L3 with more); same bits, measured ~9% (1 thread)
    and ~4% (2 threads) faster at 4096 × 4096.
    """
    dims = tuple(range(-len(normalized_shape), 0))
    d = math.prod(normalized_shape)
    xc = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    if len(normalized_shape) == 1 and x.numel() > max(d, block_elems()) and blocks_apply(x, weight, bias):
        out = _rms_norm_blocked(x, d, weight, bias, eps)
        if out is not None:
            return out
    norm = torch.linalg.vector_norm(xc, dim=dims, keepdim=True)
    ms = norm.square() / d + eps  # per row: cheap
    if not stats_reliable(ms):
        _, xhat, _ = safe_normalize(xc, dims, eps, project=False)
        return _affine(xhat, weight, bias, x.dtype)
    return _affine(xc, weight, bias, x.dtype, torch.rsqrt(ms))


# Elements per row block of the blocked CPU kernels (:func:`rms_norm`, ``GroupLayerNorm``).
# One intra-op thread: 1 MiB of float32, the L2 of one core (2^17 and 2^19 measured slower).
# Several: 4 MiB, held in the shared L3, so that each block's parallel regions pay off (2 threads,
# 4096 × 4096 float32: RMSNorm fastest at 2^19–2^20, LN-G at 2^20–2^22; 1 MiB blocks lose 5–15%).
BLOCK_ELEMS = 1 << 18
BLOCK_ELEMS_THREADED = 1 << 20


def block_elems() -> int:
    """Elements per row block at the current intra-op thread count (see ``BLOCK_ELEMS``)."""
    return BLOCK_ELEMS if torch.get_num_threads() == 1 else BLOCK_ELEMS_THREADED


def blocks_apply(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether a row-blocked CPU kernel (:func:`rms_norm`, ``GroupLayerNorm``) may run: CPU,
    float32/float64 input, parameters of its dtype and device, and nothing to differentiate
    (the kernels write in place)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or torch.compiler.is_compiling():
        return False  # (a compiler would unroll the Python loop over row blocks)
    ps = [t for t in params if t is not None]
    if any(t.dtype != x.dtype or t.device != x.device for t in ps):
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in ps)))


def affine_(z: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """z := g ⊙ z + b in place, one pass (``addcmul`` when both are given)."""
    if weight is not None and bias is not None:
        torch.addcmul(bias, z, weight, out=z)
    elif weight is not None:
        z.mul_(weight)
    elif bias is not None:
        z.add_(bias)
    return z


def _rms_norm_blocked(
    x: torch.Tensor, d: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
) -> torch.Tensor | None:
    """:func:`rms_norm`'s operations (‖x‖, mean(x²) + ε, x·rsqrt, g ⊙ · + b) on row blocks of
    :func:`block_elems` elements, each block read from memory once; ``None`` when some mean(x²) + ε is unreliable
    (:func:`stats_reliable`), for the caller's exact path."""
    x2 = x.reshape(-1, d)
    rows = x2.shape[0]
    step = max(1, block_elems() // d)
    out = torch.empty_like(x2, memory_format=torch.contiguous_format)
    ms = x2.new_empty(rows, 1)
    with torch.no_grad():
        for a in range(0, rows, step):
            xb, zb, mb = x2[a:a + step], out[a:a + step], ms[a:a + step]
            torch.linalg.vector_norm(xb, dim=-1, keepdim=True, out=mb)
            mb.square_().div_(d).add_(eps)
            affine_(torch.mul(xb, mb.rsqrt(), out=zb), weight, bias)
    return out.view(x.shape) if stats_reliable(ms) else None


def _affine(
    xc: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype,
    inv: torch.Tensor | None = None,
) -> torch.Tensor:
    """g ⊙ (x·inv) + b in as few passes as autograd allows, rounded once to ``dtype``."""
    w = weight.to(xc.dtype) if weight is not None else None
    b = bias.to(xc.dtype) if bias is not None else None
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xc, w, b, inv))
    if tracked:  # out-of-place, so autograd keeps what it saved
        z = xc * inv if inv is not None else xc
        if w is not None:
            z = torch.addcmul(b, z, w) if b is not None else z * w
        elif b is not None:
            z = z + b
    else:  # in place: one write of the output per pass
        z = affine_(torch.mul(xc, inv) if inv is not None else xc.clone(), w, b)
    return z if z.dtype == dtype else z.to(dtype)


KINDS = ("layernorm", "rmsnorm", "rmsnorm_offset")


def reference(
    kind: str,
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float | None = 1e-5,
    normalized_shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    r"""The float64 reference of every norm kind in normscope, written once.

    With :math:`\mu = \operatorname{mean}(x)`, :math:`N` the number of normalized features:

    - ``"layernorm"``: :math:`z = g\odot\dfrac{x-\mu\mathbb 1}{\sqrt{\tfrac1N\lVert x-\mu\mathbb 1\rVert^2+\varepsilon}} + b`
      (Riechers, arXiv:2405.04134, Eq. 6; ``F.layer_norm``);
    - ``"rmsnorm"``: :math:`z = g\odot\dfrac{x}{\sqrt{\tfrac1N\lVert x\rVert^2+\varepsilon}} + b`
      (LayerNorm without the projection; Gupta et al., arXiv:2409.12951; ``F.rms_norm``);
    - ``"rmsnorm_offset"``: as ``"rmsnorm"`` with gain :math:`1 + w` (Gemma's convention; the 1
      is added in float64, so a bf16 w loses nothing).

    Everything runs in float64 through ``torch.nn.functional`` (``F.layer_norm``/``F.rms_norm``),
    so the result is the float64 rounding of the formula; the bias is added after ``F.rms_norm``.
    Inputs must be finite with |x| ≲ 1e150 (float64 squares); for norm sites in any dtype this
    is the number every faster path is compared with.

    **Arguments:**

    - ``kind``: one of ``"layernorm"``, ``"rmsnorm"``, ``"rmsnorm_offset"``.
    - ``x``: floating-point tensor (..., *normalized_shape), any dtype and device.
    - ``weight``, ``bias``: gain w and shift b of shape ``normalized_shape`` (``None``: 1 and 0;
      for ``"rmsnorm_offset"`` a missing w means gain 1).
    - ``eps``: ε ≥ 0, added to the mean square inside the root (torch's placement); ``None``
      means the machine epsilon of ``x``'s own dtype (``torch.nn.RMSNorm``'s default).
    - ``normalized_shape``: trailing dims to normalize over; default ``weight.shape`` or, without
      a weight, the last dim.

    **Returns:** a float64 tensor of ``x``'s shape on ``x``'s device.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    check_eps(eps)
    check_float(x, "reference")
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    if normalized_shape is None:
        normalized_shape = tuple(weight.shape) if weight is not None else (x.shape[-1],)
    shape = tuple(normalized_shape)
    xd = x.to(torch.float64)
    w = weight.to(device=x.device, dtype=torch.float64) if weight is not None else None
    b = bias.to(device=x.device, dtype=torch.float64) if bias is not None else None
    if kind == "layernorm":
        return F.layer_norm(xd, shape, w, b, float(eps))
    if kind == "rmsnorm_offset":
        w = 1.0 + w if w is not None else None
    z = F.rms_norm(xd, shape, w, float(eps))
    return z + b if b is not None else z
