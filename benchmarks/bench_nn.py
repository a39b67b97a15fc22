"""Speed of normscope.nn against F.layer_norm and a plain copy (the memory-bandwidth floor).

All timings are taken in one run, interleaved round by round so machine load affects every
contender alike; the median over rounds is reported, with ratios to F.layer_norm and to copy.

    .venv/bin/python benchmarks/bench_nn.py [--rows 4096] [--dim 4096] [--rounds 15] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import normscope.nn as nsn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also time RMSNorm(backend='compile') (compiles first)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dev, d = torch.device(args.device), args.dim
    x = torch.randn(args.rows, d, device=dev)
    w, b = torch.randn(d, device=dev), torch.randn(d, device=dev)

    def mod(m):
        m = m.to(dev)
        with torch.no_grad():
            if m.weight is not None:
                m.weight.copy_(w)
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(b)
        return m

    contenders = {
        "copy (bandwidth floor)": lambda: x.clone(),
        "F.layer_norm": lambda: F.layer_norm(x, (d,), w, b, 1e-5),
        "F.rms_norm": lambda: F.rms_norm(x, (d,), w, 1e-5),
        "nn.LayerNorm (all steps)": mod(nsn.LayerNorm(d)),
        "nn.LayerNorm project=False": mod(nsn.LayerNorm(d, project=False, bias=False)),
        "nn.LayerNorm radius=unit": mod(nsn.LayerNorm(d, radius="unit")),
        "nn.LayerNorm radius=inv_sqrt_d, no proj": mod(nsn.LayerNorm(d, project=False, radius="inv_sqrt_d")),
        "nn.LayerNorm scale=False": mod(nsn.LayerNorm(d, scale=False)),
        "nn.RMSNorm (auto)": mod(nsn.RMSNorm(d, eps=1e-5)),
        "nn.RMSNorm backend=torch": mod(nsn.RMSNorm(d, eps=1e-5, backend="torch")),
        "nn.GroupLayerNorm g=1": mod(nsn.GroupLayerNorm(d, 1)),
        "nn.GroupLayerNorm g=64": mod(nsn.GroupLayerNorm(d, 64)),
    }
    if args.compile:
        contenders["nn.RMSNorm backend=compile"] = mod(nsn.RMSNorm(d, eps=1e-5, backend="compile"))

    times: dict[str, list[float]] = {k: [] for k in contenders}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for f in contenders.values():  # warm-up (and compile)
            f() if not isinstance(f, torch.nn.Module) else f(x)
        for _ in range(args.rounds):
            for name, f in contenders.items():
                sync()
                t0 = time.perf_counter()
                f() if not isinstance(f, torch.nn.Module) else f(x)
                sync()
                times[name].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ln, cp = med["F.layer_norm"], med["copy (bandwidth floor)"]
    print(f"{args.rows}x{d} fp32 on {dev} ({torch.get_num_threads()} threads), median of {args.rounds} interleaved rounds")
    print(f"{'contender':42s} {'ms':>9s} {'/F.layer_norm':>14s} {'/copy':>8s}")
    for k, v in med.items():
        print(f"{k:42s} {v:9.2f} {v / ln:14.3f} {v / cp:8.3f}")
    print(f"\nnormscope LayerNorm (all steps) / F.layer_norm = {med['nn.LayerNorm (all steps)'] / ln:.3f}  (target <= 1.05)")
    print(f"normscope RMSNorm / F.rms_norm = {med['nn.RMSNorm (auto)'] / med['F.rms_norm']:.3f}")


if __name__ == "__main__":
    main()
