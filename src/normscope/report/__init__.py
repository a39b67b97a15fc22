"""The normscope report: Gupta-style tables, per-block plots, the verdict and a self-contained HTML page.

Layout: :mod:`~normscope.report.verdict` (the analysis), :mod:`~normscope.report.document`
(sections as data, built once), :mod:`~normscope.report.render_html` /
:mod:`~normscope.report.render_md` (the two renderers), :mod:`~normscope.report.format` (numbers
and Markdown tables), :mod:`~normscope.report.tables` (Gupta et al.'s Tables 2–4),
:mod:`~normscope.report.plots` (figures), :mod:`~normscope.report.extras` (swap-test and attention
sections), :mod:`~normscope.report.build` (writes the files).

``build(stats, out_dir, extra_sections=...)`` writes report.html, tables.md, stats.json and
figures/ from a :func:`normscope.probe.run` stats dict; ``gupta_tables(stats)`` returns the
tables alone; ``paper_tables()`` the published numbers of Gupta et al. (arXiv:2409.12951).
"""

from normscope.report.build import build
from normscope.report.document import Section
from normscope.report.tables import Table, aggregate, gupta_tables, paper_tables
from normscope.report.verdict import model_verdict

__all__ = ["Section", "Table", "aggregate", "build", "gupta_tables", "model_verdict", "paper_tables"]
