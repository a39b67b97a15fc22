"""Fast RMSNorm, numerically the same as ``torch.nn.RMSNorm``."""

from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from normscope.nn._autotune import bucket, measure
from normscope.nn._checks import Shape, as_shape, check_eps, check_input, resolve_affine
from normscope.nn.functional import NormTrace, _affine, decompose, rms_norm, rows_dynamic, safe_normalize, stats_reliable

BACKENDS = ("auto", "eager", "compile", "torch")
_compiled = None
_choice: dict[tuple, str] = {}  # (device type, dtype, log2 width, log4 rows, threads) -> fastest measured


def _kernel(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
    xf = x.float() if x.dtype not in (torch.float32, torch.float64) else x
    ms = xf.square().mean(-1, keepdim=True) + eps
    z = xf * torch.rsqrt(ms)
    if weight is not None:
        z = z * weight
    if bias is not None:
        z = z + bias
    return z.to(x.dtype), ms


def compiled_kernel():
    """torch.compile'd (x, g, b) ↦ (g ⊙ x/√(mean(x²)+ε) + b, mean(x²)+ε), one fused pass per
    reduction; ``None`` when no compiler works here (a warning says so once)."""
    global _compiled
    if _compiled is None:
        try:
            _compiled = torch.compile(_kernel, dynamic=False)  # rows marked dynamic per call
            _compiled(torch.ones(2, 4), torch.ones(4), None, 1e-5)
        except Exception as err:  # no C++ compiler, unsupported platform, ...
            warnings.warn(f"torch.compile is unavailable here ({type(err).__name__}); RMSNorm uses the eager kernel")
            _compiled = False
    return _compiled or None


def _auto_candidates() -> list[str]:
    return ["eager", "compile"] if os.environ.get("NORMSCOPE_COMPILE") == "1" and compiled_kernel() else ["eager"]


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
    - ``"compile"``: a ``torch.compile``'d kernel (static width, dynamic rows: compiled once per
      width and dtype, ~20 s), falling back to eager with a warning where no compiler works.
    - ``"torch"``: ``F.rms_norm`` verbatim (fused on CUDA), including torch's overflow for
      |x| ≳ 1e19 in float32; the other backends recompute such rows exactly.
    - ``"auto"`` (default): the fastest *measured* of the candidate backends, per (device type,
      dtype, width rounded to a power of 2, rows rounded to a power of 4, torch threads), decided the first time
      such a shape is seen by a micro-benchmark (3 interleaved calls each on the real input,
      a few ms) and cached for the process. Candidates: ``"eager"``, plus ``"compile"`` when
      ``NORMSCOPE_COMPILE=1`` is set and a compiler works. Why not always compile: the first
      compile costs ~20 s and needs a C++ toolchain, which a library must not impose on import
      or in a test run; why measure rather than a fixed table: the winner depends on device,
      dtype, width, rows and thread count (``benchmarks/bench_nn.py`` measures them), and a
      table written on one machine goes stale on the next.

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
        backend = self.backend if self.backend != "auto" else self._auto(x)
        if backend == "compile" and len(self.normalized_shape) == 1:
            kernel = compiled_kernel()
            if kernel is not None:
                eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
                cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
                w = self.weight.to(cdt) if self.weight is not None else None
                b = self.bias.to(cdt) if self.bias is not None else None
                z, ms = kernel(rows_dynamic(x), w, b, eps)
                if not stats_reliable(ms):
                    _, xhat, _ = safe_normalize(x.to(cdt), (-1,), eps, project=False)
                    return _affine(xhat, self.weight, self.bias, x.dtype)
                return z.reshape(x.shape)
        if backend == "torch":
            z = F.rms_norm(x, self.normalized_shape, self.weight, self.eps)
            return z + self.bias if self.bias is not None else z
        return rms_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def _auto(self, x: torch.Tensor) -> str:
        key = bucket(x, self.dim)
        if key not in _choice:
            cands = _auto_candidates() if len(self.normalized_shape) == 1 else ["eager"]
            _choice[key] = cands[0] if len(cands) == 1 else measure(self, x, cands)
        return _choice[key]

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
    return dict(_choice)
