"""LAPACK ``dlaed4`` (one root of a rank-one update of a diagonal matrix) from scipy, through ctypes.

``scipy.linalg.cython_lapack`` exports the routine as a PyCapsule; calling it through ctypes
releases the GIL. Used for 2 × 2 problems (``dlaed5``), the root beyond the last pole and any
root that ``_roots.interior_roots`` leaves unconverged.
"""

from __future__ import annotations

import ctypes
import functools

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


def dlaed4_root(D: np.ndarray, z: np.ndarray, rho: float, q: int) -> tuple[float, np.ndarray]:
    """λ_q and DELTA = D − λ_q (relative-accurate) of diag(D) + ρzzᵀ from LAPACK ``dlaed4``."""
    k, i, info = ctypes.c_int(D.size), ctypes.c_int(q + 1), ctypes.c_int(0)
    r, lam, delta = ctypes.c_double(rho), ctypes.c_double(), np.empty(D.size)
    _dlaed4()(ctypes.byref(k), ctypes.byref(i), D.ctypes.data_as(_DBL_P), z.ctypes.data_as(_DBL_P),
              delta.ctypes.data_as(_DBL_P), ctypes.byref(r), ctypes.byref(lam), ctypes.byref(info))
    if info.value != 0:
        raise RuntimeError(
            f"LAPACK dlaed4 did not converge for root {q} of {D.size} (info={info.value}); "
            "use method='dense' for this gain and report the gain vector as a normscope bug"
        )
    return lam.value, delta
