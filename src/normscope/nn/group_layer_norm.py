"""Group LayerNorm (LN-G): LayerNorm within contiguous groups of neurons."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normscope.nn._checks import check_eps, check_input
from normscope.nn.functional import NormTrace, decompose


class GroupLayerNorm(nn.Module):
    r"""LN-G of Ni et al. (ICML 2024, "On the Nonlinearity of Layer Normalization").

    The C features are split into ``num_groups`` contiguous groups of n = C/g neurons; each group
    is standardised on its own, then a per-neuron affine is applied:

    .. math::
        z_{[k]} = g_{[k]} \odot \frac{x_{[k]} - \mu_k \mathbb 1}{\sqrt{\sigma_k^2 + \varepsilon}} + b_{[k]},
        \qquad k = 1..\text{num\_groups}.

    ``num_groups=1`` is LayerNorm. Smaller groups make the map more nonlinear; at group size 2
    each group's standardised pair is ±(1, −1) (for ε → 0), a sign function.

    **Arguments:** ``normalized_shape`` (C, an int), ``num_groups`` (divides C), ``eps`` ≥ 0,
    ``affine`` (per-neuron ``weight`` and ``bias`` of shape (C,)).
    """

    def __init__(
        self,
        normalized_shape: int,
        num_groups: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, (tuple, list, torch.Size)):
            if len(normalized_shape) != 1:
                raise ValueError(f"GroupLayerNorm normalizes one feature dim; got normalized_shape={normalized_shape!r}")
            normalized_shape = normalized_shape[0]
        if not isinstance(normalized_shape, int) or normalized_shape < 1:
            raise ValueError(f"normalized_shape must be a positive int, got {normalized_shape!r}")
        if not isinstance(num_groups, int) or num_groups < 1 or normalized_shape % num_groups:
            raise ValueError(f"num_groups must be a positive divisor of {normalized_shape}, got {num_groups!r}")
        check_eps(eps)
        self.normalized_shape = (normalized_shape,)
        self.num_groups, self.eps = num_groups, float(eps)
        self.group_size = normalized_shape // num_groups
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(normalized_shape, **kw)) if affine else None
        self.bias = nn.Parameter(torch.zeros(normalized_shape, **kw)) if affine else None

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.normalized_shape, type(self).__name__)
        return x.unflatten(-1, (self.num_groups, self.group_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.layer_norm(self._grouped(x), (self.group_size,), None, None, self.eps).flatten(-2)
        if self.weight is None:
            return z
        if torch.is_grad_enabled() and (z.requires_grad or self.weight.requires_grad or self.bias.requires_grad):
            return torch.addcmul(self.bias, z, self.weight)
        return torch.addcmul(self.bias, z, self.weight, out=z)  # in place: no second output buffer

    def trace(self, x: torch.Tensor) -> NormTrace:
        """Step-by-step run; ``projected``/``normalized`` have the input's shape, ``denom`` is (..., num_groups)."""
        t = decompose(self._grouped(x), (self.group_size,), eps=self.eps)
        xhat = t.normalized.flatten(-2)
        out = xhat if self.weight is None else torch.addcmul(self.bias.to(xhat.dtype), xhat, self.weight.to(xhat.dtype))
        return NormTrace(x, t.projected.flatten(-2), t.denom.squeeze(-1), xhat, out)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, num_groups={self.num_groups}, eps={self.eps:g}, affine={self.weight is not None}"
