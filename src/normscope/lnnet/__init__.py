"""LayerNorm as a nonlinearity (Ni et al., ICML 2024, arXiv:2406.01255).

- :func:`construct` — width-3 LN-Net classifying any labelled point set (binary and multi-class).
- :func:`shatter` — every 2^m labelling realised at depth m − 2 (VC-dim lower bound).
- :func:`ssr`, :func:`lssr`, :func:`xor_demo` — the linear-invariant lower bound LN breaks.
- :func:`hessian_energy`, :func:`linear_residual`, :func:`nonlinearity_table` — LN-G nonlinearity vs groups.

The paper's full text was not available: constructions, constants and formulas here are our
reconstructions (derived in ``docs/lnnet.md``), labelled as such in each docstring.
"""

from normscope.lnnet.measures import hessian_energy, hessian_energy_autograd, linear_residual, nonlinearity_table
from normscope.lnnet.network import ConstructionError, LNNet, LNNetInfo, construct
from normscope.lnnet.shatter import ShatterResult, shatter
from normscope.lnnet.ssr import lssr, scatter, ssr, xor_demo

__all__ = [
    "construct", "LNNet", "LNNetInfo", "ConstructionError",
    "shatter", "ShatterResult",
    "ssr", "lssr", "scatter", "xor_demo",
    "hessian_energy", "hessian_energy_autograd", "linear_residual", "nonlinearity_table",
]
