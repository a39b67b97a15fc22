"""The normscope report: Gupta-style tables, per-block plots and a self-contained HTML page.

``build(stats, out_dir, extra_sections=...)`` writes report.html, tables.md, stats.json and
figures/ from a :func:`normscope.probe.run` stats dict; ``gupta_tables(stats)`` returns the
tables alone; ``paper_tables()`` the published numbers of Gupta et al. (arXiv:2409.12951).
"""

from normscope.report.build import Section, build, model_verdict
from normscope.report.tables import Table, aggregate, gupta_tables, paper_tables

__all__ = ["Section", "Table", "aggregate", "build", "gupta_tables", "model_verdict", "paper_tables"]
