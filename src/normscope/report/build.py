"""Assemble the normscope report: ``report.html`` (self-contained), ``tables.md``, ``stats.json``, figures.

``build(stats, out_dir)`` turns a stats dict (the schema written by
:func:`normscope.probe.run`, plus an optional top-level ``"run"`` block with the
settings and timings) into a report that answers Gupta et al.'s question — is the
mean removal in LayerNorm redundant because hidden vectors are already orthogonal
to 𝟙? — for the probed models, with the paper's own numbers beside ours.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from normscope import __version__
from normscope._io import atomic_write_bytes, atomic_write_text
from normscope.report import markup, plots
from normscope.report.tables import (
    Agg,
    BLOCK_ROLES,
    aggregate,
    get_path,
    gupta_tables,
    is_post_ln,
    layer_index,
    ln_sites,
    num,
)

ImageLike = Union[bytes, str, Path, Any]  # PNG bytes, a PNG/SVG path, or a matplotlib Figure


@dataclass
class Section:
    """An extra report section: a title, an HTML or Markdown body, and optional images.

    ``images`` items are ``(caption, image)`` pairs or bare images; an image is PNG bytes,
    a path to a .png/.svg file, or a matplotlib Figure.
    """

    title: str
    body: str
    images: Sequence[Any] = ()


# ----------------------------------------------------------------------------- numbers


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


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


@dataclass
class Verdict:
    model: str
    d: int
    post_ln: bool
    kinds: list[str]
    angle: Agg
    cos2: Agg
    worst_cos2: float
    worst_site: str
    tail_dev: float
    tail_site: str
    gap: Agg
    answer: str


def model_verdict(model: dict) -> Verdict:
    """Measured answer to "is mean removal redundant?" over the block-norm inputs of one model.

    Uses the inputs of every LN1/LN2 site: the mean angle with 𝟙 (pooled over blocks), the
    mean fraction of the squared norm along 𝟙 (cos²θ = μ²/RMS², exactly what removing the mean
    would discard), its worst block, and the widest p01/p99 excursion from 90°.
    """
    ln1, ln2, _, _ = ln_sites(model)
    entries = ln1 + ln2
    d = int(model.get("hidden_size") or 0)
    angle = aggregate([get_path(e, "input.angle_deg") for e in entries])
    cos2 = aggregate([get_path(e, "input.cos2") for e in entries])
    worst, worst_site = -math.inf, "–"
    tail, tail_site = -math.inf, "–"
    for e in entries:
        c = num(get_path(e, "input.cos2"), "mean")
        if _finite(c) and c > worst:
            worst, worst_site = c, str(e.get("name"))
        a = get_path(e, "input.angle_deg")
        dev = max(abs(90 - num(a, "p01")), abs(num(a, "p99") - 90))
        if _finite(dev) and dev > tail:
            tail, tail_site = dev, str(e.get("name"))
    gap = aggregate([e.get("rms_gap") for e in entries])
    kinds = sorted({str(e.get("kind")) for e in entries})
    baseline = 1.0 / d if d else math.nan
    if not entries or not _finite(cos2.mean):
        answer = "not measured (no block norms with finite statistics)"
    elif worst < 0.01:
        answer = (
            f"Yes, at inference: removing the mean would discard {100 * cos2.mean:.3g}% of the squared norm on "
            f"average and at most {100 * worst:.3g}% in any block (random-vector baseline 1/d = "
            f"{100 * baseline:.3g}%)."
        )
    elif cos2.mean < 0.01:
        answer = (
            f"Mostly: {100 * cos2.mean:.3g}% of the squared norm lies along 𝟙 on average, but up to "
            f"{100 * worst:.3g}% at {worst_site}, where mean removal does change the vector."
        )
    else:
        answer = (
            f"No: on average {100 * cos2.mean:.3g}% of the squared norm lies along 𝟙 (worst {100 * worst:.3g}% at "
            f"{worst_site}); mean removal removes a real component here."
        )
    return Verdict(
        model=str(model.get("name")),
        d=d,
        post_ln=is_post_ln(model),
        kinds=kinds,
        angle=angle,
        cos2=cos2,
        worst_cos2=worst,
        worst_site=worst_site,
        tail_dev=tail,
        tail_site=tail_site,
        gap=gap,
        answer=answer,
    )


# ----------------------------------------------------------------------------- text blocks

METRICS_MD = """\
- **Angle with 𝟙**, θ(v, 𝟙) = arccos(v·𝟙 / (‖v‖√d)) in degrees; cos θ = μ/RMS(v). 90° means the vector has zero mean, so LayerNorm's mean removal does nothing to it.
- **cos²θ** = μ²/(μ² + σ²), the fraction of the squared norm along 𝟙: exactly what mean removal discards.
- **Norm** ‖v‖₂ of the norm layer's input ("Hidden", "Pre-LN2") and output ("Post-LN1", "Post-LN2"; after γ and β). The standardised vector before γ has norm √d.
- **Rotation** = angle(x_in, x_out) between a norm layer's input and its output (after γ, β). Mean removal alone rotates by |90° − θ|; RMSNorm's standardisation rotates by 0°, so the rest is the gain γ (and bias β).
- **RMSNorm gap** = ‖z − RMSNorm(x)‖/‖z‖ with the layer's own γ, β and ε: the relative error of naively swapping this LayerNorm for RMSNorm at this token; zero when the input already has zero mean, rounding level for layers that are RMSNorm already.
- **Radial fraction** ρ = (1 + ε/σ²)^(−1/2) (RMSNorm: (1 + ε/mean(x²))^(−1/2)): the norm of the standardised vector over √d; below 1 only when the input's variance is comparable to ε.
- **Random-vector baseline**: an isotropic random vector in R^d makes 90° ± 57.3°/√d with 𝟙 (cos θ ≈ N(0, 1/d)), and E[cos²θ] = 1/d.
- **p01 / p50 / p99**: 1st, 50th, 99th percentile over tokens, interpolated in the probe's fixed-bin histograms (angles: 0.09° bins), so exact to within one bin; means, SDs, min and max are exact. Bands in the plots: p01–p99 (light), mean ± SD (dark).
"""

PM_MD = (
    "The paper's ± in Tables 2–4 is the per-layer token SD divided by √L (L = number of layers): e.g. GPT-J's "
    "layer-24 histogram has SD 8.90° and 8.90/√28 = 1.68, its Table 2 value. This is inferred from the published "
    "numbers; the paper does not say so. Our tables print the same paper-style ± and, as σ, the true pooled token SD."
)


def deviations_md(stats: dict) -> str:
    run = stats.get("run", {}) or {}
    models = stats.get("models", [])
    items = [
        "**Models.** The paper probes GPT-2 XL, GPT-Neo 1.3B, Pythia-1.4B/6.9B, GPT-J 6B (LayerNorm) and Llama-2-7B, "
        "Llama-3-8B (RMSNorm). None of those can be installed offline; we probe "
        + ", ".join(f"`{m.get('name')}`" for m in models)
        + ". The paper's numbers are shown for reference only, never as a pass/fail target.",
        "**Data.** The paper uses ~1M Wikipedia tokens per model (dump, chunking, context and BOS not stated); we use "
        f"{_texts_label(run)} in chunks of {run.get('seq_len', '?')} tokens, "
        f"{'skipping' if run.get('skip_first') else 'including'} the first position of every chunk, "
        f"at most {run.get('max_tokens', '?')} tokens per model, in {run.get('dtype', 'float32')}.",
        (
            "**First positions** were left out (--skip-first): every statistic starts at position 1 of each window."
            if run.get("skip_first") else
            "**First positions** are included, as the paper appears to do. The first token of a window often carries "
            "outlier ('massive activation') norms that dominate the max and σ of the Hidden norm; rerun with "
            "`--skip-first` to leave position 0 out."
        ),
        "**Final and embedding norms** are not in the paper's tables; they are excluded from our tables too but shown "
        "in the per-block plots (◆ markers).",
    ]
    for m in models:
        ln1, ln2, _, _ = ln_sites(m)
        kinds = {str(e.get("kind")) for e in ln1 + ln2}
        if is_post_ln(m):
            items.append(
                f"**{m.get('name')} is a post-LN encoder** (BERT style): each LayerNorm sits after the residual add, "
                "so its input is the residual sum (previous LN output + sublayer output) and 'Hidden' as the paper "
                "defines it (the pre-LN residual stream of a decoder) does not exist. Its rows are not directly "
                "comparable with the paper's."
            )
        elif kinds and kinds <= {"rmsnorm", "rmsnorm_offset"}:
            items.append(
                f"**{m.get('name')} already uses RMSNorm**, which never removes the mean. 'Is mean removal redundant' "
                "is measured on its RMSNorm inputs: the numbers say how much a LayerNorm would remove there, as the "
                "paper does for Llama."
            )
    items.append(
        "**Aggregation.** We stream statistics (mean, SD, percentiles, histograms) per norm site instead of storing "
        "every vector; across-block numbers are recomputed exactly from the per-block ones (see the tables' notes)."
    )
    return "\n".join(f"- {s}" for s in items)


def _texts_label(run: dict) -> str:
    texts = run.get("texts")
    if not texts:
        return "the default text (CPython pydoc_data.topics, English documentation prose)"
    if isinstance(texts, str):
        return texts
    return ", ".join(str(t) for t in texts)


# ----------------------------------------------------------------------------- html pieces

CSS = """
:root{--fg:#1d2330;--muted:#5b6474;--line:#e3e6eb;--bg:#ffffff;--panel:#f6f8fa;--accent:#1f5fbf;--paper:#fbf7ec}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.55 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:28px 36px 60px}
h1{font-size:27px;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:20px;margin:40px 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:16px;margin:24px 0 8px}
.sub{color:var(--muted);margin:0 0 18px}
code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--panel);padding:1px 4px;border-radius:3px}
pre{background:var(--panel);padding:10px 14px;border-radius:6px;overflow-x:auto}
.summary{background:linear-gradient(180deg,#f3f7ff,#fafcff);border:1px solid #cfdcf3;border-radius:10px;padding:18px 22px;margin:16px 0 8px}
.summary h2{margin:0 0 10px;border:0;padding:0;font-size:19px}
.verdicts{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:14px}
.verdict{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px}
.verdict h3{margin:0 0 6px;font-size:16px}
.verdict .ans{font-weight:600;margin:0 0 8px}
.kv{display:grid;grid-template-columns:auto 1fr;gap:2px 14px;font-size:13.5px}
.kv dt{color:var(--muted)}.kv dd{margin:0;font-variant-numeric:tabular-nums}
.tag{display:inline-block;font-size:11.5px;padding:1px 7px;border-radius:10px;background:#e9eef7;color:#2c4a7a;margin-left:6px;vertical-align:2px;font-weight:600}
.tag.warn{background:#fdf0e0;color:#8a4b00}
.table-wrap{overflow-x:auto;margin:8px 0}
table{border-collapse:collapse;font-size:13.5px;font-variant-numeric:tabular-nums;min-width:60%}
th,td{border-bottom:1px solid var(--line);padding:5px 10px;text-align:right;white-space:nowrap}
th{background:var(--panel);font-weight:600;text-align:center}
td.label,th:first-child{text-align:left}
tr.paper td{background:var(--paper);color:#4a4536}
tr.sep td{background:#fff;color:var(--muted);font-style:italic;text-align:left;padding-top:10px;font-size:12.5px}
span.sd{color:var(--muted);font-size:12px;margin-left:4px}
ul.notes{color:var(--muted);font-size:13px;margin:6px 0 18px;padding-left:20px}
figure{margin:18px 0 26px}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
figcaption{color:var(--muted);font-size:13.5px;margin-top:6px;max-width:1000px}
details{margin:10px 0;border:1px solid var(--line);border-radius:6px;padding:6px 12px}
details summary{cursor:pointer;font-weight:600}
.meta{font-size:13.5px}
.meta td,.meta th{text-align:left}
.callout{border-left:4px solid #d9a441;background:#fffaf0;padding:8px 14px;border-radius:4px;margin:10px 0}
.bad{color:#b00020;font-weight:600}
footer{color:var(--muted);font-size:12.5px;margin-top:40px;border-top:1px solid var(--line);padding-top:10px}
"""


def _img_tag(img: ImageLike, alt: str) -> str:
    if isinstance(img, (str, Path)):
        p = Path(img)
        data = p.read_bytes()
        if p.suffix.lower() == ".svg":
            return f'<div class="svg">{data.decode("utf-8")}</div>'
    elif isinstance(img, (bytes, bytearray)):
        data = bytes(img)
    elif hasattr(img, "savefig"):
        data = plots.png_bytes(img)
    else:
        raise ValueError(f"unsupported image type {type(img).__name__}; pass PNG bytes, a .png/.svg path or a Figure")
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _figure(img: ImageLike, caption: str) -> str:
    return f"<figure>{_img_tag(img, caption)}<figcaption>{markup.inline(caption)}</figcaption></figure>"


def _fmt(v: Any, digits: int = 2, pct: bool = False) -> str:
    if not _finite(v):
        return "–"
    return f"{100 * v:.{digits}g}%" if pct else f"{v:.{digits}f}"


def _verdict_html(v: Verdict, model: dict) -> str:
    tags = "".join(f'<span class="tag">{html.escape(k)}</span>' for k in v.kinds)
    if v.post_ln:
        tags += '<span class="tag warn">post-LN</span>'
    sd = plots.null_sd_deg(v.d) if v.d else math.nan
    rows = [
        ("angle with 𝟙 (norm inputs)", f"{_fmt(v.angle.mean)}° ± {_fmt(v.angle.sd)}° (mean ± pooled token SD)"),
        ("random-vector baseline", f"90° ± {_fmt(sd)}° (d = {v.d})"),
        ("fraction of ‖x‖² along 𝟙", f"{_fmt(v.cos2.mean, 3, True)} mean; worst block {_fmt(v.worst_cos2, 3, True)}"),
        ("worst block", html.escape(v.worst_site)),
        ("widest p01/p99 from 90°", f"{_fmt(v.tail_dev)}° at {html.escape(v.tail_site)}"),
    ]
    if v.gap.n_layers and "layernorm" in v.kinds:
        rows.append(("naive LN→RMSNorm swap error", f"{100 * v.gap.mean:.3g}% of ‖z‖ (mean RMSNorm gap)"))
    toks = model.get("tokens")
    if toks is not None:
        rows.append(("tokens probed", f"{int(toks):,}"))
    nf = nonfinite_counts(model)
    if nf["input_tokens"] or nf["output_tokens"]:
        rows.append(("NaN/Inf (skipped)", f'<span class="bad">{nf["input_tokens"]:,} input and {nf["output_tokens"]:,} '
                     "output token-vectors summed over all norm sites</span>"))
    kv = "".join(f"<dt>{html.escape(k)}</dt><dd>{val}</dd>" for k, val in rows)
    return (
        f'<div class="verdict"><h3>{html.escape(v.model)}{tags}</h3>'
        f'<p class="ans">{markup.inline(v.answer)}</p><dl class="kv">{kv}</dl></div>'
    )


def nonfinite_counts(model: dict) -> dict[str, int]:
    """Tokens dropped for NaN/Inf, summed over the model's norm sites (probe's ``nonfinite`` dicts)."""
    tot = {"input_tokens": 0, "output_tokens": 0, "input_values": 0, "output_values": 0}
    for e in model.get("layers", []):
        nf = e.get("nonfinite")
        if isinstance(nf, dict):
            for k in tot:
                v = nf.get(k)
                if _finite(v):
                    tot[k] += int(v)
    return tot


def _run_table(stats: dict) -> str:
    run = stats.get("run", {}) or {}
    rows = []
    for m in stats.get("models", []):
        mr = m.get("run", {}) or {}
        sites = m.get("layers", [])
        kinds = sorted({str(e.get("kind")) for e in sites})
        eps = sorted({e.get("eps") for e in sites if _finite(e.get("eps"))})
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(c))}</td>"
                for c in (
                    m.get("name"),
                    mr.get("family", m.get("family", "")),
                    m.get("hidden_size"),
                    len({layer_index(e) for e in sites if e.get("role") in BLOCK_ROLES}),
                    len(sites),
                    ", ".join(kinds) + (f" (ε {', '.join(f'{x:g}' for x in eps)})" if eps else ""),
                    f"{int(m['tokens']):,}" if _finite(m.get("tokens")) else "?",
                    _secs(mr.get("load_seconds")),
                    _secs(mr.get("probe_seconds")),
                )
            )
            + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("model", "family", "d", "blocks", "norm sites", "norm kind", "tokens", "load", "probe")
    )
    extra = []
    for k, label in (
        ("seq_len", "sequence length"),
        ("batch_size", "batch size"),
        ("max_tokens", "token budget per model"),
        ("skip_first", "skip first position"),
        ("dtype", "dtype"),
        ("seconds", "load + probe time"),
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("started", "started (UTC)"),
    ):
        if k in run:
            val = _secs(run[k]) if k == "seconds" else run[k]
            extra.append(f"<tr><th>{label}</th><td>{html.escape(str(val))}</td></tr>")
    extra.insert(0, f"<tr><th>text</th><td>{html.escape(_texts_label(run))}</td></tr>")
    return (
        f'<div class="table-wrap"><table class="meta"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        f'<div class="table-wrap"><table class="meta"><tbody>{"".join(extra)}</tbody></table></div>'
    )


def _secs(v: Any) -> str:
    return f"{v:.1f} s" if _finite(v) else "–"


def per_site_markdown(model: dict) -> str:
    """One row per norm site: angle in/out, cos², norm in/out, rotation, radial fraction, gap."""
    head = "| site | role | kind | θ in (mean ± SD) | θ out | cos² in | ‖x‖ in | ‖z‖ out | rotation | ρ | gap |"
    out = [head, "|" + "---|" * 11]

    def ms(s: Any, d: int = 2) -> str:
        m, sd = num(s, "mean"), num(s, "std")
        return "–" if not _finite(m) else (f"{m:.{d}f} ± {sd:.{d}f}" if _finite(sd) else f"{m:.{d}f}")

    def m_(s: Any, fmt: str = ".3g") -> str:
        m = num(s, "mean")
        return "–" if not _finite(m) else format(m, fmt)

    for e in model.get("layers", []):
        out.append(
            "| "
            + " | ".join(
                [
                    f"`{e.get('name')}`",
                    str(e.get("role")),
                    str(e.get("kind")),
                    ms(get_path(e, "input.angle_deg")),
                    ms(get_path(e, "output.angle_deg")),
                    m_(get_path(e, "input.cos2")),
                    ms(get_path(e, "input.norm"), 1),
                    ms(get_path(e, "output.norm"), 1),
                    ms(e.get("rotation_deg")),
                    m_(e.get("radial_fraction"), ".6f"),
                    m_(e.get("rms_gap")),
                ]
            )
            + " |"
        )
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- build


def _parse_extra(extra: Iterable[Any]) -> list[Section]:
    out = []
    for s in extra:
        if isinstance(s, Section):
            out.append(s)
        elif isinstance(s, (tuple, list)) and len(s) in (2, 3):
            out.append(Section(str(s[0]), str(s[1]), tuple(s[2]) if len(s) == 3 and s[2] else ()))
        else:
            raise ValueError("an extra section is (title, html_or_markdown[, images]) or a Section")
    return out


def _figures(stats: dict, hist_layers: dict[str, list[int]] | None) -> list[tuple[str, str, bytes]]:
    """(file stem, caption, png) for every figure that has data."""
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
    return [(k, c, p) for k, c, p in figs if p is not None]


def build(
    stats: dict,
    out_dir: str | Path,
    *,
    extra_sections: Sequence[Any] = (),
    hist_layers: dict[str, list[int]] | None = None,
    title: str = "normscope report — is LayerNorm's mean removal redundant?",
) -> Path:
    """Write ``report.html``, ``tables.md``, ``stats.json`` and ``figures/*.png`` into ``out_dir``.

    **Arguments:**
    - ``stats``: ``{"models": [...], "run": {...}}`` as returned by :func:`normscope.probe.run`
      (one entry per model), optionally with a ``run`` block (settings, timings, versions).
    - ``out_dir``: an existing or new folder; the CLI passes the temporary folder of
      :func:`normscope._io.output_dir`, which makes the whole report appear atomically.
    - ``extra_sections``: ``(title, html_or_markdown[, images])`` tuples or :class:`Section`s
      appended after the built-in sections (for later analyses: swap test, attention, ...).
    - ``hist_layers``: model name → blocks to histogram (default: the block at ≈75% depth).

    **Returns:** the path of ``report.html``. Non-finite numbers are written to stats.json as null.
    """
    if not isinstance(stats, dict) or not isinstance(stats.get("models"), list) or not stats["models"]:
        raise ValueError("stats must be a dict with a non-empty 'models' list (the normscope.probe schema)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = _parse_extra(extra_sections)
    clean = sanitize(stats)

    atomic_write_text(out / "stats.json", json.dumps(clean, separators=(",", ":"), allow_nan=False) + "\n")

    tables = gupta_tables(clean)
    verdicts = [(model_verdict(m), m) for m in clean["models"]]
    figs = _figures(clean, hist_layers)
    (out / "figures").mkdir(exist_ok=True)
    for stem, _, png in figs:
        atomic_write_bytes(out / "figures" / f"{stem}.png", png)

    # ---- markdown
    md = [f"# {title}", ""]
    md.append("## Summary: is mean removal redundant in these models?\n")
    md.append("Measured on the inputs of every block norm. Verdict rule: *yes* when no block's mean cos²θ reaches 1% "
              "(mean removal would discard under 1% of the squared norm everywhere); *mostly* when only the average "
              "stays under 1%.\n")
    for v, _m in verdicts:
        md.append(
            f"- **{v.model}** ({', '.join(v.kinds)}{', post-LN' if v.post_ln else ''}, d = {v.d}): {v.answer} "
            f"Angle with 𝟙 of the norm inputs {_fmt(v.angle.mean)}° ± {_fmt(v.angle.sd)}° (pooled token SD; random "
            f"baseline 90° ± {_fmt(plots.null_sd_deg(v.d) if v.d else math.nan)}°)."
        )
    md += ["", "## Metrics", "", METRICS_MD, "## Deviations from Gupta et al.", "", deviations_md(clean), ""]
    md += ["## Tables", "", PM_MD, ""] + [t.to_markdown() for t in tables]
    md.append("## Per norm site\n")
    for m in clean["models"]:
        md += [f"### {m.get('name')}", "", per_site_markdown(m)]
    for s in sections:
        md += [f"## {s.title}", "", s.body if not markup.looks_like_html(s.body) else "(HTML section; see report.html)", ""]
    atomic_write_text(out / "tables.md", "\n".join(md) + "\n")

    # ---- html
    run = clean.get("run", {}) or {}
    when = run.get("started") or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = ", ".join(str(m.get("name")) for m in clean["models"])
    total = sum(int(m.get("tokens") or 0) for m in clean["models"])
    sub = f"{names} · {total:,} tokens in all · normscope {__version__} · {when}"
    if _finite(run.get("seconds")):
        sub += f" · run time {run['seconds']:.0f} s"
    h = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(sub)}</p>",
        "<section class='summary'><h2>Is mean removal redundant in these models?</h2>",
        "<p>Gupta et al. (2025) argue that LayerNorm's mean subtraction is redundant at inference because hidden "
        "vectors already sit at ≈90° to the all-ones vector 𝟙. Measured on the inputs of every block norm here "
        "(verdict rule: <em>yes</em> when no block's mean cos²θ reaches 1%, i.e. mean removal would discard under 1% "
        "of the squared norm everywhere; <em>mostly</em> when only the average stays under 1%):</p>",
        "<div class='verdicts'>" + "".join(_verdict_html(v, m) for v, m in verdicts) + "</div></section>",
        "<h2>Run</h2>",
        _run_table(clean),
        "<h2>What is measured</h2>",
        markup.to_html(METRICS_MD),
        "<h2>Deviations from the paper</h2>",
        markup.to_html(deviations_md(clean)),
        "<h2>Gupta-style tables</h2>",
        f"<div class='callout'>{markup.inline(PM_MD)}</div>",
    ]
    for t in tables:
        h.append(f"<h3>{html.escape(t.title)}</h3>{t.to_html()}")
    h.append("<h2>Per-block plots</h2>")
    h += [_figure(png, cap) for _, cap, png in figs]
    h.append("<h2>Per norm site</h2>")
    for m in clean["models"]:
        h.append(f"<details><summary>{html.escape(str(m.get('name')))}: {len(m.get('layers', []))} norm sites</summary>")
        h.append(markup.to_html(per_site_markdown(m)) + "</details>")
    for s in sections:
        body = s.body if markup.looks_like_html(s.body) else markup.to_html(s.body)
        h.append(f"<h2>{html.escape(s.title)}</h2>{body}")
        for i, img in enumerate(s.images):
            cap, im = (img if isinstance(img, (tuple, list)) and len(img) == 2 else (f"{s.title} ({i + 1})", img))
            h.append(_figure(im, str(cap)))
    h.append(
        "<footer>Paper: A. Gupta, A. Ozdemir, G. Anumanchipalli, “Geometric Interpretation of Layer Normalization and "
        "a Comparative Analysis with RMSNorm”, arXiv:2409.12951 v2 (2025). Published numbers transcribed into "
        "normscope/data/gupta_tables.json. Files next to this page: stats.json (all statistics), tables.md, "
        "figures/.</footer>"
    )
    h.append("</main></body></html>")
    path = out / "report.html"
    atomic_write_text(path, "\n".join(h))
    return path
