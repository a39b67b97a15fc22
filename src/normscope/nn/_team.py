"""A numba row kernel on torch's own OpenMP team (GNU OpenMP), through libgomp's ``GOMP_parallel``.

``GOMP_parallel(fn, data, num_threads, flags)`` is the call a ``#pragma omp parallel`` compiles
to: it runs ``fn(data)`` on the calling thread and on the pool's worker threads, the very threads
that run torch's intra-op loops. ``fn`` here is a numba ``cfunc`` (:func:`entry`) that reads an
argument block (the arrays' addresses and the scalars, as int64 words), asks libgomp for its
thread number and team size, and runs the row kernel on its contiguous share of rows [lo, hi), as
``at::parallel_for`` shares them out. Called directly (not through ``GOMP_parallel``) it is a team
of one and runs all of [lo, hi): ``normscope.nn._parallel`` calls it that way for one thread and
for the pool's chunks in a forked child, so that every path of a process runs this one compiled
function, bit for bit.

Importing this module fails (``ImportError``) unless torch's intra-op threads are OpenMP's
(``torch.__config__.parallel_info()``) and exactly one libgomp is loaded from torch's own folder
(other packages bring theirs: scikit-learn, scipy); then ``normscope.nn._parallel`` runs the
kernels on a pool. The ``cfunc`` calls the kernel's Python source (registered with
``register_jitable``) and closes over its compile options, not over its ``njit`` dispatcher: numba
keys its on-disk cache of a closure on the pickled closure variables, and a dispatcher pickles
with a per-process id (measured: a new cache entry on every run); the names below are module
globals for the same reason.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import NamedTuple

import llvmlite.binding as llvm
import numba
import numpy as np
import torch
from numba import types
from numba.extending import intrinsic, register_jitable

from normscope.nn._numba import with_cache
from normscope.nn._parallel import RowKernel, RowTask


def _find_libgomp() -> ctypes.CDLL:
    """torch's GNU OpenMP runtime, already loaded (the same handle); ImportError if there is none."""
    from threadpoolctl import threadpool_info

    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        raise ImportError("torch's intra-op threads are not libgomp's here (ATen's parallel backend is not OpenMP)")
    here = os.path.realpath(os.path.dirname(torch.__file__))  # .../torch (lib/ inside), or .../torch.libs
    libs = [i for i in threadpool_info() if i.get("prefix") == "libgomp"]
    mine = [i for i in libs if os.path.realpath(i["filepath"]).startswith((here + os.sep, here + ".libs" + os.sep))]
    if len(mine) != 1:
        raise ImportError(f"torch's intra-op threads are not libgomp's here ({len(mine)} of {len(libs)} "
                          "libgomp loaded from torch's folder)")
    try:
        lib = ctypes.CDLL(mine[0]["filepath"])
        for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"):
            getattr(lib, name)
    except (OSError, AttributeError) as err:
        raise ImportError(f"libgomp at {mine[0]['filepath']} is unusable: {err}") from err
    lib.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.GOMP_parallel.restype = None
    return lib


_LIB = _find_libgomp()
for _name in ("thread_num", "num_threads"):  # our names, so no user JIT code's "omp_*" is rebound
    llvm.add_symbol(f"normscope_omp_get_{_name}", ctypes.cast(getattr(_LIB, f"omp_get_{_name}"), ctypes.c_void_p).value)
thread_num = types.ExternalFunction("normscope_omp_get_thread_num", types.int32())
num_threads = types.ExternalFunction("normscope_omp_get_num_threads", types.int32())


@intrinsic
def voidptr(typingctx, address):
    """int64 → void* (an address from the argument block)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))
    return types.voidptr(types.int64), codegen


# The argument block, int64 words (EPS and M_MIN hold float64 bits); the entry writes TEAM and BAD.
X, OUT, W, B, ROWS, COLS, N, EPS, M_MIN, BAD, N_BAD, N_B, LO, HI, TEAM = range(15)
ARGS = 15


class Entry(NamedTuple):
    """A compiled entry: the numba ``cfunc`` (kept, so its code stays alive), its ``address`` for
    ``GOMP_parallel``, and ``direct``, a ctypes function that calls it as a team of one."""

    cfunc: object
    address: int
    direct: object


@functools.cache
def entry(kernel: RowKernel, dtype: np.dtype) -> Entry:
    """The entry that runs ``kernel`` (its Python source, with its compile options) for ``dtype``.

    **Arguments:** ``kernel`` (a row kernel ``(x, out, w, b, n, eps, m_min, lo, hi) -> bad``);
    ``dtype`` (float32 or float64).

    **Returns:** an :class:`Entry`; calling it on an argument block makes each thread of the current
    team write its count of unreliable statistics to ``bad[thread]`` (and thread 0 the team size to
    ``TEAM``). A thread whose kernel raised (numba prints why) leaves its ``bad`` slot as it was.
    """
    options = kernel.jit_options()
    options.pop("nogil", None)  # no GIL inside a cfunc
    source = register_jitable(**options)(kernel.source)
    ft = dtype.type
    options_key = kernel.options_key()  # used below, so closed over: part of numba's cache key, like the source

    def team_body(block):  # pragma: no cover - compiled
        a = numba.carray(block, (ARGS,), dtype=np.int64)
        f = numba.carray(block, (ARGS,), dtype=np.float64)
        rows, d, lo, hi = a[ROWS], a[COLS], a[LO], a[HI]
        x = numba.carray(voidptr(a[X]), (rows, d), dtype=ft)
        out = numba.carray(voidptr(a[OUT]), (rows, d), dtype=ft)
        w = numba.carray(voidptr(a[W]), (d,), dtype=ft)
        b = numba.carray(voidptr(a[B]), (a[N_B],), dtype=ft)
        bad = numba.carray(voidptr(a[BAD]), (a[N_BAD],), dtype=np.int64)
        t, team = np.int64(thread_num()), np.int64(num_threads())
        if t == 0 and len(options_key):
            a[TEAM] = team
        if t < a[N_BAD]:
            bad[t] = source(x, out, w, b, a[N], f[EPS], f[M_MIN], lo + (hi - lo) * t // team,
                            lo + (hi - lo) * (t + 1) // team)

    cf = with_cache(lambda cache: numba.cfunc(types.void(types.voidptr), cache=cache)(team_body))
    return Entry(cf, cf.address, ctypes.CFUNCTYPE(None, ctypes.c_void_p)(cf.address))


class Run(NamedTuple):
    """What :func:`run` did: ``bad`` (the count of unreliable statistics) and ``threads`` (the team
    size libgomp granted: every row of [lo, hi) was shared out over that many threads)."""

    bad: int
    threads: int


def run(e: Entry, task: RowTask, lo: int, hi: int, parts: int) -> Run:
    """Rows [lo, hi) of ``task`` by ``e``: on a team of ``parts`` of torch's threads, or, for one
    part, called directly on this thread (either way the GIL is released).

    **Returns:** a :class:`Run`. Raises RuntimeError where a thread's kernel failed (its rows of
    ``task.out`` are then not written).
    """
    x, b = task.x, task.b
    bad = np.full(parts, -1, dtype=np.int64)
    block = np.zeros(ARGS, dtype=np.int64)
    block[[X, OUT, W, B, ROWS, COLS, N, BAD, N_BAD, N_B, LO, HI]] = [
        x.ctypes.data, task.out.ctypes.data, task.w.ctypes.data, b.ctypes.data, x.shape[0], x.shape[1], task.n,
        bad.ctypes.data, parts, b.shape[0], lo, hi]
    block.view(np.float64)[[EPS, M_MIN]] = task.eps, task.m_min
    if parts > 1:
        _LIB.GOMP_parallel(e.address, block.ctypes.data, parts, 0)
    else:
        e.direct(block.ctypes.data)
    counts = bad[: block[TEAM]]
    if block[TEAM] < 1 or (counts < 0).any():
        raise RuntimeError("normscope: a fused norm kernel failed on one of torch's threads (numba printed why above)")
    return Run(int(counts.sum()), int(block[TEAM]))
