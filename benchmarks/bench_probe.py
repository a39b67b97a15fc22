"""Probe cost: time overhead on SmolLM2 and peak memory vs token count.

1. Overhead = (probe run time) / (bare forward time) over the same token batches (default
   32,768 tokens of pydoc_data text, seq_len 512). "Bare forward" is the same base-model forward
   ``normscope.probe.run`` performs (no LM head, ``use_cache=False``), without hooks; the probe
   time is the same forward with ``run``'s hooks and accumulators (``SiteProbe``) plus the final
   summaries. Batches run bare and hooked back to back, so slow drifts of a shared machine
   cancel. Wall-clock and process CPU time are both reported: on a busy machine wall time mostly
   measures the neighbours, so the CPU-time ratio (``--threads 1``, the default) is the reliable
   number. ``--full-run`` also times ``normscope.probe.run`` end to end. Target: <= 1.10.
2. Memory: peak RSS (VmHWM) of a fresh process probing 10k and 100k tokens (default model MiniLM, for
   speed; ``--memory-model smollm2`` works too). Statistics are streamed, so the two peaks should
   agree within 5%.

Usage: python benchmarks/bench_probe.py [--tokens 32768] [--full-run] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _batches(lm, tokens: int, seq_len: int, batch_size: int):
    from normscope.models.text import context_length, default_texts, token_batches

    texts = default_texts()
    texts = texts * (1 + tokens // 60_000)  # the corpus is ~65k words; repeat for large runs
    return token_batches(lm.tokenizer, texts, seq_len=seq_len, max_tokens=tokens, batch_size=batch_size,
                         context=context_length(lm.model))


def overhead(args) -> dict:
    import torch

    from normscope.models import find_norms, load
    from normscope.probe import norm_hooks, run
    from normscope.probe.runner import SiteProbe, _forward_module

    torch.set_num_threads(args.threads)
    lm = load("smollm2")
    batches = list(_batches(lm, args.tokens, args.seq_len, args.batch_size))
    n_tok = sum(b.numel() for b in batches)
    sites = find_norms(lm.model)
    fwd = _forward_module(lm.model, sites)
    with torch.inference_mode():
        fwd(input_ids=batches[0][:1, :16], use_cache=False)  # warm-up

    # paired: each batch runs bare, then hooked, back to back (cancels slow drifts of a shared box)
    bare = {"wall": 0.0, "cpu": 0.0}
    hooked = {"wall": 0.0, "cpu": 0.0}
    probes = {s.name: SiteProbe(s) for s in sites}

    def cb(site, x, z):
        probes[site.name](site, x, z)

    for i, b in enumerate(batches):
        for acc, hooks in ((bare, False), (hooked, True)):
            t, c = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                if hooks:
                    with norm_hooks(lm.model, sites, cb):
                        fwd(input_ids=b, use_cache=False)
                else:
                    fwd(input_ids=b, use_cache=False)
            acc["wall"] += time.perf_counter() - t
            acc["cpu"] += time.process_time() - c
        print(f"  batch {i + 1}/{len(batches)}: cpu bare {bare['cpu']:.1f} s, hooked {hooked['cpu']:.1f} s", flush=True)
    t, c = time.perf_counter(), time.process_time()
    layers = [p.summary() for p in probes.values()]
    hooked["wall"] += time.perf_counter() - t
    hooked["cpu"] += time.process_time() - c
    assert all(la["count"] == n_tok for la in layers)
    out = {"tokens": n_tok, "threads": torch.get_num_threads(), "bare": bare, "probe": hooked,
           "cpu_ratio": hooked["cpu"] / bare["cpu"], "wall_ratio": hooked["wall"] / bare["wall"]}
    if args.full_run:  # the public entry point end to end, against the paired bare time
        t, c = time.perf_counter(), time.process_time()
        stats = run(lm, batches, progress=False)
        out["run_wall"], out["run_cpu"] = time.perf_counter() - t, time.process_time() - c
        out["run_cpu_ratio"] = out["run_cpu"] / bare["cpu"]
        assert stats["models"][0]["tokens"] == n_tok
    return out


def _peak_child(model: str, tokens: int, seq_len: int, batch_size: int) -> dict:
    code = f"""
import resource, json, time, os
def peak_kb():
    # VmHWM is this process's own high-water mark; ru_maxrss would inherit the parent's peak via fork
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
from bench_probe import _batches
from normscope.models import load
from normscope.probe import run
import torch; torch.set_num_threads(1)
lm = load({model!r})
rss_loaded = peak_kb()
t = time.perf_counter()
s = run(lm, _batches(lm, {tokens}, {seq_len}, {batch_size}), progress=False)
print(json.dumps({{"tokens": s["models"][0]["tokens"], "seconds": time.perf_counter() - t,
                  "rss_after_load_kb": rss_loaded,
                  "peak_rss_kb": peak_kb()}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args) -> dict:
    small = _peak_child(args.memory_model, 10_000, args.seq_len_mem, args.batch_size)
    print(f"  10k tokens: {small}", flush=True)
    large = _peak_child(args.memory_model, 100_000, args.seq_len_mem, args.batch_size)
    print(f"  100k tokens: {large}", flush=True)
    return {"model": args.memory_model, "small": small, "large": large,
            "peak_ratio": large["peak_rss_kb"] / small["peak_rss_kb"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=32_768)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--full-run", action="store_true", help="also time probe.run() end to end")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the overhead timing")
    p.add_argument("--memory-model", default="minilm")
    p.add_argument("--seq-len-mem", type=int, default=256)
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    result = {}
    if not args.skip_overhead:
        print(f"probe overhead on smollm2, {args.tokens} tokens:", flush=True)
        result["overhead"] = overhead(args)
        o = result["overhead"]
        print(f"probe/bare ratio over {o['tokens']} tokens: cpu time {o['cpu_ratio']:.3f}, "
              f"wall {o['wall_ratio']:.3f} (target <= 1.10)", flush=True)
    if not args.skip_memory:
        print(f"peak RSS, {args.memory_model}, 10k vs 100k tokens:", flush=True)
        result["memory"] = memory(args)
        print(f"peak RSS ratio 100k/10k: {result['memory']['peak_ratio']:.3f} (target within 5%)", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
