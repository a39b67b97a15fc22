"""Group LayerNorm (LN-G): LayerNorm within contiguous groups of neurons."""

from __future__ import annotations

import torch
from torch import nn

from normscope.nn import _autotune, _numba
from normscope.nn._checks import check_eps, check_input, resolve_affine
from normscope.nn.functional import (
    NormTrace, affine_, block_elems, blocks_apply, decompose, exporting, rows_dynamic, stats_reliable,
)

BACKENDS = ("auto", "eager", "numba", "compile")
_BLOCKED_MAX_GROUP = 256  # wider groups: native_layer_norm on the grouped view (on par at 256, measured)


def _lng_kernel(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int, eps: float):
    """LN-G and its statistics (z, mean(p²)+ε, μ per group): once compiled, one fused pass for the
    statistics and one for the output and affine."""
    xg = x.unflatten(-1, (groups, x.shape[-1] // groups))
    xg = xg.float() if xg.dtype not in (torch.float32, torch.float64) else xg
    mean = xg.mean(-1, keepdim=True)
    p = xg - mean
    ms = p.square().mean(-1, keepdim=True) + eps
    z = (p * torch.rsqrt(ms)).flatten(-2)
    if weight is not None:
        z = z * weight
    if bias is not None:
        z = z + bias
    return z.to(x.dtype), ms, mean


# the torch.compile'd _lng_kernel, or None where no compiler works (see normscope.nn._autotune)
compiled_kernel = _autotune.LazyCompiled(
    _lng_kernel, lambda k: k(torch.ones(2, 4), torch.ones(4), torch.zeros(4), 2, 1e-5), "GroupLayerNorm")


class GroupLayerNorm(nn.Module):
    r"""LN-G of Ni et al. (ICML 2024, "On the Nonlinearity of Layer Normalization", arXiv:2406.01255).

    The C features are split into ``num_groups`` contiguous groups of n = C/g neurons; each group
    is standardised on its own, then a per-neuron affine is applied:

    .. math::
        z_{[k]} = g_{[k]} \odot \frac{x_{[k]} - \mu_k \mathbb 1}{\sqrt{\sigma_k^2 + \varepsilon}} + b_{[k]},
        \qquad k = 1..\text{num\_groups}.

    ``num_groups=1`` is LayerNorm. Smaller groups make the map more nonlinear; at group size 2
    each group's standardised pair is ±(1, −1) (for ε → 0), a sign function.

    Output dtype = input dtype (torch's LayerNorm convention), for ``forward`` and ``trace``
    alike; the affine step runs in float32 (float64 for float64 input) and is rounded once.
    When some group's statistics overflow or underflow in a fused kernel (or are NaN), the call
    is recomputed with the exactly rescaled :meth:`trace` path.

    **Backends** (``benchmarks/bench_nn.py`` measures each against ``F.layer_norm``):

    - ``"numba"`` — one fused loop per row and group (``normscope.nn._numba``): the sum, the centred
      sum of squares and the output with the affine, the group held in L1, so x is read from memory
      once and z written once, as ``F.layer_norm`` does for a whole row. CPU, float32/float64, nothing
      to differentiate, numba installed; otherwise the eager path below runs.
    - ``"eager"`` — torch operations. On CPU, float32/float64, nothing to differentiate and groups of
      ≤ 256 neurons, a blocked kernel: rows are taken in blocks that stay in cache across their passes
      (1 MiB, one core's L2, with one intra-op thread; 4 MiB, the shared L3, with more:
      ``functional.block_elems``), and per block, viewing it as (rows·g, n),

      .. math::
          \mu = (X\mathbb 1)/n,\quad P = X - \mu\mathbb 1^\top,\quad
          m = \lVert P_{i,:}\rVert_2^2/n + \varepsilon,\quad
          Z = g \odot (P \,/\, \sqrt m) + b \;(\text{in place, one } \texttt{addcmul}),

      the two-pass (centred) variance, five passes over the block in cache. Otherwise (autograd, half
      precision, wider groups): one fused ``native_layer_norm`` over the (…, groups, C/g) view plus
      one ``addcmul`` for the affine. Rejected after measuring: ``F.group_norm`` on (rows, C) (≈2×
      ``F.layer_norm``: no vectorised path for one spatial element) and ``F.batch_norm`` views,
      ``native_layer_norm`` per block (per-row overhead on 64-wide rows), ``var_mean`` (Welford,
      not vectorised), a private thread pool for the torch ops (it had to reset torch's global thread
      count).
    - ``"compile"`` — a ``torch.compile``'d kernel that fuses the affine into the normalising pass
      (compiled once per process, ~20 s; eager with a warning where no compiler works).
    - ``"auto"`` — the faster *measured* of ``"eager"`` and ``"numba"`` (where it applies), plus
      ``"compile"`` when ``NORMSCOPE_COMPILE=1`` is set and a compiler works; measured per (device,
      dtype, width, rows, threads, groups) bucket on first sight and cached (``normscope.nn._autotune``).

    Every backend is tested against a float64 per-group oracle within a bound derived from its
    rounding: output rounding plus n·u for the sums, plus n·u·κ for a group far from its mean
    (κ = max|x|/σ; torch's ``layer_norm`` loses the same), in ``tests/test_nn*.py``.

    **Arguments:** ``normalized_shape`` (C, an int), ``num_groups`` (divides C), ``eps`` ≥ 0,
    ``elementwise_affine`` (alias ``affine``: per-neuron ``weight`` and ``bias`` of shape (C,)),
    ``bias`` (default: with the affine step; ``bias=True`` without it raises), ``backend`` (one of
    ``BACKENDS``, default ``"auto"``), ``device``, ``dtype``.
    """

    def __init__(
        self,
        normalized_shape: int,
        num_groups: int,
        eps: float = 1e-5,
        affine: bool | None = None,
        *,
        elementwise_affine: bool = True,
        bias: bool | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        if isinstance(normalized_shape, (tuple, list, torch.Size)):
            if len(normalized_shape) != 1:
                raise ValueError(f"GroupLayerNorm normalizes one feature dim; got normalized_shape={normalized_shape!r}")
            normalized_shape = normalized_shape[0]
        if not isinstance(normalized_shape, int) or normalized_shape < 1:
            raise ValueError(f"normalized_shape must be a positive int, got {normalized_shape!r}")
        if not isinstance(num_groups, int) or num_groups < 1 or normalized_shape % num_groups:
            raise ValueError(f"num_groups must be a positive divisor of {normalized_shape}, got {num_groups!r}")
        check_eps(eps)
        affine, bias = resolve_affine(type(self).__name__, elementwise_affine, affine, bias, bias_default=True)
        self.normalized_shape = (normalized_shape,)
        self.num_groups, self.eps = num_groups, float(eps)
        self.group_size = normalized_shape // num_groups
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(normalized_shape, **kw)) if affine else None
        self.bias = nn.Parameter(torch.zeros(normalized_shape, **kw)) if bias else None

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.normalized_shape, type(self).__name__)
        return x.unflatten(-1, (self.num_groups, self.group_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if exporting():  # no data-dependent branch in an exported graph (functional.exporting)
            return self.trace(x).output
        if torch.compiler.is_compiling():  # traced into the caller's graph (see _forward)
            return self._forward(x, "traced", False)
        backend = self.backend
        fused = backend in ("auto", "numba") and _numba.applies(x, self.weight, self.bias)
        if backend == "auto":  # numba's applicability (grad mode, dtype, ...) is part of the bucket
            key = _autotune.bucket(x, self.normalized_shape[0], self.num_groups, fused)
            backend = _autotune.choose(self, x, key, lambda: self._candidates(x, fused))
        return self._forward(x, backend, fused)

    def _forward(self, x: torch.Tensor, backend: str, fused: bool | None = None) -> torch.Tensor:
        """The forward with ``backend`` (``"auto"``'s measurement calls this: no hooks, no state);
        ``"traced"``: under the caller's ``torch.compile``, the compile kernel's source, fused into
        the caller's graph (the blocked kernel's Python loop over row blocks would be unrolled:
        measured 670 ms against 24 ms eager at 4096 × 4096)."""
        if fused is None:
            fused = _numba.applies(x, self.weight, self.bias)
        if backend == "numba" and fused:
            check_input(x, self.normalized_shape, type(self).__name__)
            z, bad = _numba.group_layer_norm(x.reshape(-1, x.shape[-1]).contiguous(), self.weight, self.bias,
                                             self.group_size, self.eps)
            return z.view(x.shape) if not bad else self.trace(x).output
        kernel = _lng_kernel if backend == "traced" else compiled_kernel() if backend == "compile" else None
        if kernel is not None:
            check_input(x, self.normalized_shape, type(self).__name__)
            w = self.weight.float() if self.weight is not None and x.dtype != torch.float64 else self.weight
            b = self.bias.float() if self.bias is not None and x.dtype != torch.float64 else self.bias
            rows = x.reshape(-1, x.shape[-1]) if backend == "traced" else rows_dynamic(x)
            z, ms, mean = kernel(rows, w, b, self.num_groups, self.eps)
            if not stats_reliable(ms) or not bool(torch.isfinite(mean).all()):
                return self.trace(x).output
            return z.reshape(x.shape)
        if self._blocked_ok(x):
            out = self._blocked(x)
            if out is not None:
                return out
            return self.trace(x).output
        xg = self._grouped(x)
        z, mean, rstd = torch.native_layer_norm(xg, (self.group_size,), None, None, self.eps)
        if not stats_reliable(rstd=rstd):
            return self.trace(x).output
        z = z.flatten(-2)
        if self.weight is None and self.bias is None:
            return z
        return self._affine(z, x.dtype)

    def _candidates(self, x: torch.Tensor, fused: bool | None = None) -> list[str]:
        """The backends ``"auto"`` measures on ``x``: eager; numba where it applies (``fused``, if
        the caller already knows); compile when opted in."""
        if fused is None:
            fused = _numba.applies(x, self.weight, self.bias)
        return compiled_kernel.candidates() + (["numba"] if fused else [])

    def _blocked_ok(self, x: torch.Tensor) -> bool:
        """Whether the blocked kernel applies: CPU, float32/float64, groups ≤ 256
        wide, nothing to differentiate (it writes in place), a weight/bias of the input's dtype."""
        d = self.normalized_shape[0]
        if self.group_size > _BLOCKED_MAX_GROUP or x.dim() < 1 or x.shape[-1] != d:
            return False
        return blocks_apply(x, self.weight, self.bias)

    def _blocked(self, x: torch.Tensor) -> torch.Tensor | None:
        """LN-G in row blocks that stay in cache between the passes (see the class
        docstring). ``None`` when a group's mean(p²) + ε is non-finite or below tiny/ε, for the
        caller to recompute with the rescaled :meth:`trace` path."""
        d = self.normalized_shape[0]
        x2 = x.reshape(-1, d)
        out = torch.empty_like(x2, memory_format=torch.contiguous_format)
        ms_all = x2.new_empty(x2.shape[0] * self.num_groups)
        step = max(1, block_elems() // d)
        with torch.no_grad():
            self._blocked_rows(x2, out, ms_all, step)
        if not stats_reliable(ms_all):
            return None
        return out.view(x.shape)

    def _blocked_rows(self, x2: torch.Tensor, out: torch.Tensor, ms_all: torch.Tensor, step: int) -> None:
        """The blocked kernel, rows i..i+step at a time, into ``out`` (mean(p²) + ε into ``ms_all``)."""
        n, g, w, b = self.group_size, self.num_groups, self.weight, self.bias
        eps = x2.new_full((), self.eps)
        rows = x2.shape[0]
        sums = x2.new_empty(step * g)
        for i in range(0, rows, step):
            j = min(i + step, rows)
            xs = x2[i:j].reshape(-1, n)
            o = out[i:j]
            p = o.view(-1, n)
            mean = torch.sum(xs, -1, out=sums[: (j - i) * g]).div_(n)  # Σ x / n per group
            torch.sub(xs, mean.unsqueeze(-1), out=p)  # p = x − μ (centred: no cancellation below)
            ms = torch.linalg.vector_norm(p, 2, -1, out=ms_all[i * g : j * g])  # ‖p‖₂: one read, no p² buffer
            torch.addcmul(eps, ms, ms, value=1.0 / n, out=ms)  # ms := ‖p‖²/n + ε, kept for the check
            p.mul_(ms.rsqrt().unsqueeze(-1))
            affine_(o, w, b)

    def _affine(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """g ⊙ z + b, computed in float32/float64 and rounded once to ``dtype``."""
        cdt = torch.float64 if dtype == torch.float64 else torch.float32
        zc = z.to(cdt)
        w = self.weight.to(cdt) if self.weight is not None else None
        b = self.bias.to(cdt) if self.bias is not None else None
        tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (zc, w, b))
        if w is None:
            out = zc + b
        elif b is None:
            out = zc * w
        elif tracked:
            out = torch.addcmul(b, zc, w)
        else:
            out = torch.addcmul(b, zc, w, out=zc)  # zc is a fresh tensor of ours: in place
        return out.to(dtype)

    def trace(self, x: torch.Tensor) -> NormTrace:
        """Step-by-step run; ``projected``/``normalized`` have the input's shape, ``denom`` is (..., num_groups)."""
        t = decompose(self._grouped(x), (self.group_size,), eps=self.eps)
        xhat = t.normalized.flatten(-2)
        out = xhat if self.weight is None and self.bias is None else self._affine(xhat, x.dtype)
        return NormTrace(x, t.projected.flatten(-2), t.denom.squeeze(-1), xhat, out)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, num_groups={self.num_groups}, eps={self.eps:g}, affine={self.weight is not None}, bias={self.bias is not None}"
