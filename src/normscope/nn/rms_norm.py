"""Fast RMSNorm, numerically the same as ``torch.nn.RMSNorm``."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from normscope.nn._checks import Shape, as_shape, check_eps, check_input
from normscope.nn.functional import NormTrace, decompose, rms_norm

BACKENDS = ("auto", "eager", "compile", "torch")
_compiled = None


def _compiled_kernel():
    """torch.compile'd RMSNorm, built once; None when no compiler works here."""
    global _compiled
    if _compiled is None:
        def kernel(x, weight, bias, eps: float):
            xf = x.float() if x.dtype not in (torch.float32, torch.float64) else x
            z = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
            if weight is not None:
                z = z * weight
            if bias is not None:
                z = z + bias
            return z.to(x.dtype)

        try:
            _compiled = torch.compile(kernel, dynamic=False)
            _compiled(torch.ones(2, 4), torch.ones(4), None, 1e-5)
        except Exception as err:  # no C++ compiler, unsupported platform, ...
            warnings.warn(f"torch.compile is unavailable here ({type(err).__name__}); RMSNorm uses the eager kernel")
            _compiled = False
    return _compiled or None


class RMSNorm(nn.Module):
    r"""RMSNorm, :math:`z = g \odot x / \sqrt{\tfrac1N\lVert x\rVert^2 + \varepsilon} + b`.

    The same function as ``torch.nn.RMSNorm`` (``eps=None`` means the input dtype's machine
    epsilon) plus an optional bias, which exact LayerNorm→RMSNorm conversion needs. It is
    LayerNorm without the projection step (Gupta et al., arXiv:2409.12951).

    **Arguments:**

    - ``normalized_shape``, ``eps``, ``affine`` (the gain ``weight``), ``bias``.
    - ``backend``: ``"eager"`` — a two-pass kernel (one ``vector_norm``, one scale) that on
      CPU runs near copy speed, where torch 2.13's ``F.rms_norm`` is about 3× slower than
      ``F.layer_norm``; ``"torch"`` — ``F.rms_norm`` (fused on CUDA); ``"compile"`` — a
      ``torch.compile``'d kernel, falling back to eager with a warning where no compiler
      works; ``"auto"`` — ``"torch"`` on CUDA, ``"eager"`` elsewhere.
      ``benchmarks/bench_nn.py`` measures all of them.
    """

    def __init__(
        self,
        normalized_shape: Shape,
        eps: float | None = None,
        *,
        affine: bool = True,
        bias: bool = False,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = as_shape(normalized_shape)
        check_eps(eps)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if bias and not affine:
            raise ValueError("bias=True needs affine=True")
        self.eps, self.backend = eps, backend
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(self.normalized_shape, **kw)) if affine else None
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape, **kw)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.normalized_shape, type(self).__name__)
        backend = self.backend
        if backend == "auto":
            backend = "torch" if x.is_cuda else "eager"
        if backend == "compile" and len(self.normalized_shape) == 1:
            kernel = _compiled_kernel()
            if kernel is not None:
                eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
                return kernel(x, self.weight, self.bias, eps)
        if backend == "torch":
            z = F.rms_norm(x, self.normalized_shape, self.weight, self.eps)
            return z + self.bias if self.bias is not None else z
        return rms_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def trace(self, x: torch.Tensor) -> NormTrace:
        """Step-by-step run: ``NormTrace(input, projected=x, denom, normalized, output)``."""
        check_input(x, self.normalized_shape, type(self).__name__)
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return decompose(x, self.normalized_shape, weight=self.weight, bias=self.bias, eps=eps, project=False)

    @property
    def dim(self) -> int:
        return math.prod(self.normalized_shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, affine={self.weight is not None}, bias={self.bias is not None}, backend={self.backend}"
