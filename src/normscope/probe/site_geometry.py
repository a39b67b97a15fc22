"""Parameter geometry of one norm site for ``stats.json`` (Riechers, arXiv:2405.04134; ``docs/geometry.md``).

:func:`layer_geometry` never raises on a layer's weights: a layer whose geometry cannot be
computed (all-zero gain, NaN/Inf gain or bias, a solver failure) gets
``{"status": "not measured", "reason": "<layer name>: <what is wrong>"}`` so the report is
written anyway, with the reason on record.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..geometry import LayerNormGeometry
from ..models.registry import NormSite
from .schema import not_measured

__all__ = ["layer_geometry"]



def layer_geometry(site: NormSite) -> dict[str, Any]:
    r"""Parameter geometry of a norm layer: the ellipsoid its outputs lie on, for ε = 0.

    LayerNorm (Riechers, arXiv:2405.04134, Eq. 6): outputs lie in the hyperplane αᵀz = αᵀb,
    αₙ = 1/gₙ, on the (d−1)-dimensional ellipsoid whose semi-axes are √(dζ) for the eigenvalues
    ζ > 0 of M = GΠG = diag(g²) − ggᵀ/d (:class:`normscope.geometry.LayerNormGeometry`, secular
    solver); ``offset`` = αᵀb and ``offset_normalized`` = α̂ᵀb (the plane's distance from the
    origin; null with a zero gain). RMSNorm: the d-dimensional ellipsoid with semi-axes √d·|gᵢ|,
    no hyperplane. ε > 0 shrinks the radius by ρ = (1 + ε/σ²)^(−1/2).

    **Arguments:**

    - ``site``: a :class:`normscope.models.NormSite` (its gain, bias, ε and kind are read).

    **Returns:** ``{"d", "eps", "gain": {"mean", "std", "min", "max", "min_abs"}, "bias_norm",
    "semi_axis_max", "semi_axis_min", "semi_axis_ratio", "ellipsoid_dim", "offset",
    "offset_normalized"}``, or ``{"status": "not measured", "reason"}`` where the weights allow no
    geometry (the reason names ``site.name`` and the fix).
    """
    g = site.gain().detach().to("cpu", torch.float64)
    b = site.bias()
    b = None if b is None else b.detach().to("cpu", torch.float64)
    bad = _unusable(site.name, g, b)
    if bad:
        return not_measured(bad)
    d = g.numel()
    out: dict[str, Any] = {
        "d": d, "eps": site.eps,
        "gain": {"mean": float(g.mean()), "std": float(g.std(correction=0)), "min": float(g.min()),
                 "max": float(g.max()), "min_abs": float(g.abs().min())},
        "bias_norm": None if b is None else float(b.norm()),
        "offset": None, "offset_normalized": None,
    }
    if site.kind == "layernorm":
        try:
            geo = LayerNormGeometry(g.numpy(), None if b is None else b.numpy(), eps=0.0)
            axes = _ln_axes(geo)
        except (ValueError, RuntimeError, np.linalg.LinAlgError) as err:
            return not_measured(f"{site.name}: {err}")
        if b is not None and geo.zero_gains.size == 0:
            out["offset"] = geo.offset
            out["offset_normalized"] = geo.plane_distance
    else:  # RMSNorm: the axes are √d·|gᵢ|; a zero gain removes its axis
        a = np.abs(g.numpy())
        axes = np.sort(math.sqrt(d) * a[a > 0])[::-1]
    out["ellipsoid_dim"] = int(axes.size)  # LN: d − 1, or d − k₀ with k₀ ≥ 1 zero gains; RMS: d − k₀
    out["semi_axis_max"] = float(axes[0])
    out["semi_axis_min"] = float(axes[-1])
    out["semi_axis_ratio"] = float(axes[0] / axes[-1]) if float(axes[-1]) > 0 else math.inf
    return out


def _unusable(name: str, g: torch.Tensor, b: torch.Tensor | None) -> str | None:
    """One-line reason why no geometry can be measured from these weights, or None."""
    for what, t in (("gain", g), ("bias", b)):
        if t is not None and not bool(torch.isfinite(t).all()):
            k = int((~torch.isfinite(t)).sum())
            return (f"{name}: {what} has {k} NaN/Inf value(s) out of {t.numel()}; the layer's weights are "
                    "corrupt (check the checkpoint or the conversion that wrote it)")
    if g.numel() < 2:
        return f"{name}: width d = {g.numel()}; a norm layer's geometry needs d >= 2"
    if not bool(g.any()):
        return (f"{name}: gain is all zero, so the layer outputs its bias for every input (a point, no "
                "ellipsoid); check that the layer's weights were loaded")
    return None


def _ln_axes(geo: LayerNormGeometry) -> np.ndarray:
    """Nonzero semi-axes of the LayerNorm output ellipsoid, longest first (d − 1 without zero gains)."""
    return np.asarray(geo.axes(), dtype=np.float64)
