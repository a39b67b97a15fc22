"""Sharing a numba row kernel's rows (``normscope.nn._numba``) out over torch's intra-op threads.

A row kernel ``kernel(x, out, w, b, n, eps, m_min, lo, hi) -> bad`` normalises rows [lo, hi) of
x into out and returns how many of its statistics were unreliable. :func:`run_rows` runs it on
up to ``torch.get_num_threads()`` threads (fewer for small inputs: ``MIN_ELEMS_PER_THREAD``):

- **on torch's OpenMP team** where :func:`team_available` (torch built with GNU OpenMP, as its
  Linux wheels are; ``normscope.nn._team``): the worker threads that run torch's operations run
  the kernel, each on one contiguous share of the rows, as ``at::parallel_for`` shares them.
  Right after a torch operation its workers keep spinning for a few ms; any other thread would
  share a core with one (measured, 2 threads, 4096 × 4096 float32 RMSNorm right after a matmul: a
  separate pool 1.19–1.22× compiled ``F.rms_norm``, torch's team 0.99×).
- **on a pool** elsewhere, and in a forked child (libgomp's workers do not survive ``fork``:
  torch's own parallel operations hang there): the caller's thread plus a per-process
  ``ThreadPoolExecutor``. Each thread owns one contiguous region of rows and, done with it, takes
  chunks of ~``CHUNK_ELEMS`` from the back of the others (a helper sharing a core with a spinning
  torch worker falls behind).

Where ``_team`` imports, every path (one thread, the team, the pool in a forked child) calls its
one compiled entry, so the row split cannot change a bit; elsewhere every path calls the kernel's
``njit`` build. Each row's arithmetic is independent of the split (tested).
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
    """A row kernel ``(x, out, w, b, n, eps, m_min, lo, hi) -> bad``: its Python ``source`` (built
    again into torch's team entry), its numba ``njit`` build (``jitted``), and the numba
    ``options`` of both, as sorted (name, value) pairs."""

    source: Callable
    jitted: Callable
    options: tuple

    def options_key(self) -> str:
        """``options`` as a string that is the same in every process (a set's order is not)."""
        return repr([(k, sorted(v) if isinstance(v, frozenset) else v) for k, v in self.options])

    def jit_options(self) -> dict:
        """``options`` as numba's decorators take them (fastmath a set)."""
        return {k: set(v) if isinstance(v, frozenset) else v for k, v in self.options}


def run_rows(kernel: RowKernel, task: RowTask) -> int:
    """``kernel`` over all rows of ``task.x``, shared out over torch's intra-op threads.

    **Arguments:** ``kernel``; ``task`` (its arguments).

    **Returns:** the summed count of unreliable statistics the calls report.
    """
    rows, width = task.x.shape
    parts = max(1, min(torch.get_num_threads(), rows, rows * width // MIN_ELEMS_PER_THREAD))
    team = _team()
    e = _entry(kernel, task.x.dtype) if team is not None else None
    if e is None:
        if parts == 1:
            return int(kernel.jitted(*task, 0, rows))
        return _run_pool(lambda a, b: kernel.jitted(*task, a, b), task, parts)
    if parts == 1 or not _FORKED["child"]:
        return team.run(e, task, 0, rows, parts).bad
    return _run_pool(lambda a, b: team.run(e, task, a, b, 1).bad, task, parts)


def team_available() -> bool:
    """Whether :func:`run_rows` shares rows out on torch's OpenMP team in this process."""
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
def _entry(kernel: RowKernel, dtype: np.dtype):
    """The team entry for ``kernel`` and ``dtype``, or None (warned once per kernel) where numba cannot build it."""
    try:
        return _team().entry(kernel, dtype)
    except Exception as err:  # noqa: BLE001 - a numba that cannot build it: the njit kernel on the pool
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
# the pool

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


def _run_pool(call: Callable[[int, int], int], task: RowTask, parts: int) -> int:
    """``call(lo, hi)`` over the rows of ``task`` in chunks, on the caller's thread and ``parts - 1``
    pool threads (the GIL is released inside ``call``); returns the summed counts once every
    submitted chunk is done."""
    rows, width = task.x.shape
    chunks = _Chunks(rows, parts, max(1, CHUNK_ELEMS // width))

    def work(t: int) -> int:
        total = 0
        while (ab := chunks.claim(t)) is not None:
            total += call(*ab)
        return total

    futures = []
    try:
        pool = _pool(torch.get_num_threads() - 1)
        for t in range(1, parts):
            futures.append(pool.submit(work, t))  # one at a time: a failure keeps those already running
    except RuntimeError:  # pool shut down by a concurrent rebuild, or the interpreter exiting
        pass  # the caller's work() below takes the rows nobody took
    total = work(0)
    return total + sum(f.result() for f in futures)


if hasattr(os, "register_at_fork"):  # not on Windows (no fork there)
    os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = ["RowKernel", "RowTask", "run_rows", "team_available", "MIN_ELEMS_PER_THREAD", "CHUNK_ELEMS"]
