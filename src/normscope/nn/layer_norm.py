"""LayerNorm with its three steps as switches."""

from __future__ import annotations

import math

import torch
from torch import nn

from normscope.nn._checks import Shape, as_shape, check_eps, check_input, resolve_affine
from normscope.nn.functional import RADII, NormTrace, decompose, exporting, radius_factor, rms_norm, stats_reliable


class LayerNorm(nn.Module):
    r"""LayerNorm decomposed into projection, scaling and affine steps, each a switch.

    For a vector :math:`x\in\mathbb{R}^N` (Riechers, arXiv:2405.04134, Eq. 6):

    .. math::
        p = \Pi x = x - \mu\mathbb{1},\qquad
        \hat x = r\,\frac{p}{\sqrt{\tfrac1N\lVert p\rVert^2 + \varepsilon}},\qquad
        z = g\odot\hat x + b .

    ``project`` toggles :math:`\Pi` (projection onto the hyperplane :math:`\perp\mathbb 1`);
    ``scale`` toggles the division; ``radius`` sets :math:`r` so that :math:`\lVert\hat x\rVert`
    is :math:`\sqrt N` (``"sqrt_d"``, torch's LayerNorm), 1 (``"unit"``) or :math:`1/\sqrt N`
    (``"inv_sqrt_d"``, the "without projection" variant of Brody et al.'s code, arXiv:2305.02582)
    when ε = 0. With every step on and ``radius="sqrt_d"`` it equals ``torch.nn.LayerNorm``;
    with ``project=False`` it equals ``torch.nn.RMSNorm`` with the same ε.

    **Drop-in.** The signature starts with torch's, ``LayerNorm(normalized_shape, eps=1e-5,
    elementwise_affine=True, bias=True, device=None, dtype=None)``, positionally and by keyword,
    and state dicts load both ways. It is **not** a subclass of ``torch.nn.LayerNorm``: with a
    step switched off it computes a different function, and code that dispatches on
    ``isinstance(m, nn.LayerNorm)`` (hooks, converters) must not mistake it for torch's.

    **Arguments:**

    - ``normalized_shape``: trailing shape to normalize over (an int for vectors).
    - ``eps``: ε ≥ 0, added to the mean square inside the square root (torch's placement).
    - ``elementwise_affine`` (alias ``affine``): the gain ``weight`` (and the bias).
    - ``bias``: the shift ``b``; default: present iff the affine step is. ``bias=True`` without
      the affine step raises (torch silently drops it).
    - ``device``, ``dtype``: of the parameters.
    - ``project``, ``scale``: the projection and scaling steps (keyword only).
    - ``radius``: one of ``"sqrt_d"``, ``"unit"``, ``"inv_sqrt_d"`` (ignored if ``scale=False``).
    - ``eq5``: ε = 0 and a constant input (zero projected part) gives NaN in torch; with
      ``eq5=True`` the pre-affine output is 0 instead (Riechers' Eq. 5), so the output is b.

    Parameters are named ``weight`` and ``bias``, so a ``torch.nn.LayerNorm`` state dict loads
    unchanged. ``forward`` calls a fused kernel whenever one covers the configuration
    (``F.layer_norm``, or the two-pass :func:`normscope.nn.functional.rms_norm` without
    projection; the radius folds into the gain); :meth:`trace` runs the step-by-step path of
    :func:`normscope.nn.functional.decompose` and returns every intermediate. Tests check the
    two agree.
    """

    def __init__(
        self,
        normalized_shape: Shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        project: bool = True,
        scale: bool = True,
        affine: bool | None = None,
        radius: str = "sqrt_d",
        eq5: bool = False,
    ) -> None:
        super().__init__()
        self.normalized_shape = as_shape(normalized_shape)
        check_eps(eps)
        radius_factor(radius, 1)  # validates the name
        affine, bias = resolve_affine(type(self).__name__, elementwise_affine, affine, bias, bias_default=True)
        self.eps = float(eps)
        self.project, self.scale, self.affine = bool(project), bool(scale), affine
        self.radius, self.eq5 = radius, bool(eq5)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(self.normalized_shape, **kw)) if affine else None
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape, **kw)) if bias else None

    @property
    def elementwise_affine(self) -> bool:
        """torch's name for the affine step."""
        return self.affine

    @property
    def dim(self) -> int:
        """N, the number of normalized features."""
        return math.prod(self.normalized_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused path where one covers the configuration; rows whose statistics overflow or
        underflow in the fused kernel (|x| ≳ 1e19 or ≲ 1e-19 in float32) fall back to
        :meth:`trace`'s exactly rescaled path, so forward and trace agree at every scale. Under
        ``torch.export`` that path is the one exported (``functional.exporting``)."""
        check_input(x, self.normalized_shape, type(self).__name__)
        if self.eq5 or not self.scale or exporting():
            return self._decompose(x).output
        # The radius factor r folds into the gain: g ⊙ (r x̂) + b = (r g) ⊙ x̂ + b.
        r = radius_factor(self.radius, self.dim)
        weight = self.weight
        if r != 1.0:
            weight = torch.full(self.normalized_shape, r, dtype=x.dtype, device=x.device) if weight is None else weight * r
        if not self.project:
            return rms_norm(x, self.normalized_shape, weight, self.bias, self.eps)
        out, mean, rstd = torch.native_layer_norm(x, self.normalized_shape, weight, self.bias, self.eps)
        if not stats_reliable(rstd=rstd):  # (Welford's running mean cannot overflow)
            return self._decompose(x).output
        return out

    def trace(self, x: torch.Tensor) -> NormTrace:
        """Run the steps one by one and return ``NormTrace(input, projected, denom, normalized, output)``."""
        check_input(x, self.normalized_shape, type(self).__name__)
        return self._decompose(x)

    def _decompose(self, x: torch.Tensor) -> NormTrace:
        return decompose(
            x,
            self.normalized_shape,
            weight=self.weight,
            bias=self.bias,
            eps=self.eps,
            project=self.project,
            scale=self.scale,
            radius=self.radius,
            eq5=self.eq5,
        )

    def extra_repr(self) -> str:
        steps = [s for s, on in (("project", self.project), ("scale", self.scale), ("affine", self.affine)) if on]
        r = f", radius={self.radius}" if self.scale and self.radius != "sqrt_d" else ""
        b = ", bias=False" if self.affine and self.bias is None else ""
        e = ", eq5=True" if self.eq5 else ""
        return f"{self.normalized_shape}, eps={self.eps:g}, steps={'+'.join(steps) or 'none'}{r}{b}{e}"


__all__ = ["LayerNorm", "RADII"]
