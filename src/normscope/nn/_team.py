"""A numba row kernel on torch's own OpenMP team (GNU OpenMP), through libgomp's ``GOMP_parallel``.

``GOMP_parallel(fn, data, num_threads, flags)`` is the call a ``#pragma omp parallel`` compiles
to: it runs ``fn(data)`` on the calling thread and on the pool's worker threads, the very threads
that run torch's intra-op loops. ``fn`` here is a numba ``cfunc`` that reads an argument block (the
arrays' addresses and the scalars, as int64 words), asks libgomp for its thread number and team
size, and runs the row kernel on its contiguous share of the rows, as ``at::parallel_for`` shares
them out. Importing this module fails (``ImportError``) where torch's intra-op threads are not
libgomp's (no such library loaded, or more than one and none of them torch's): then
``normscope.nn._parallel`` runs the kernels on a pool.

The ``cfunc`` calls the kernel's Python source (registered with ``register_jitable``), not its
``njit`` dispatcher: numba keys its on-disk cache of a closure on the pickled closure variables,
and a dispatcher pickles with a per-process id (measured: a new cache entry on every run). The
names below are module globals for the same reason.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

import llvmlite.binding as llvm
import numba
import numpy as np
import torch
from numba import types
from numba.extending import intrinsic, register_jitable


def _find_libgomp() -> ctypes.CDLL:
    """torch's GNU OpenMP runtime, already loaded (the same handle)."""
    from threadpoolctl import threadpool_info

    torch_dir = os.path.realpath(os.path.dirname(torch.__file__))  # .../torch (its lib/), or .../torch.libs
    libs = [i for i in threadpool_info() if i.get("prefix") == "libgomp"]
    mine = [i for i in libs if os.path.realpath(i["filepath"]).startswith((torch_dir + os.sep, torch_dir + ".libs" + os.sep))]
    pick = mine or (libs if len(libs) == 1 else [])
    if len(pick) != 1:
        raise ImportError(f"torch's intra-op threads are not libgomp's here ({len(libs)} libgomp loaded)")
    try:
        lib = ctypes.CDLL(pick[0]["filepath"])
        for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"):
            getattr(lib, name)
    except (OSError, AttributeError) as err:
        raise ImportError(f"libgomp at {pick[0]['filepath']} is unusable: {err}") from err
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


# the argument block: x, out, w, b, rows, C, n, eps, m_min, bad, len(bad), len(b) (eps, m_min: float64 bits)
ARGS = 12


@functools.cache
def body(kernel_source: Callable, dtype: np.dtype, fastmath: frozenset) -> int:
    """The address of a ``cfunc`` that runs ``kernel_source`` (a row kernel's Python function,
    ``(x, out, w, b, n, eps, m_min, lo, hi) -> bad``) compiled for ``dtype`` on this thread's share
    of the rows of an argument block, writing its count to ``bad[thread]``."""
    kernel = register_jitable(fastmath=set(fastmath), boundscheck=False, error_model="numpy")(kernel_source)
    ft = dtype.type

    def team_body(block):  # pragma: no cover - compiled
        a = numba.carray(block, (ARGS,), dtype=np.int64)
        f = numba.carray(block, (ARGS,), dtype=np.float64)
        rows, d = a[4], a[5]
        x = numba.carray(voidptr(a[0]), (rows, d), dtype=ft)
        out = numba.carray(voidptr(a[1]), (rows, d), dtype=ft)
        w = numba.carray(voidptr(a[2]), (d,), dtype=ft)
        b = numba.carray(voidptr(a[3]), (a[11],), dtype=ft)
        bad = numba.carray(voidptr(a[9]), (a[10],), dtype=np.int64)
        t, team = np.int64(thread_num()), np.int64(num_threads())
        if t < a[10]:
            bad[t] = kernel(x, out, w, b, a[6], f[7], f[8], rows * t // team, rows * (t + 1) // team)

    sig = types.void(types.voidptr)
    try:  # numba's on-disk cache needs a writable folder (read-only installs have none)
        return numba.cfunc(sig, cache=True)(team_body).address
    except RuntimeError:
        return numba.cfunc(sig)(team_body).address


def run(address: int, x: np.ndarray, out: np.ndarray, w: np.ndarray, b: np.ndarray, n: int, eps: float,
        m_min: float, parts: int) -> int:
    """``GOMP_parallel`` of the ``cfunc`` at ``address`` with ``parts`` threads; the summed count."""
    bad = np.zeros(parts, dtype=np.int64)
    block = np.empty(ARGS, dtype=np.int64)
    block[:] = [x.ctypes.data, out.ctypes.data, w.ctypes.data, b.ctypes.data, x.shape[0], x.shape[1], n,
                0, 0, bad.ctypes.data, parts, b.shape[0]]
    block.view(np.float64)[7:9] = eps, m_min
    _LIB.GOMP_parallel(address, block.ctypes.data, parts, 0)  # a ctypes call releases the GIL
    return int(bad.sum())
