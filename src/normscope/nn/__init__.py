"""Exact, decomposed normalization modules.

- :class:`LayerNorm` — projection, scaling and affine steps as switches (drop-in for ``torch.nn.LayerNorm``,
  not a subclass of it).
- :class:`RMSNorm` — fast RMSNorm (same math as ``torch.nn.RMSNorm``), optional bias, measured backend choice.
- :class:`GroupLayerNorm` — LN-G, LayerNorm within contiguous groups (Ni et al., arXiv:2406.01255).
- :class:`NormTrace` — the intermediates returned by every module's ``trace(x)``.
- :func:`reference` — the one float64 reference of every norm kind; :func:`check_eps` — the ε rule.
"""

from normscope.nn._checks import check_eps
from normscope.nn.functional import NormTrace, decompose, reference, rms_norm
from normscope.nn.group_layer_norm import GroupLayerNorm
from normscope.nn.layer_norm import LayerNorm
from normscope.nn.rms_norm import RMSNorm

__all__ = ["LayerNorm", "RMSNorm", "GroupLayerNorm", "NormTrace", "decompose", "reference", "rms_norm", "check_eps"]
