"""Argument checks shared by the norm modules."""

from __future__ import annotations

import math
from typing import Sequence

import torch

Shape = int | Sequence[int] | torch.Size


def as_shape(normalized_shape: Shape) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or any((not isinstance(n, int)) or n < 1 for n in shape):
        raise ValueError(f"normalized_shape must be a positive int or a tuple of positive ints, got {normalized_shape!r}")
    return shape


def check_eps(eps: float | None) -> None:
    if eps is None:
        return
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def check_input(x: torch.Tensor, shape: tuple[int, ...], who: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
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
