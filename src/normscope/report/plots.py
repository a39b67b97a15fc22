"""Report figures (matplotlib, rendered with Agg), returned as PNG bytes.

Every figure has one row per model. Per-layer curves show the mean over tokens with a
light band from the 1st to the 99th percentile (p01–p99) and a darker band mean ± SD.
The random-vector baseline for the angle with 𝟙 is 90° ± 57.3°/√d (an isotropic
vector's cosine with 𝟙 is ≈ N(0, 1/d)); it is drawn as a grey ±2 SD band.
"""

from __future__ import annotations

import functools
import io
import math
import sys
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from normscope.probe.stats import hist_edges
from normscope.probe.schema import BLOCK_ROLES, get_path, layer_index, ln_sites, num

# Colour per norm site role (colour-blind-safe Tableau palette).
ROLE_COLORS = {
    "embedding": "#7f7f7f",
    "pre_attention": "#1f77b4",
    "post_attention": "#1f77b4",
    "pre_mlp": "#d62728",
    "post_mlp": "#d62728",
    "final": "#2ca02c",
    "other": "#9467bd",
}
ROLE_LABELS = {
    "embedding": "embedding norm",
    "pre_attention": "LN1 (pre-attention)",
    "post_attention": "LN1 (after attention add)",
    "pre_mlp": "LN2 (pre-MLP)",
    "post_mlp": "LN2 (after MLP add)",
    "final": "final norm",
    "other": "other norm",
}

# Applied per figure (rc_context), never to the caller's global matplotlib state; figures are
# plain Figure objects on an Agg canvas, so no pyplot backend is selected or touched.
STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float]):
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _set_log(ax) -> None:
    """Log y-scale when the axes hold positive finite data (an all-NaN panel stays linear)."""
    y0, y1 = ax.dataLim.y0, ax.dataLim.y1
    if np.isfinite(y1) and y1 > 0 and np.isfinite(y0):
        ax.set_yscale("log")


def _legend(ax, ncol: int = 3) -> None:
    """Legend below the axes, so it never hides a curve."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, fontsize=7.5,
                  handlelength=2.2, columnspacing=1.2)


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes (closing it if pyplot manages it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    if "matplotlib.pyplot" in sys.modules:  # a caller's pyplot figure: release it
        sys.modules["matplotlib.pyplot"].close(fig)
    return buf.getvalue()


def null_sd_deg(d: int) -> float:
    """SD (degrees) of the angle between an isotropic random vector in R^d and 𝟙: 57.2958/√d."""
    return math.degrees(1.0) / math.sqrt(d)


def _x_of(entries: Sequence[dict], fallback_start: int = 0) -> np.ndarray:
    xs = [layer_index(e) for e in entries]
    if any(x is None for x in xs):
        return np.arange(fallback_start, fallback_start + len(entries))
    return np.asarray(xs, dtype=float)


def _series(entries: Sequence[dict], path: str) -> dict[str, np.ndarray]:
    out = {}
    for k in ("mean", "std", "p01", "p50", "p99", "min", "max"):
        out[k] = np.asarray([num(get_path(e, path), k) for e in entries], dtype=float)
    return out


def _band(ax, x, s, color, label, *, ls="-", marker="o", pct=True, sd=True):
    if x.size == 0 or np.all(np.isnan(s["mean"])):
        return
    if pct and not np.all(np.isnan(s["p01"])):
        ax.fill_between(x, s["p01"], s["p99"], color=color, alpha=0.10, lw=0)
    if sd and not np.all(np.isnan(s["std"])):
        ax.fill_between(x, s["mean"] - s["std"], s["mean"] + s["std"], color=color, alpha=0.20, lw=0)
    ax.plot(x, s["mean"], ls=ls, marker=marker, ms=3, lw=1.5, color=color, label=label)


def _block_entries(model: dict) -> list[tuple[str, list[dict]]]:
    """(role, entries sorted by block) for each block role present, LN1 first."""
    ln1, ln2, r1, r2 = ln_sites(model)
    return [(r, e) for r, e in ((r1, ln1), (r2, ln2)) if e]


def _standalone(model: dict) -> list[dict]:
    return [e for e in model.get("layers", []) if e.get("role") in ("embedding", "final")]


def _grid(n_models: int, ncols: int, *, w: float = 5.4, h: float = 3.1):
    fig, axes = _subplots(n_models, ncols, (w * ncols, h * n_models))
    return fig, axes


def _mark_standalone(ax, model: dict, path: str, x_last: float):
    """Single norms outside the blocks (embedding norm at x=-1, final norm after the last block)."""
    for e in _standalone(model):
        s = get_path(e, path)
        if not isinstance(s, dict) or not math.isfinite(num(s, "mean")):
            continue
        role = e.get("role", "other")
        x = -1.0 if role == "embedding" else x_last + 1.0
        lo, hi = num(s, "p01"), num(s, "p99")
        if math.isfinite(lo) and math.isfinite(hi):
            ax.vlines(x, lo, hi, color=ROLE_COLORS.get(role, "#9467bd"), lw=1, alpha=0.5)
        ax.plot([x], [num(s, "mean")], marker="D", ms=5, ls="none", color=ROLE_COLORS.get(role, "#9467bd"),
                label=ROLE_LABELS.get(role, role))


def _last_x(model: dict) -> float:
    xs = [layer_index(e) for e in model.get("layers", []) if e.get("role") in BLOCK_ROLES]
    xs = [x for x in xs if x is not None]
    return float(max(xs)) if xs else 0.0


@_styled
def angle_curves(stats: dict) -> bytes:
    """Per-layer angle with 𝟙 of norm inputs (left) and outputs (right), with the random baseline."""
    models = stats.get("models", [])
    fig, axes = _grid(len(models), 2)
    for row, m in zip(axes, models):
        d = int(m.get("hidden_size") or 0)
        for ax, side in zip(row, ("input", "output")):
            x_last = _last_x(m)
            if d:
                sd = null_sd_deg(d)
                ax.axhspan(90 - 2 * sd, 90 + 2 * sd, color="#999999", alpha=0.18, lw=0,
                           label=f"random vector: 90° ± 2 SD (SD {sd:.2f}°)")
            ax.axhline(90, color="#555555", lw=0.8, ls=":")
            for role, entries in _block_entries(m):
                _band(ax, _x_of(entries), _series(entries, f"{side}.angle_deg"), ROLE_COLORS[role],
                      ROLE_LABELS[role])
            _mark_standalone(ax, m, f"{side}.angle_deg", x_last)
            what = "input (before the norm)" if side == "input" else "output (after γ, β)"
            ax.set_title(f"{m.get('name')} — angle with 𝟙, norm {what}")
            ax.set_xlabel("block")
            ax.set_ylabel("θ(v, 𝟙)  [deg]")
            _legend(ax)
    return png_bytes(fig)


@_styled
def angle_zoom(stats: dict) -> bytes:
    """Deviation of the mean angle from 90° per layer, on a scale where the random baseline is visible."""
    models = stats.get("models", [])
    fig, axes = _grid(1, max(1, len(models)), w=5.6, h=3.2)
    for ax, m in zip(axes[0], models):
        d = int(m.get("hidden_size") or 0)
        if d:
            sd = null_sd_deg(d)
            ax.axhspan(-sd, sd, color="#999999", alpha=0.2, lw=0, label=f"random vector: ±{sd:.2f}° (1 SD)")
        ax.axhline(0, color="#555555", lw=0.8, ls=":")
        for role, entries in _block_entries(m):
            x = _x_of(entries)
            for side, ls in (("input", "-"), ("output", "--")):
                s = _series(entries, f"{side}.angle_deg")
                ax.plot(x, s["mean"] - 90, ls=ls, marker="o", ms=2.5, color=ROLE_COLORS[role],
                        label=f"{ROLE_LABELS[role]} {side}")
                if side == "input":
                    ax.plot(x, s["p50"] - 90, ls="none", marker="_", ms=6, color=ROLE_COLORS[role])
        ax.set_title(f"{m.get('name')} — mean θ − 90° (median: ticks)")
        ax.set_xlabel("block")
        ax.set_ylabel("deg")
        _legend(ax)
    return png_bytes(fig)


def _hist_arrays(h: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(edges, counts) from a histogram dict of the stats schema, or None if it is empty."""
    if not isinstance(h, dict) or "counts" not in h:
        return None
    counts = np.asarray(h["counts"], dtype=float)
    edges = hist_edges(h)
    if edges.size != counts.size + 1 or counts.sum() <= 0:
        return None
    return edges, counts


def default_hist_layers(model: dict) -> list[int]:
    """The block at ~75% depth (the paper shows layer 24 of 32, 18 of 24, 43 of 48)."""
    ln1, _, _, _ = ln_sites(model)
    idx = sorted({layer_index(e) for e in ln1 if layer_index(e) is not None})
    if not idx:
        return []
    return [idx[min(len(idx) - 1, int(round(0.75 * (len(idx) - 1))))]]


@_styled
def angle_histograms(stats: dict, layers: dict[str, list[int]] | None = None) -> bytes | None:
    """Histograms of the angle with 𝟙 at chosen blocks: Hidden, Post-LN1, Pre-LN2, Post-LN2 (as Figs. 5, 11-13)."""
    panels = []  # (model, block, [(label, entry, side)])
    for m in stats.get("models", []):
        ln1, ln2, _, _ = ln_sites(m)
        chosen = (layers or {}).get(str(m.get("name"))) or default_hist_layers(m)
        for b in chosen:
            e1 = next((e for e in ln1 if layer_index(e) == b), None)
            e2 = next((e for e in ln2 if layer_index(e) == b), None)
            series = [(lab, e, side) for lab, e, side in (
                ("Hidden", e1, "input"), ("Post-LN1", e1, "output"), ("Pre-LN2", e2, "input"), ("Post-LN2", e2, "output"))
                if e is not None and _hist_arrays(get_path(e, f"{side}.angle_deg.hist")) is not None]
            if series:
                panels.append((m, b, series))
    if not panels:
        return None
    fig, axes = _subplots(len(panels), 4, (4.0 * 4, 2.8 * len(panels)))
    for row, (m, b, series) in zip(axes, panels):
        d = int(m.get("hidden_size") or 0)
        for ax in row:
            ax.set_visible(False)
        for ax, (lab, e, side) in zip(row, series):
            ax.set_visible(True)
            s = get_path(e, f"{side}.angle_deg")
            edges, counts = _hist_arrays(s["hist"])
            dens = counts / counts.sum() / np.diff(edges)
            color = "#1f77b4" if side == "input" else "#ff7f0e"
            lo, hi = num(s, "p01"), num(s, "p99")
            xlim = (edges[0], edges[-1])
            if math.isfinite(lo) and math.isfinite(hi):
                # p01..p99 plus margin, and at least ±3 SD of the random baseline around 90°
                pad = max(0.5, 0.3 * (hi - lo))
                lo, hi = lo - pad, hi + pad
                if d:
                    lo, hi = min(lo, 90 - 3 * null_sd_deg(d)), max(hi, 90 + 3 * null_sd_deg(d))
                xlim = (max(0.0, lo), min(180.0, hi))
            # draw only the visible bins, as one polygon (stairs() patches are slow with 1000s of bins)
            keep = np.nonzero((edges[1:] >= xlim[0]) & (edges[:-1] <= xlim[1]))[0]
            if keep.size:
                e = edges[keep[0] : keep[-1] + 2]
                y = np.append(dens[keep[0] : keep[-1] + 1], dens[keep[-1]])
                y = np.where(y > 0, y, np.nan)
                ax.fill_between(e, y, step="post", color=color, alpha=0.5, lw=0)
                ax.step(e, y, where="post", color=color, lw=0.9)
            ax.set_xlim(*xlim)
            if d:
                sd = null_sd_deg(d)
                xs = np.linspace(*ax.get_xlim(), 400)
                ax.plot(xs, np.exp(-0.5 * ((xs - 90) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)), color="#444444",
                        lw=1, ls="--", label=f"random 90±{sd:.2f}°")
            _set_log(ax)
            ax.set_title(f"{m.get('name')} block {b}: {lab}")
            ax.set_xlabel("θ(v, 𝟙) [deg]")
            ax.text(0.02, 0.97, f"{num(s, 'mean'):.2f} ± {num(s, 'std'):.2f}", transform=ax.transAxes,
                    va="top", ha="left", fontsize=8.5, bbox=dict(fc="white", ec="#cccccc", lw=0.5))
            ax.legend(loc="upper right")
        row[0].set_ylabel("density (log)")
    return png_bytes(fig)


@_styled
def norm_curves(stats: dict) -> bytes:
    """Per-layer L2 norms of norm inputs and outputs (log scale), with √d for the standardised vector."""
    models = stats.get("models", [])
    fig, axes = _grid(1, max(1, len(models)), w=5.6, h=3.4)
    for ax, m in zip(axes[0], models):
        d = int(m.get("hidden_size") or 0)
        for role, entries in _block_entries(m):
            x = _x_of(entries)
            _band(ax, x, _series(entries, "input.norm"), ROLE_COLORS[role], f"{ROLE_LABELS[role]} input", sd=False)
            _band(ax, x, _series(entries, "output.norm"), ROLE_COLORS[role], f"{ROLE_LABELS[role]} output",
                  ls="--", marker="s", sd=False)
        _mark_standalone(ax, m, "input.norm", _last_x(m))
        if d:
            ax.axhline(math.sqrt(d), color="#555555", lw=0.8, ls=":", label=f"√d = {math.sqrt(d):.1f}")
        _set_log(ax)
        ax.set_title(f"{m.get('name')} — ‖v‖₂ per block (band p01–p99)")
        ax.set_xlabel("block")
        ax.set_ylabel("L2 norm")
        _legend(ax)
    return png_bytes(fig)


@_styled
def rotation_curves(stats: dict) -> bytes:
    """Per-layer rotation angle between each norm's input and output (Figs. 3, 9, 10 of the paper)."""
    models = stats.get("models", [])
    fig, axes = _grid(1, max(1, len(models)), w=5.6, h=3.2)
    for ax, m in zip(axes[0], models):
        for role, entries in _block_entries(m):
            _band(ax, _x_of(entries), _series(entries, "rotation_deg"), ROLE_COLORS[role], ROLE_LABELS[role])
        _mark_standalone(ax, m, "rotation_deg", _last_x(m))
        ax.set_title(f"{m.get('name')} — rotation angle(x_in, x_out)")
        ax.set_xlabel("block")
        ax.set_ylabel("deg")
        ax.set_ylim(bottom=0)
        _legend(ax)
    return png_bytes(fig)


@_styled
def metric_curves(stats: dict, path: str, title: str, ylabel: str, *, log: bool = False) -> bytes | None:
    """Per-layer curves of any summary at ``path`` (e.g. "rms_gap"); log scale shows p01–p99 only."""
    models = stats.get("models", [])
    have = [m for m in models if any(isinstance(get_path(e, path), dict) for e in m.get("layers", []))]
    if not have:
        return None
    fig, axes = _grid(1, len(have), w=5.6, h=3.0)
    for ax, m in zip(axes[0], have):
        for role, entries in _block_entries(m):
            _band(ax, _x_of(entries), _series(entries, path), ROLE_COLORS[role], ROLE_LABELS[role], sd=not log)
        _mark_standalone(ax, m, path, _last_x(m))
        if log:
            _set_log(ax)
        ax.set_title(f"{m.get('name')} — {title}")
        ax.set_xlabel("block")
        ax.set_ylabel(ylabel)
        _legend(ax)
    return png_bytes(fig)


@_styled
def radial_deficit_curves(stats: dict) -> bytes | None:
    """1 − ρ per layer (log scale): mean, and the exact token range 1 − max ρ … 1 − min ρ.

    ρ is within ~1e-10 of 1 for real inputs, so 1 − ρ is the readable quantity; its percentiles
    are not shown because the probe's ρ histogram (bins of 5e-4) cannot resolve them.
    """
    models = stats.get("models", [])
    have = [m for m in models if any(isinstance(e.get("radial_fraction"), dict) for e in m.get("layers", []))]
    if not have:
        return None
    fig, axes = _grid(1, len(have), w=5.6, h=3.0)
    for ax, m in zip(axes[0], have):
        for role, entries in _block_entries(m):
            s = _series(entries, "radial_fraction")
            x = _x_of(entries)
            mean, lo, hi = 1 - s["mean"], 1 - s["max"], 1 - s["min"]
            c = ROLE_COLORS[role]
            pos = lambda v: np.where(v > 0, v, np.nan)  # noqa: E731
            ax.fill_between(x, pos(lo), pos(hi), color=c, alpha=0.12, lw=0)
            ax.plot(x, pos(mean), marker="o", ms=3, lw=1.5, color=c, label=ROLE_LABELS[role])
        for e in _standalone(m):
            r = e.get("radial_fraction")
            if isinstance(r, dict) and 1 - num(r, "mean") > 0:
                x = -1.0 if e.get("role") == "embedding" else _last_x(m) + 1.0
                ax.plot([x], [1 - num(r, "mean")], marker="D", ms=5, ls="none",
                        color=ROLE_COLORS.get(e.get("role"), "#9467bd"), label=ROLE_LABELS.get(e.get("role"), "other"))
        _set_log(ax)
        ax.set_title(f"{m.get('name')} — 1 − ρ (ε's shrinkage of the radius)")
        ax.set_xlabel("block")
        ax.set_ylabel("1 − ρ")
        _legend(ax)
    return png_bytes(fig)
