"""LN-G fused per row and group, compiled by numba: x read from memory once, z written once.

A torch-eager LN-G is a chain of whole-tensor operations, each a pass over memory (or, blocked as
in ``functional.block_elems``, over cache); torch's ``F.layer_norm`` is one fused C++ loop per row
but cannot take a per-group statistic with a per-neuron affine. This kernel is that loop. Per row
of x and group of n neurons (Ni et al., arXiv:2406.01255), the group in L1 after the first loop:

    μ = Σx/n,   m = Σ(x − μ)²/n + ε,   z = (x − μ)·m^(−1/2)·g + b

three loops: the sum, the centred sum of squares (two-pass, so no Σx² − nμ² cancellation), the
output with the affine fused. Groups of 2 and 4 neurons get a kernel with n a constant, whose loop
over groups vectorises (at n ≤ 4 the per-group reductions, square root and division dominate). Arithmetic happens in the input's dtype (float32 or float64), like
torch's CPU kernels; numba may reassociate the sums into vector lanes and fuse multiply-adds (its
``fastmath`` flags ``reassoc`` and ``contract`` only, so NaN and Inf propagate as in IEEE
arithmetic). The kernel counts the groups whose m over- or underflowed (``functional.stats_reliable``'s
rule), and the caller recomputes the call with the exactly rescaled path when there are any.

**Threads.** Rows are shared out over ``torch.get_num_threads()`` threads, the caller's and a
small per-process pool (the kernel releases the GIL); each row's arithmetic is the same whichever
thread runs it, so the split never changes a bit. numba's own threading layer is not used: its
OpenMP layer aborts in a forked child, its work queue is not thread-safe, and choosing one is a
global setting of the user's numba. A norm's time is mostly the page faults of its fresh output
(a pre-faulted copy of 64 MB takes 4.5 ms with 2 threads, a fresh one 21 ms), so each thread
writes one contiguous region, as torch's OpenMP loops do, and steals chunks at the end. Right
after a torch operation (as in a model) torch's OpenMP workers keep spinning for a few ms on the
cores our helper thread needs; with several threads this kernel is then about as fast as the
eager one (``benchmarks/bench_nn.py`` measures both cases; ``"auto"`` picks by measurement).
Compiled once per dtype on first use (~1 s, then kept in numba's on-disk cache).

Where numba is missing or does not import (for instance a numpy newer than it supports),
:func:`available` is False, a warning says so once, and GroupLayerNorm runs its torch kernel.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from normscope.nn.functional import blocks_apply

MIN_ELEMS_PER_THREAD = 1 << 15  # below: one thread (a hand-off costs ~10-50 µs, a 32k-element row block ~10 µs)
CHUNK_ELEMS = 1 << 18  # rows a thread takes at a time (~1 MiB of float32; a kernel call costs a few µs)

_FASTMATH = {"reassoc", "contract"}


SMALL_GROUPS = (2, 4)  # group sizes with a kernel of their own (see _lng_rows_n)


@functools.cache
def _import_numba():
    """The numba module, or None where it does not import (warned once)."""
    try:
        import numba

        return numba
    except Exception as err:  # noqa: BLE001 - missing, or built for another numpy/Python
        warnings.warn(f"numba is unavailable here ({type(err).__name__}: {str(err)[:80]}); "
                      "GroupLayerNorm uses its torch kernel (pip install numba for the fused one)")
        return None


@functools.cache
def _kernel(dtype: np.dtype, n: int):
    """The compiled kernel for ``dtype`` and group size ``n`` (its own for n in ``SMALL_GROUPS``)."""
    numba = _import_numba()
    fn = _lng_rows_n(dtype.type, n) if n in SMALL_GROUPS else _lng_rows(dtype.type)
    opts = {"nogil": True, "fastmath": _FASTMATH, "boundscheck": False, "error_model": "numpy"}
    try:  # numba's on-disk cache needs a writable folder (read-only installs have none)
        return numba.njit(cache=True, **opts)(fn)
    except RuntimeError:
        return numba.njit(**opts)(fn)


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


def available() -> bool:
    """Whether numba imports here (the first call tries, and warns once if not)."""
    return _import_numba() is not None


_POOL: dict[str, object] = {"size": 0, "pool": None}
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads and lock state did not come along."""
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    _POOL.update(size=0, pool=None)


os.register_at_fork(after_in_child=_forget_pool)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The per-process pool of ``workers`` helper threads (rebuilt for a new thread count)."""
    with _POOL_LOCK:
        if _POOL["size"] != workers:
            if _POOL["pool"] is not None:
                _POOL["pool"].shutdown(wait=False)
            _POOL.update(size=workers, pool=ThreadPoolExecutor(workers, thread_name_prefix="normscope"))
        return _POOL["pool"]


class _Chunks:
    """Rows [0, rows) in ``parts`` contiguous regions, one per thread, handed out in chunks of
    ``step`` rows: a thread takes its own region front to back, then takes chunks from the back of
    the region with the most rows left."""

    def __init__(self, rows: int, parts: int, step: int) -> None:
        cuts = [rows * t // parts for t in range(parts + 1)]
        self.lo, self.hi, self.step = cuts[:-1], cuts[1:], step
        self.lock = threading.Lock()

    def claim(self, t: int) -> tuple[int, int] | None:
        with self.lock:
            if self.lo[t] < self.hi[t]:
                a = self.lo[t]
                self.lo[t] = min(a + self.step, self.hi[t])
                return a, self.lo[t]
            v = max(range(len(self.lo)), key=lambda u: self.hi[u] - self.lo[u])
            if self.lo[v] >= self.hi[v]:
                return None
            b = self.hi[v]
            self.hi[v] = max(self.lo[v], b - self.step)
            return self.hi[v], b


def _run_rows(kernel, rows: int, width: int, *args) -> int:
    """``kernel(*args, lo, hi)`` over rows [0, rows), shared out over torch's intra-op thread count;
    returns the sum of what the calls return.

    Each thread owns one contiguous region of rows (as torch's OpenMP loops split them: the fresh
    output's page faults, most of a norm's time, then fall on separate page tables) and, done with
    it, takes chunks of ~``CHUNK_ELEMS`` from the back of the others: right after a torch
    operation its OpenMP workers keep spinning for a few ms and a thread sharing a core with one
    falls behind."""
    threads = torch.get_num_threads()
    parts = max(1, min(threads, rows, rows * width // MIN_ELEMS_PER_THREAD))
    if parts == 1:
        return kernel(*args, 0, rows)
    chunks = _Chunks(rows, parts, max(1, CHUNK_ELEMS // width))

    def work(t: int) -> int:
        total = 0
        while (ab := chunks.claim(t)) is not None:
            total += kernel(*args, *ab)
        return total

    futures = []
    try:
        pool = _pool(threads - 1)
        futures = [pool.submit(work, t) for t in range(1, parts)]
    except RuntimeError:  # pool shut down by a concurrent rebuild, or the interpreter exiting
        pass  # the caller's work() below takes the rows nobody took
    total = work(0)
    return total + sum(f.result() for f in futures)


def _param(p: torch.Tensor | None, d: int, x: torch.Tensor, fill: float) -> np.ndarray:
    return p.detach().numpy() if p is not None else np.full(d, fill, dtype=x.numpy().dtype)


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
    if x2.dim() != 2 or not x2.is_contiguous() or n < 1 or x2.shape[1] % n:
        raise ValueError(f"group_layer_norm needs a contiguous (rows, C) input with n | C; got shape "
                         f"{tuple(x2.shape)}, n={n} (reshape to (-1, C) and call .contiguous())")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.shape != (x2.shape[1],) or p.dtype != x2.dtype or not p.is_contiguous()):
            raise ValueError(f"group_layer_norm: {name} must be contiguous ({x2.shape[1]},) {x2.dtype}; "
                             f"got {tuple(p.shape)} {p.dtype} (cast or copy it to the input's dtype)")
    x2 = x2.detach()
    lng_rows = _kernel(x2.numpy().dtype, n)
    rows, d = x2.shape
    out = torch.empty_like(x2)
    fi = torch.finfo(x2.dtype)
    bad = _run_rows(lng_rows, rows, d, x2.numpy(), out.numpy(), _param(weight, d, x2, 1.0),
                    _param(bias, d, x2, 0.0), n, float(eps), fi.tiny / fi.eps)
    return out, int(bad)


def applies(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether the fused kernel may run on ``x``: a plain CPU float32/float64 tensor with parameters
    of its dtype, nothing to differentiate, no tracer, compiler or vmap watching (they would not see
    a kernel outside torch), and numba available."""
    if type(x) is not torch.Tensor or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    return blocks_apply(x, *params) and available()


__all__ = ["available", "applies", "group_layer_norm", "MIN_ELEMS_PER_THREAD", "CHUNK_ELEMS"]
