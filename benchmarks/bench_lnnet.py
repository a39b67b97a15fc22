"""Width-3 LN-Net construction: run folds vs pair merges, on random binary labels.

Both are our implementations (``normscope.lnnet.run_fold`` and ``.pair_merge``, reached through
``normscope.lnnet.network``; ``docs/lnnet.md``): ``run-fold`` is what :func:`construct` uses for two
classes; ``pair-merge`` is the pair-merge reconstruction, which construct uses for multi-class and
which we run here on binary labels for comparison. Prints CPU seconds, LN layers and success for
each, and the ratio, measured in this one run (single thread).

``--robust`` instead runs the full :func:`construct` (first-direction restarts included) on
``--seeds`` data sets of m = ``--m`` points (X ~ N(0, I₅), Bernoulli(0.5) labels) and prints, per data
set, success, CPU seconds, first directions tried, LN layers, float64 margin and float32 accuracy.

    python benchmarks/bench_lnnet.py [--ms 32 64 128] [--trials 3]
    python benchmarks/bench_lnnet.py --robust [--m 1000] [--seeds 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from normscope.lnnet import network as N


def _one(strategy: str, X, y, v):
    s = X @ v
    c0 = time.process_time()
    try:
        if strategy == "run-fold":
            plan, *_ = N._build_binary(s, y)
        else:
            plan, *_ = N._build_multiclass(s, y, 2)
        ok, depth = True, len(plan) + 1
    except N.ConstructionError:
        ok, depth = False, -1
    return time.process_time() - c0, depth, ok


def robust(m: int, seeds: int) -> None:
    print(f"{'seed':>4} {'ok':>3} {'CPU s':>6} {'dirs':>4} {'LN layers':>9} {'margin f64':>10} {'acc f32':>7}")
    times, ok = [], 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        X, y = rng.standard_normal((m, 5)), rng.integers(0, 2, m)
        c0 = time.process_time()
        try:
            net = N.construct(X, y)
        except N.ConstructionError:
            times.append(time.process_time() - c0)
            print(f"{seed:>4} {'no':>3} {times[-1]:>6.2f}")
            continue
        times.append(time.process_time() - c0)
        ok += net.accuracy(X, y) == 1.0
        print(f"{seed:>4} {'yes' if net.accuracy(X, y) == 1.0 else 'no':>3} {times[-1]:>6.2f} {net.info.attempts:>4} "
              f"{net.depth:>9} {net.info.margin:>10.1e} {net.accuracy(X, y, torch.float32):>7.3f}", flush=True)
    print(f"m = {m}: {ok}/{seeds} built with 100% float64 accuracy; CPU s min/mean/max "
          f"{min(times):.2f}/{np.mean(times):.2f}/{max(times):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--robust", action="store_true", help="full construct() on --seeds data sets of size --m")
    ap.add_argument("--m", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.robust:
        return robust(args.m, args.seeds)
    print(f"{'m':>5} {'strategy':>10} {'CPU s (mean)':>13} {'LN layers (mean)':>17} {'ok':>5}")
    for m in args.ms:
        stats = {}
        for strategy in ("run-fold", "pair-merge"):
            rows = []
            for trial in range(args.trials):
                rng = np.random.default_rng(100 * m + trial)
                X, y = rng.standard_normal((m, 5)), rng.integers(0, 2, m)
                X, y, _ = N._check_inputs(X, y)
                v = N._directions(X, y, np.random.default_rng(0))[0][1]
                rows.append(_one(strategy, X, y, v))
            t = np.mean([r[0] for r in rows])
            d = np.mean([r[1] for r in rows if r[2]]) if any(r[2] for r in rows) else float("nan")
            ok = sum(r[2] for r in rows)
            stats[strategy] = t
            print(f"{m:>5} {strategy:>10} {t:>13.3f} {d:>17.1f} {ok:>3}/{args.trials}")
        print(f"{m:>5} {'ratio':>10} {stats['pair-merge'] / stats['run-fold']:>12.1f}x  (pair-merge CPU / run-fold CPU)")


if __name__ == "__main__":
    main()
