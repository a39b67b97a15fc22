"""Gupta-style tables (angle with 𝟙, norm spread, rotation) from a stats dict.

The three tables of Gupta, Ozdemir & Anumanchipalli (arXiv:2409.12951 v2, Tables 2-4)
aggregate per-token metrics over all blocks of a model. Each of our cells is the
mean of the per-layer token means, followed by two spreads:

- **paper-style ±** = mean over layers of the per-layer token SD, divided by √L
  (L = number of blocks). This is how the paper's "±" behaves (its legend
  SD / √L, checked against Tables 2 and the histogram legends); the paper never states it.
- **σ** = the true pooled token SD over all layers,
  σ² = Σ_l n_l (s_l² + (m_l − m̄)²) / Σ_l n_l (exact from per-layer mean m_l, SD s_l, count n_l).

Vector types follow the paper (§2.4): *Hidden* = input of the block's first norm
(LN1, before attention), *Post-LN1* = its output, *Pre-LN2* = input of the second
norm (before the MLP), *Post-LN2* = its output. For post-LN encoders (BERT/MiniLM)
LN1/LN2 are the norms after the attention and MLP residual adds, so "Hidden" is
the residual sum *after* the add; the embedding norm and the final norm are not
part of these tables (the paper studies neither), but are in the per-layer plots.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Sequence

from normscope.probe.schema import BLOCK_ROLES, POST_ROLES, PRE_ROLES, count_of, get_path, is_post_ln, ln_sites, num
from normscope.probe.stats import hist_edges
from normscope.report.format import DASH, fixed, pm as _pm, ratio as _ratio

__all__ = ["Agg", "Table", "aggregate", "agg_path", "gupta_tables", "paper_tables", "mean_abs_deviation",
           "BLOCK_ROLES", "PRE_ROLES", "POST_ROLES", "ln_sites", "is_post_ln"]


# ----------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Agg:
    """Across-layer aggregate of per-layer token summaries (see module docstring)."""

    mean: float
    pm: float  # paper-style: mean per-layer SD / sqrt(L)
    sd: float  # pooled token SD over all layers
    max: float
    min: float
    n_layers: int

    def fmt(self, digits: int = 2, *, sd: bool = True) -> str:
        if self.n_layers == 0 or math.isnan(self.mean):
            return DASH
        s = f"{self.mean:.{digits}f} ± {self.pm:.{digits}f}"
        if sd:
            s += f" (σ {self.sd:.{digits}f})"
        return s


def aggregate(summaries: Sequence[Any]) -> Agg:
    """Aggregate per-layer summaries ``{"mean","std","min","max"[,"count"]}``.

    Layers whose summary has no finite mean are ignored (e.g. all-NaN layers).
    """
    rows = [s for s in summaries if isinstance(s, dict) and math.isfinite(num(s, "mean"))]
    if not rows:
        nan = math.nan
        return Agg(nan, nan, nan, nan, nan, 0)
    L = len(rows)
    means = [num(s, "mean") for s in rows]
    sds = [num(s, "std") for s in rows]
    counts = [count_of(s) for s in rows]
    if any(math.isnan(c) or c <= 0 for c in counts):
        counts = [1.0] * L
    n = sum(counts)
    mbar = sum(c * m for c, m in zip(counts, means)) / n
    var = sum(c * ((0.0 if math.isnan(s) else s) ** 2 + (m - mbar) ** 2) for c, s, m in zip(counts, sds, means)) / n
    finite_sds = [s for s in sds if math.isfinite(s)]
    pm = (sum(finite_sds) / len(finite_sds)) / math.sqrt(L) if finite_sds else math.nan
    maxes = [num(s, "max") for s in rows if math.isfinite(num(s, "max"))]
    mins = [num(s, "min") for s in rows if math.isfinite(num(s, "min"))]
    return Agg(
        mean=mbar,
        pm=pm,
        sd=math.sqrt(var),
        max=max(maxes) if maxes else math.nan,
        min=min(mins) if mins else math.nan,
        n_layers=L,
    )


def agg_path(entries: Iterable[dict], path: str) -> Agg:
    return aggregate([get_path(e, path) for e in entries])


# ----------------------------------------------------------------------------- paper numbers


def paper_tables() -> dict:
    """The paper's published numbers (``normscope/data/gupta_tables.json``), with provenance."""
    text = resources.files("normscope").joinpath("data", "gupta_tables.json").read_text(encoding="utf-8")
    return json.loads(text)


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A renderer-agnostic table: header, rows (label + cells), which rows are the paper's, notes.

    Rendered by :func:`normscope.report.render_md.table_md` and
    :func:`normscope.report.render_html.table_html`.
    """

    key: str
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    paper_rows: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    css: str = "gupta"
    collapsed: str | None = None  # HTML: shown inside <details> with this summary line

    def to_markdown(self) -> str:
        from normscope.report.render_md import table_md

        return table_md(self)


def _label(model: dict) -> str:
    lab = str(model.get("name", "?"))
    if is_post_ln(model):
        lab += " [post-LN]"
    return lab


PM_NOTE = (
    "Our cells: mean over blocks of the per-block token mean ± paper-style spread "
    "(mean per-block token SD / √L, L = number of blocks), then σ = pooled SD over all tokens of all blocks. "
    "The paper's ± matches SD/√L of its per-layer histograms (an inference from its numbers, not stated by the paper); "
    "it is NOT the token spread, which is √L times larger."
)


def _model_notes(models: Sequence[dict]) -> list[str]:
    notes = []
    for m in models:
        if is_post_ln(m):
            notes.append(
                f"{m.get('name')}: post-LN encoder, so 'Hidden' is the input of attention.output.LayerNorm "
                "(residual sum after the attention add) and LN2 is output.LayerNorm (after the MLP add); "
                "not directly comparable with the paper's pre-LN decoders."
            )
    return notes


def table2(stats: dict, *, paper: dict | None = None) -> Table:
    """Table 2: angle (°) with the all-ones vector, before and after the block norms."""
    paper = paper_tables() if paper is None else paper
    t = Table(
        "table2",
        "Table 2 — angle with 𝟙 (degrees), all blocks",
        ["model", "Hidden & 𝟙", "Post-LN1 & 𝟙", "Pre-LN2 & 𝟙", "Post-LN2 & 𝟙"],
    )
    for m in stats.get("models", []):
        ln1, ln2, _, _ = ln_sites(m)
        t.rows.append(
            [
                _label(m),
                agg_path(ln1, "input.angle_deg").fmt(),
                agg_path(ln1, "output.angle_deg").fmt(),
                agg_path(ln2, "input.angle_deg").fmt(),
                agg_path(ln2, "output.angle_deg").fmt(),
            ]
        )
    for name, (h, p1, p2) in paper["table2_angle_with_ones_deg"]["rows"].items():
        t.paper_rows.add(len(t.rows))
        t.rows.append([name, _pm(h), _pm(p1), "n/a", _pm(p2)])
    t.notes = [
        PM_NOTE,
        "Random-vector baseline: an isotropic x in R^d has angle 90° ± 57.3°/√d with 𝟙.",
        "The paper prints no Pre-LN2 column in Table 2 (only in histogram legends, shown below); "
        "'–' = the model has no such norm (GPT-J has one LN per block).",
    ] + _model_notes(stats.get("models", []))
    return t


def table3(stats: dict, *, paper: dict | None = None) -> Table:
    """Table 3: L2 norms before and after the block norms (mean ± spread, and max)."""
    paper = paper_tables() if paper is None else paper
    t = Table(
        "table3",
        "Table 3 — L2 norm of the vectors, all blocks",
        ["model", "Hidden", "max Hidden", "Post-LN1", "max Post-LN1", "Post-LN2", "max Post-LN2", "SD ratio Hidden/Post-LN1"],
    )
    for m in stats.get("models", []):
        ln1, ln2, _, _ = ln_sites(m)
        h, p1, p2 = agg_path(ln1, "input.norm"), agg_path(ln1, "output.norm"), agg_path(ln2, "output.norm")
        ratio = h.pm / p1.pm if p1.n_layers and p1.pm > 0 else math.nan
        ratio_sd = h.sd / p1.sd if p1.n_layers and p1.sd > 0 else math.nan
        t.rows.append(
            [
                _label(m),
                h.fmt(),
                fixed(h.max),
                p1.fmt(),
                fixed(p1.max),
                p2.fmt(),
                fixed(p2.max),
                DASH if math.isnan(ratio) else f"{_ratio(ratio)} (±); {_ratio(ratio_sd)} (σ)",
            ]
        )
    for name, row in paper["table3_l2_norm"]["rows"].items():
        h, mh, p1, mp1, p2, mp2 = row
        ratio = f"{_ratio(h[1] / p1[1])} (±)" if h and p1 else DASH
        t.paper_rows.add(len(t.rows))
        t.rows.append([name, _pm(h), _pm(mh), _pm(p1), _pm(mp1), _pm(p2), _pm(mp2), ratio])
    t.notes = [
        PM_NOTE,
        "max = largest single-token norm over all blocks. The paper reports that the norm layers shrink the "
        "spread of the norm 10-100×; the last column is that factor, as the ratio of the ± (per-block SDs; the "
        "paper's numbers) and, for our models, also of the pooled σ (which includes the growth of the norm with depth).",
        "Post-LN norms depend on the learned gain γ (and bias β); the standardised norm before the affine step is √d.",
    ] + _model_notes(stats.get("models", []))
    return t


def table4(stats: dict, *, paper: dict | None = None) -> Table:
    """Table 4: rotation (°) between a norm layer's input and its output."""
    paper = paper_tables() if paper is None else paper
    t = Table(
        "table4",
        "Table 4 — rotation (degrees) between norm input and output, all blocks",
        ["model", "LN1: Hidden → Post-LN1", "LN2: Pre-LN2 → Post-LN2", "mean-removal part, LN1",
         "mean-removal part, LN2"],
    )
    for m in stats.get("models", []):
        ln1, ln2, _, _ = ln_sites(m)
        t.rows.append(
            [
                _label(m),
                agg_path(ln1, "rotation_deg").fmt(),
                agg_path(ln2, "rotation_deg").fmt(),
                _mean_removal_rotation(ln1),
                _mean_removal_rotation(ln2),
            ]
        )
    for name, (r1, r2) in paper["table4_rotation_deg"]["rows"].items():
        t.paper_rows.add(len(t.rows))
        t.rows.append([name, _pm(r1), _pm(r2), "n/a", "n/a"])
    t.notes = [
        PM_NOTE,
        "The paper labels the LN2 column 'Hidden & Post-LN2'; we read 'Hidden' there as the LN2 input (the more "
        "plausible reading).",
        "'mean-removal part' = mean over tokens of |90° − θ(x, 𝟙)|, the rotation that removing the mean alone "
        "would cause (our decomposition, not in the paper; from the 0.09°-bin angle histograms, error ≤ 0.05°). "
        "RMSNorm's standardisation rotates nothing, so the rest of the rotation comes from the gain γ (and bias β).",
    ] + _model_notes(stats.get("models", []))
    return t


def mean_abs_deviation(summary: Any, center: float = 90.0) -> float:
    """E|θ − center| over tokens, from a summary's histogram (bin centres; error ≤ half a bin).

    With ``center`` = 90° this is the mean rotation that removing the mean alone causes,
    angle(x, x⊥) = |90° − θ(x, 𝟙)| (Gupta et al. §3). NaN without a histogram.
    """
    h = summary.get("hist") if isinstance(summary, dict) else None
    if not isinstance(h, dict) or h.get("scale", "linear") != "linear":
        return math.nan
    edges, counts = list(hist_edges(h)), h.get("counts") or []
    if len(edges) != len(counts) + 1 or not counts:
        return math.nan
    tot = sum(counts)
    if tot <= 0:
        return math.nan
    return sum(c * abs(0.5 * (edges[i] + edges[i + 1]) - center) for i, c in enumerate(counts) if c) / tot


def _mean_removal_rotation(entries: list[dict]) -> str:
    """Token-weighted mean over blocks of E|90° − θ(x_in, 𝟙)| (from the angle histograms)."""
    vals, ws = [], []
    for e in entries:
        a = get_path(e, "input.angle_deg")
        v = mean_abs_deviation(a)
        if math.isfinite(v):
            w = count_of(a)
            vals.append(v)
            ws.append(w if math.isfinite(w) and w > 0 else 1.0)
    if not vals:
        return DASH
    return f"{sum(v * w for v, w in zip(vals, ws)) / sum(ws):.2f}"


def paper_legend_table(paper: dict | None = None) -> Table:
    """The single-layer histogram legends (mean ± token SD at one layer), for scale."""
    paper = paper_tables() if paper is None else paper
    leg = paper["histogram_legends_angle_deg"]
    t = Table(
        "legends",
        "Paper's single-layer angle histograms (legend mean ± token SD, degrees)",
        ["model (layer)", "Hidden", "Post-LN1", "Pre-LN2", "Post-LN2"],
    )
    for name, row in leg["rows"].items():
        t.paper_rows.add(len(t.rows))
        t.rows.append([f"{name} ({paper['models'][name]['hist_layer']})"] + [_pm(v) for v in row])
    t.notes = [
        "Here the ± IS the token SD at that layer. Dividing it by √L gives the ± of Table 2 "
        "(e.g. GPT-J 8.90/√28 = 1.68)."
    ]
    return t


def gupta_tables(stats: dict) -> list[Table]:
    """Tables 2, 3, 4 (ours beside the paper's) and the paper's legend statistics."""
    paper = paper_tables()
    return [table2(stats, paper=paper), table3(stats, paper=paper), table4(stats, paper=paper), paper_legend_table(paper)]
