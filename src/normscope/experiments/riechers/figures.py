"""Figures 1–2 of Riechers, arXiv:2405.04134, redrawn for N = 3.

Fig. 1: the four sub-steps of LayerNorm at ε = 0.1 (arrows 1̂ and α̂, dashed principal semi-axes);
Fig. 2: the output at ε = 1e-1, 1e-3, 1e-5. Figures are drawn on a bare
:class:`matplotlib.figure.Figure` (no pyplot, no global backend switch).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from normscope.experiments.riechers.data import BIAS, CAMERA, FIG1_EPS, FIG2_EPS, GAIN, LIMIT, stages
from normscope.geometry import LayerNormGeometry


def _figure(figsize: tuple[float, float]):
    from matplotlib.figure import Figure
    from mpl_toolkits import mplot3d  # noqa: F401  (registers the "3d" projection)

    return Figure(figsize=figsize)


def _style(ax, title: str) -> None:
    ax.view_init(**CAMERA)
    ax.set_title(title, fontsize=10)
    for axis, label in zip("xyz", ("Neuron 1", "Neuron 2", "Neuron 3")):
        getattr(ax, f"set_{axis}lim")(-LIMIT, LIMIT)
        getattr(ax, f"set_{axis}ticks")([-1, 0, 1])
        getattr(ax, f"set_{axis}label")(label, fontsize=8)
    ax.tick_params(labelsize=7)


def _scatter(ax, pts: np.ndarray, colors: np.ndarray) -> None:
    ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=colors, s=9, depthshade=True)


def _arrow(ax, start, vec) -> None:
    ax.quiver(*start, *vec, color="black", linewidth=1.8, arrow_length_ratio=0.2)


def _semi_axes(ax, centre, lengths, V) -> None:
    for length, v in zip(lengths, V.T):
        end = np.asarray(centre) + length * v
        ax.plot(*zip(centre, end), color="tab:blue", linestyle="--", linewidth=1.8)


def draw_fig1(st: dict, colors: np.ndarray, path: Path) -> None:
    """Fig. 1 (five 3-D panels of :func:`~.data.stages` ``st``) as a PNG at ``path``; ``colors`` (n, 3) in [0, 1]."""
    geo = LayerNormGeometry(GAIN, BIAS, FIG1_EPS)
    lengths, V = geo.axes(directions=True)
    one = np.ones(3) / math.sqrt(3)
    fig = _figure((13, 8.6))
    panels = [
        (1, "Original Data", st["input"], None),
        (2, "Data after (i) Projection", st["projected"], ("one", np.zeros(3))),
        (3, "Data after (i) and (ii) Normalization", st["normalized"], ("one", np.zeros(3))),
        (5, "Data after (i)-(ii) and (iii) Linear map", st["linear"], ("alpha", np.zeros(3))),
        (6, "Data after (i)-(iii) and (iv) Shift", st["output"], ("alpha", np.asarray(BIAS))),
    ]
    for slot, title, pts, extra in panels:
        ax = fig.add_subplot(2, 3, slot, projection="3d")
        _scatter(ax, pts, colors)
        if extra is not None:
            kind, origin = extra
            if kind == "one":
                _arrow(ax, origin, one)
            else:
                _arrow(ax, origin, geo.normal)
                _semi_axes(ax, origin, lengths, V)
        _style(ax, title)
    fig.suptitle(f"LayerNorm as a composition (N = 3, ε = {FIG1_EPS:g}; g = {GAIN}, b = {BIAS}). "
                 "Arrows: 1̂ (panels 2-3), α̂ (4-5); dashed: principal semi-axes", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def draw_fig2(a: np.ndarray, colors: np.ndarray, path: Path) -> None:
    """Fig. 2 (LayerNorm outputs of ``a`` at the three ε of ``FIG2_EPS``) as a PNG at ``path``."""
    fig = _figure((13, 4.6))
    for i, (eps, word) in enumerate(zip(FIG2_EPS, ("large", "modest", "small"))):
        ax = fig.add_subplot(1, 3, i + 1, projection="3d")
        _scatter(ax, stages(a, eps=eps)["output"], colors)
        _style(ax, f"Data after LayerNorm, {word} ε (ε = {eps:g})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
