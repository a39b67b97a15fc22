"""Fast RMSNorm, numerically the same as ``torch.nn.RMSNorm``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from normscope.nn import _autotune, _numba
from normscope.nn._checks import Shape, as_shape, check_eps, check_input, resolve_affine
from normscope.nn.functional import (
    NormTrace, _affine, decompose, exporting, rms_norm, rows_dynamic, safe_normalize, stats_reliable,
)

BACKENDS = ("auto", "eager", "numba", "compile", "torch")


def _kernel(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
    """(x, g, b) ↦ (g ⊙ x/√(mean(x²)+ε) + b, [min, max] of mean(x²)+ε over the rows): one fused
    pass once compiled. Only the two extremes leave the kernel (for :func:`stats_reliable`):
    storing the per-row mean squares as a second output measured ~7% slower than
    ``F.rms_norm`` compiled alone."""
    xf = x.float() if x.dtype not in (torch.float32, torch.float64) else x
    ms = xf.square().mean(-1, keepdim=True) + eps
    z = xf * torch.rsqrt(ms)
    if weight is not None:
        z = z * weight
    if bias is not None:
        z = z + bias
    lo, hi = torch.aminmax(ms)
    return z.to(x.dtype), torch.stack([lo, hi])


# the torch.compile'd _kernel, or None where no compiler works (see normscope.nn._autotune)
compiled_kernel = _autotune.LazyCompiled(_kernel, lambda k: k(torch.ones(2, 4), torch.ones(4), None, 1e-5), "RMSNorm")
_auto_candidates = compiled_kernel.candidates


class RMSNorm(nn.Module):
    r"""RMSNorm, :math:`z = g \odot x / \sqrt{\tfrac1N\lVert x\rVert^2 + \varepsilon} + b`.

    The same function as ``torch.nn.RMSNorm`` (``eps=None`` means the input dtype's machine
    epsilon) plus an optional bias, which exact LayerNorm→RMSNorm conversion needs. It is
    LayerNorm without the projection step (Gupta et al., arXiv:2409.12951). The signature starts
    with torch's, ``RMSNorm(normalized_shape, eps=None, elementwise_affine=True, device=None,
    dtype=None)``; state dicts load both ways (without a bias). Not a subclass of
    ``torch.nn.RMSNorm`` (it has a bias option and several kernels).

    **Backends** (all agree with ``torch.nn.RMSNorm`` to the rounding of the output dtype, see
    ``tests/test_nn.py``):

    - ``"eager"``: two passes (one ``vector_norm``, one scale, in-place affine); on CPU near
      copy speed, where torch 2.13's ``F.rms_norm`` is about 3× slower than ``F.layer_norm``.
    - ``"numba"``: fused (``normscope.nn._numba``): per ~1 MiB block of rows, every row's sum of
      squares, then the outputs with the affine (x read from memory once, z written once), on
      torch's own OpenMP threads. CPU, float32/float64, a 1-D shape, nothing to differentiate,
      numba installed; otherwise eager.
    - ``"compile"``: a ``torch.compile``'d kernel (static width, dynamic rows: compiled once per
      width and dtype, ~20 s), falling back to eager with a warning where no compiler works.
    - ``"torch"``: ``F.rms_norm`` verbatim (fused on CUDA), including torch's overflow for
      |x| ≳ 1e19 in float32; the other backends recompute such rows exactly.
    - ``"auto"`` (default): the fastest *measured* candidate per (device type, dtype, width,
      rows, threads) bucket, decided on first sight and cached for the process
      (``normscope.nn._autotune``). Candidates: ``"eager"``, ``"numba"`` where it applies, and ``"compile"`` when
      ``NORMSCOPE_COMPILE=1`` is set and a compiler works (a library must not start a 20-s
      compile, or need a C++ toolchain, unasked).

    **Arguments:** ``normalized_shape``; ``eps`` (ε ≥ 0 or ``None``); ``elementwise_affine``
    (alias ``affine``: the gain ``weight``); ``device``, ``dtype``; keyword-only ``bias`` (a
    shift ``b``; needs the affine step) and ``backend``.
    """

    def __init__(
        self,
        normalized_shape: Shape,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        affine: bool | None = None,
        bias: bool | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.normalized_shape = as_shape(normalized_shape)
        check_eps(eps)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        affine, bias = resolve_affine(type(self).__name__, elementwise_affine, affine, bias, bias_default=False)
        self.eps, self.backend = eps, backend
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(self.normalized_shape, **kw)) if affine else None
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape, **kw)) if bias else None

    @property
    def elementwise_affine(self) -> bool:
        return self.weight is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.normalized_shape, type(self).__name__)
        if exporting() and self.backend != "torch":  # no data-dependent branch in an exported graph
            return self.trace(x).output
        if torch.compiler.is_compiling() and self.backend != "torch":  # traced into the caller's graph
            return self._forward(x, "traced", False)
        fused = self.backend in ("auto", "numba") and self._fusable(x)
        return self._forward(x, self.backend if self.backend != "auto" else self._auto(x, fused), fused)

    def _fusable(self, x: torch.Tensor) -> bool:
        return len(self.normalized_shape) == 1 and _numba.applies(x, self.weight, self.bias)

    def _forward(self, x: torch.Tensor, backend: str, fused: bool | None = None) -> torch.Tensor:
        """The forward with ``backend`` (``"auto"``'s measurement calls this: no hooks, no state);
        ``"traced"``: under the caller's ``torch.compile``, the compile kernel's source, fused into
        the caller's graph (the eager kernels' row-block loops would be unrolled by the compiler)."""
        fused = self._fusable(x) if fused is None else fused
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        if backend == "numba" and fused and x.numel():
            z, bad = _numba.rms_norm(x.reshape(-1, x.shape[-1]).contiguous(), self.weight, self.bias, eps)
            return z.view(x.shape) if not bad else self._exact(x, eps)
        kernel = None
        if backend in ("compile", "traced") and len(self.normalized_shape) == 1 and x.numel():
            kernel = _kernel if backend == "traced" else compiled_kernel()
        if kernel is not None:
            cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
            w = self.weight.to(cdt) if self.weight is not None else None
            b = self.bias.to(cdt) if self.bias is not None else None
            rows = x.reshape(-1, x.shape[-1]) if backend == "traced" else rows_dynamic(x)
            z, extremes = kernel(rows, w, b, eps)
            return z.reshape(x.shape) if stats_reliable(extremes) else self._exact(x, eps)
        if backend == "torch":
            z = F.rms_norm(x, self.normalized_shape, self.weight, self.eps)
            return z + self.bias if self.bias is not None else z
        return rms_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def _exact(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The exactly rescaled path, for calls whose fused statistics over- or underflowed."""
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        _, xhat, _ = safe_normalize(x.to(cdt), (-1,), eps, project=False)
        return _affine(xhat, self.weight, self.bias, x.dtype)

    def _auto(self, x: torch.Tensor, fused: bool) -> str:
        """The measured backend for ``x``'s bucket; whether numba applies (grad mode, dtype, ...) is
        part of the bucket, so a call it cannot take does not decide for those it can."""
        one_dim = len(self.normalized_shape) == 1
        candidates = lambda: (_auto_candidates() if one_dim else ["eager"]) + (["numba"] if fused else [])  # noqa: E731
        return _autotune.choose(self, x, _autotune.bucket(x, self.dim, fused), candidates)

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


def auto_choices() -> dict[tuple, str]:
    """The backends ``RMSNorm(backend="auto")`` chose so far, by (device, dtype, log2 width, log4 rows, threads)."""
    return _autotune.choices(RMSNorm)
