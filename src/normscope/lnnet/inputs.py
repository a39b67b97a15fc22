"""Input checks and the first projection v of an LN-Net construction [reconstructed].

The construction reduces the points to one scalar feature s = vᵀx: v is picked among random unit
directions to maximise the smallest gap between differently-labelled values of s relative to
their range (``docs/lnnet.md``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normscope.lnnet.embedding import _DIFF_TOL, ConstructionError


class Direction(NamedTuple):
    """A candidate first projection: ``v`` (d,) unit vector and its relative different-label gap ``score``."""

    score: float
    v: np.ndarray


def _check_inputs(X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (X float64 (m, d), label codes 0..c−1 (m,), classes (c,)); ``ValueError`` names the problem."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"X must be (m, d), got shape {X.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must be (m,) with m = {len(X)} labels, got shape {y.shape}")
    if len(X) < 2:
        raise ValueError(f"need m >= 2 points, got m = {len(X)}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"X contains {int((~np.isfinite(X)).sum())} NaN/Inf value(s)")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN/Inf labels")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"all {len(y)} points have the same label {classes[0]!r}: nothing to classify")
    _, first, inv = np.unique(X, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    clash = codes != codes[first[inv]]
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        j = int(first[inv[i]])
        raise ValueError(
            f"points {j} and {i} are identical but labelled {y[j]!r} and {y[i]!r}: "
            "no function (so no network) can classify both correctly"
        )
    return X, codes.astype(np.int64), classes


def _directions(X: np.ndarray, codes: np.ndarray, rng: np.random.Generator, tries: int = 32) -> list[Direction]:
    """Candidate first projections, best relative different-label gap first (those above ``_DIFF_TOL``)."""
    d = X.shape[1]
    V = np.ones((1, 1)) if d == 1 else rng.standard_normal((tries, d))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    S = X @ V.T  # (m, tries)
    o = np.argsort(S, axis=0, kind="stable")
    ss = np.take_along_axis(S, o, 0)
    ll = codes[o]
    gap = np.where(ll[1:] != ll[:-1], np.diff(ss, axis=0), np.inf).min(0)
    R = ss[-1] - ss[0]
    score = np.where(R > 0, gap / np.where(R > 0, R, 1.0), 0.0)
    order = np.argsort(-score, kind="stable")
    if score[order[0]] <= _DIFF_TOL:
        raise ConstructionError(
            "no generic projection separates the differently-labelled points "
            f"(best relative gap {score[order[0]]:.2e}); are some points (nearly) identical?"
        )
    return [Direction(float(score[i]), V[i]) for i in order if score[i] > _DIFF_TOL]
