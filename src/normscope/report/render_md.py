"""Render a :class:`~normscope.report.document.Document` as Markdown (``tables.md``)."""

from __future__ import annotations

from normscope.report import markup
from normscope.report.document import Card, Document, Section
from normscope.report.format import md_table
from normscope.report.tables import Table


def table_md(t: Table) -> str:
    """A table under a ``###`` heading (when it has a title), paper rows marked *(paper)*, notes as bullets."""
    rows = [[f"{r[0]} *(paper)*", *r[1:]] if i in t.paper_rows else list(r) for i, r in enumerate(t.rows)]
    out = [f"### {t.title}", ""] if t.title else []
    out.append(md_table(t.header, rows))
    out += [f"- {n}" for n in t.notes]
    return "\n".join(out) + "\n"


def card_md(c: Card) -> str:
    tags = ", ".join(c.tags + c.warn_tags)
    head = f"- **{c.title}**" + (f" ({tags})" if tags else "") + f": {c.answer}"
    return "\n".join([head] + [f"  - {k}: {v}" for k, v in c.rows])


def section_md(s: Section) -> str:
    out = [f"## {s.title}", ""]
    if not s.measured:
        out += [f"*not measured: {s.reason}*", ""]
    if s.prose:
        out += [s.prose if not markup.looks_like_html(s.prose) else "(HTML section; see report.html)", ""]
    if s.callout:
        out += [s.callout, ""]
    if s.cards:
        out += ["\n".join(card_md(c) for c in s.cards), ""]
    out += [table_md(t) for t in s.tables]
    if s.after:
        out += [s.after, ""]
    for f in s.figure_list():
        where = f" (figures/{f.stem}.png)" if f.stem else ""
        out.append(f"- Figure{where}: {f.caption}")
    return "\n".join(out).rstrip("\n") + "\n"


def document_md(doc: Document) -> str:
    parts = [f"# {doc.title}", ""] + [section_md(s) for s in doc.sections] + ["---", "", doc.footer]
    return "\n".join(parts) + "\n"
