"""Render a :class:`~normscope.report.document.Document` as one self-contained HTML page.

Images are inlined as base64 PNG (SVG inline), the style sheet (``report/style.css``, package
data) is inlined too: the page references nothing outside itself.
"""

from __future__ import annotations

import base64
import html
import re
from importlib import resources
from pathlib import Path
from typing import Any

from normscope.report import markup
from normscope.report.document import Card, Document, Figure, Section
from normscope.report.tables import Table


def css() -> str:
    """The report's style sheet (package data ``normscope/report/style.css``)."""
    return resources.files("normscope.report").joinpath("style.css").read_text(encoding="utf-8")


def _img_tag(img: Any, alt: str) -> str:
    if isinstance(img, (str, Path)):
        p = Path(img)
        data = p.read_bytes()
        if p.suffix.lower() == ".svg":
            return f'<div class="svg">{data.decode("utf-8")}</div>'
    elif isinstance(img, (bytes, bytearray)):
        data = bytes(img)
    elif hasattr(img, "savefig"):
        from normscope.report.plots import png_bytes

        data = png_bytes(img)
    else:
        raise ValueError(f"unsupported image type {type(img).__name__}; pass PNG bytes, a .png/.svg path or a Figure")
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def figure_html(f: Figure) -> str:
    return f"<figure>{_img_tag(f.image, f.caption)}<figcaption>{markup.inline(f.caption)}</figcaption></figure>"


def _cell(c: str) -> str:
    m = re.match(r"^(.*?) \(σ (.*)\)$", c)
    if m:
        return f'{markup.inline(m.group(1))} <span class="sd">σ {markup.inline(m.group(2))}</span>'
    return markup.inline(c)


def table_html(t: Table) -> str:
    """A table with the paper's rows set apart, σ in a muted span, and its notes below."""
    h = [f'<div class="table-wrap"><table class="{html.escape(t.css)}">', "<thead><tr>"]
    h += [f"<th>{markup.inline(c)}</th>" for c in t.header]
    h.append("</tr></thead><tbody>")
    first_paper = min(t.paper_rows) if t.paper_rows else None
    for i, r in enumerate(t.rows):
        cls = "paper" if i in t.paper_rows else "ours"
        if i == first_paper:
            h.append(f'<tr class="sep"><td colspan="{len(t.header)}">'
                     "Published numbers of Gupta et al. (2025), their models and data — for reference</td></tr>")
        tds = [f'<td class="label">{markup.inline(r[0])}</td>'] + [f"<td>{_cell(c)}</td>" for c in r[1:]]
        h.append(f'<tr class="{cls}">' + "".join(tds) + "</tr>")
    h.append("</tbody></table></div>")
    if t.notes:
        h.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in t.notes) + "</ul>")
    body = "".join(h)
    if t.collapsed:
        return f"<details><summary>{html.escape(t.collapsed)}</summary>{body}</details>"
    if t.title:
        return f"<h3>{html.escape(t.title)}</h3>{body}"
    return body


def card_html(c: Card) -> str:
    tags = "".join(f'<span class="tag">{html.escape(k)}</span>' for k in c.tags)
    tags += "".join(f'<span class="tag warn">{html.escape(k)}</span>' for k in c.warn_tags)
    kv = "".join(f"<dt>{html.escape(k)}</dt><dd>{_value(v)}</dd>" for k, v in c.rows)
    return (f'<div class="verdict"><h3>{html.escape(c.title)}{tags}</h3>'
            f'<p class="ans">{markup.inline(c.answer)}</p><dl class="kv">{kv}</dl></div>')


def _value(v: str) -> str:
    out = markup.inline(v)
    return out.replace("<strong>", '<span class="bad">').replace("</strong>", "</span>") if "NaN" in v else out


def _prose(text: str) -> str:
    return text if markup.looks_like_html(text) else markup.to_html(text)


def section_html(s: Section) -> str:
    h = [f"<h2>{html.escape(s.title)}</h2>"]
    if not s.measured:
        h.append(f'<p class="nm">not measured: {markup.inline(s.reason)}</p>')
    if s.prose:
        h.append(_prose(s.prose))
    if s.callout:
        h.append(f"<div class='callout'>{markup.inline(s.callout)}</div>")
    if s.cards:
        h.append("<div class='verdicts'>" + "".join(card_html(c) for c in s.cards) + "</div>")
    h += [table_html(t) for t in s.tables]
    if s.after:
        h.append(_prose(s.after))
    h += [figure_html(f) for f in s.figure_list()]
    body = "\n".join(h)
    return f"<section class='{s.css}'>{body}</section>" if s.css else body


def page(doc: Document) -> str:
    """The whole page."""
    h = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(doc.title)}</title><style>{css()}</style></head><body><main>",
        f"<h1>{html.escape(doc.title)}</h1><p class='sub'>{html.escape(doc.subtitle)}</p>",
    ]
    h += [section_html(s) for s in doc.sections]
    h.append(f"<footer>{html.escape(doc.footer)}</footer>")
    h.append("</main></body></html>")
    return "\n".join(h)
