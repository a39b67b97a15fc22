"""Model surgery: fold norm gains into their readers, verify two models site by site, stream big checkpoints.

- :func:`fold` — fold every pre-sublayer / final norm's gain (and LayerNorm bias) into the linear
  layers that read it; :func:`foldability` — the per-site map (folded, or kept and why).
- :func:`fold_checkpoint` — the same, shard by shard from a safetensors folder to another.
- :func:`verify` — run two models on the same tokens, compare every block output and norm site,
  find the first divergence; :func:`error_table` over dtypes.
- :func:`write`, :func:`load` — stock-loadable (optionally sharded) checkpoints.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "fold": "normscope.surgery.folding", "FoldResult": "normscope.surgery.folding",
    "foldability": "normscope.surgery.sites", "FoldMap": "normscope.surgery.sites",
    "NotFoldableError": "normscope.surgery.sites",
    "fold_checkpoint": "normscope.surgery.stream",
    "verify": "normscope.surgery.verification", "Verification": "normscope.surgery.verification",
    "error_table": "normscope.surgery.verification",
    "write": "normscope.convert.saving", "load": "normscope.convert.saving",
}  # fmt: skip

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'normscope.surgery' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
