"""Width-3 LN-Net construction: our run folds vs the reference's pair merges, on random binary labels.

Both are our implementations (normscope.lnnet.network): ``run-fold`` is what :func:`construct` uses
for two classes; ``pair-merge`` is the reference doc's algorithm (§4.2–4.3), which construct uses for
multi-class and which we run here on binary labels for comparison. Prints CPU seconds, LN layers
and success for each, and the ratio, measured in this one run (single thread).

    python benchmarks/bench_lnnet.py [--ms 32 64 128] [--trials 3]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
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
