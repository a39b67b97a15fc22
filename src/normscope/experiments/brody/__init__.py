"""``normscope reproduce brody``: Brody, Alon & Yahav, "On the Expressivity Role of LayerNorm in
Transformers' Attention" (Findings of ACL 2023, arXiv:2305.02582).

Experiments (``--only``; default all, at a CPU budget; ``--paper-scale`` for the original sizes):

- ``random-points``: Fig. 1c/1d, P(some random point is unselectable) with and without LN;
- ``majority``: Figs. 1a/b, 2, 3, the one-layer majority task with four pre-attention norms;
- ``lm``: Tables 1–2, Fig. 4, a d = 8 LM with and without LN scaling (CPU proxy);
- ``real``: the same measurements on the packaged minilm and smollm2 (extension).

Each writes Markdown + JSON tables (the paper's numbers beside ours) and PNG plots under --out;
``summary.json`` holds the headline numbers of every experiment run, ours beside the paper's
(:mod:`normscope.experiments.brody.summary`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from normscope._io import atomic_write_text, output_dir

EXPERIMENTS = ("random-points", "majority", "lm", "real")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "brody",
        help="Brody et al. 2023: LayerNorm's projection/scaling in attention (unselectable keys, majority task)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", action="append", choices=EXPERIMENTS, metavar="EXP",
                   help=f"run only this experiment (repeatable): {', '.join(EXPERIMENTS)}")
    p.add_argument("--out", default="normscope-brody", help="output folder (created atomically; default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--paper-scale", action="store_true", help="the paper's sizes (hours on a CPU for majority / lm)")
    p.add_argument("--seeds", type=int, default=3, help="majority-task seeds per variant (default %(default)s)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: min(2, cores))")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from normscope.experiments.brody import summary
    from normscope.experiments.brody.common import default_jobs

    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    which = list(dict.fromkeys(args.only or EXPERIMENTS))
    jobs = args.jobs or default_jobs()
    done, results = [], []
    with output_dir(args.out, force=args.force) as tmp:
        for exp in which:
            t0 = time.perf_counter()
            print(f"[brody] {exp} ...", flush=True)
            sub = Path(tmp) / exp.replace("-", "_")
            if exp == "random-points":
                from normscope.experiments.brody import random_points

                res = random_points.run(sub, paper_scale=args.paper_scale, jobs=jobs)
            elif exp == "majority":
                from normscope.experiments.brody import majority

                res = majority.run(sub, paper_scale=args.paper_scale, seeds=args.seeds, jobs=jobs)
            elif exp == "lm":
                from normscope.experiments.brody import lm

                res = lm.run(sub, paper_scale=args.paper_scale, jobs=jobs)
            else:
                from normscope.experiments.brody import real

                res = real.run(sub, paper_scale=args.paper_scale)
            done.append((exp, sub.name, time.perf_counter() - t0))
            results.append((exp, res, done[-1][2]))
        index = ["# Brody et al. (2023) reproduction", "",
                 "| experiment | folder | seconds |", "|---|---|---|"]
        index += [f"| {e} | [{f}/]({f}/) | {s:.0f} |" for e, f, s in done]
        index += ["", "Headline numbers, ours beside the paper's: [summary.json](summary.json)."]
        summary.write(Path(tmp) / "summary.json", results, paper_scale=args.paper_scale, seeds=args.seeds, jobs=jobs)
        atomic_write_text(Path(tmp) / "README.md", "\n".join(index) + "\n")
    out = Path(args.out).resolve()
    print(f"[brody] wrote {out}")
    for exp, folder, secs in done:
        print(f"  {exp:14s} {out / folder}  ({secs:.0f} s)")
    return 0
