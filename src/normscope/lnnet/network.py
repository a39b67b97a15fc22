"""Width-3 LN-Nets that classify any labelled point set (Ni et al., ICML 2024, reconstructed).

The paper states that an LN-Net with 3 neurons per layer and O(m) LayerNorm layers classifies m
samples with any labels; its construction and constants were not available to us. Everything
here follows the reconstruction in ``ln-nonlinearity.md`` §3–§5 and is labelled as such.

Geometry (width 3, E an orthonormal basis of the plane Σz = 0): a layer
``h ← LN(k e₂ (rowᵀh) + e₁ − k s₀ e₂)`` sends the scalar feature s = rowᵀh to the point at angle
θ = arctan(k(s − s₀)) on the circle of radius √3 (an *arc embedding*, monotone in s). Reading the
next feature as s' = pᵀh with p = E(cos φ, sin φ)/√3 gives s' = cos(θ − φ): a *fold* about φ. Each
layer is therefore one rank-one 3×3 Linear plus one LayerNorm(3), and the net is a chain of
1-D unimodal maps ending in a chord read-out on the circle.

Two strategies (both [reconstructed]):

- **binary**: a *run fold*. With the labels read along s forming runs R₁..R_r (alternating), fold
  the last run onto R_{r−2} (or, mirrored, the first onto R₃) so that R_{r−1} folds onto itself.
  Every fold removes exactly one run, and r ≤ 3 runs (≤ 2 circular runs) can be read out by a
  chord, so the net has at most r − 2 ≤ m − 2 LN layers. Only run end-points matter, so a
  layer costs O(r) per candidate embedding. This replaces the reference's point-pair merges for
  two classes: same bound, somewhat more layers at m ≤ 64 (14 vs 11 at m = 32, 34 vs 26 at
  m = 64) but 3–26× less CPU at m = 32–128 (``benchmarks/bench_lnnet.py``), fast enough for m = 1000.
- **multi-class**: the reference's pair merge: fold two same-label points onto each other
  (φ = their mid-angle), until each class is one circular run; at most m − c + 1 LN layers.

Stability (reference §5): each layer's embedding (s₀, k) is chosen on a grid with a look-ahead:
maximise the smallest gap between differently-labelled feature values *after the next fold*,
minus a penalty 4·u·k·(max|s| + |s₀|) for the cancellation of k·s against k·s₀ (u = 6e-8, the
float32 round-off the reference robustifies against, while some candidate can afford it; else
u = 1.2e-16). Additions of ours: steep candidate embeddings centred in the gaps next to both ends
(needed when the end run is wider than its landing window), a two-fold look-ahead over the 8 best
folds for the first 10 folds and the 4 best up to fold 24 when more than 100 runs remain (the
smallest gap collapses from ~1e-6 to ~1e-11 in those first folds, and that is where builds die),
and up to ``restarts`` = 32 first directions (a dead one dies within ~10 folds, ≈ 0.5 s at m = 1000).
Random binary labels at m = 1000 (d = 5 Gaussian X; ``benchmarks/bench_lnnet.py --robust``) then
build on 20 of 20 data sets in 3.3–5.0 CPU-seconds (mean 3.9; 1–4 first directions), 458–514 LN
layers, and classify 100% in float64 (float32 forward of the same nets: 0.61–0.86). With the 4-wide
look-ahead, full grid and 4 directions, 3 of those 20 failed (``ConstructionError``). **Deviation:** the LayerNorms use ε = 0.
With ε > 0 the LN radius depends on k(s − s₀) (relative change up to 1.5ε), which is harmless for
small m but larger than the feature gaps at m ≈ 1000; every LN input here has variance ≥ 1/3, so
ε = 0 never divides by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from normscope.nn import LayerNorm

_S2, _S6 = math.sqrt(2.0), math.sqrt(6.0)
#: Orthonormal basis (3×2) of the plane Σz = 0; columns e₁, e₂.
E = np.array([[1 / _S2, 1 / _S6], [-1 / _S2, 1 / _S6], [0.0, -2 / _S6]])
_ROUNDOFF = 6e-8
_ROUNDOFF64 = 1.2e-16
_TIER = 100.0
_T_COARSE = np.linspace(-1.5, 2.5, 11)
_LK_COARSE = np.linspace(-2.0, 4.0, 9)
_TAUS = np.array([0.25, 0.5, 0.75])
# Run folds search the middle of that grid: s0 in [−0.3, 1.3]·range, k·range in [10^−0.5, 10^4]. At
# m = 1000 every fold chosen from the full grid had t in [0, 1] and lk ≥ 0.25 after refinement, and
# this subgrid built nets of the same depth from the same first direction on all 20 data sets of
# ``bench_lnnet.py --robust`` (3 of 20 margins differ) in 1.3–1.9× less CPU time.
_T_BIN = _T_COARSE[3:8]
_LK_BIN = _LK_COARSE[2:]
_SAME_TOL = 1e-9  # relative: same-label values this close count as merged
_DIFF_TOL = 1e-12  # relative: different-label values this close = construction failed


class ConstructionError(RuntimeError):
    """The construction ran out of floating-point precision (different labels collided)."""


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
# input checks and first projection


def _check_inputs(X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"X must be (m, d), got shape {X.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must be (m,) with m = {len(X)} labels, got shape {y.shape}")
    if len(X) < 2:
        raise ValueError(f"need m >= 2 points, got m = {len(X)}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"X contains {int((~np.isfinite(X)).sum())} NaN/Inf value(s)")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN/Inf labels")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"all {len(y)} points have the same label {classes[0]!r}: nothing to classify")
    _, first, inv = np.unique(X, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    clash = codes != codes[first[inv]]
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        j = int(first[inv[i]])
        raise ValueError(
            f"points {j} and {i} are identical but labelled {y[j]!r} and {y[i]!r}: "
            "no function (so no network) can classify both correctly"
        )
    return X, codes.astype(np.int64), classes


def _directions(X: np.ndarray, codes: np.ndarray, rng: np.random.Generator, tries: int = 32):
    """Candidate first projections v, best relative different-label gap first: [(score, v)]."""
    d = X.shape[1]
    V = np.ones((1, 1)) if d == 1 else rng.standard_normal((tries, d))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    S = X @ V.T  # (m, tries)
    o = np.argsort(S, axis=0, kind="stable")
    ss = np.take_along_axis(S, o, 0)
    ll = codes[o]
    gap = np.where(ll[1:] != ll[:-1], np.diff(ss, axis=0), np.inf).min(0)
    R = ss[-1] - ss[0]
    score = np.where(R > 0, gap / np.where(R > 0, R, 1.0), 0.0)
    order = np.argsort(-score, kind="stable")
    if score[order[0]] <= _DIFF_TOL:
        raise ConstructionError(
            "no generic projection separates the differently-labelled points "
            f"(best relative gap {score[order[0]]:.2e}); are some points (nearly) identical?"
        )
    return [(float(score[i]), V[i]) for i in order if score[i] > _DIFF_TOL]


# --------------------------------------------------------------------------------------------
# runs, read-out


def _runs(s: np.ndarray, lab: np.ndarray):
    """Sorted runs of equal labels along s: (lo, hi, label) arrays."""
    o = np.argsort(s, kind="stable")
    ss, ll = s[o], lab[o]
    cut = np.flatnonzero(ll[1:] != ll[:-1]) + 1
    starts = np.r_[0, cut]
    ends = np.r_[cut - 1, len(ss) - 1]
    return ss[starts], ss[ends], ll[starts]


def _circular_boundaries(ang: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Mid-angles of the circular gaps between differently-labelled neighbours (ang sorted)."""
    nxt = np.r_[ang[1:], ang[0] + 2 * math.pi]
    nl = np.r_[lab[1:], lab[0]]
    m = lab != nl
    return (ang[m] + nxt[m]) / 2


def _chord_readout(ang: np.ndarray, lab: np.ndarray, n_classes: int):
    """Per-class chord read-out on the unit circle for points with each class one circular run.

    Returns (N (c×2), h (c,)): logit_j(u) = N_j·u − h_j, positive exactly on class j's arc.
    """
    beta = np.sort(np.mod(_circular_boundaries(ang, lab), 2 * math.pi))
    N = np.zeros((n_classes, 2))
    h = np.zeros(n_classes)
    nb = len(beta)
    for i in range(nb):
        a, b = beta[i], beta[(i + 1) % nb] + (2 * math.pi if i + 1 == nb else 0.0)
        mu, delta = (a + b) / 2, b - a
        # the class on this arc: any point whose angle lies in (a, b) modulo 2π
        inside = np.mod(ang - a, 2 * math.pi) < delta
        cls = int(lab[inside][0])
        N[cls] = (math.cos(mu), math.sin(mu))
        h[cls] = math.cos(delta / 2)
    return N, h


def _line_readout(s: np.ndarray, lab: np.ndarray, n_classes: int):
    """Zero-LN-layer read-out when each class is one run along s: logit_j = a_j s + b_j."""
    lo, hi, rl = _runs(s, lab)
    a = np.zeros(n_classes)
    b = np.zeros(n_classes)
    acc = 0.0
    for i, cls in enumerate(rl):
        if i:
            beta = (hi[i - 1] + lo[i]) / 2
            acc -= beta  # a_i β + b_i = a_{i−1} β + b_{i−1} with a_i = i
        a[cls], b[cls] = float(i), acc
    return a, b


# --------------------------------------------------------------------------------------------
# embedding grid


def _grid(lo: float, R: float, T: np.ndarray, LK: np.ndarray):
    t, lk = np.meshgrid(T, LK, indexing="ij")
    s0 = lo + t.ravel() * R
    k = 10.0 ** lk.ravel() / R
    return s0, k, t.ravel(), lk.ravel()


def _penalty(s0: np.ndarray, k: np.ndarray, smax: float, roundoff: float = _ROUNDOFF) -> np.ndarray:
    return 4 * roundoff * k * (smax + np.abs(s0))


def _score(gap: np.ndarray, s0: np.ndarray, k: np.ndarray, smax: float) -> np.ndarray:
    """Rank key: gap minus the float32 cancellation penalty, offset by +_TIER when positive,
    else gap minus the float64 penalty. s0/k (G,) broadcast against gap (G, ...).

    The float32 tier is what the reference optimises; past m ≈ 50 often no embedding is
    float32-safe and the float64 tier keeps the build exact in float64. Use :func:`_gap_of`
    to recover the penalised gap.
    """
    shape = (-1,) + (1,) * (gap.ndim - 1)
    s32 = gap - _penalty(s0, k, smax).reshape(shape)
    s64 = gap - _penalty(s0, k, smax, _ROUNDOFF64).reshape(shape)
    return np.where(s32 > 0, _TIER + s32, s64)


def _gap_of(score: float) -> float:
    return score - _TIER if score > _TIER / 2 else score


def _refine(best_t: float, best_lk: float):
    # s0 shifts matter on the scale 1/(kR) = 10^-lk (in units of the range R)
    dt = min(_T_COARSE[1] - _T_COARSE[0], 10.0 ** -best_lk)
    dl = _LK_COARSE[1] - _LK_COARSE[0]
    return best_t + np.linspace(-dt, dt, 7), best_lk + np.linspace(-dl, dl, 7)


def _local_candidates(lo: np.ndarray, hi: np.ndarray, R: float):
    """Embeddings centred in the gaps near both ends, steep enough to saturate (s0, k, t, lk).

    The coarse grid cannot put s0 inside a gap much smaller than the range; a run fold whose end
    run is wide needs exactly that (the end is then compressed near ±π/2).
    """
    n = len(lo)
    idx = sorted({i for i in (*range(min(4, n - 1)), *range(max(0, n - 5), n - 1))})
    mids = np.array([(hi[i] + lo[i + 1]) / 2 for i in idx])
    widths = np.array([lo[i + 1] - hi[i] for i in idx])
    mult = 10.0 ** np.linspace(-1.0, 3.0, 9)
    s0 = np.repeat(mids, len(mult))
    k = (mult[None, :] / widths[:, None]).ravel()
    return s0, k, (s0 - lo[0]) / R, np.log10(k * R)


# --------------------------------------------------------------------------------------------
# binary: run folds


class _Ends:
    """Run-end (cos θ, sin θ) for G candidate embeddings, arrays (G, r), and θ at the 4 runs
    nearest each end (all the fold window needs). ``mirrored()`` is the same data seen with
    θ → −θ and the run order reversed: folding the first run becomes folding the last."""

    def __init__(self, lo=None, hi=None, s0=None, k=None):
        if lo is None:
            return
        tl = k[:, None] * (lo[None, :] - s0[:, None])
        th = k[:, None] * (hi[None, :] - s0[:, None])
        self.cl, self.ch = 1 / np.sqrt(1 + tl * tl), 1 / np.sqrt(1 + th * th)
        self.sl, self.sh = tl * self.cl, th * self.ch
        n = min(4, tl.shape[1])
        self.Tl = np.concatenate([np.arctan(tl[:, :n]), np.arctan(tl[:, -n:])], 1)  # (G, 2n): head | tail
        self.Th = np.concatenate([np.arctan(th[:, :n]), np.arctan(th[:, -n:])], 1)
        self.n = n

    def tail(self, which: str) -> np.ndarray:
        """θ of the last n run ends (lo or hi), ascending order."""
        return (self.Tl if which == "lo" else self.Th)[:, self.n :]

    def mirrored(self) -> "_Ends":
        m = _Ends()
        m.cl, m.ch = self.ch[:, ::-1], self.cl[:, ::-1]
        m.sl, m.sh = -self.sh[:, ::-1], -self.sl[:, ::-1]
        n = self.n
        m.Tl = np.concatenate([-self.Th[:, n:][:, ::-1], -self.Th[:, :n][:, ::-1]], 1)
        m.Th = np.concatenate([-self.Tl[:, n:][:, ::-1], -self.Tl[:, :n][:, ::-1]], 1)
        m.n = n
        return m


def _fold_window(e: _Ends):
    """Feasible fold angles (a, c1) for folding R_r onto R_{r−2}: φ ∈ (a, c1), a < c1 required."""
    Tl, Th = e.tail("lo"), e.tail("hi")
    c1 = (Tl[:, -1] + Tl[:, -2]) / 2  # R_r lands beyond R_{r−1}'s mirror
    c2 = (Th[:, -2] + Th[:, -3]) / 2  # R_{r−1}'s right part stays inside the B window
    c3 = (Th[:, -1] + Th[:, -4]) / 2  # R_r does not reach R_{r−3}
    return np.maximum(c2, c3), c1


def _fold_tail(e: _Ends, phi, sel=slice(None)):
    """s' = cos(θ − φ) at the end of R_{r−3}, and the (lo, hi) of A' = R_{r−2} ∪ R_r and B' = R_{r−1}."""
    Tl, Th = e.tail("lo")[sel], e.tail("hi")[sel]
    if phi.ndim == 2:
        Tl, Th = Tl[:, None, :], Th[:, None, :]
    left_hi = np.cos(phi - Th[..., -4])
    dA_max = np.maximum(phi - Tl[..., -3], Th[..., -1] - phi)
    dA_min = np.minimum(phi - Th[..., -3], Tl[..., -1] - phi)
    dB_lo, dB_hi = np.abs(phi - Tl[..., -2]), np.abs(Th[..., -2] - phi)
    dB_max = np.maximum(dB_lo, dB_hi)
    dB_min = np.where((Tl[..., -2] <= phi) & (phi <= Th[..., -2]), 0.0, np.minimum(dB_lo, dB_hi))
    return left_hi, np.cos(dA_max), np.cos(dA_min), np.cos(dB_max), np.cos(dB_min)


def _run_fold_scores(e: _Ends, taus: np.ndarray):
    """Smallest new different-label gap (G, P) of the run fold at φ = a + (c1 − a)·τ, and φ.

    Left of the fold the runs keep their order and s' = cos φ cos θ + sin φ sin θ (exactly what
    the next layer's pᵀh computes), so their gaps are cos φ·Δcos θ + sin φ·Δsin θ.
    −inf where the fold is infeasible (R_r wider than the window it must land in).
    """
    a, c1 = _fold_window(e)
    phi = a[:, None] + (c1 - a)[:, None] * taus[None, :]
    left_hi, A_lo, A_hi, B_lo, _ = _fold_tail(e, phi)
    gap = np.minimum(A_lo - left_hi, B_lo - A_hi)
    r = e.cl.shape[1]
    if r > 4:
        dC = e.cl[:, 1 : r - 3] - e.ch[:, : r - 4]
        dS = e.sl[:, 1 : r - 3] - e.sh[:, : r - 4]
        cp, sp = np.cos(phi), np.sin(phi)
        gl = np.empty_like(phi)
        buf, buf2 = np.empty_like(dC), np.empty_like(dC)
        for j in range(phi.shape[1]):  # one φ column at a time: (G, r) temporaries stay in cache
            np.multiply(dC, cp[:, j, None], out=buf)
            np.multiply(dS, sp[:, j, None], out=buf2)
            buf += buf2
            gl[:, j] = buf.min(-1)
        gap = np.minimum(gap, gl)
    return np.where((a < c1)[:, None], gap, -np.inf), phi


def _binary_step(lo, hi, smax, top: int = 1):
    """The ``top`` best next run folds, best first: [(rank, gap, (s0, k, side, phi, t, lk))].

    Rank: float32-safe candidates first (gap > float32 penalty), then the penalised smallest gap
    (the reference's objective). We also tried ranking by the mean log gap (quantised smallest gap
    first): no better in float64, worse in float32. Each of the ``top`` best coarse candidates
    (embedding grid + steep embeddings centred in the gaps near both ends) is refined locally.
    """
    R = float(hi[-1] - lo[0])

    def evaluate(s0, k, tt, ll, keep):
        p32 = _penalty(s0, k, smax)[:, None]
        p64 = _penalty(s0, k, smax, _ROUNDOFF64)[:, None]
        ends = _Ends(lo, hi, s0, k)
        ranks, gaps, phis = [], [], []
        for side, e in ((1, ends), (-1, ends.mirrored())):
            gmin, phi = _run_fold_scores(e, _TAUS)
            safe32 = gmin - p32 > 0
            gpen = np.where(safe32, gmin - p32, gmin - p64)
            rank = np.where(gpen > _DIFF_TOL, gpen + _TIER * safe32, -np.inf)
            p = rank.argmax(1)
            g = np.arange(len(s0))
            ranks.append(rank[g, p]), gaps.append(gpen[g, p]), phis.append(side * phi[g, p])
        ranks, gaps, phis = np.concatenate(ranks), np.concatenate(gaps), np.concatenate(phis)
        G = len(s0)
        out = []
        for i in np.argsort(-ranks)[:keep]:
            if not np.isfinite(ranks[i]):
                break
            gi, side = i % G, 1 if i < G else -1
            out.append((float(ranks[i]), float(gaps[i]), (float(s0[gi]), float(k[gi]), side, float(phis[i]), tt[gi], ll[gi])))
        return out

    coarse = evaluate(*(np.r_[a, b] for a, b in zip(_grid(lo[0], R, _T_BIN, _LK_BIN), _local_candidates(lo, hi, R))), keep=top)
    best = []
    for c in coarse:
        fine = evaluate(*_grid(lo[0], R, *_refine(c[2][4], c[2][5])), keep=len(_TAUS) * 200)
        fine = [f for f in fine if f[2][2] == c[2][2]][:1] + [c]
        best.append(max(fine, key=lambda f: f[0]))
    best.sort(key=lambda c: -c[0])
    return best or [(-np.inf, -np.inf, None)]


def _apply_binary(lo, hi, s0, k, side, phi):
    """Run ends after the run fold (s0, k, side, phi): (lo', hi') ascending, one run fewer."""
    e = _Ends(lo, hi, np.array([s0]), np.array([k]))
    if side == -1:
        e, phi = e.mirrored(), -phi
    cp, sp = math.cos(phi), math.sin(phi)
    left_lo = cp * e.cl[0, :-3] + sp * e.sl[0, :-3]
    left_hi = cp * e.ch[0, :-3] + sp * e.sh[0, :-3]
    _, A_lo, A_hi, B_lo, B_hi = _fold_tail(e, np.array([phi]), slice(0, 1))
    return np.r_[left_lo, A_lo, B_lo], np.r_[left_hi, A_hi, B_hi]


def _final_angles_score(Tl, Th, lab):
    """Smallest angular gap between differently-labelled run ends, circularly. Tl/Th (G, r)."""
    r = Tl.shape[1]
    gaps = [Tl[:, 1:] - Th[:, :-1]] if r > 1 else []
    if lab[0] != lab[-1]:
        gaps.append((Tl[:, :1] + 2 * math.pi) - Th[:, -1:])
    return np.concatenate(gaps, 1).min(1)


def _final_step(lo, hi, lab, smax):
    R = max(float(hi[-1] - lo[0]), 1e-300)
    best = (-np.inf, None)
    for stage in range(2):
        if stage == 0:
            s0, k, tt, ll = _grid(lo[0], R, _T_COARSE, _LK_COARSE)
        else:
            s0, k, tt, ll = _grid(lo[0], R, *_refine(best[1][2], best[1][3]))
        Tl = np.arctan(k[:, None] * (lo[None, :] - s0[:, None]))
        Th = np.arctan(k[:, None] * (hi[None, :] - s0[:, None]))
        sc = _score(_final_angles_score(Tl, Th, lab), s0, k, smax)
        g = int(np.argmax(sc))
        if sc[g] > best[0]:
            best = (float(sc[g]), (float(s0[g]), float(k[g]), tt[g], ll[g]))
    return best


def _build_binary(s: np.ndarray, codes: np.ndarray, lookahead: int = 4, lookahead_folds: int = 24, wide_folds: int = 10):
    """Run folds until ≤ 3 runs. Returns (plan [(s0, k, phi)], final run ends and labels).

    For the first ``lookahead_folds`` folds (while more than 100 runs remain), among the
    ``lookahead`` best folds (twice as many for the first ``wide_folds``) take the one whose *next*
    fold keeps the larger gap (a two-fold look-ahead). At m ≈ 1000 the smallest gap falls from
    ~1e-6 to ~1e-11 within the first ~10 folds (each fold squashes the gaps next to its axis
    quadratically, and both ends get folded before the gaps settle); this is where builds die, and
    later folds are stable. Within the first 12 folds, of the 12 best first directions of two
    m = 1000 random-label data sets each, greedy choice died for 21 of 24, the 4-wide look-ahead
    for 16 of 24 (same two data sets), the 8-wide one for 11 of 24 (two data sets, one shared).
    A dead direction costs ≈ 0.5 CPU-s, so :func:`construct` simply tries the next one.
    """
    lo, hi, lab = _runs(s, codes)
    plan = []
    while len(lo) > 3:
        smax = float(max(abs(lo[0]), abs(hi[-1])))
        ahead = 0
        if len(plan) < lookahead_folds and len(lo) > 100:
            ahead = 2 * lookahead if len(plan) < wide_folds else lookahead
        cands = _binary_step(lo, hi, smax, top=max(1, ahead))
        if ahead and len(lo) > 4:
            scored = []
            for c in cands:
                if c[2] is None:
                    continue
                s0, k, side, phi, _, _ = c[2]
                nl, nh = _apply_binary(lo, hi, s0, k, side, phi)
                nxt = _binary_step(nl, nh, float(max(abs(nl[0]), abs(nh[-1]))))[0][1]
                scored.append((min(c[1], nxt), c))
            if scored:
                cands = [max(scored, key=lambda sc: sc[0])[1]]
        _, score, params = cands[0]
        if params is None or not score > _DIFF_TOL:
            raise ConstructionError(
                f"run fold {len(plan) + 1}: no embedding keeps differently-labelled features apart "
                f"(best gap {score:.2e}, {len(lo)} runs left)"
            )
        s0, k, side, phi, _, _ = params
        nl, nh = _apply_binary(lo, hi, s0, k, side, phi)
        lab = lab[:-1] if side == 1 else lab[::-1][:-1]
        plan.append((s0, k, phi))
        lo, hi = nl, nh
    return plan, lo, hi, lab


# --------------------------------------------------------------------------------------------
# multi-class: pair merges


def _distinct(s: np.ndarray, lab: np.ndarray):
    """Sorted distinct (value, label) with same-label near-ties merged; raises on label clashes."""
    o = np.argsort(s, kind="stable")
    ss, ll = s[o], lab[o]
    scale = max(1.0, float(np.abs(ss).max()))
    keep = np.ones(len(ss), bool)
    d = np.diff(ss)
    same = (ll[1:] == ll[:-1]) & (d <= _SAME_TOL * scale)
    keep[1:] = ~same
    return ss[keep], ll[keep]


def _circ_runs(lab: np.ndarray) -> int:
    r = 1 + int((lab[1:] != lab[:-1]).sum())
    if r > 1 and lab[0] == lab[-1]:
        r -= 1
    return r


def _pair_step(u: np.ndarray, lab: np.ndarray, smax: float):
    """Best pair merge for sorted distinct u: returns (key, s0, k, phi, new_u, new_lab)."""
    n = len(u)
    # consecutive same-label pairs
    pairs = []
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        pairs += list(zip(idx[:-1], idx[1:]))
    pairs = np.array(pairs)
    R = float(u[-1] - u[0])
    scale = max(1.0, smax)

    def evaluate(s0, k):
        T = np.arctan(k[:, None] * (u[None, :] - s0[:, None]))  # (G, n)
        phi = (T[:, pairs[:, 0]] + T[:, pairs[:, 1]]) / 2  # (G, P)
        sp = np.cos(T[:, None, :] - phi[..., None])  # (G, P, n)
        o = np.argsort(sp, -1, kind="stable")
        ss = np.take_along_axis(sp, o, -1)
        ll = lab[o]
        dd = np.diff(ss, axis=-1)
        diff = ll[..., 1:] != ll[..., :-1]
        gap = np.where(diff, dd, np.inf).min(-1)
        return _score(gap, s0, k, smax)

    s0, k, tt, ll = _grid(u[0], R, _T_COARSE, _LK_COARSE)
    sc = evaluate(s0, k)
    # per pair: best coarse embedding, then refine the best few pairs
    best_g = sc.argmax(0)
    order = np.argsort(-sc[best_g, np.arange(len(pairs))])[: min(6, len(pairs))]
    results = []
    for p in order:
        g = best_g[p]
        s0r, kr, _, _ = _grid(u[0], R, *_refine(tt[g], ll[g]))
        s0a, ka = np.r_[s0[g], s0r], np.r_[k[g], kr]
        T = np.arctan(ka[:, None] * (u[None, :] - s0a[:, None]))
        i, j = pairs[p]
        phi = (T[:, i] + T[:, j]) / 2
        sp = np.cos(T - phi[:, None])
        o = np.argsort(sp, -1, kind="stable")
        ss = np.take_along_axis(sp, o, -1)
        lo_ = lab[o]
        gap = np.where(lo_[:, 1:] != lo_[:, :-1], np.diff(ss, axis=-1), np.inf).min(-1)
        gsc = _score(gap, s0a, ka, smax)
        b = int(np.argmax(gsc))
        raw = float(gsc[b])
        score = _gap_of(raw)
        if not np.isfinite(score) or score <= _DIFF_TOL * scale:
            continue
        newu, newl = _distinct(sp[b], lab)
        key = (raw > _TIER / 2, math.floor(math.log10(score) * 4) / 4, -_circ_runs(newl), -len(newu), score)
        results.append((key, float(s0a[b]), float(ka[b]), float(phi[b]), newu, newl))
    if not results:
        raise ConstructionError(f"pair merge: every candidate fold collides different labels ({n} points left)")
    return max(results, key=lambda r: r[0])


def _build_multiclass(s: np.ndarray, codes: np.ndarray, n_classes: int):
    u, lab = _distinct(s, codes)
    plan = []
    c_present = len(np.unique(lab))
    while _circ_runs(lab) > c_present:
        smax = float(np.abs(u).max())
        _, s0, k, phi, u2, l2 = _pair_step(u, lab, smax)
        if len(u2) >= len(u):
            raise ConstructionError("pair merge did not merge any points (numerical failure)")
        plan.append((s0, k, phi))
        u, lab = u2, l2
    return plan, u, lab


# --------------------------------------------------------------------------------------------
# public entry point


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
    precision (the multi-class merge is the fragile one; reference §5).
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
        for _, v in dirs:
            s = X @ v
            if len(_runs(s, codes)[0]) == c:
                # each class is one run along v: a linear read-out needs no LN layer
                a, b = _line_readout(s, codes, c)
                readout = nn.Linear(X.shape[1], c, dtype=torch.float64)
                with torch.no_grad():
                    readout.weight.copy_(torch.from_numpy(np.outer(a, v)))
                    readout.bias.copy_(torch.from_numpy(b))
                info = LNNetInfo(0, bound, 0, m, c, "linear", 0.0, 0.0, v)
                return _finish(LNNet([], readout, classes, info), X, codes)
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


def _build(X, codes, classes, v, bound, depth) -> LNNet:
    m, c = len(codes), len(classes)
    s = X @ v
    if c == 2:
        plan, flo, fhi, flab = _build_binary(s, codes)
        strategy = "run-fold"
    else:
        plan, u, ulab = _build_multiclass(s, codes, c)
        flo, fhi, flab = _runs(u, ulab)
        strategy = "pair-merge"
    smax = float(max(abs(flo[0]), abs(fhi[-1])))
    score, (s0f, kf, _, _) = _final_step(flo, fhi, flab, smax)
    score = _gap_of(score)
    if not np.isfinite(score) or score <= 0:
        raise ConstructionError(f"final layer: classes not separable on the circle (gap {score:.2e})")
    # angles of the final distinct points (run ends suffice: each class is one circular run)
    ang = np.arctan(kf * (np.r_[flo, fhi] - s0f))
    alab = np.r_[flab, flab]
    o = np.argsort(ang, kind="stable")
    Nr, hr = _chord_readout(ang[o], alab[o], c)

    layers: list[nn.Linear] = []
    row = v
    embeds = [(s0, k) for s0, k, _ in plan] + [(s0f, kf)]
    phis = [phi for _, _, phi in plan]
    e1, e2 = E[:, 0], E[:, 1]
    for i, (s0, k) in enumerate(embeds):
        lin = nn.Linear(len(row), 3, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(k * np.outer(e2, row)))
            lin.bias.copy_(torch.from_numpy(e1 - k * s0 * e2))
        layers.append(lin)
        if i < len(phis):
            row = E @ np.array([math.cos(phis[i]), math.sin(phis[i])]) / math.sqrt(3)
    min_depth = len(layers)
    if depth is not None:
        if depth < min_depth:
            raise ValueError(f"the construction needs {min_depth} LN layers here; depth={depth} is too small")
        for _ in range(depth - min_depth):
            lin = nn.Linear(3, 3, dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(torch.eye(3, dtype=torch.float64))
                lin.bias.zero_()
            layers.append(lin)
    readout = nn.Linear(3, c, dtype=torch.float64)
    with torch.no_grad():
        readout.weight.copy_(torch.from_numpy(Nr @ E.T / math.sqrt(3)))
        readout.bias.copy_(torch.from_numpy(-hr))
    info = LNNetInfo(len(layers), bound, min_depth, m, c, strategy, 0.0, 0.0, v)
    return _finish(LNNet(layers, readout, classes, info), X, codes)


def _finish(net: LNNet, X: np.ndarray, codes: np.ndarray) -> LNNet:
    with torch.no_grad():
        out = net(torch.from_numpy(X)).numpy()
    true = out[np.arange(len(codes)), codes]
    other = out.copy()
    other[np.arange(len(codes)), codes] = -np.inf
    net.info.margin = float((true - other.max(1)).min())
    net.info.max_weight = float(max(p.detach().abs().max().item() for p in net.parameters()))
    return net
