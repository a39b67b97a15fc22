"""Running a numba row kernel (``normscope.nn._numba``) on torch's intra-op threads.

A row kernel ``kernel(x, out, w, b, n, eps, m_min, lo, hi) -> bad`` normalises rows [lo, hi) of
x into out and returns how many of its statistics were unreliable. :func:`run_rows` shares the
rows out over ``torch.get_num_threads()`` threads, one of two ways:

- **torch's OpenMP team** (torch built with GNU OpenMP, as its Linux wheels are): libgomp's
  ``GOMP_parallel``, the call a ``#pragma omp parallel`` compiles to, runs a numba ``cfunc`` on
  the very worker threads that run torch's operations; each takes one contiguous share of the
  rows, as ``at::parallel_for`` does. Right after a torch operation its workers keep spinning for
  a few ms; any other thread would share a core with one (measured, 2 threads, 4096 × 4096
  float32 RMSNorm right after a matmul: a separate pool 1.19–1.22× compiled ``F.rms_norm``,
  torch's team 0.99×).
- **a pool**, where that library is not found, in a forked child (libgomp's workers do not
  survive ``fork``: torch's own parallel operations hang there, ours take the pool) and when
  numba cannot build the ``cfunc``: the caller's thread plus a per-process ``ThreadPoolExecutor``.
  Each thread owns one contiguous region of rows and, done with it, takes chunks of
  ~``CHUNK_ELEMS`` from the back of the others (a helper thread sharing a core with a spinning
  torch worker falls behind).

Each row's arithmetic is the same whichever thread runs it, so neither split changes a bit (tested).
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

MIN_ELEMS_PER_THREAD = 1 << 15  # below: one thread (a hand-off costs ~10-50 µs, a 32k-element row block ~10 µs)
CHUNK_ELEMS = 1 << 18  # the pool's unit of work (~1 MiB of float32; a kernel call costs a few µs)


class RowTask(NamedTuple):
    """One call's arguments, as the row kernels take them (``kernel(*task, lo, hi)``)."""

    x: np.ndarray  # (rows, C), C-contiguous
    out: np.ndarray  # like x
    w: np.ndarray  # (C,) gain
    b: np.ndarray  # (C,) shift, or (0,) for none where the kernel allows it
    n: int  # group size (the row width for RMSNorm)
    eps: float
    m_min: float  # the smallest reliable mean square (tiny/eps of the dtype)


class RowKernel(NamedTuple):
    """A row kernel ``(x, out, w, b, n, eps, m_min, lo, hi) -> bad``: its Python ``source`` (for
    torch's team) and its numba ``njit`` build (``jitted``), with the ``fastmath`` flags of both."""

    source: Callable
    jitted: Callable
    fastmath: frozenset


def run_rows(kernel: RowKernel, task: RowTask) -> int:
    """``kernel`` over all rows of ``task.x``, shared out over torch's intra-op thread count (torch's
    OpenMP team where :func:`team_available`, else the pool).

    **Arguments:** ``kernel``; ``task`` (its arguments).

    **Returns:** the summed count of unreliable statistics the calls report.
    """
    rows, width = task.x.shape
    parts = max(1, min(torch.get_num_threads(), rows, rows * width // MIN_ELEMS_PER_THREAD))
    if parts == 1:
        return int(kernel.jitted(*task, 0, rows))
    body = _team_body(kernel, task.x.dtype) if team_available() else None
    if body is not None:
        return _team().run(body, *task, parts)
    return _run_pool(kernel.jitted, task, parts)


def team_available() -> bool:
    """Whether :func:`run_rows` runs on torch's OpenMP team in this process."""
    return not _FORKED["child"] and _team() is not None


@functools.cache
def _team():
    """``normscope.nn._team``, or None where it does not import (no libgomp of torch's, no numba)."""
    try:
        from normscope.nn import _team

        return _team
    except Exception:  # noqa: BLE001 - ImportError, or an llvmlite/numba that cannot take the symbols
        return None


@functools.cache
def _team_body(kernel: RowKernel, dtype: np.dtype) -> int | None:
    """The team's ``cfunc`` for ``kernel`` and ``dtype``, or None (warned once) where numba cannot build it."""
    try:
        return _team().body(kernel.source, dtype, kernel.fastmath)
    except Exception as err:  # noqa: BLE001 - a numba that cannot build it: the pool runs the kernel
        warnings.warn(f"normscope's fused norm kernels cannot run on torch's OpenMP threads here "
                      f"({type(err).__name__}: {str(err)[:80]}); they use a thread pool (slower right after a torch op)")
        return None


_FORKED = {"child": False}


def _after_fork_in_child() -> None:
    """In a forked child: libgomp's workers and the pool's threads did not come along."""
    global _POOL_LOCK
    _FORKED["child"] = True
    _POOL_LOCK = threading.Lock()
    _POOL.update(size=0, pool=None)


# ---------------------------------------------------------------------------------------------
# the pool: elsewhere

_POOL: dict[str, object] = {"size": 0, "pool": None}
_POOL_LOCK = threading.Lock()


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


def _run_pool(kernel, task: RowTask, parts: int) -> int:
    rows, width = task.x.shape
    chunks = _Chunks(rows, parts, max(1, CHUNK_ELEMS // width))

    def work(t: int) -> int:
        total = 0
        while (ab := chunks.claim(t)) is not None:
            total += kernel(*task, *ab)
        return total

    futures = []
    try:
        pool = _pool(torch.get_num_threads() - 1)
        futures = [pool.submit(work, t) for t in range(1, parts)]
    except RuntimeError:  # pool shut down by a concurrent rebuild, or the interpreter exiting
        pass  # the caller's work() below takes the rows nobody took
    total = work(0)
    return total + sum(f.result() for f in futures)


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["RowKernel", "RowTask", "run_rows", "team_available", "MIN_ELEMS_PER_THREAD", "CHUNK_ELEMS"]
