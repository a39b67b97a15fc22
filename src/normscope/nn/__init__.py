"""Exact, decomposed normalization modules.

- :class:`LayerNorm` — projection, scaling and affine steps as switches (drop-in for ``torch.nn.LayerNorm``).
- :class:`RMSNorm` — fast RMSNorm (same math as ``torch.nn.RMSNorm``), optional bias.
- :class:`GroupLayerNorm` — LN-G, LayerNorm within contiguous groups (Ni et al.).
- :class:`NormTrace` — the intermediates returned by every module's ``trace(x)``.
"""

from normscope.nn.functional import NormTrace, decompose, rms_norm
from normscope.nn.group_layer_norm import GroupLayerNorm
from normscope.nn.layer_norm import LayerNorm
from normscope.nn.rms_norm import RMSNorm

__all__ = ["LayerNorm", "RMSNorm", "GroupLayerNorm", "NormTrace", "decompose", "rms_norm"]
