"""Fig. 1c/1d: how often random Gaussian points contain an unselectable one, with and without LN.

Protocol (Brody et al., arXiv:2305.02582, Fig. 1c/1d; ``docs/attention.md``): for d = 3..15, n = 3..60 and ``runs`` draws of
X ~ N(0, I) (n × d), count the draws with at least one unselectable point (inside the convex hull
of the others) among X ("NONE") and among LN(X) = (x − μ)/σ row-wise without affine
("LAYER_NORM"). Deviation: both conditions use the same draw X (paired); the paper draws
separately. Our test is exact (scipy HiGHS LP + certified pre-filters), not the original boxed
Chebyshev LP with Gurobi.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from normscope._io import atomic_write_json, atomic_write_text
from normscope.attention import unselectable
from normscope.experiments.brody.common import PAPER, fmt, md_table, parallel_map, pyplot

# Our approximate readings of the paper's Fig. 1c (arXiv:2305.02582); LN panel: 0 everywhere.
PAPER_READING = {
    3: "≈ 1 from n ≈ 5",
    5: "≈ 1 from n ≈ 15",
    7: "≈ 1 from n ≈ 35",
    8: "≈ 0.5–0.9 at n = 40–60",
    9: "≈ 0.2–0.5 at n = 60",
    10: "≈ 0.2–0.5 at n = 60",
    12: "≈ 0",
    15: "≈ 0",
}


def first_n(p_any: np.ndarray, ns: list[int], level: float = 0.95) -> int | None:
    """The smallest n whose P(at least one unselectable point) reaches ``level`` (None: none does)."""
    hit = np.flatnonzero(np.asarray(p_any) >= level)
    return int(ns[hit[0]]) if hit.size else None


def settings(paper_scale: bool, runs: int | None = None) -> dict[str, Any]:
    s = {"d": list(range(3, 16)), "n": list(range(3, 61)) if paper_scale else list(range(3, 61, 3)), "runs": 100 if paper_scale else 40}
    if runs is not None:
        s["runs"] = int(runs)
    return s


def _layer_norm(x: np.ndarray) -> np.ndarray:
    c = x - x.mean(axis=-1, keepdims=True)
    return c / np.sqrt((c * c).mean(axis=-1, keepdims=True))


def _cell(task: tuple[int, int, int, int]) -> tuple[int, int, list[float], list[float]]:
    d, n, runs, seed = task
    rng = np.random.default_rng([seed, d, n])
    none, ln = [], []
    for _ in range(runs):
        x = rng.standard_normal((n, d))
        none.append(float(unselectable(x).mean()))
        ln.append(float(unselectable(_layer_norm(x)).mean()))
    return d, n, none, ln


def run(out: Path, *, paper_scale: bool = False, runs: int | None = None, seed: int = 123, jobs: int = 1,
        progress: bool = True, grid: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """Run the grid, write ``random_points.{json,md}``, ``fig1cd_heatmaps.png``, ``fraction.png`` into ``out``."""
    cfg = settings(paper_scale, runs)
    if grid:
        cfg.update(grid)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tasks = [(d, n, cfg["runs"], seed) for d in cfg["d"] for n in cfg["n"]]
    results = parallel_map(_cell, tasks, jobs, "random points" if progress else None)
    ds, ns = cfg["d"], cfg["n"]
    shape = (len(ns), len(ds))
    p_any = {"none": np.zeros(shape), "layer_norm": np.zeros(shape)}
    frac = {"none": np.zeros(shape), "layer_norm": np.zeros(shape)}
    for d, n, none, ln in results:
        i, j = ns.index(n), ds.index(d)
        for key, vals in (("none", np.array(none)), ("layer_norm", np.array(ln))):
            p_any[key][i, j] = float((vals > 0).mean())
            frac[key][i, j] = float(vals.mean())
    elapsed = time.perf_counter() - t0

    compare = []
    for d, reading in PAPER_READING.items():
        if d not in ds:
            continue
        j = ds.index(d)
        compare.append([d, reading, fmt(first_n(p_any["none"][:, j], ns)), fmt(p_any["none"][-1, j]), fmt(frac["none"][-1, j], 3),
                        fmt(p_any["layer_norm"][:, j].max())])
    result = {
        "experiment": "random_points (Fig. 1c/1d)",
        "settings": {**cfg, "seed": seed, "distribution": "N(0, I)", "layer_norm": "(x - mean)/std, no affine, eps 0"},
        "p_any_unselectable": {k: v.tolist() for k, v in p_any.items()},
        "mean_fraction": {k: v.tolist() for k, v in frac.items()},
        "max_p_any_with_layer_norm": float(p_any["layer_norm"].max()),
        "elapsed_s": elapsed,
    }
    atomic_write_json(out / "random_points.json", result)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.5), sharey=True)
    for ax, key, title in zip(axes, ("none", "layer_norm"), ("(c) without LayerNorm", "(d) with LayerNorm")):
        im = ax.imshow(p_any[key], origin="upper", aspect="auto", vmin=0, vmax=1, cmap="rocket_r" if "rocket_r" in plt.colormaps() else "magma_r",
                       extent=(ds[0] - 0.5, ds[-1] + 0.5, ns[-1] + 0.5 * (ns[1] - ns[0] if len(ns) > 1 else 1), ns[0] - 0.5 * (ns[1] - ns[0] if len(ns) > 1 else 1)))
        ax.set_title(title)
        ax.set_xlabel("d")
    axes[0].set_ylabel("n (points)")
    fig.colorbar(im, ax=axes, label="P(at least one unselectable point)")
    fig.suptitle(f"Random Gaussian points, {cfg['runs']} runs per cell (Brody et al. Fig. 1c/d)")
    fig.savefig(out / "fig1cd_heatmaps.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for j, d in enumerate(ds):
        if d <= 10:
            ax.plot(ns, frac["none"][:, j], label=f"d={d}")
    ax.plot(ns, frac["layer_norm"].max(axis=1), "k--", label="with LN (max over d)")
    ax.set_xlabel("n (points)")
    ax.set_ylabel("mean fraction unselectable")
    ax.legend(ncol=2, fontsize=8)
    ax.set_title("Mean fraction of unselectable points (no LN)")
    fig.tight_layout()
    fig.savefig(out / "fraction.png", dpi=120)
    plt.close(fig)

    grid_rows = [[n] + [fmt(p_any["none"][i, j]) for j in range(len(ds))] for i, n in enumerate(ns)]
    md = [
        "# Random points: unselectable keys with and without LayerNorm (Fig. 1c/1d)",
        "",
        f"{PAPER}. Settings: d = {ds[0]}..{ds[-1]}, n = {ns[0]}..{ns[-1]} ({len(ns)} values), {cfg['runs']} runs per cell"
        f"{' (paper scale)' if paper_scale else ' (CPU budget; `--paper-scale`: every n, 100 runs)'}, seed {seed}; "
        f"{elapsed:.0f} s. Paired draws (LN applied to the same X), an exact LP test instead of the original Gurobi Chebyshev LP.",
        "",
        "## Paper vs ours (without LN)",
        "",
        md_table(["d", "paper (Fig. 1c reading, approx.)", "ours: first n with P ≥ 0.95", f"ours: P at n = {ns[-1]}",
                  f"ours: mean fraction at n = {ns[-1]}", "ours with LN: max P over n"], compare),
        f"With LayerNorm (paper Fig. 1d: 0 everywhere): max P over the whole grid = **{fmt(p_any['layer_norm'].max())}**.",
        "",
        "## P(at least one unselectable point), without LN (rows n, columns d)",
        "",
        md_table(["n \\ d"] + ds, grid_rows),
        "Plots: `fig1cd_heatmaps.png`, `fraction.png`.",
    ]
    atomic_write_text(out / "random_points.md", "\n".join(md) + "\n")
    return result
