"""Attention expressivity (Brody, Alon & Yahav, Findings of ACL 2023): unselectable keys and
per-layer / per-head measurements of the vectors entering attention in real models.

- :func:`unselectable` / :func:`unselectable_fraction`: keys inside the convex hull of the others.
- :func:`measure_attention`: per layer and head, on a model's norm hooks; :func:`attention_section`
  renders its result as Markdown for reports.
"""

from normscope.attention.measure import AttentionLayer, attention_layers, measure_attention
from normscope.attention.unselectable import unselectable, unselectable_fraction

__all__ = [
    "AttentionLayer",
    "attention_layers",
    "attention_section",
    "measure_attention",
    "unselectable",
    "unselectable_fraction",
]


# Rendering lives in normscope.report.extras; these wrappers keep the names importable here without
# loading the report package (matplotlib) until they are called.


def attention_section(result: dict):
    """See :func:`normscope.report.extras.attention_section`."""
    from normscope.report.extras import attention_section as render

    return render(result)
