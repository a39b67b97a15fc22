"""Exhaustive shattering check: a VC-dimension lower bound for width-3 LN-Nets [reconstructed].

Ni et al. (ICML 2024) give a lower bound on the VC dimension of LN-Nets; its formula was not
available to us. Our reconstruction (``docs/lnnet.md``): with L LN layers of
width 3 and an affine read-out, any L + 2 points in general position are shattered, so
VC-dim ≥ L + 2. :func:`shatter` verifies this for one random point set by building a net of depth
exactly L = m − 2 for every one of the 2^m labellings and checking it in float64.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from normscope.lnnet.network import LNNet, LNNetInfo, construct


@dataclass
class ShatterResult:
    m: int
    d: int
    depth: int  # L, the LN layers of every net
    labelings: int  # 2^m
    realised: int  # labellings classified 100% correctly in float64
    max_needed_depth: int  # deepest net before identity padding
    vc_lower_bound: int  # L + 2 when every labelling is realised, else None
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _constant_net(d: int, depth: int, label: int) -> LNNet:
    """A width-3 LN-Net of the given depth that outputs ``label`` everywhere (zero read-out weights)."""
    layers = []
    for i in range(depth):
        lin = nn.Linear(d if i == 0 else 3, 3, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.zero_()
            lin.bias.copy_(torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))  # variance 2/3 > 0
        layers.append(lin)
    readout = nn.Linear(3 if depth else d, 2, dtype=torch.float64)
    with torch.no_grad():
        readout.weight.zero_()
        readout.bias.copy_(torch.tensor([1.0, 0.0] if label == 0 else [0.0, 1.0], dtype=torch.float64))
    info = LNNetInfo(depth, depth, 0, 0, 1, "constant", 1.0, 1.0, np.zeros(d))
    return LNNet(layers, readout, np.array([0, 1]), info)


def shatter(m: int, d: int = 2, *, seed: int = 0, progress: bool = False) -> ShatterResult:
    """Realise all 2^m binary labellings of m random points in ℝ^d with width-3 LN-Nets of depth m − 2.

    Points are i.i.d. N(0, I_d) (seeded). Constant labellings use a constant read-out (no
    construction needed); every other labelling uses :func:`construct` with ``depth = m − 2``
    (identity-padded) and is checked by a float64 forward pass.

    **Arguments:** ``m`` ≥ 3 points (2^m builds: keep m ≤ 14), ``d`` ≥ 1, ``seed``.
    **Returns:** :class:`ShatterResult`; ``vc_lower_bound`` = m − 2 + 2 = m if all were realised.
    """
    if not isinstance(m, (int, np.integer)) or m < 3:
        raise ValueError(f"shattering needs m >= 3 points (depth m - 2 >= 1), got m = {m!r}")
    if m > 16:
        raise ValueError(f"m = {m} means 2^{m} constructions; use m <= 16")
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    X = np.random.default_rng(seed).standard_normal((m, d))
    L = m - 2
    t0 = time.perf_counter()
    realised, deepest = 0, 0
    it = itertools.product((0, 1), repeat=m)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=2**m, desc=f"shatter m={m}", unit="labelling")
    for bits in it:
        y = np.array(bits)
        if y.min() == y.max():
            net = _constant_net(d, L, int(y[0]))
        else:
            net = construct(X, y, depth=L, seed=seed)
            deepest = max(deepest, net.info.min_depth)
        realised += bool(np.array_equal(net.predict(X), y))
    ok = realised == 2**m
    return ShatterResult(m, d, L, 2**m, realised, deepest, L + 2 if ok else None, time.perf_counter() - t0)
