"""Speed of normscope.attention.unselectable: pre-filtered (default) vs the LP (F1) for every key.

Brody et al. (2023) test every key with an LP (Gurobi in the original code). Here both paths use
scipy HiGHS; the default adds exact pre-filters and certified NNLS column generation. Prints
the time of each, the ratio (target >= 10x), and checks that both give the same mask.

    OMP_NUM_THREADS=1 python benchmarks/bench_unselectable.py [--n 1024] [--dims 8 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from normscope.attention import unselectable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    ok = True
    print(f"{'n':>6} {'d':>4} {'unselectable':>12} {'prefiltered s':>14} {'all-LP s':>10} {'ratio':>7} agree")
    for d in args.dims:
        keys = rng.standard_normal((args.n, d))
        t0 = time.perf_counter()
        fast = unselectable(keys)
        t1 = time.perf_counter()
        slow = unselectable(keys, method="lp")
        t2 = time.perf_counter()
        agree = bool((fast == slow).all())
        ok &= agree
        print(f"{args.n:>6} {d:>4} {fast.mean():>12.4f} {t1 - t0:>14.3f} {t2 - t1:>10.3f} {(t2 - t1) / (t1 - t0):>6.1f}x {agree}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
