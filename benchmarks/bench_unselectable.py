"""Speed of normscope.attention.unselectable: the certified default vs the LP (F1) for every key.

Brody et al. (arXiv:2305.02582) test every key with an LP (Gurobi in their code); here the
baseline is that LP with scipy's HiGHS, the strongest freely available solver, for every key
(``method="lp"``). The default adds certified pre-filters and NNLS column generation (see the
module docstring). Both sides run in one process, interleaved (``_harness.compare``), with 1
thread and with all cores; the masks must agree or the script exits 1. Keys: Gaussian (n, d),
the setting of Brody et al.'s random-point experiment. Ratios (LP / default, so > 1 means
faster; target ≥ 10) go to ``benchmarks/results/bench_unselectable.json``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_unselectable.py
        [--n 1024] [--dims 8 16] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from _harness import Bench
from normscope.attention import unselectable


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--dims", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: n=200, d=4 8, 2 rounds, no JSON unless --save")
    ap.add_argument("--save", action="store_true", help="write the JSON also with --quick")
    args = ap.parse_args()
    if args.quick:
        args.n, args.dims, args.rounds = 200, [4, 8], 2
    bench = Bench("bench_unselectable" + ("_quick" if args.quick else ""))
    rng = np.random.default_rng(args.seed)
    ok = True
    for d in args.dims:
        keys = rng.standard_normal((args.n, d))
        fast, slow = unselectable(keys), unselectable(keys, method="lp")
        agree = bool(np.array_equal(fast, slow))
        ok &= agree
        bench.record(f"n{args.n}_d{d}", {"unselectable_fraction": float(fast.mean()), "masks_agree": agree})
        for n_threads in sorted({1, os.cpu_count() or 1}):
            with bench.threads(n_threads) as k:
                c = bench.compare({"default": lambda: unselectable(keys), "lp": lambda: unselectable(keys, method="lp")},
                                  rounds=args.rounds, warmup=0, label=f"n={args.n} d={d} Gaussian keys")
                bench.ratio(c, "lp", "default", key=f"speedup_n{args.n}_d{d}_{k}t", target=">= 10",
                            what="all-LP (HiGHS) time / certified default time")
        print(f"n={args.n} d={d}: unselectable {fast.mean():.4f}, masks agree: {agree}", flush=True)
    if not args.quick or args.save:
        bench.save()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
