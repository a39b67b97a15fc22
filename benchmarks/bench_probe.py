"""Probe cost: time overhead of ``normscope.probe.run`` on SmolLM2, and peak memory vs token count.

1. **Overhead** = (forward with the probe's hooks and accumulators) / (bare forward), on the same
   token batches (default 32,768 tokens of pydoc_data text, seq_len 512, batch 8). "Bare" is the
   base-model forward ``probe.run`` performs (no LM head, ``use_cache=False``) without hooks.
   Each batch runs bare and probed back to back, the order alternating between batches, so load
   drifts of a shared machine hit both alike. Reported per thread setting (1 thread, all cores):
   the ratio of the totals for process CPU time and wall time, and the median per-batch ratio with
   its interquartile spread. The final summaries (quantiles, histograms, geometry) are timed once and
   added to the probed side. CPU time at 1 thread is the reliable number on a busy machine.
   Target: CPU-time ratio <= 1.05 at 1 thread.
2. **Memory**: peak RSS (VmHWM) of fresh processes probing 10k and 100k tokens (model MiniLM by
   default). Statistics are streamed, so the two peaks should agree within 5%.

Usage: python benchmarks/bench_probe.py [--quick] [--tokens 32768] [--skip-memory]
JSON: benchmarks/results/bench_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _harness import Bench, Comparison, _timing


def _batches(lm, tokens: int, seq_len: int, batch_size: int):
    from normscope.models.text import context_length, default_texts, token_batches

    texts = default_texts()
    texts = texts * (1 + tokens // 60_000)  # the corpus is ~65k words; repeat for large runs
    return token_batches(lm.tokenizer, texts, seq_len=seq_len, max_tokens=tokens, batch_size=batch_size,
                         context=context_length(lm.model))


def overhead(b: Bench, lm, batches, n_threads: int, tag: str) -> dict:
    import torch

    from normscope.models import find_norms
    from normscope.probe import norm_hooks
    from normscope.probe.metrics import workspace
    from normscope.probe.runner import SiteProbe, _forward_module

    n_tok = sum(x.numel() for x in batches)
    sites = find_norms(lm.model)
    fwd = _forward_module(lm.model, sites)
    probes = {s.name: SiteProbe(s) for s in sites}

    def cb(site, x, z):
        probes[site.name](site, x, z)

    def bare(x):
        fwd(input_ids=x, use_cache=False)

    def probed(x):
        with norm_hooks(lm.model, sites, cb):
            fwd(input_ids=x, use_cache=False)

    times = {k: {"bare": [], "probe": []} for k in ("wall", "cpu")}
    with b.threads(n_threads) as k, torch.inference_mode(), workspace():  # scratch kept as in probe.run
        bare(batches[0][:1, :16])  # warm-up
        for i, x in enumerate(batches):
            order = (("bare", bare), ("probe", probed)) if i % 2 == 0 else (("probe", probed), ("bare", bare))
            for name, f in order:
                t, c = time.perf_counter(), time.process_time()
                f(x)
                times["wall"][name].append(time.perf_counter() - t)
                times["cpu"][name].append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        layers = [p.summary() for p in probes.values()]
        summary_wall, summary_cpu = time.perf_counter() - t, time.process_time() - c
    assert all(la["count"] == n_tok for la in layers), "every site must see every token"
    out = {"threads": k, "tokens": n_tok, "batches": len(batches), "summary_wall_s": summary_wall,
           "summary_cpu_s": summary_cpu}
    for clock, extra in (("cpu", summary_cpu), ("wall", summary_wall)):
        t = times[clock]
        total = (sum(t["probe"]) + extra) / sum(t["bare"])
        per = sorted(p / q for p, q in zip(t["probe"], t["bare"]))
        q = statistics.quantiles(per, n=4) if len(per) >= 4 else [per[0], per[len(per) // 2], per[-1]]
        out[clock] = {"bare_s": sum(t["bare"]), "probe_s": sum(t["probe"]) + extra, "ratio": total,
                      "per_batch_median": statistics.median(per), "per_batch_q1": q[0], "per_batch_q3": q[-1]}
        c = Comparison(f"smollm2 forward, {n_tok} tokens, {clock} time", k,
                       {"probe": _timing(t["probe"]), "bare": _timing(t["bare"])})
        b.comparisons.append(c)
        key = f"probe_overhead_{clock}_{tag}"
        b.ratios[key] = {"ours": "probe", "reference": "bare forward", "ratio": total,
                         "ours_s": out[clock]["probe_s"], "reference_s": out[clock]["bare_s"],
                         "per_batch_median": out[clock]["per_batch_median"],
                         "per_batch_iqr": [out[clock]["per_batch_q1"], out[clock]["per_batch_q3"]],
                         "threads": k, "label": c.label, "target": "<= 1.05" if clock == "cpu" and k == 1 else "",
                         "what": f"smollm2 forward with the probe's hooks / bare base-model forward ({clock} time, "
                                 f"{k} thread{'s' if k != 1 else ''}, totals incl. summaries)"}
        print(f"{key}: {total:.3f} (per batch median {out[clock]['per_batch_median']:.3f}, IQR "
              f"{out[clock]['per_batch_q1']:.3f}-{out[clock]['per_batch_q3']:.3f})", flush=True)
    return out


_CHILD = r"""
import json, os, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, sys.argv[1])
from _harness import peak_rss_mb  # VmHWM: this process's own peak (ru_maxrss would inherit the parent's)
from bench_probe import _batches
from normscope.models import load
from normscope.probe import run
import torch; torch.set_num_threads(1)
lm = load(sys.argv[2])
loaded = peak_rss_mb()
t = time.perf_counter()
s = run(lm, _batches(lm, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])), progress=False)
print(json.dumps({"tokens": s["models"][0]["tokens"], "seconds": time.perf_counter() - t,
                  "rss_after_load_mb": loaded, "peak_rss_mb": peak_rss_mb()}))
"""


def memory(b: Bench, model: str, small: int, large: int, seq_len: int, batch_size: int) -> dict:
    res = {}
    for n in (small, large):
        out = subprocess.run([sys.executable, "-c", _CHILD, os.path.dirname(os.path.abspath(__file__)), model,
                              str(n), str(seq_len), str(batch_size)], check=True, capture_output=True, text=True)
        res[n] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {model}, {n} tokens: peak RSS {res[n]['peak_rss_mb']:.0f} MB "
              f"(after load {res[n]['rss_after_load_mb']:.0f} MB), {res[n]['seconds']:.1f} s", flush=True)
    ratio = res[large]["peak_rss_mb"] / res[small]["peak_rss_mb"]
    b.record("memory", {"model": model, "small_tokens": small, "large_tokens": large, "small": res[small],
                        "large": res[large], "peak_ratio": ratio, "target": "<= 1.05"})
    print(f"peak RSS ratio {large}/{small} tokens: {ratio:.3f} (target <= 1.05)", flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2048 tokens, small memory runs")
    p.add_argument("--tokens", type=int, default=32_768)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--memory-model", default="minilm")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_probe.json)")
    args = p.parse_args()
    if args.quick:
        args.tokens, args.seq_len, args.batch_size = 2048, 256, 2
    b = Bench("bench_probe")
    b.record("quick", args.quick)
    if not args.skip_overhead:
        from normscope.models import load

        lm = load("smollm2")
        batches = list(_batches(lm, args.tokens, args.seq_len, args.batch_size))
        for n, tag in ((1, "1t"), (os.cpu_count() or 1, "all")):
            b.record(f"overhead_{tag}", overhead(b, lm, batches, n, tag))
    if not args.skip_memory:
        small, large = (1_000, 5_000) if args.quick else (10_000, 100_000)
        memory(b, args.memory_model, small, large, 256, 8)
    b.save(args.out)


if __name__ == "__main__":
    main()
