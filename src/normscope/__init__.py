"""normscope: the geometry of normalization layers in real neural networks.

The small public API (everything else lives in the subpackages named below):

- modules: :class:`LayerNorm` (steps as switches), :class:`RMSNorm`, :class:`GroupLayerNorm`
- geometry: :class:`LayerNormGeometry` (Riechers, arXiv:2405.04134)
- models / probe: :func:`load_model`, :func:`find_norms`, ``probe.run`` (Gupta et al., arXiv:2409.12951)
- conversion and surgery: :func:`to_rmsnorm`, :func:`swap_test`, :func:`fold`, :func:`verify`
- attention: :func:`unselectable` (Brody et al., arXiv:2305.02582)
- LN-Nets: :func:`construct` (Ni et al., ICML 2024, arXiv:2406.01255)

Subpackages: ``nn``, ``geometry``, ``models``, ``probe``, ``report``, ``convert``, ``surgery``,
``attention``, ``lnnet``, ``experiments``. Those that import transformers or scipy's LP
are loaded on first use, so ``import normscope`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from normscope.geometry import LayerNormGeometry
from normscope.nn import GroupLayerNorm, LayerNorm, NormTrace, RMSNorm

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("normscope.models", "load"),
    "find_norms": ("normscope.models", "find_norms"),
    "to_rmsnorm": ("normscope.convert", "to_rmsnorm"),
    "swap_test": ("normscope.convert", "swap_test"),
    "fold": ("normscope.surgery", "fold"),
    "verify": ("normscope.surgery", "verify"),
    "unselectable": ("normscope.attention", "unselectable"),
    "construct": ("normscope.lnnet", "construct"),
}
_SUBPACKAGES = {"models", "probe", "report", "convert", "attention", "lnnet", "experiments", "cli", "surgery"}

__all__ = ["LayerNorm", "RMSNorm", "GroupLayerNorm", "NormTrace", "LayerNormGeometry", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"normscope.{name}")
    raise AttributeError(f"module 'normscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_SUBPACKAGES])
