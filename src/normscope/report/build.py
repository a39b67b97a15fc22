"""Write the normscope report: ``stats.json`` first, then ``figures/*.png``, ``tables.md``, ``report.html``.

``build(stats, out_dir)`` turns a stats dict (the schema of :func:`normscope.probe.run`, plus the
optional ``"run"``, ``"swap"`` and ``"attention"`` blocks of ``probe/SCHEMA.md``) into a report
that answers Gupta et al.'s question — is the mean removal in LayerNorm redundant because hidden
vectors are already orthogonal to 𝟙? — with the paper's numbers beside ours. The content is built
once (:func:`normscope.report.document.build_document`) and rendered twice
(:mod:`~normscope.report.render_html`, :mod:`~normscope.report.render_md`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

from normscope._io import atomic_write_bytes, atomic_write_text
from normscope.report import plots
from normscope.report.document import Figure, Section, build_document, parse_extra
from normscope.report.render_html import page
from normscope.report.render_md import document_md
from normscope.report.verdict import model_verdict

__all__ = ["Section", "build", "model_verdict", "sanitize", "report_figures"]


def sanitize(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tuples lists, numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return sanitize(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_stats(stats: dict, out_dir: str | Path) -> Path:
    """``stats.json`` (sanitised, compact) in ``out_dir``; what the CLI saves even when a later step fails."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / "stats.json",
                             json.dumps(sanitize(stats), separators=(",", ":"), allow_nan=False) + "\n")


def report_figures(stats: dict, hist_layers: dict[str, list[int]] | None = None) -> list[Figure]:
    """The per-block figures that have data (PNG bytes, ``stem`` = file name under figures/)."""
    figs: list[tuple[str, str, Any]] = [
        (
            "angle_per_block",
            "Angle with 𝟙 per block, for the inputs (left) and outputs (right) of each norm. Lines: mean over tokens; "
            "dark band: mean ± SD; light band: p01–p99; grey band: random vector, 90° ± 2·57.3°/√d. ◆: embedding / "
            "final norm.",
            plots.angle_curves(stats),
        ),
        (
            "angle_deviation",
            "Mean angle minus 90° per block (solid: norm input; dashed: output; ticks: median of the input), on the "
            "scale of the random-vector baseline (grey, ±1 SD).",
            plots.angle_zoom(stats),
        ),
        (
            "angle_histograms",
            "Histograms of the angle with 𝟙 over tokens at one block per model (≈75% depth, as the paper's layers "
            "24/32, 18/24, 43/48), log density; dashed: random-vector density. Box: mean ± token SD, comparable "
            "with the paper's histogram legends (their Figs. 5, 11–13).",
            plots.angle_histograms(stats, hist_layers),
        ),
        (
            "norms_per_block",
            "L2 norm of each norm's input (solid) and output (dashed) per block, log scale, band p01–p99; dotted: √d, "
            "the norm of the standardised vector before γ, β.",
            plots.norm_curves(stats),
        ),
        (
            "rotation_per_block",
            "Rotation angle between each norm's input and output per block (the paper's Figs. 3, 9, 10).",
            plots.rotation_curves(stats),
        ),
        (
            "rms_gap_per_block",
            "RMSNorm gap per block, ‖z − RMSNorm(x)‖/‖z‖ with the layer's own γ, β, ε (log scale): the relative "
            "error of naively swapping LayerNorm for RMSNorm. For layers that are RMSNorm already it is rounding "
            "error and only checks the probe.",
            plots.metric_curves(stats, "rms_gap", "RMSNorm gap ‖z − RMSNorm(x)‖/‖z‖", "relative error", log=True),
        ),
        (
            "radial_fraction_per_block",
            "Radial fraction ρ = (1 + ε/σ²)^(−1/2) per block (RMSNorm: ε/mean(x²)), shown as 1 − ρ on a log scale: "
            "line = mean over tokens, band = exact token range. ρ = 1 means ε is negligible against the input "
            "variance; a missing point means 1 − ρ is 0 to float64 precision.",
            plots.radial_deficit_curves(stats),
        ),
    ]
    return [Figure(c, p, stem=k) for k, c, p in figs if p is not None]


def build(
    stats: dict,
    out_dir: str | Path,
    *,
    extra_sections: Sequence[Any] = (),
    hist_layers: dict[str, list[int]] | None = None,
    title: str = "normscope report — is LayerNorm's mean removal redundant?",
) -> Path:
    """Write ``stats.json``, ``figures/*.png``, ``tables.md`` and ``report.html`` into ``out_dir``.

    **Arguments:**
    - ``stats``: ``{"models": [...], "run": {...}}`` as returned by :func:`normscope.probe.run`
      (one entry per model); each model may carry ``"swap"`` / ``"attention"`` results or
      ``{"status": "not measured", "reason"}`` records, rendered as sections.
    - ``out_dir``: an existing or new folder; the CLI passes the temporary folder of
      :func:`normscope._io.output_dir`, which makes the whole report appear atomically.
    - ``extra_sections``: :class:`Section`\\ s or ``(title, html_or_markdown[, images])`` tuples,
      appended after the built-in sections.
    - ``hist_layers``: model name → blocks to histogram (default: the block at ≈75% depth).

    **Returns:** the path of ``report.html``. ``stats.json`` is written first (non-finite numbers as
    null), so a failure while drawing or rendering never loses the statistics; it is rewritten at
    the end with the seconds of the ``figures`` and ``write`` stages in ``run.stages`` when ``stats``
    has a ``run`` block (which is updated in place).
    """
    if not isinstance(stats, dict) or not isinstance(stats.get("models"), list) or not stats["models"]:
        raise ValueError("stats must be a dict with a non-empty 'models' list (the normscope.probe schema)")
    extra = parse_extra(extra_sections)  # reject a malformed extra section before writing anything
    out = Path(out_dir)
    write_stats(stats, out)
    clean = sanitize(stats)
    t = time.perf_counter()
    figs = report_figures(clean, hist_layers)
    t_fig = time.perf_counter() - t
    stages: dict[str, float] = {"figures": t_fig}
    if isinstance(clean.get("run"), dict):  # the page shows the figures stage too (write is in stats.json only)
        clean["run"].setdefault("stages", {})["figures"] = t_fig
    t = time.perf_counter()
    doc = build_document(clean, figs, extra=extra, title=title)
    (out / "figures").mkdir(exist_ok=True)
    for f in figs:
        atomic_write_bytes(out / "figures" / f"{f.stem}.png", f.image)
    atomic_write_text(out / "tables.md", document_md(doc))
    path = atomic_write_text(out / "report.html", page(doc))
    stages["write"] = time.perf_counter() - t
    if isinstance(stats.get("run"), dict):  # a run block (the CLI's) records the stages; the caller's dict too
        stats["run"].setdefault("stages", {}).update(stages)
        write_stats(stats, out)
    return path
