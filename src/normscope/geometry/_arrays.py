"""Array plumbing of :class:`normscope.geometry.LayerNormGeometry`: checked float64 vectors and
batches from numpy or torch input, the data's dtype and unit roundoffs, and results handed back
in the caller's type."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from normscope.nn._checks import check_finite

ArrayLike = Any  # numpy array, torch tensor or nested sequence


def _as_vector(x: ArrayLike, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    v = np.array(x, dtype=np.float64).reshape(-1) if np.ndim(x) > 1 else np.array(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{what} must be a vector, got shape {v.shape}")
    bad = ~np.isfinite(v)
    if bad.any():
        raise ValueError(f"{what} contains {int(bad.sum())} NaN/Inf value(s) out of {v.size}")
    return v


def _as_batch(x: ArrayLike, n: int, what: str) -> tuple[torch.Tensor, bool, torch.dtype]:
    """(float64 tensor (..., N), input was torch, original torch dtype)."""
    is_torch = isinstance(x, torch.Tensor)
    t = x.detach() if is_torch else torch.as_tensor(np.asarray(x, dtype=np.float64))
    dtype = t.dtype if is_torch and t.is_floating_point() else torch.float64
    if t.ndim == 0 or t.shape[-1] != n:
        raise ValueError(f"{what} must have last dimension N = {n}, got shape {list(t.shape)}")
    t = t.to("cpu", torch.float64)
    check_finite(t, what)
    return t, is_torch, dtype


def _data_dtype(x: ArrayLike, torch_dtype: torch.dtype) -> torch.dtype:
    """The floating dtype the data came in (numpy float16/32 too; everything else float64)."""
    if isinstance(x, torch.Tensor):
        return torch_dtype
    kind = getattr(x, "dtype", None)
    return {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}.get(kind, torch.float64)


def _roundoffs(dtype: torch.dtype) -> tuple[float, float]:
    """(u of the data's dtype, u of the precision LayerNorm computes in for it: float32 for half types)."""
    u = float(torch.finfo(dtype).eps) / 2
    op = torch.float64 if dtype == torch.float64 else torch.float32
    return u, float(torch.finfo(op).eps) / 2


def _back(t: torch.Tensor, is_torch: bool, dtype: torch.dtype, like: ArrayLike | None = None):
    if is_torch:
        out = t.to(dtype)
        return out.to(like.device) if isinstance(like, torch.Tensor) else out
    return t.numpy()
