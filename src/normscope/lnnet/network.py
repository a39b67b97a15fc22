"""Width-3 LN-Nets that classify any labelled point set (Ni et al., ICML 2024, arXiv:2406.01255; reconstructed).

The paper states that an LN-Net with 3 neurons per layer and O(m) LayerNorm layers classifies m
samples with any labels; its construction and constants were not available to us. Everything here
is our reconstruction, derived in ``docs/lnnet.md`` and labelled as such.

Each layer is one rank-one Linear plus one LayerNorm(3): it embeds the current scalar feature s on
the √3-circle at angle θ = arctan(k(s − s₀)) (:mod:`~normscope.lnnet.embedding`), and the next
layer reads s' = cos(θ − φ), a *fold* about φ. The net is a chain of 1-D unimodal maps ending in a
chord read-out on the circle. The stages, one module each:

- :mod:`~normscope.lnnet.inputs`: input checks and the first projection s = vᵀx;
- :mod:`~normscope.lnnet.run_fold`: **binary** labels, one run of equal labels removed per layer
  (≤ m − 2 LN layers; ours, 3–26× less CPU than pair merges at m = 32–128, ``benchmarks/bench_lnnet.py``);
- :mod:`~normscope.lnnet.pair_merge`: **multi-class** labels, two same-label points merged per
  layer (≤ m − c + 1 LN layers);
- :mod:`~normscope.lnnet.readout`: the last embedding and the per-class chord read-out;
- this module: :class:`LNNet` and :func:`construct`, which assembles the layers and checks them.

Stability: each layer's (s₀, k) is chosen on a grid to maximise the smallest gap between
differently-labelled feature values after the next fold, minus a penalty 4·u·k·(max|s| + |s₀|) for
the cancellation of k·s against k·s₀ (u = 6e-8, float32, while some candidate can afford it; else
u = 1.2e-16). Additions of ours: steep candidates centred in the gaps next to both ends, a two-fold
look-ahead over the 8 best folds for the first 10 folds and the 4 best up to fold 24 while more than
100 runs remain (the smallest gap collapses from ~1e-6 to ~1e-11 in those first folds, which is where
builds die), and up to ``restarts`` = 32 first directions. Random binary labels at m = 1000 (d = 5
Gaussian X; ``benchmarks/bench_lnnet.py --robust``) then build on 20 of 20 data sets in 3.3–5.0
CPU-seconds, 458–514 LN layers, 100% accuracy in float64 (float32 forward of the same nets: 0.61–0.86).

**Deviation:** the LayerNorms use ε = 0. With ε > 0 the LN radius depends on k(s − s₀) (relative
change up to 1.5ε), harmless for small m but larger than the feature gaps at m ≈ 1000; every LN
input here has variance ≥ 1/3, so ε = 0 never divides by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from normscope.lnnet.embedding import E, ConstructionError, FoldStep, _gap_of, _runs
from normscope.lnnet.inputs import _check_inputs, _directions
from normscope.lnnet.pair_merge import _build_multiclass
from normscope.lnnet.readout import _chord_readout, _final_step, _line_readout
from normscope.lnnet.run_fold import _build_binary
from normscope.nn import LayerNorm

__all__ = ["ConstructionError", "LNNet", "LNNetInfo", "construct"]


@dataclass
class LNNetInfo:
    """What :func:`construct` reports about the net it built."""

    depth: int  # number of LN layers
    bound: int  # the reconstructed depth bound it must meet (m − 2 binary, m − c + 1 multi-class)
    min_depth: int  # depth before identity padding
    m: int
    n_classes: int
    strategy: str  # "run-fold" (binary) or "pair-merge" (multi-class)
    margin: float  # smallest logit margin on the training points, float64
    max_weight: float  # largest |weight| or |bias| entry
    direction: np.ndarray = field(repr=False)  # first projection v
    attempts: int = 1  # first directions tried (the earlier ones ran out of float64 precision)


class LNNet(nn.Module):
    """A width-3 LN-Net: ``h ← LN₃(W_l h + b_l)`` for l = 1..L, then logits = W_out h + b_out.

    ``forward`` returns (…, c) logits whose argmax is the index of the label in ``classes``
    (equal to the label itself when the labels are 0..c−1); :meth:`predict` returns labels.
    The LayerNorms are :class:`normscope.nn.LayerNorm` (3 features, ε = 0, no affine).
    """

    def __init__(self, layers: list[nn.Linear], readout: nn.Linear, classes: np.ndarray, info: LNNetInfo):
        super().__init__()
        self.linears = nn.ModuleList(layers)
        self.norms = nn.ModuleList(LayerNorm(3, eps=0.0, affine=False) for _ in layers)
        self.readout = readout
        self.classes = np.asarray(classes)
        self.info = info

    @property
    def depth(self) -> int:
        return len(self.linears)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for lin, ln in zip(self.linears, self.norms):
            h = ln(lin(h))
        return self.readout(h)

    @torch.no_grad()
    def predict(self, X, dtype: torch.dtype = torch.float64) -> np.ndarray:
        """Labels predicted for ``X`` (array-like (n, d)), running the net in ``dtype``."""
        net = self if dtype == torch.float64 else _cast(self, dtype)
        out = net(torch.as_tensor(np.asarray(X, dtype=np.float64)).to(dtype))
        return self.classes[out.argmax(-1).numpy()]

    def accuracy(self, X, y, dtype: torch.dtype = torch.float64) -> float:
        """Fraction of points whose predicted label equals ``y``, running the net in ``dtype``."""
        return float(np.mean(self.predict(X, dtype) == np.asarray(y)))


def _cast(net: LNNet, dtype: torch.dtype) -> LNNet:
    import copy

    return copy.deepcopy(net).to(dtype)


# --------------------------------------------------------------------------------------------
def construct(X, y, *, depth: int | None = None, seed: int = 0, restarts: int = 32) -> LNNet:
    r"""Build a width-3 LN-Net that classifies every point of (X, y) correctly [reconstructed].

    The net is ``h₀ = x``, ``h_l = LN₃(W_l h_{l−1} + b_l)`` (l = 1..L), logits ``W_out h_L + b_out``,
    in float64. ``W_1 = k e₂vᵀ`` (v a generic unit direction, picked among 32 random ones to
    maximise the relative different-label gap of vᵀx), later ``W_l = k e₂pᵀ`` (rank one, 3×3).
    Depth bound (reconstructed; the paper only states O(m)): L ≤ m − 2 for two classes
    (run folds; 0 layers when the classes are already split along v) and L ≤ m − c + 1 for
    c present classes (pair merges). Larger ``depth`` pads with identity layers: LN(I·h) = h on the
    √3-circle.

    **Arguments:** ``X`` (m, d) points, distinct (identical points must share a label), finite;
    ``y`` (m,) labels, at least two classes; ``depth`` exact number of LN layers wanted (≥ the
    constructed one); ``seed`` for the direction search; ``restarts`` how many first directions
    (best relative gap first, at most 32) to try before giving up; a binary build that runs out
    of precision does so within its first ~10 folds, so a dead direction is cheap.

    **Returns:** :class:`LNNet` (float64) with ``.info`` (:class:`LNNetInfo`: depth, bound, margin...).
    Raises ``ValueError`` on bad input and :class:`ConstructionError` if float64 runs out of
    precision (the multi-class merge is the fragile one; ``docs/lnnet.md``).
    """
    X, codes, classes = _check_inputs(X, y)
    m, c = len(X), len(classes)
    if depth is not None and (not isinstance(depth, (int, np.integer)) or depth < 0):
        raise ValueError(f"depth must be a non-negative int, got {depth!r}")
    rng = np.random.default_rng(seed)
    binary = c == 2
    bound = m - 2 if binary else m - c + 1
    dirs = _directions(X, codes, rng)
    if depth is None or depth == 0:
        net = _linear_net(X, codes, classes, dirs, bound)
        if net is not None:
            return net
        if depth == 0:
            raise ValueError("depth=0 needs the classes to be separable along one direction; they are not here")
    errors = []
    for attempt, (_, v) in enumerate(dirs[:restarts], 1):
        try:
            net = _build(X, codes, classes, v, bound, depth)
        except ConstructionError as err:
            errors.append(str(err))
            continue
        if net.info.margin > 0:
            net.info.attempts = attempt
            return net
        errors.append(f"float64 forward pass misclassifies (margin {net.info.margin:.2e})")
    raise ConstructionError(
        f"float64 ran out of precision for m = {m} with {min(restarts, len(dirs))} first directions; "
        f"last failure: {errors[-1]}"
    )


def _linear_net(X, codes, classes, dirs, bound) -> LNNet | None:
    """A net with no LN layer when some direction splits the classes into one run each, else None."""
    m, c = len(codes), len(classes)
    for _, v in dirs:
        s = X @ v
        if len(_runs(s, codes)[0]) == c:
            a, b = _line_readout(s, codes, c)
            readout = nn.Linear(X.shape[1], c, dtype=torch.float64)
            with torch.no_grad():
                readout.weight.copy_(torch.from_numpy(np.outer(a, v)))
                readout.bias.copy_(torch.from_numpy(b))
            info = LNNetInfo(0, bound, 0, m, c, "linear", 0.0, 0.0, v)
            return _finish(LNNet([], readout, classes, info), X, codes)
    return None


def _build(X, codes, classes, v, bound, depth) -> LNNet:
    """One construction attempt from the first direction ``v``: plan the folds, then assemble the net."""
    m, c = len(codes), len(classes)
    s = X @ v
    if c == 2:
        steps, flo, fhi, flab = _build_binary(s, codes)
        strategy = "run-fold"
    else:
        steps, u, ulab = _build_multiclass(s, codes, c)
        flo, fhi, flab = _runs(u, ulab)
        strategy = "pair-merge"
    smax = float(max(abs(flo[0]), abs(fhi[-1])))
    final = _final_step(flo, fhi, flab, smax)
    score = -np.inf if final is None else _gap_of(final.score)
    if not np.isfinite(score) or score <= 0:
        raise ConstructionError(f"final layer: classes not separable on the circle (gap {score:.2e})")
    # angles of the final distinct points (run ends suffice: each class is one circular run)
    ang = np.arctan(final.k * (np.r_[flo, fhi] - final.s0))
    alab = np.r_[flab, flab]
    o = np.argsort(ang, kind="stable")
    Nr, hr = _chord_readout(ang[o], alab[o], c)

    layers = _fold_layers(v, steps, final.s0, final.k)
    min_depth = len(layers)
    if depth is not None:
        if depth < min_depth:
            raise ValueError(f"the construction needs {min_depth} LN layers here; depth={depth} is too small")
        layers += [_identity_layer() for _ in range(depth - min_depth)]
    readout = nn.Linear(3, c, dtype=torch.float64)
    with torch.no_grad():
        readout.weight.copy_(torch.from_numpy(Nr @ E.T / math.sqrt(3)))
        readout.bias.copy_(torch.from_numpy(-hr))
    info = LNNetInfo(len(layers), bound, min_depth, m, c, strategy, 0.0, 0.0, v)
    return _finish(LNNet(layers, readout, classes, info), X, codes)


def _fold_layers(v: np.ndarray, steps: list[FoldStep], s0_final: float, k_final: float) -> list[nn.Linear]:
    """The Linear before each LN: ``W = k e₂ rowᵀ``, ``b = e₁ − k s₀ e₂`` with row = v, then p(φ) = E(cos φ, sin φ)/√3."""
    layers: list[nn.Linear] = []
    row = v
    embeds = [(st.s0, st.k) for st in steps] + [(s0_final, k_final)]
    e1, e2 = E[:, 0], E[:, 1]
    for i, (s0, k) in enumerate(embeds):
        lin = nn.Linear(len(row), 3, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(k * np.outer(e2, row)))
            lin.bias.copy_(torch.from_numpy(e1 - k * s0 * e2))
        layers.append(lin)
        if i < len(steps):
            row = E @ np.array([math.cos(steps[i].phi), math.sin(steps[i].phi)]) / math.sqrt(3)
    return layers


def _identity_layer() -> nn.Linear:
    """Padding: LN(I·h) = h for h on the √3-circle of the plane Σz = 0."""
    lin = nn.Linear(3, 3, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3, dtype=torch.float64))
        lin.bias.zero_()
    return lin


def _finish(net: LNNet, X: np.ndarray, codes: np.ndarray) -> LNNet:
    with torch.no_grad():
        out = net(torch.from_numpy(X)).numpy()
    true = out[np.arange(len(codes)), codes]
    other = out.copy()
    other[np.arange(len(codes)), codes] = -np.inf
    net.info.margin = float((true - other.max(1)).min())
    net.info.max_weight = float(max(p.detach().abs().max().item() for p in net.parameters()))
    return net
