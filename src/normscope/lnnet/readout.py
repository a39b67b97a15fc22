"""Read-outs of an LN-Net: the last embedding and the per-class chord on the circle [reconstructed].

When each class is one circular run of angles, class j's arc (a, b) is cut off by the chord
N_j·u = cos((b − a)/2) with N_j the unit vector at the arc's mid-angle: logit_j(u) = N_j·u − h_j
is positive exactly on that arc (``docs/lnnet.md``). When the classes are already one run each
along s, a line read-out needs no LN layer at all.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from normscope.lnnet.embedding import _LK_COARSE, _T_COARSE, _grid, _refine, _runs, _score


class FinalEmbedding(NamedTuple):
    """The last layer's embedding: rank ``score`` (see ``embedding._score``), s0, k and grid coordinates t, lk."""

    score: float
    s0: float
    k: float
    t: float
    lk: float


def _circular_boundaries(ang: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Mid-angles of the circular gaps between differently-labelled neighbours (ang sorted)."""
    nxt = np.r_[ang[1:], ang[0] + 2 * math.pi]
    nl = np.r_[lab[1:], lab[0]]
    m = lab != nl
    return (ang[m] + nxt[m]) / 2


def _chord_readout(ang: np.ndarray, lab: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class chord read-out on the unit circle for points with each class one circular run.

    Returns (N (c×2), h (c,)): logit_j(u) = N_j·u − h_j, positive exactly on class j's arc.
    """
    beta = np.sort(np.mod(_circular_boundaries(ang, lab), 2 * math.pi))
    N = np.zeros((n_classes, 2))
    h = np.zeros(n_classes)
    nb = len(beta)
    for i in range(nb):
        a, b = beta[i], beta[(i + 1) % nb] + (2 * math.pi if i + 1 == nb else 0.0)
        mu, delta = (a + b) / 2, b - a
        # the class on this arc: any point whose angle lies in (a, b) modulo 2π
        inside = np.mod(ang - a, 2 * math.pi) < delta
        cls = int(lab[inside][0])
        N[cls] = (math.cos(mu), math.sin(mu))
        h[cls] = math.cos(delta / 2)
    return N, h


def _line_readout(s: np.ndarray, lab: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-LN-layer read-out when each class is one run along s: logit_j = a_j s + b_j; returns (a, b)."""
    lo, hi, rl = _runs(s, lab)
    a = np.zeros(n_classes)
    b = np.zeros(n_classes)
    acc = 0.0
    for i, cls in enumerate(rl):
        if i:
            beta = (hi[i - 1] + lo[i]) / 2
            acc -= beta  # a_i β + b_i = a_{i−1} β + b_{i−1} with a_i = i
        a[cls], b[cls] = float(i), acc
    return a, b


def _final_angles_score(Tl: np.ndarray, Th: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Smallest angular gap between differently-labelled run ends, circularly. Tl/Th (G, r)."""
    r = Tl.shape[1]
    gaps = [Tl[:, 1:] - Th[:, :-1]] if r > 1 else []
    if lab[0] != lab[-1]:
        gaps.append((Tl[:, :1] + 2 * math.pi) - Th[:, -1:])
    return np.concatenate(gaps, 1).min(1)


def _final_step(lo, hi, lab, smax) -> FinalEmbedding | None:
    """Best embedding of the final runs (≤ 2 circular runs per class): coarse grid, then refined.

    ``None`` when no grid point scores above −inf (the caller reports the failure).
    """
    R = max(float(hi[-1] - lo[0]), 1e-300)
    best = None
    for stage in range(2):
        if stage == 0:
            s0, k, tt, ll = _grid(lo[0], R, _T_COARSE, _LK_COARSE)
        elif best is None:
            return None
        else:
            s0, k, tt, ll = _grid(lo[0], R, *_refine(best.t, best.lk))
        Tl = np.arctan(k[:, None] * (lo[None, :] - s0[:, None]))
        Th = np.arctan(k[:, None] * (hi[None, :] - s0[:, None]))
        sc = _score(_final_angles_score(Tl, Th, lab), s0, k, smax)
        g = int(np.argmax(sc))
        if sc[g] > (-np.inf if best is None else best.score):
            best = FinalEmbedding(float(sc[g]), float(s0[g]), float(k[g]), tt[g], ll[g])
    return best

