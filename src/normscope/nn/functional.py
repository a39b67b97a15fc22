"""The math of LayerNorm and RMSNorm, written once.

LayerNorm as a composition (Riechers, arXiv:2405.04134, Eq. 6; Brody et al., arXiv:2305.02582, §2):

    (i)   projection   p = Π x = x − mean(x)·𝟙              (onto the hyperplane ⟂ 𝟙)
    (ii)  scaling      x̂ = r · p / √(mean(p²) + ε)           (norm √N·r when ε = 0)
    (iii) linear       G x̂,   G = diag(g)
    (iv)  shift        z = G x̂ + b

With r = 1 ("sqrt_d") this is ``torch.nn.functional.layer_norm``; without (i) it is RMSNorm.
``decompose`` returns every intermediate of one call; the modules use it whenever a fused
torch kernel does not cover the configuration, and for ``trace()``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

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
    if project:
        p = xc - xc.mean(dim=dims, keepdim=True)
        if eq5:
            flat = xc.flatten(-len(normalized_shape))
            constant = (flat.amax(-1) == flat.amin(-1)).reshape(p.shape[: p.ndim - len(dims)] + (1,) * len(dims))
            p = torch.where(constant, torch.zeros_like(p), p)
    else:
        p = xc
    if scale:
        denom = torch.sqrt(p.square().mean(dim=dims, keepdim=True) + eps)
        if eq5:
            denom = torch.where(denom == 0, torch.ones_like(denom), denom)
        xhat = p * (radius_factor(radius, d) / denom)
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
    ``vector_norm``), once to scale, and writes once. See ``benchmarks/bench_nn.py``.
    """
    dims = tuple(range(-len(normalized_shape), 0))
    d = math.prod(normalized_shape)
    xc = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    norm = torch.linalg.vector_norm(xc, dim=dims, keepdim=True)
    inv = torch.rsqrt(norm.square() / d + eps)  # per row: cheap
    w = weight.to(xc.dtype) if weight is not None else None
    b = bias.to(xc.dtype) if bias is not None else None
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xc, w, b))
    if tracked:  # out-of-place, so autograd keeps what it saved
        z = xc * inv
        if w is not None:
            z = torch.addcmul(b, z, w) if b is not None else z * w
        elif b is not None:
            z = z + b
    else:  # in place: one write of the output per pass
        z = torch.mul(xc, inv)
        if w is not None and b is not None:
            torch.addcmul(b, z, w, out=z)
        elif w is not None:
            z.mul_(w)
        elif b is not None:
            z.add_(b)
    return z if z.dtype == x.dtype else z.to(x.dtype)
