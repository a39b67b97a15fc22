"""The report as data: a title, a subtitle and a list of :class:`Section`\\ s, built once.

:func:`build_document` turns a stats dict into that list; :mod:`normscope.report.render_html` and
:mod:`normscope.report.render_md` render the same list to ``report.html`` and ``tables.md``. A
section that could not be computed carries ``status="not measured"`` and its ``reason`` and is
rendered as "not measured: <reason>" — it never stops the rest of the report.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from normscope import __version__
from normscope.probe.schema import NOT_MEASURED, RunInfo
from normscope.report.format import finite
from normscope.report.tables import Table

__all__ = ["Card", "Document", "Figure", "Section", "Table", "build_document"]


@dataclass
class Figure:
    """A figure: caption and image (PNG bytes, a .png/.svg path or a matplotlib Figure); ``stem`` names its file."""

    caption: str
    image: Any
    stem: str | None = None


@dataclass
class Card:
    """A verdict card of the summary: a title with tags, the answer, and key/value rows (values are Markdown)."""

    title: str
    answer: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    warn_tags: list[str] = field(default_factory=list)


@dataclass
class Section:
    """One section of the report.

    **Fields:** ``title``; ``prose`` (Markdown, or an HTML fragment when it starts with ``<``,
    shown in the HTML page only); ``tables`` (:class:`Table`); ``figures`` (:class:`Figure` or
    ``(caption, image)`` pairs or bare images); ``cards`` (summary verdicts); ``callout``
    (a highlighted note before the tables); ``status`` ("ok" or "not measured") and ``reason``.
    ``after`` is Markdown shown after the tables.
    """

    title: str
    prose: str = ""
    tables: Sequence[Table] = ()
    figures: Sequence[Any] = ()
    cards: Sequence[Card] = ()
    callout: str = ""
    status: str = "ok"
    reason: str = ""
    after: str = ""
    css: str = ""
    images: Sequence[Any] = ()  # the older name of ``figures``; shown after them


    @property
    def measured(self) -> bool:
        return self.status != NOT_MEASURED

    def figure_list(self) -> list[Figure]:
        out = []
        for i, f in enumerate([*self.figures, *self.images]):
            if isinstance(f, Figure):
                out.append(f)
            elif isinstance(f, (tuple, list)) and len(f) == 2:
                out.append(Figure(str(f[0]), f[1]))
            else:
                out.append(Figure(f"{self.title} ({i + 1})", f))
        return out


def not_measured_section(title: str, reason: str) -> Section:
    return Section(title, status=NOT_MEASURED, reason=str(reason))


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]
    footer: str


def parse_extra(extra: Sequence[Any]) -> list[Section]:
    """Extra sections: :class:`Section`\\ s or ``(title, markdown_or_html[, images])`` tuples."""
    out = []
    for s in extra:
        if isinstance(s, Section):
            out.append(s)
        elif isinstance(s, (tuple, list)) and len(s) in (2, 3):
            out.append(Section(str(s[0]), str(s[1]), figures=tuple(s[2]) if len(s) == 3 and s[2] else ()))
        else:
            raise ValueError("an extra section is (title, html_or_markdown[, images]) or a Section")
    return out


def _subtitle(stats: dict) -> str:
    run = RunInfo.from_dict(stats.get("run"))
    when = run.raw.get("started") or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = ", ".join(str(m.get("name")) for m in stats["models"])
    total = sum(int(m.get("tokens") or 0) for m in stats["models"])
    sub = f"{names} · {total:,} tokens in all · normscope {__version__} · {when}"
    if finite(run.seconds):
        sub += f" · run time {run.seconds:.0f} s"
    return sub


def _guard(title: str, make: Callable[[], Section | list[Section]]) -> list[Section]:
    """Run a section builder; a failure becomes a 'not measured' section instead of a lost report."""
    try:
        out = make()
    except Exception as e:  # noqa: BLE001 — any failure of one section must not lose the others
        return [not_measured_section(title, f"{type(e).__name__}: {e}")]
    return out if isinstance(out, list) else [out]


def build_document(
    stats: dict,
    figures: Sequence[Figure],
    *,
    extra: Sequence[Any] = (),
    title: str = "normscope report — is LayerNorm's mean removal redundant?",
) -> Document:
    """Every section of the report, in page order (summary, run, metrics, deviations, tables,
    plots, per-site tables, swap tests, attention, then ``extra``: whatever :func:`parse_extra`
    accepts, already parsed sections included)."""
    from normscope.report import prose, sections as S

    secs: list[Section] = []
    secs += _guard("Summary", lambda: S.summary_section(stats))
    secs += _guard("Run", lambda: S.run_section(stats))
    secs.append(Section("What is measured", prose.METRICS_MD))
    secs.append(Section("Deviations from the paper", prose.deviations_md(stats)))
    secs += _guard("Gupta-style tables", lambda: S.gupta_section(stats))
    secs.append(Section("Per-block plots", figures=list(figures)) if figures
                else not_measured_section("Per-block plots", "no figure had data"))
    secs += _guard("Per norm site", lambda: S.per_site_section(stats))
    for m in stats["models"]:
        secs += _guard(f"Naive norm swap: {m.get('name')}", lambda m=m: S.swap_sections(m))
        secs += _guard(f"Attention: {m.get('name')}", lambda m=m: S.attention_sections(m))
    secs += parse_extra(extra)
    return Document(title, _subtitle(stats), secs, prose.FOOTER)
