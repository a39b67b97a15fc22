"""Converted (RMSNorm) vs original (LayerNorm) speed, and the norm op alone, in one run (CPU).

1. A GPT-2-small-shaped model (random init: 12 layers, d=768, 12 heads, vocab 50257) and its
   exact RMSNorm conversion (``normscope.convert.to_rmsnorm``): forward tokens/s, timed
   interleaved (A, B, A, B, ...) so machine load hits both alike; the median is reported.
   The outputs must agree within 1e-4 (max |Δlogits|).
2. The norm op alone on a 4096×4096 float32 tensor (with gain and bias, as in the conversion):
   ``F.layer_norm``, ``F.rms_norm`` (+ bias), ``normscope.nn.RMSNorm`` with its eager and
   compiled backends, and a plain copy (the memory-bandwidth floor: read x, write y).

Usage: ``python benchmarks/bench_convert.py [--threads N] [--seq 256] [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F


def timeit(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    for f in fns.values():
        f()
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_model(args) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from normscope.convert import compare, to_rmsnorm

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=args.layers, n_embd=args.d, n_head=args.heads, n_positions=1024, vocab_size=50257)
    orig = GPT2LMHeadModel(cfg).eval()
    conv = to_rmsnorm(orig).eval()
    conv_c = to_rmsnorm(orig).eval()
    for n in conv_c.config.normscope_conversion["norms"]:
        conv_c.get_submodule(n).backend = "compile"
    x = torch.randint(0, 50257, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        r = compare(orig, conv, [x])
        rc = compare(orig, conv_c, [x])
        fwd = lambda m: (lambda: m(input_ids=x, use_cache=False))  # noqa: E731
        t = interleaved({"original": fwd(orig), "converted": fwd(conv), "converted_compiled": fwd(conv_c)}, args.repeats)
    tok = x.numel()
    print(f"\n== GPT-2-small-shaped model ({args.layers}x{args.d}, random init), batch {args.batch}x{args.seq}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved runs")
    print(f"{'variant':<34}{'ms/fwd':>10}{'tokens/s':>12}{'vs original':>13}")
    for k, label in [("original", "original (torch LayerNorm)"), ("converted", "converted (RMSNorm, eager)"),
                     ("converted_compiled", "converted (RMSNorm, compiled)")]:
        print(f"{label:<34}{t[k] * 1e3:>10.1f}{tok / t[k]:>12.0f}{t['original'] / t[k]:>12.3f}x")
    print(f"max |Δlogits| converted vs original: eager {r['max_abs_dlogits']:.2e}, compiled {rc['max_abs_dlogits']:.2e} "
          f"(target <= 1e-4; max |logit| {r['max_abs_logit']:.1f})")


def bench_op(args) -> None:
    from normscope.nn import RMSNorm

    n = d = args.op_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w, b = torch.randn(d, generator=g), torch.randn(d, generator=g)
    eager = RMSNorm(d, eps=1e-5, bias=True, backend="eager")
    comp = RMSNorm(d, eps=1e-5, bias=True, backend="compile")
    comp_nb = RMSNorm(d, eps=1e-5, bias=False, backend="compile")
    with torch.no_grad():
        for m in (eager, comp, comp_nb):
            m.weight.copy_(w)
        eager.bias.copy_(b)
        comp.bias.copy_(b)
    out = torch.empty_like(x)
    fns = {
        "copy (x -> y)": lambda: out.copy_(x),
        "F.layer_norm (w, b)": lambda: F.layer_norm(x, (d,), w, b, 1e-5),
        "F.rms_norm (w) + b": lambda: F.rms_norm(x, (d,), w, 1e-5) + b,
        "F.rms_norm (w)": lambda: F.rms_norm(x, (d,), w, 1e-5),
        "normscope RMSNorm eager (w, b)": lambda: eager(x),
        "normscope RMSNorm compile (w, b)": lambda: comp(x),
        "normscope RMSNorm compile (w)": lambda: comp_nb(x),
    }
    with torch.inference_mode():
        ref = F.rms_norm(x, (d,), w, 1e-5) + b
        for k in ("normscope RMSNorm eager (w, b)", "normscope RMSNorm compile (w, b)"):
            err = float((fns[k]() - ref).abs().max())
            assert err < 1e-4, (k, err)
        t = interleaved(fns, args.repeats)
    gb = 2 * x.numel() * x.element_size() / 1e9
    base = t["F.layer_norm (w, b)"]
    print(f"\n== norm op alone, {n}x{d} float32, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'op':<36}{'ms':>9}{'GB/s':>8}{'vs layer_norm':>15}")
    for k, v in t.items():
        print(f"{k:<36}{v * 1e3:>9.2f}{gb / v:>8.1f}{base / v:>14.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--op-size", type=int, default=4096)
    p.add_argument("--skip-model", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    bench_op(args)
    if not args.skip_model:
        bench_model(args)


if __name__ == "__main__":
    main()
