"""Speed of normscope.nn against the strongest torch references, on the shared harness.

For an (rows × width) float input, in one process, interleaved round by round (``_harness.compare``),
with 1 thread and with all cores (the same count for every contender):

- LayerNorm: ``normscope.nn.LayerNorm`` vs ``F.layer_norm`` and ``torch.compile``'d ``F.layer_norm``;
- RMSNorm: every backend of ``normscope.nn.RMSNorm`` (eager, numba, compile, and auto — which
  measures and picks per shape, as a user gets it: without ``NORMSCOPE_COMPILE=1``, so among eager
  and numba) vs ``F.rms_norm`` and compiled ``F.rms_norm``;
- GroupLayerNorm (LN-G, Ni et al., arXiv:2406.01255), 64 groups: auto, numba (the fused kernel),
  eager (its blocked torch kernel under no_grad), the grouped ``native_layer_norm`` path it falls
  back to, and compile vs ``F.layer_norm`` over the full width (the target: ≤ 1.2×) and compiled
  ``F.layer_norm``;
- the modules inside a user's ``torch.compile`` (``torch.compile(nn.RMSNorm)``, ``torch.compile(nn.GroupLayerNorm)``);
- a plain copy (``x.clone()``), the memory-bandwidth floor; every contender allocates its output;
- the LN-G and RMSNorm kernels again, each timed call right after a 512² matmul as in a model
  (torch's OpenMP threads still spin then, which helps torch's kernels and slows any other threads);
- LN-G (``auto``) in groups of 2, 4, 8, 16 and 256 neurons against the same ``F.layer_norm``.

Ratios (ours / reference, medians) go to ``benchmarks/results/bench_nn.json`` with the spread
(IQR/median) of both sides. Compiled references are skipped, with a note, where no compiler works.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_nn.py [--rows 4096]
        [--dim 4096] [--rounds 15] [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

import normscope.nn as nsn
from _harness import Bench
from normscope.nn import _autotune, _numba, _parallel
from normscope.nn import rms_norm as rms_mod


def _compiled(fn):
    """torch.compile(fn) with static shapes, or None where no compiler works here."""
    try:
        c = torch.compile(fn, dynamic=False)
        return c
    except Exception:  # noqa: BLE001 - reported by the caller
        return None


def _try(fn, x):
    try:
        with torch.no_grad():
            fn(x)
        return True
    except Exception as err:  # noqa: BLE001
        print(f"note: skipped a compiled contender ({type(err).__name__}: {str(err).splitlines()[0][:80]})")
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    ap.add_argument("--quick", action="store_true", help="smoke run: 512x1024, 3 rounds, no JSON unless --save")
    ap.add_argument("--save", action="store_true", help="write the JSON also with --quick")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.dim, args.rounds = 512, 1024, 3
    dev, d, dtype = torch.device(args.device), args.dim, getattr(torch, args.dtype)
    bench = Bench("bench_nn" + ("_quick" if args.quick else ""))
    bench.record("shape", [args.rows, d])
    bench.record("dtype", args.dtype)
    bench.record("device", str(dev))
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.rows, d, generator=g).to(device=dev, dtype=dtype)
    w = (1 + 0.1 * torch.randn(d, generator=g)).to(device=dev, dtype=dtype)
    b = (0.1 * torch.randn(d, generator=g)).to(device=dev, dtype=dtype)

    def load(m):
        m = m.to(device=dev, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(w)
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(b)
        return m

    ours_ln = load(nsn.LayerNorm(d))
    os.environ.pop("NORMSCOPE_COMPILE", None)  # "auto" as a user gets it (compile is opt-in)
    rms = {k: load(nsn.RMSNorm(d, eps=1e-5, backend=k)) for k in ("eager", "numba", "compile", "auto")}
    lng = {k: load(nsn.GroupLayerNorm(d, args.groups, backend=k)) for k in ("eager", "numba", "compile", "auto")}
    lng["grouped"] = load(nsn.GroupLayerNorm(d, args.groups, backend="eager"))
    lng["grouped"]._blocked_ok = lambda t: False  # the autograd / half-precision path, for comparison
    ln_c = _compiled(lambda t: F.layer_norm(t, (d,), w, b, 1e-5))
    rms_c = _compiled(lambda t: F.rms_norm(t, (d,), w, 1e-5))
    have_c = ln_c is not None and _try(ln_c, x) and rms_c is not None and _try(rms_c, x)
    have_ours_c = rms_mod.compiled_kernel() is not None
    rms_tc, lng_tc = torch.compile(rms["auto"]), torch.compile(lng["auto"])  # a user's compiled model holding them
    have_numba = dev.type == "cpu" and _numba.available()  # a CPU kernel: elsewhere it would time eager
    bench.record("numba", have_numba)
    bench.record("numba_on_torch_openmp_team", have_numba and _parallel.team_available()
                 and _parallel._entry(_numba._kernel(np.dtype("float32"), "rms"), np.dtype("float32")) is not None)
    bench.record("compiler_works", bool(have_c and have_ours_c))
    sync = torch.cuda.synchronize if dev.type == "cuda" else None

    for n_threads in sorted({1, os.cpu_count() or 1}):
        with bench.threads(n_threads) as k, torch.no_grad():
            tag = f"{k}t"
            contenders = {
                "copy (bandwidth floor)": lambda: x.clone(),
                "F.layer_norm": lambda: F.layer_norm(x, (d,), w, b, 1e-5),
                "nn.LayerNorm": lambda: ours_ln(x),
                "F.rms_norm": lambda: F.rms_norm(x, (d,), w, 1e-5),
                "nn.RMSNorm eager": lambda: rms["eager"](x),
                "nn.RMSNorm auto": lambda: rms["auto"](x),
                f"nn.GroupLayerNorm g={args.groups} eager": lambda: lng["eager"](x),
                f"nn.GroupLayerNorm g={args.groups} auto": lambda: lng["auto"](x),
                f"nn.GroupLayerNorm g={args.groups} grouped": lambda: lng["grouped"](x),
            }
            if have_numba:
                contenders[f"nn.GroupLayerNorm g={args.groups} numba"] = lambda: lng["numba"](x)
                contenders["nn.RMSNorm numba"] = lambda: rms["numba"](x)
            if have_c:
                contenders["compiled F.layer_norm"] = lambda: ln_c(x)
                contenders["compiled F.rms_norm"] = lambda: rms_c(x)
            if have_ours_c:
                contenders["nn.RMSNorm compile"] = lambda: rms["compile"](x)
                contenders[f"nn.GroupLayerNorm g={args.groups} compile"] = lambda: lng["compile"](x)
                contenders["torch.compile(nn.RMSNorm)"] = lambda: rms_tc(x)
                contenders[f"torch.compile(nn.GroupLayerNorm g={args.groups})"] = lambda: lng_tc(x)
            rms["auto"](x), lng["auto"](x)  # the first call measures and caches the auto choice for this shape
            bench.record(f"rmsnorm_auto_choice_{tag}", {str(key): v for key, v in rms_mod.auto_choices().items()})
            bench.record(f"lng_auto_choice_{tag}", {str(key): v for key, v in _autotune.choices(nsn.GroupLayerNorm).items()})
            c = bench.compare(contenders, rounds=args.rounds, warmup=2, sync=sync,
                              label=f"{args.rows}x{d} {args.dtype} on {dev}")
            bench.ratio(c, "nn.LayerNorm", "F.layer_norm", key=f"layernorm_vs_F.layer_norm_{tag}", target="<= 1.05",
                        what="normscope LayerNorm (all steps) vs torch's fused kernel")
            best_rms = min((n for n in ("F.rms_norm", "compiled F.rms_norm") if n in c.timings),
                           key=lambda n: c.timings[n].median)
            bench.ratio(c, "nn.RMSNorm auto", best_rms, key=f"rmsnorm_auto_vs_best_torch_{tag}", target="<= 1.0",
                        what=("RMSNorm(backend='auto'), the default (the faster measured of eager and numba), vs the "
                              "faster of F.rms_norm and compiled F.rms_norm"))
            for kind, what in (("eager", "the eager two-pass kernel"), ("numba", "the fused numba kernel")):
                if f"nn.RMSNorm {kind}" in c.timings:
                    bench.ratio(c, f"nn.RMSNorm {kind}", best_rms, key=f"rmsnorm_{kind}_vs_best_torch_{tag}",
                                what=f"{what} vs the faster torch RMSNorm")
            for kind in ("auto", "numba", "eager", "grouped", "compile"):
                name = f"nn.GroupLayerNorm g={args.groups} {kind}"
                if name in c.timings:
                    bench.ratio(c, name, "F.layer_norm", key=f"lng_{kind}_vs_F.layer_norm_{tag}", target="<= 1.2",
                                what=f"LN-G with {args.groups} groups vs full-width F.layer_norm")
                    if have_c:
                        bench.ratio(c, name, "compiled F.layer_norm", key=f"lng_{kind}_vs_compiled_layer_norm_{tag}",
                                    what="the same vs compiled F.layer_norm")
            if have_ours_c and have_c:
                bench.ratio(c, "torch.compile(nn.RMSNorm)", "compiled F.rms_norm", key=f"rmsnorm_in_compiled_model_{tag}",
                            what="nn.RMSNorm inside a user's torch.compile vs compiled F.rms_norm")
                bench.ratio(c, f"torch.compile(nn.GroupLayerNorm g={args.groups})", "compiled F.layer_norm",
                            key=f"lng_in_compiled_model_{tag}",
                            what="nn.GroupLayerNorm inside a user's torch.compile vs compiled F.layer_norm")
            bench.ratio(c, "F.layer_norm", "copy (bandwidth floor)", key=f"layer_norm_vs_copy_{tag}",
                        what="how far torch's LayerNorm is from the bandwidth floor")
            _after_matmul(bench, args, x, w, b, lng, rms, rms_c if have_c else None, have_numba, sync, tag)
            _group_sizes(bench, args, x, w, b, load, sync, tag)
    if not args.quick or args.save:
        bench.save()


def _after_matmul(bench, args, x, w, b, lng, rms, rms_c, have_numba, sync, tag) -> None:
    """The norms where a model runs them: each timed call right after an untimed 512² matmul,
    whose OpenMP threads keep spinning for a few ms (they help torch's next kernel and compete
    with threads of ours)."""
    d = x.shape[-1]
    a = torch.randn(512, 512, device=x.device, dtype=x.dtype)
    contenders = {
        "F.layer_norm": lambda: F.layer_norm(x, (d,), w, b, 1e-5),
        f"nn.GroupLayerNorm g={args.groups} eager": lambda: lng["eager"](x),
        f"nn.GroupLayerNorm g={args.groups} auto": lambda: lng["auto"](x),
        "nn.RMSNorm eager": lambda: rms["eager"](x),
        "nn.RMSNorm auto": lambda: rms["auto"](x),
    }
    if have_numba:
        contenders[f"nn.GroupLayerNorm g={args.groups} numba"] = lambda: lng["numba"](x)
        contenders["nn.RMSNorm numba"] = lambda: rms["numba"](x)
    if rms_c is not None:
        contenders["compiled F.rms_norm"] = lambda: rms_c(x)
    c = bench.compare(contenders, rounds=args.rounds, warmup=2, sync=sync, before=lambda: a @ a,
                      label=f"{args.rows}x{d} {args.dtype} on {x.device}, each after a 512x512 matmul")
    for kind in ("auto", "numba", "eager"):
        name = f"nn.GroupLayerNorm g={args.groups} {kind}"
        if name in c.timings:
            bench.ratio(c, name, "F.layer_norm", key=f"lng_{kind}_after_matmul_vs_F.layer_norm_{tag}", target="<= 1.2",
                        what=f"LN-G with {args.groups} groups vs full-width F.layer_norm where a model runs it")
    for kind in ("auto", "numba", "eager"):
        if rms_c is not None and f"nn.RMSNorm {kind}" in c.timings:
            bench.ratio(c, f"nn.RMSNorm {kind}", "compiled F.rms_norm", key=f"rmsnorm_{kind}_after_matmul_vs_compiled_{tag}",
                        target="<= 1.0" if kind == "auto" else "",
                        what=f"RMSNorm ({kind}) vs compiled F.rms_norm where a model runs it")


def _group_sizes(bench, args, x, w, b, load, sync, tag) -> None:
    """LN-G (auto: what a user gets) at other group sizes n, against full-width F.layer_norm."""
    d = x.shape[-1]
    sizes = [n for n in (2, 4, 8, 16, 256) if d % n == 0 and n != d // args.groups]
    mods = {n: load(nsn.GroupLayerNorm(d, d // n, backend="auto")) for n in sizes}
    contenders = {"F.layer_norm": lambda: F.layer_norm(x, (d,), w, b, 1e-5)}
    contenders.update({f"nn.GroupLayerNorm n={n} auto": (lambda m=m: m(x)) for n, m in mods.items()})
    c = bench.compare(contenders, rounds=max(3, args.rounds // 2), warmup=2, sync=sync,
                      label=f"{args.rows}x{d} {args.dtype} on {x.device}, groups of n neurons")
    for n in sizes:
        bench.ratio(c, f"nn.GroupLayerNorm n={n} auto", "F.layer_norm", key=f"lng_n{n}_auto_vs_F.layer_norm_{tag}",
                    what=f"LN-G in groups of {n} (auto) vs full-width F.layer_norm")
    bench.record(f"lng_group_sizes_auto_choice_{tag}",
                 {str(key): v for key, v in _autotune.choices(nsn.GroupLayerNorm).items()})


if __name__ == "__main__":
    main()
