"""Norms fused per row (RMSNorm) and per row and group (LN-G), compiled by numba: x read from
memory once, z written once.

A torch-eager norm is a chain of whole-tensor operations, each a pass over memory (or, blocked as
in ``functional.block_elems``, over cache); torch's ``F.layer_norm`` is one fused C++ loop per row
but cannot take a per-group statistic with a per-neuron affine, and torch 2.13's CPU
``F.rms_norm`` is a chain of operations. These kernels are those loops:

- **LN-G** (Ni et al., arXiv:2406.01255), per group of n neurons, the group in L1 after its first
  loop: μ = Σx/n,  m = Σ(x − μ)²/n + ε,  z = (x − μ)·m^(−1/2)·g + b. Three loops: the sum, the
  centred sum of squares (two-pass, so no Σx² − nμ² cancellation), the output with the affine
  fused. Groups of 2 and 4 neurons get a kernel with n a constant, whose loop over groups
  vectorises (at n ≤ 4 the per-group reductions, square root and division dominate).
- **RMSNorm** (Gupta et al., arXiv:2409.12951), per row of N: m = Σx²/N + ε, z = x·m^(−1/2)·g + b,
  in blocks of rows of ~1 MiB: every row's m first, then the block's outputs (the block read again
  from L2; see :func:`_rms_rows`).

Arithmetic happens in the input's dtype (float32 or float64), like torch's CPU kernels; numba may
reassociate the sums into vector lanes and fuse multiply-adds (its ``fastmath`` flags ``reassoc``
and ``contract`` only, so NaN and Inf propagate as in IEEE arithmetic). The kernels count the rows
or groups whose m over- or underflowed (``functional.stats_reliable``'s rule), and the caller
recomputes the call with the exactly rescaled path when there are any. Rows are shared out over
torch's intra-op threads by ``normscope.nn._parallel`` (on torch's own OpenMP team where it can;
numba's threading layers are not used: its OpenMP layer aborts in a forked child, its work queue
is not thread-safe, and choosing one is a global setting of the user's numba). Each kernel is
compiled once per dtype on first use, and once more as torch's team entry (``_team``); both are
kept in numba's on-disk cache: a later process imports numba and loads them in ~0.5 s.

Where numba is missing or does not import (for instance a numpy newer than it supports),
:func:`available` is False, a warning says so once, and the modules run their torch kernels.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from normscope.nn._parallel import RowKernel, RowTask, run_rows
from normscope.nn.functional import blocks_apply

_FASTMATH = {"reassoc", "contract"}


SMALL_GROUPS = (2, 4)  # group sizes with a kernel of their own (see _lng_rows_n)
RMS_BLOCK_ELEMS = 1 << 18  # RMSNorm's rows per block (see _rms_rows): 1 MiB of float32, in one core's L2


@functools.cache
def _import_numba():
    """The numba module, or None where it does not import (warned once)."""
    try:
        import numba

        return numba
    except Exception as err:  # noqa: BLE001 - missing, or built for another numpy/Python
        warnings.warn(f"numba is unavailable here ({type(err).__name__}: {str(err)[:80]}); "
                      "the norm modules use their torch kernels (pip install numba for the fused ones)")
        return None


OPTIONS = (("boundscheck", False), ("error_model", "numpy"), ("fastmath", frozenset(_FASTMATH)), ("nogil", True))


def with_cache(build):
    """``build(cache=True)``, or ``build(cache=False)`` where numba cannot cache (a read-only
    install has no writable folder for its on-disk cache)."""
    try:
        return build(True)
    except RuntimeError as err:
        if "cannot cache" not in str(err):
            raise
        return build(False)


@functools.cache
def _kernel(dtype: np.dtype, kind: str, n: int = 0) -> RowKernel:
    """The compiled ``kind`` ("lng" or "rms") row kernel for ``dtype`` (LN-G: its own for a group
    size ``n`` in ``SMALL_GROUPS``, the general one for ``n = 0``)."""
    numba = _import_numba()
    if kind == "rms":
        fn = _rms_rows(dtype.type)
    else:
        fn = _lng_rows_n(dtype.type, n) if n in SMALL_GROUPS else _lng_rows(dtype.type)
    kernel = RowKernel(fn, None, OPTIONS)
    return kernel._replace(jitted=with_cache(lambda cache: numba.njit(cache=cache, **kernel.jit_options())(fn)))


# The kernels, written once and specialised per dtype ``ft`` (its constants are then of x's dtype:
# a runtime 1 or n instead let ``reassoc`` move the division by √m into the inner loop, ~1.5× slower).
def _lng_rows(ft):
    def lng_rows(x, out, w, b, n, eps, m_min, lo, hi):  # pragma: no cover - compiled
        groups = x.shape[1] // n
        nf, e, m_lo, m_hi = ft(n), ft(eps), ft(m_min), ft(np.finfo(ft).max)
        bad = 0
        for i in range(lo, hi):
            for k in range(groups):
                xg, og = x[i, k * n:(k + 1) * n], out[i, k * n:(k + 1) * n]  # slices: no index-sign checks
                wg, bg = w[k * n:(k + 1) * n], b[k * n:(k + 1) * n]
                s = ft(0.0)
                for j in range(n):
                    s += xg[j]
                mu = s / nf
                q = ft(0.0)
                for j in range(n):
                    t = xg[j] - mu
                    q += t * t
                m = q / nf + e
                bad += not (m_lo <= m <= m_hi)  # NaN counts: every comparison with it is false
                r = ft(1.0) / np.sqrt(m)
                for j in range(n):
                    og[j] = (xg[j] - mu) * r * wg[j] + bg[j]
        return bad
    return lng_rows


def _lng_rows_n(ft, N):
    """The same arithmetic with the group size a constant N: the loops over j unroll and the loop
    over groups vectorises, sums, square root and division included (per 1 MiB block, 8× faster
    at N = 2 and 5× at N = 4 than the kernel above; slower from N = 8, where that one wins)."""
    def lng_rows(x, out, w, b, n, eps, m_min, lo, hi):  # pragma: no cover - compiled; n == N
        groups = x.shape[1] // N
        nf, e, m_lo, m_hi = ft(N), ft(eps), ft(m_min), ft(np.finfo(ft).max)
        bad = 0
        for i in range(lo, hi):
            xi, oi = x[i], out[i]
            for k in range(groups):
                s = ft(0.0)
                for j in range(N):
                    s += xi[k * N + j]
                mu = s / nf
                q = ft(0.0)
                for j in range(N):
                    t = xi[k * N + j] - mu
                    q += t * t
                m = q / nf + e
                bad += not (m_lo <= m <= m_hi)
                r = ft(1.0) / np.sqrt(m)
                for j in range(N):
                    oi[k * N + j] = (xi[k * N + j] - mu) * r * w[k * N + j] + b[k * N + j]
        return bad
    return lng_rows


def _rms_rows(ft):
    """RMSNorm per row, in blocks of ``RMS_BLOCK_ELEMS``: every row's 1/√m first, then the outputs
    (the block read from L2 again). Row by row measured 1.5–2 ms slower per 64 MB: the page faults
    of the fresh output, one per 4 KiB written, evict the row from L1 between its two loops.
    ``b`` empty for no shift (one load and add per element less)."""
    block_elems = RMS_BLOCK_ELEMS

    def rms_rows(x, out, w, b, n, eps, m_min, lo, hi):  # pragma: no cover - compiled; n is the width
        d = x.shape[1]
        nf, e, m_lo, m_hi = ft(d), ft(eps), ft(m_min), ft(np.finfo(ft).max)
        step = max(1, block_elems // max(d, 1))
        r = np.empty(step, dtype=ft)
        bad = 0
        for a in range(lo, hi, step):
            z = min(a + step, hi)
            for i in range(a, z):
                xi = x[i]
                q = ft(0.0)
                for j in range(d):
                    q += xi[j] * xi[j]
                m = q / nf + e
                bad += not (m_lo <= m <= m_hi)
                r[i - a] = ft(1.0) / np.sqrt(m)
            for i in range(a, z):
                xi, oi, ri = x[i], out[i], r[i - a]
                if b.shape[0]:
                    for j in range(d):
                        oi[j] = xi[j] * ri * w[j] + b[j]
                else:
                    for j in range(d):
                        oi[j] = xi[j] * ri * w[j]
        return bad
    return rms_rows


def available() -> bool:
    """Whether numba imports here (the first call tries, and warns once if not)."""
    return _import_numba() is not None


def _check(name: str, x2: torch.Tensor, n: int, params: dict[str, torch.Tensor | None]) -> None:
    """The rules a kernel relies on (it runs without bounds checks)."""
    if x2.dim() != 2 or not x2.is_contiguous() or n < 1 or x2.shape[1] % n:
        raise ValueError(f"{name} needs a contiguous (rows, C) input with n | C; got shape "
                         f"{tuple(x2.shape)}, n={n} (reshape to (-1, C) and call .contiguous())")
    for pname, p in params.items():
        if p is not None and (p.shape != (x2.shape[1],) or p.dtype != x2.dtype or not p.is_contiguous()):
            raise ValueError(f"{name}: {pname} must be contiguous ({x2.shape[1]},) {x2.dtype}; "
                             f"got {tuple(p.shape)} {p.dtype} (cast or copy it to the input's dtype)")


ALIAS_SPAN = 4096  # a load's and a store's addresses are compared modulo this (4 KiB aliasing)


def _placed(p: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``p``, or a copy of it placed at out's address modulo ``ALIAS_SPAN``, when p's address is
    just below out's modulo 4 KiB: then a load of p[j] looks like a store to out a few hundred
    bytes back, and the CPU waits for that store (4 KiB aliasing; measured with a fresh output,
    RMSNorm 4096 × 4096 float32: 40 vs 34 ms for (p − out) mod 4096 in [2560, 4096), none below
    2048). x itself sits where torch allocates large tensors, like out."""
    if p.size == 0 or (p.ctypes.data - out.ctypes.data) % ALIAS_SPAN < ALIAS_SPAN // 2:
        return p
    buf = np.empty(p.size + ALIAS_SPAN // p.itemsize, dtype=p.dtype)
    k = (out.ctypes.data - buf.ctypes.data) % ALIAS_SPAN // p.itemsize
    placed = buf[k:k + p.size]
    placed[:] = p
    return placed


def _run(kind: str, x2: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, n: int,
         eps: float) -> tuple[torch.Tensor, int]:
    """``kind``'s kernel over the rows of ``x2``: (z, count of unreliable statistics). No bias is
    an empty array for RMSNorm (its kernel skips the add), zeros for LN-G."""
    x2 = x2.detach()
    xn, out = x2.numpy(), torch.empty_like(x2)
    on, d = out.numpy(), x2.shape[1]
    w = weight.detach().numpy() if weight is not None else np.ones(d, dtype=xn.dtype)
    b = bias.detach().numpy() if bias is not None else np.zeros(d if kind == "lng" else 0, dtype=xn.dtype)
    fi = torch.finfo(x2.dtype)
    task = RowTask(xn, on, _placed(w, on), _placed(b, on), n, float(eps), fi.tiny / fi.eps)
    return out, run_rows(_kernel(xn.dtype, kind, n if kind == "lng" and n in SMALL_GROUPS else 0), task)


def group_layer_norm(x2: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, n: int,
                     eps: float) -> tuple[torch.Tensor, int]:
    """LN-G of the rows of ``x2`` in groups of ``n`` neurons, fused.

    **Arguments:** ``x2`` (rows, C) contiguous CPU float32/float64; ``weight``, ``bias`` (C,) of its
    dtype or ``None`` (1 and 0); ``n`` divides C; ``eps`` ≥ 0. Nothing is differentiated.

    **Returns:** ``(z, bad)``: z (rows, C), and the number of groups whose m = mean(p²) + ε is NaN,
    infinite or below tiny/eps of the dtype (``functional.stats_reliable``'s rule: there m's rounding
    is no longer relative), whose outputs the caller must recompute (counted in the kernel: storing
    every group's m cost another half of z's traffic at group size 2).
    """
    _check("group_layer_norm", x2, n, {"weight": weight, "bias": bias})
    return _run("lng", x2, weight, bias, n, eps)


def rms_norm(x2: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
             eps: float) -> tuple[torch.Tensor, int]:
    """RMSNorm of the rows of ``x2``, fused: z = x·(Σx²/C + ε)^(−1/2)·g + b.

    **Arguments:** ``x2`` (rows, C) contiguous CPU float32/float64; ``weight``, ``bias`` (C,) of its
    dtype or ``None`` (1, none); ``eps`` ≥ 0. Nothing is differentiated.

    **Returns:** ``(z, bad)``: z (rows, C), and the number of rows whose mean(x²) + ε is NaN,
    infinite or below tiny/eps of the dtype, whose outputs the caller must recompute.
    """
    _check("rms_norm", x2, 1, {"weight": weight, "bias": bias})
    return _run("rms", x2, weight, bias, x2.shape[1], eps)


def applies(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether a fused kernel may run on ``x``: a plain CPU float32/float64 tensor with parameters
    of its dtype, nothing to differentiate, no tracer, compiler or vmap watching (they would not see
    a kernel outside torch), and numba available."""
    if type(x) is not torch.Tensor or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    return blocks_apply(x, *params) and available()


__all__ = ["available", "applies", "group_layer_norm", "rms_norm"]
