"""Number formatting and the one Markdown-table writer of the report.

Every number on the page goes through one of these functions, so a missing or non-finite
value prints the same way everywhere (an en dash).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

DASH = "–"


def finite(v: Any) -> bool:
    """True for a real, finite int/float (bools excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fixed(v: Any, digits: int = 2) -> str:
    """``v`` with ``digits`` decimals, or an en dash."""
    return f"{v:.{digits}f}" if finite(v) else DASH


def sig(v: Any, spec: str = ".3g") -> str:
    """``format(v, spec)``, or an en dash."""
    return format(v, spec) if finite(v) else DASH


def pct(v: Any, digits: int = 3) -> str:
    """A fraction as a percentage with ``digits`` significant digits: 0.0009 → "0.09%"."""
    return f"{100 * v:.{digits}g}%" if finite(v) else DASH


def secs(v: Any) -> str:
    return f"{v:.1f} s" if finite(v) else DASH


def pm(v: Any) -> str:
    """The paper's cells: ``[mean, spread]`` → "m ± s", a number → "m", None → dash."""
    if v is None:
        return DASH
    if isinstance(v, (list, tuple)):
        return f"{v[0]:.2f} ± {v[1]:.2f}"
    return f"{v:.2f}"


def ratio(r: Any) -> str:
    """A factor such as 12× or 3.4×."""
    if not finite(r):
        return DASH
    return f"{r:.1f}×" if r < 10 else f"{r:.0f}×"


def factor(r: Any) -> str:
    """A perplexity ratio for prose: ×1.002, ×37, ×2.1e+07."""
    if not finite(r):
        return DASH
    if r < 10:
        return f"×{r:.4g}"
    return f"×{r:.0f}" if r < 1e4 else f"×{r:.2g}"


def mean_sd(summary: Any, digits: int = 2) -> str:
    """A summary's "mean ± std" (just the mean without a finite std)."""
    from normscope.probe.schema import num

    m, sd = num(summary, "mean"), num(summary, "std")
    if not finite(m):
        return DASH
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if finite(sd) else f"{m:.{digits}f}"


def md_escape(cell: Any) -> str:
    return str(cell).replace("|", "\\|")


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A pipe table: header, rule, rows (cells are escaped for ``|``); ends with a newline."""
    out = ["| " + " | ".join(md_escape(c) for c in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"
