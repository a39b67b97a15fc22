"""LAPACK ``dlaed4`` (one root of a rank-one update of a diagonal matrix) from scipy, through ctypes.

``scipy.linalg.cython_lapack`` exports the routine as a PyCapsule; calling it through ctypes
releases the GIL. Used for 2 × 2 problems (``dlaed5``), the root beyond the last pole and any
root that ``_roots.interior_roots`` leaves unconverged.
"""

from __future__ import annotations

import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _capsule_function(name: str, restype, *argtypes):
    """A LAPACK routine from ``scipy.linalg.cython_lapack`` as a ctypes function (releases the GIL)."""
    from scipy.linalg import cython_lapack

    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    capsule = cython_lapack.__pyx_capi__[name]
    return ctypes.CFUNCTYPE(restype, *argtypes)(api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule)))


_INT_P = ctypes.POINTER(ctypes.c_int)
_DBL_P = ctypes.POINTER(ctypes.c_double)


# DLAED4(K, I, D, Z, DELTA, RHO, DLAM, INFO): I-th eigenvalue of diag(D) + ρzzᵀ, D ascending,
# ‖z‖ = 1, ρ > 0; DELTA(j) = D(j) − λ_I to full relative accuracy (valid for K ≥ 3).
@functools.cache
def _dlaed4():
    return _capsule_function("dlaed4", None, _INT_P, _INT_P, _DBL_P, _DBL_P, _DBL_P, _DBL_P, _DBL_P, _INT_P)


@functools.cache
def have_dlaed4() -> bool:
    try:
        _dlaed4()
    except (KeyError, AttributeError, OSError, ValueError, TypeError):
        return False
    return True


def dlaed4_roots(D: np.ndarray, z: np.ndarray, rho: float, qs: np.ndarray, *, deltas: np.ndarray | None = None,
                 threads: int = 1) -> np.ndarray:
    """λ_q for every q in ``qs`` by ``dlaed4``, and D − λ_q into row i of ``deltas`` when given
    (float64, (len(qs), n), each row contiguous; rows may be spaced, e.g. a column slice). The ctypes arguments are built once per thread; the roots are split
    over ``threads`` threads (the calls release the GIL)."""
    n = D.size
    if deltas is not None and (deltas.dtype != np.float64 or deltas.shape != (qs.size, n) or deltas.strides[1] != 8):
        raise ValueError(f"deltas must be float64 rows of {n} contiguous values, one per root; got {deltas.dtype} "
                         f"{deltas.shape} with strides {deltas.strides}")
    lam = np.empty(qs.size)
    scratch = None if deltas is not None else np.empty((max(threads, 1), n))

    def work(t: int, idx: np.ndarray) -> None:
        k, i, info, r, out = ctypes.c_int(n), ctypes.c_int(0), ctypes.c_int(0), ctypes.c_double(rho), ctypes.c_double()
        fixed = (ctypes.byref(k), ctypes.byref(i), D.ctypes.data_as(_DBL_P), z.ctypes.data_as(_DBL_P))
        tail = (ctypes.byref(r), ctypes.byref(out), ctypes.byref(info))
        rows = deltas if deltas is not None else scratch[t : t + 1]
        base, step = rows.ctypes.data, (rows.strides[0] if deltas is not None else 0)
        f = _dlaed4()
        for j in idx.tolist():
            i.value = int(qs[j]) + 1
            f(*fixed, ctypes.cast(base + j * step, _DBL_P), *tail)
            if info.value != 0:
                raise RuntimeError(
                    f"LAPACK dlaed4 did not converge for root {int(qs[j])} of {n} (info={info.value}); "
                    "use method='dense' for this gain and report the gain vector as a normscope bug"
                )
            lam[j] = out.value

    parts = np.array_split(np.arange(qs.size), max(1, min(threads, qs.size)))
    if len(parts) == 1:
        work(0, parts[0])
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            list(pool.map(work, range(len(parts)), parts))
    return lam
