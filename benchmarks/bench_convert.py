"""LayerNorm → RMSNorm conversion and speed: how much of a forward pass the norms are.

The exact conversion (``normscope.convert.to_rmsnorm``) replaces every LayerNorm by an RMSNorm
and centres the residual writers. It is for exactness, interpretability and rotation, **not
speed**: a forward pass cannot get faster by more than the share of its time spent in the norm
modules. This script measures that share and the forward speed, on a GPT-2-small-shaped model
(random init: 12 layers, d = 768, 12 heads, vocabulary 50257; batch 1 × 256 tokens):

1. **Norm share**: the time inside the norm modules (timed with forward pre/post hooks around each
   norm call) over the whole forward time, for the original (LayerNorm) and converted (RMSNorm)
   models. The bound on any speed-up from the conversion is 1 / (1 − share).
2. **Forward time**: original vs converted (RMSNorm "auto": the faster measured of eager and numba; with ``--compile`` also the
   compiled backend), interleaved rounds, medians with spread, at 1 thread and all cores. The
   outputs must agree to 1e-4 (max |Δlogits|).

The norm op alone against ``F.layer_norm`` / ``F.rms_norm`` is ``benchmarks/bench_nn.py``.

Usage: python benchmarks/bench_convert.py [--quick] [--compile]
JSON: benchmarks/results/bench_convert.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Bench


def norm_share(model, x, rounds: int) -> dict:
    """Fraction of forward wall time spent inside norm modules (hooks around each norm call)."""
    import torch

    from normscope.models import find_norms

    sites = find_norms(model)
    inside = [0.0]
    start: dict = {}

    def pre(mod, args):
        start[id(mod)] = time.perf_counter()

    def post(mod, args, out):
        inside[0] += time.perf_counter() - start.pop(id(mod))

    handles = [h for s in sites for h in (s.module.register_forward_pre_hook(pre), s.module.register_forward_hook(post))]
    shares, totals = [], []
    try:
        with torch.inference_mode():
            model(input_ids=x, use_cache=False)
            for _ in range(rounds):
                inside[0] = 0.0
                t = time.perf_counter()
                model(input_ids=x, use_cache=False)
                total = time.perf_counter() - t
                shares.append(inside[0] / total)
                totals.append(total)
    finally:
        for h in handles:
            h.remove()
    share = statistics.median(shares)
    return {"share": share, "share_min": min(shares), "share_max": max(shares), "norm_calls": len(sites),
            "max_speedup_bound": 1.0 / (1.0 - share), "forward_s": statistics.median(totals)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 layers, d = 256, 64 tokens, 3 rounds")
    p.add_argument("--compile", action="store_true", help="also time the compiled RMSNorm backend")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_convert.json)")
    args = p.parse_args()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from normscope.convert import compare, to_rmsnorm

    layers, d, heads, seq, rounds = (2, 256, 4, 64, 3) if args.quick else (12, 768, 12, 256, args.rounds)
    b = Bench("bench_convert")
    b.record("quick", args.quick)
    b.record("model", {"layers": layers, "d": d, "heads": heads, "vocab": 50257, "tokens": seq})
    torch.manual_seed(0)
    orig = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=d, n_head=heads, n_positions=1024,
                                      vocab_size=50257)).eval()
    conv = to_rmsnorm(orig).eval()
    x = torch.randint(0, 50257, (1, seq), generator=torch.Generator().manual_seed(1))
    contenders = {"original (LayerNorm)": orig, "converted (RMSNorm, auto)": conv}
    if args.compile:
        conv_c = to_rmsnorm(orig).eval()
        for n in conv_c.config.normscope_conversion["norms"]:
            conv_c.get_submodule(n).backend = "compile"
        contenders["converted (RMSNorm, compiled)"] = conv_c
    with torch.inference_mode():
        for name, m in contenders.items():
            if m is not orig:
                err = compare(orig, m, [x])["max_abs_dlogits"]
                b.record(f"max_abs_dlogits {name}", err)
                assert err <= 1e-4, f"{name}: max |Δlogits| {err:.2e} > 1e-4"
    for n_threads, tag in ((1, "1t"), (os.cpu_count() or 1, "all")):
        with b.threads(n_threads):
            for name, m in list(contenders.items())[:2]:
                s = norm_share(m, x, rounds)
                key = f"norm_share_{'ln' if m is orig else 'rms'}_{tag}"
                b.record(key, {**s, "target": "none (informational): any conversion speed-up <= max_speedup_bound"})
                print(f"{key}: norms take {100 * s['share']:.2f}% of the forward "
                      f"({100 * s['share_min']:.2f}-{100 * s['share_max']:.2f}%) -> no conversion can make this "
                      f"model more than {100 * (s['max_speedup_bound'] - 1):.2f}% faster", flush=True)
            with torch.inference_mode():
                fns = {k: (lambda m=m: m(input_ids=x, use_cache=False)) for k, m in contenders.items()}
                c = b.compare(fns, rounds=rounds, warmup=2, label=f"GPT-2-shaped {layers}x{d}, 1x{seq} tokens")
            b.ratio(c, "converted (RMSNorm, auto)", "original (LayerNorm)", key=f"converted_vs_original_{tag}",
                    what="forward time, converted / original (1.0 = same speed; the bound is the norm share)")
    b.save(args.out)


if __name__ == "__main__":
    main()
