"""``normscope reproduce riechers``: Figures 1–2 and claims C1–C13 of Riechers, arXiv:2405.04134.

Redraws the paper's two figures for N = 3 and checks every numerically checkable claim, writing
``fig1.png``, ``fig2.png``, ``claims.md`` and ``claims.json`` into a fresh folder. One module per part:

- :mod:`~.data`: the inputs and settings (ours: the paper states none), the four LayerNorm sub-steps;
- :mod:`~.claims`: one checker per claim, C1–C13, each returning a typed :class:`~.claims.Claim`;
- :mod:`~.figures`: the two figures;
- :mod:`~.command`: the sub-command and :func:`run`, which writes the files.

**Deviation from the paper:** claim C11 (the Drazin-inverse recipe for zero gains) is wrong; the
output computes the recipe and the true semi-axes side by side and states the correction
(``docs/geometry.md``, ``docs/deviations.md``).
"""

from normscope.experiments.riechers.claims import CLAIMS, Claim, check_claims, drazin_recipe_axes
from normscope.experiments.riechers.command import register, run
from normscope.experiments.riechers.data import BIAS, FIG1_EPS, FIG2_EPS, GAIN, REFERENCE_VALUES, figure_values, stages

__all__ = [
    "register", "run", "stages", "check_claims", "drazin_recipe_axes", "figure_values", "Claim", "CLAIMS",
    "GAIN", "BIAS", "FIG1_EPS", "FIG2_EPS", "REFERENCE_VALUES",
]
