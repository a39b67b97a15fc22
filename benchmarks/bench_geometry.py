"""Principal axes of LayerNorm's output ellipsoid: secular solver vs dense LAPACK eigh, one run.

For g = 1 + 0.3·randn(N) (seeded) we time, side by side in one process:

- all axes with directions: ``principal_axes(g, directions=True)`` (deflation + ``dlasd4`` per
  root + Gu–Eisenstat vectors, O(N²)) vs ``numpy.linalg.eigh(M)``, M = diag(g²) − ggᵀ/N
  (building M included, as the dense route needs it);
- lengths only: ``principal_axes(g)`` vs ``numpy.linalg.eigvalsh(M)``;

and measure the differences: lengths (max relative), directions (max 1 − |cos| over axes whose
length is separated from its neighbours), orthogonality max|VᵀV − I| and residual
max|MV − VZ|/‖M‖ for both. Lengths only at a large N that dense eigvalsh cannot afford here are
checked by the exact identities Σζ = tr M and Σζ² = ‖M‖²_F.

Usage: ``python benchmarks/bench_geometry.py [--sizes 1024 4096] [--lengths-sizes 4096 8192]
[--big 16384] [--repeat 3] [--threads T]``. Both sides get the same thread count (OpenBLAS via
threadpoolctl, torch; default: all ``nproc``); the secular solver splits its roots over them.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from normscope.geometry import principal_axes


def _best(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _dense(g, vectors):
    n = g.size
    M = np.diag(g * g) - np.outer(g, g) / n
    if vectors:
        z, V = np.linalg.eigh(M)
        return np.sqrt(n * np.maximum(z[1:], 0))[::-1], V[:, 1:][:, ::-1]
    z = np.linalg.eigvalsh(M)
    return np.sqrt(n * np.maximum(z[1:], 0))[::-1], None


def _errors(g, lengths, V, ref_len, ref_V):
    n = g.size
    M = np.diag(g * g) - np.outer(g, g) / n
    normM = np.linalg.norm(M, 2)
    rel = float(np.max(np.abs(lengths - ref_len) / ref_len))
    row = {"len_rel": rel}
    if V is not None:
        gaps = np.abs(np.diff(ref_len))
        sep = np.ones(ref_len.size, bool)
        sep[:-1] &= gaps > 1e-9 * ref_len[0]
        sep[1:] &= gaps > 1e-9 * ref_len[0]
        cos = np.abs(np.einsum("ij,ij->j", V, ref_V))
        row["dir_1mcos"] = float(np.max(1 - cos[sep]))
        for name, W, L in (("ours", V, lengths), ("eigh", ref_V, ref_len)):
            G = W.T @ W
            G[np.diag_indices_from(G)] -= 1
            row[f"orth_{name}"] = float(np.abs(G).max())
            row[f"res_{name}"] = float(np.abs(M @ W - W * (L**2 / n)).max() / normM)
    return row


def _arbiter(g, ours, ref):
    """At the worst-disagreeing length, each side's relative error from one extended-precision
    (long double) Newton step on the secular equation f(ζ) = 1 − Σ (gⱼ²/N)/(gⱼ² − ζ)."""
    n = g.size
    i = int(np.argmax(np.abs(ours - ref) / ref))
    d = g.astype(np.longdouble) ** 2
    out = []
    for length in (ours[i], ref[i]):
        z = np.longdouble(length) ** 2 / n
        f = 1 - np.sum(d / n / (d - z))
        fp = np.sum(d / n / (d - z) ** 2)
        out.append(float(abs(f / fp / z)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096])
    ap.add_argument("--lengths-sizes", type=int, nargs="*", default=[4096])
    ap.add_argument("--big", type=int, nargs="*", default=[16384])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dense-repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    threads = max(1, min(args.threads, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        _run(args, threads)


def _run(args, threads) -> None:
    print(f"threads: {threads} (torch {torch.get_num_threads()}, BLAS {threadpool_info()[0]['num_threads']}), "
          f"cpu_count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; numpy {np.__version__}, torch {torch.__version__}")
    rng = np.random.default_rng(0)
    principal_axes(1 + 0.3 * rng.standard_normal(512), directions=True)  # warm-up (imports, allocator)
    _dense(1 + 0.3 * rng.standard_normal(512), True)

    print("\nall axes with directions: secular (ours) vs numpy.linalg.eigh(M)")
    print(f"{'N':>6} {'ours s':>9} {'eigh s':>9} {'speed-up':>9} {'len rel':>9} {'1-|cos|':>9} "
          f"{'orth ours':>10} {'orth eigh':>10} {'res ours':>9} {'res eigh':>9}")
    for n in args.sizes:
        g = 1 + 0.3 * np.random.default_rng(n).standard_normal(n)
        t_ours, (lengths, V) = _best(lambda: principal_axes(g, directions=True), args.repeat)
        t_eigh, (ref_len, ref_V) = _best(lambda: _dense(g, True), args.dense_repeat)
        e = _errors(g, lengths, V, ref_len, ref_V)
        print(f"{n:>6} {t_ours:>9.3f} {t_eigh:>9.3f} {t_eigh / t_ours:>8.1f}x {e['len_rel']:>9.1e} {e['dir_1mcos']:>9.1e} "
              f"{e['orth_ours']:>10.1e} {e['orth_eigh']:>10.1e} {e['res_ours']:>9.1e} {e['res_eigh']:>9.1e}")
        del V, ref_V

    print("\nlengths only: secular (ours) vs numpy.linalg.eigvalsh(M)")
    print("(at the worst length, each side's relative error of zeta by a long-double Newton step)")
    print(f"{'N':>6} {'ours s':>9} {'eigvalsh s':>11} {'speed-up':>9} {'len rel':>9} {'err ours':>13} {'err eigvalsh':>13}")
    for n in args.lengths_sizes:
        g = 1 + 0.3 * np.random.default_rng(n).standard_normal(n)
        t_ours, (lengths, _) = _best(lambda: principal_axes(g), args.repeat)
        t_ref, (ref_len, _) = _best(lambda: _dense(g, False), args.dense_repeat)
        rel = float(np.max(np.abs(lengths - ref_len) / ref_len))
        a_ours, a_ref = _arbiter(g, lengths, ref_len)
        print(f"{n:>6} {t_ours:>9.3f} {t_ref:>11.3f} {t_ref / t_ours:>8.1f}x {rel:>9.1e} {a_ours:>13.1e} {a_ref:>13.1e}")

    if args.big:
        print("\nlengths only at large N (no dense reference): exact identities sum(zeta) = tr M, sum(zeta^2) = |M|_F^2")
        print(f"{'N':>6} {'ours s':>9} {'trace rel':>10} {'frob rel':>10}")
    for n in args.big:
        g = 1 + 0.3 * np.random.default_rng(n).standard_normal(n)
        t_ours, (lengths, _) = _best(lambda: principal_axes(g), 1)
        z = lengths**2 / n
        d = g * g
        tr = d.sum() * (1 - 1 / n)
        frob = float((d * d).sum() - 2 * (d * d).sum() / n + d.sum() ** 2 / n**2)  # ‖diag(d) − ggᵀ/N‖_F²
        print(f"{n:>6} {t_ours:>9.3f} {abs(z.sum() - tr) / tr:>10.1e} {abs((z * z).sum() - frob) / frob:>10.1e}")


if __name__ == "__main__":
    main()
