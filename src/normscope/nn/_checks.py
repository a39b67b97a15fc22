"""Argument checks shared by the norm modules (and exported for the rest of normscope).

Each check raises a one-line ``ValueError``/``TypeError`` that names the rule and the fix.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

Shape = int | Sequence[int] | torch.Size

__all__ = ["Shape", "as_shape", "check_eps", "check_input", "check_float", "check_finite", "resolve_affine"]


def as_shape(normalized_shape: Shape) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of positive ints (an int means a vector of that width)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or any((not isinstance(n, int)) or n < 1 for n in shape):
        raise ValueError(f"normalized_shape must be a positive int or a tuple of positive ints, got {normalized_shape!r}")
    return shape


def check_eps(eps: float | None) -> None:
    """ε must be ``None`` (the input dtype's machine epsilon, RMSNorm only) or a finite number ≥ 0."""
    if eps is None:
        return
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def check_float(x: torch.Tensor, who: str) -> None:
    """Normalization divides by a norm: integer, bool and complex inputs are refused with the cast to use."""
    if not x.is_floating_point():
        raise TypeError(f"{who} needs a floating-point tensor, got {x.dtype}; cast with .float() (or .double())")


def check_input(x: torch.Tensor, shape: tuple[int, ...], who: str) -> None:
    """A floating-point tensor whose trailing dims equal ``shape``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
    check_float(x, who)
    if tuple(x.shape[x.ndim - len(shape):]) != shape or x.ndim < len(shape):
        raise ValueError(
            f"{who} normalizes over the trailing dims {list(shape)}, but the input has shape {list(x.shape)}. "
            f"The last {len(shape)} dim(s) of the input must equal normalized_shape; "
            "for a (batch, seq, d) tensor use normalized_shape=d."
        )


def check_finite(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{what} contains {int(bad.sum())} NaN/Inf value(s) out of {x.numel()}")


def resolve_affine(who: str, elementwise_affine: bool, affine: bool | None, bias: bool | None, bias_default: bool) -> tuple[bool, bool]:
    """(affine, bias) from torch's ``elementwise_affine``, normscope's alias ``affine`` and ``bias``.

    ``bias=None`` means ``bias_default`` when affine, else no bias; an explicit ``bias=True``
    without the affine step is refused (torch's LayerNorm silently drops it).
    """
    if affine is not None and bool(affine) != bool(elementwise_affine):
        if elementwise_affine is not True:  # both given and they disagree
            raise ValueError(f"{who}: affine={affine!r} and elementwise_affine={elementwise_affine!r} disagree; pass only one")
        elementwise_affine = affine
    on = bool(elementwise_affine)
    if bias is None:
        return on, on and bias_default
    if bias and not on:
        raise ValueError(f"{who}: bias=True needs the affine step; pass elementwise_affine=True (affine=True) or bias=False")
    return on, bool(bias)
