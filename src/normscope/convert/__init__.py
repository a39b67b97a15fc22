"""Exact LayerNorm → RMSNorm conversion and the naive swap test (``docs/convert.md``).

- :func:`to_rmsnorm` — centre every residual writer, replace each LayerNorm by RMSNorm; outputs
  unchanged up to rounding. :func:`plan` says what it would do (or raises
  :class:`NotConvertibleError` with the reason, e.g. for post-LN models).
- :func:`compare`, :func:`residual_mean` — verification: logit/KL agreement, stream centring.
- :func:`write`, :func:`load` — save / reload a converted model.
- :func:`swap_test` — replace norms by the other kind *without* centring and measure the damage;
  :func:`swapped` returns such a naively swapped copy.

Everything else (``rmsnorm_like``, ``apply_structure``, ``SUPPORTED``, the Markdown/HTML
renderers of a swap test) is internal and imported from its module (``normscope.convert.exact``,
``.families``, ``.swap``, or the report package). Those names still resolve here, lazily, for
existing callers; new code should not rely on it.
"""

from __future__ import annotations

import importlib
from typing import Any

from normscope.convert.exact import compare, residual_mean, to_rmsnorm
from normscope.convert.families import NotConvertibleError, plan
from normscope.convert.saving import load, write
from normscope.convert.swap import swap_test, swapped

__all__ = [
    "NotConvertibleError", "compare", "load", "plan", "residual_mean", "swap_test", "swapped", "to_rmsnorm",
    "write",
]  # fmt: skip

# internal name -> modules that may define it, first match wins (rendering may live in report/)
_INTERNAL = {
    "SUPPORTED": ("normscope.convert.families",),
    "apply_structure": ("normscope.convert.exact",),
    "rmsnorm_like": ("normscope.convert.exact",),
    "swap_markdown": ("normscope.report.extras", "normscope.convert.swap"),
    "swap_test_section": ("normscope.report.extras", "normscope.convert.swap"),
}


def __getattr__(name: str) -> Any:
    for module in _INTERNAL.get(name, ()):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"module 'normscope.convert' has no attribute {name!r}")
