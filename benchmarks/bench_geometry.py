"""Principal axes of LayerNorm's output ellipsoid: secular solver vs dense LAPACK ``eigh`` (numpy and torch).

For g = 1 + 0.3·randn(N) (seeded), on the shared harness (``_harness.py``: warm-up, interleaved
rounds, medians and IQR, the same thread count on every side, 1 thread and all cores):

- all axes with directions: ``principal_axes(g, directions=True)`` (deflation + dlaed4's root iteration +
  Gu–Eisenstat vectors, O(N²)) vs ``numpy.linalg.eigh(M)`` and ``torch.linalg.eigh(M)`` (MKL),
  M = diag(g²) − ggᵀ/N built inside each dense contender (the dense route needs it);
- lengths only: ``principal_axes(g)`` vs ``eigvalsh`` (numpy, torch);
- at N = 16384 (no dense reference: eigh would take minutes): lengths only, and the top-k mode
  ``principal_axes(g, k=16, directions=True, which=...)`` that never forms an N×N array.

Accuracy of ours vs numpy's ``eigh`` is printed and saved: lengths (max relative difference),
directions (max 1 − |cos| over axes whose length is separated from its neighbours), orthogonality
max|VᵀV − I| and residual max|MV − VZ|/‖M‖ for both; at N = 16384 the exact identities
Σζ = tr M and Σζ² = ‖M‖²_F for the lengths and residual/orthogonality for the top-k directions.

Targets (issue 13 §5): ≥ 30× numpy's and torch's ``eigh`` at N = 4096 with one thread; top-16 at
N = 16384 < 1 s; lengths only at N = 16384 < 1.5 s. Results: ``benchmarks/results/bench_geometry.json``.

    python benchmarks/bench_geometry.py            # full run (quiet machine; ~5 min)
    python benchmarks/bench_geometry.py --quick    # smoke run: small N, 2 rounds (bench_geometry_quick.json)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Bench  # noqa: E402

from normscope.geometry import principal_axes  # noqa: E402


# idle time before each timed call: numpy's OpenBLAS threads spin ~0.1 s after eigh and slowed
# the next contender on the same cores 2–3× (see _harness.compare)
SETTLE = 0.25


def _gain(n: int) -> np.ndarray:
    return 1 + 0.3 * np.random.default_rng(n).standard_normal(n)


def _matrix(g: np.ndarray) -> np.ndarray:
    return np.diag(g * g) - np.outer(g, g) / g.size


def _torch_matrix(gt: torch.Tensor) -> torch.Tensor:
    return torch.diag(gt * gt) - torch.outer(gt, gt) / gt.numel()


def _contenders(g: np.ndarray, vectors: bool) -> dict:
    gt = torch.from_numpy(g)
    if vectors:
        return {"ours (secular)": lambda: principal_axes(g, directions=True),
                "numpy eigh": lambda: np.linalg.eigh(_matrix(g)),
                "torch eigh": lambda: torch.linalg.eigh(_torch_matrix(gt))}
    return {"ours (secular)": lambda: principal_axes(g),
            "numpy eigvalsh": lambda: np.linalg.eigvalsh(_matrix(g)),
            "torch eigvalsh": lambda: torch.linalg.eigvalsh(_torch_matrix(gt))}


def _accuracy(g: np.ndarray) -> dict:
    """Ours vs numpy eigh: lengths, directions, orthogonality, residuals (both sides)."""
    n = g.size
    M = _matrix(g)
    z, W = np.linalg.eigh(M)
    ref_len, ref_V = np.sqrt(n * np.maximum(z[1:], 0))[::-1], W[:, 1:][:, ::-1]
    lengths, V = principal_axes(g, directions=True)
    norm_m = float(np.linalg.norm(M, 2))
    gaps = np.abs(np.diff(ref_len))
    sep = np.ones(ref_len.size, bool)
    sep[:-1] &= gaps > 1e-9 * ref_len[0]
    sep[1:] &= gaps > 1e-9 * ref_len[0]
    cos = np.abs(np.einsum("ij,ij->j", V, ref_V))
    row = {"lengths_rel": float(np.max(np.abs(lengths - ref_len) / ref_len)),
           "directions_1mcos": float(np.max(1 - cos[sep]))}
    for name, X, L in (("ours", V, lengths), ("eigh", ref_V, ref_len)):
        G = X.T @ X
        G[np.diag_indices_from(G)] -= 1
        row[f"orth_{name}"] = float(np.abs(G).max())
        row[f"residual_{name}"] = float(np.abs(M @ X - X * (L**2 / n)).max() / norm_m)
    return row


def _big_accuracy(g: np.ndarray, k: int) -> dict:
    """N too large for eigh: exact identities for the lengths, O(N·k) checks for the top-k directions."""
    n = g.size
    d, w = g * g, g / np.sqrt(n)
    zeta = principal_axes(g).lengths ** 2 / n
    tr = d.sum() * (1 - 1 / n)
    frob = float((d * d).sum() - 2 * (d * d).sum() / n + d.sum() ** 2 / n**2)  # ‖diag(d) − wwᵀ‖_F²
    row = {"trace_rel": float(abs(zeta.sum() - tr) / tr), "frobenius_rel": float(abs((zeta**2).sum() - frob) / frob)}
    for which in ("longest", "shortest"):
        L, V = principal_axes(g, directions=True, k=k, which=which)
        z = L**2 / n
        MV = d[:, None] * V - np.outer(w, w @ V)
        G = V.T @ V - np.eye(k)
        sl = slice(0, k) if which == "longest" else slice(zeta.size - k, zeta.size)
        row[f"top{k}_{which}_residual"] = float(np.abs(MV - V * z).max() / d.max())
        row[f"top{k}_{which}_orth"] = float(np.abs(G).max())
        row[f"top{k}_{which}_vs_all_lengths_rel"] = float(np.max(np.abs(z - zeta[sl]) / zeta[sl]))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: N = 256, 512 and 2048, 2 rounds")
    ap.add_argument("--sizes", type=int, nargs="*", help="N for the dense comparisons (default 1024 4096)")
    ap.add_argument("--big", type=int, help="N without dense reference (default 16384)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --quick 2)")
    args = ap.parse_args()
    quick = args.quick
    sizes = args.sizes or ([256, 512] if quick else [1024, 4096])
    big = args.big or (2048 if quick else 16384)
    rounds = args.rounds or (2 if quick else 5)
    warmup = 1
    b = Bench("bench_geometry_quick" if quick else "bench_geometry")
    b.record("config", {"sizes": sizes, "big": big, "k": args.k, "rounds": rounds, "warmup": warmup, "quick": quick})
    all_cores = os.cpu_count() or 1
    for n in sizes:
        g = _gain(n)
        for t in sorted({1, all_cores}):
            with b.threads(t):
                for vectors, what in ((True, "axes+directions"), (False, "lengths")):
                    c = b.compare(_contenders(g, vectors), rounds=rounds, warmup=warmup, label=f"{what} N={n}",
                                  settle=SETTLE)
                    dense = ("numpy eigh", "torch eigh") if vectors else ("numpy eigvalsh", "torch eigvalsh")
                    for ref in dense:
                        key = f"{what}_{n}_{t}t_vs_{ref.replace(' ', '_')}"
                        target = "<= 0.0333 (>= 30x)" if (n == 4096 and t == 1 and vectors) else ""
                        r = b.ratio(c, "ours (secular)", ref, key=key, target=target,
                                    what=f"time of ours / {ref} ({what}, N = {n}, {t} thread(s))")
                        print(f"  speed-up vs {ref}: {1 / r:.1f}x", flush=True)
        acc = _accuracy(g)
        b.record(f"accuracy_{n}", acc)
        print(f"accuracy N={n}: " + ", ".join(f"{k} {v:.1e}" for k, v in acc.items()), flush=True)

    g = _gain(big)
    k = args.k
    for t in sorted({1, all_cores}):
        with b.threads(t):
            c = b.compare({
                "lengths only": lambda: principal_axes(g),
                f"top-{k} longest + directions": lambda: principal_axes(g, directions=True, k=k),
                f"top-{k} shortest + directions": lambda: principal_axes(g, directions=True, k=k, which="shortest"),
            }, rounds=rounds, warmup=warmup, label=f"N={big} (no dense reference)")
            for name, target in (("lengths only", "< 1.5 s"), (f"top-{k} longest + directions", "< 1 s"),
                                 (f"top-{k} shortest + directions", "< 1 s")):
                tm = c.timings[name]
                b.record(f"{name.replace(' ', '_')}_{big}_{t}t", {"seconds": tm.median, "spread": tm.spread,
                                                                  "target": target if big == 16384 else ""})
                print(f"  {name}, N={big}, {t} thread(s): {tm.median:.3f} s (target {target} at N = 16384)")
    acc = _big_accuracy(g, k)
    b.record(f"accuracy_{big}", acc)
    print(f"accuracy N={big}: " + ", ".join(f"{kk} {v:.1e}" for kk, v in acc.items()), flush=True)
    b.save()


if __name__ == "__main__":
    main()
