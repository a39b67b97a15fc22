"""Exact LayerNorm → RMSNorm conversion and the naive swap test.

- :func:`to_rmsnorm` — centre every residual writer, replace each LayerNorm by RMSNorm
  (``lm-hidden-geometry.md`` §6); outputs unchanged up to rounding.
- :func:`compare`, :func:`residual_mean` — verification: logit/KL agreement, stream centring.
- :func:`write`, :func:`load` — save / reload a converted model.
- :func:`swap_test` — replace norms by the other kind *without* centring and measure the damage;
  :func:`swap_markdown` / :func:`swap_test_section` (from :mod:`normscope.report.extras`) format it.
"""

from normscope.convert.exact import apply_structure, compare, residual_mean, rmsnorm_like, to_rmsnorm
from normscope.convert.families import SUPPORTED, NotConvertibleError, plan
from normscope.convert.saving import load, write
from normscope.convert.swap import swap_test, swapped

__all__ = [
    "SUPPORTED", "NotConvertibleError", "apply_structure", "compare", "load", "plan", "residual_mean",
    "rmsnorm_like", "swap_markdown", "swap_test", "swap_test_section", "swapped", "to_rmsnorm", "write",
]  # fmt: skip


# Rendering lives in normscope.report.extras; these wrappers keep the names importable here without
# loading the report package (matplotlib) until they are called.


def swap_markdown(result: dict):
    """See :func:`normscope.report.extras.swap_markdown`."""
    from normscope.report.extras import swap_markdown as render

    return render(result)


def swap_test_section(result: dict):
    """See :func:`normscope.report.extras.swap_test_section`."""
    from normscope.report.extras import swap_test_section as render

    return render(result)
