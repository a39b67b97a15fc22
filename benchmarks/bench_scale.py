"""Scale: probe a random-init ~1.1B-parameter Llama-shaped model in bfloat16.

The model (TinyLlama's shape: d = 2048, 22 layers, MLP 5632, 32 heads, 4 KV heads, vocabulary
32000; 1.10B parameters, 2.2 GB in bfloat16) is built in memory from a fixed seed and never
saved. Measured:

1. **Peak RSS** of the probing process (VmHWM) against the model's size: target <= size + 1 GB.
2. **Throughput**: tokens/s of the bare base-model forward and of the same forward with the
   probe (hooks + accumulators + final summaries), paired per batch in alternating order;
   overhead = probed / bare time (CPU and wall). Target <= 1.05.
3. **Distributed**: the same run split over 2 processes (``torch.multiprocessing`` + gloo,
   batches assigned by ``normscope.probe.shard``) must give the single-process statistics:
   counts, histograms and tail locations exactly, floats to 1e-9 relative.

On a GPU (``--device cuda``) the same runs use the GPU (the statistics stay on the CPU).

Usage: python benchmarks/bench_scale.py [--quick] [--tokens 4096] [--device cpu|cuda]
JSON: benchmarks/results/bench_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _harness import Bench, peak_rss_mb

FULL = {"hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632, "num_attention_heads": 32,
        "num_key_value_heads": 4, "vocab_size": 32000}
QUICK = {"hidden_size": 256, "num_hidden_layers": 2, "intermediate_size": 704, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 1000}


def build(shape: dict, device: str = "cpu"):
    """The random-init Llama in bfloat16, identical in every process (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)  # HF's init draws from the global generator: identical in every process
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built directly in bfloat16: no float32 copy
    try:
        model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():  # non-trivial norm gains (HF initialises them to 1)
        gen = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model = model.to(device)
    return model.eval()


def batches(vocab: int, tokens: int, seq: int, bs: int):
    import torch

    gen = torch.Generator().manual_seed(1)
    n = max(1, tokens // (seq * bs))
    return [torch.randint(0, vocab, (bs, seq), generator=gen) for _ in range(n)]


def throughput(model, bl, device: str) -> dict:
    import torch

    from normscope.models import find_norms
    from normscope.probe import norm_hooks
    from normscope.probe.metrics import workspace
    from normscope.probe.runner import SiteProbe, _forward_module

    sites = find_norms(model)
    fwd = _forward_module(model, sites)
    probes = {s.name: SiteProbe(s) for s in sites}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def cb(site, x, z):
        probes[site.name](site, x, z)

    t = {"wall": {"bare": [], "probe": []}, "cpu": {"bare": [], "probe": []}}
    with torch.inference_mode(), workspace():  # scratch kept between batches, as in probe.run
        fwd(input_ids=bl[0][:1, :16].to(device), use_cache=False)
        for i, x in enumerate(bl):
            x = x.to(device)
            for name in (("bare", "probe") if i % 2 == 0 else ("probe", "bare")):
                sync()
                w, c = time.perf_counter(), time.process_time()
                if name == "probe":
                    with norm_hooks(model, sites, cb):
                        fwd(input_ids=x, use_cache=False)
                else:
                    fwd(input_ids=x, use_cache=False)
                sync()
                t["wall"][name].append(time.perf_counter() - w)
                t["cpu"][name].append(time.process_time() - c)
        w, c = time.perf_counter(), time.process_time()
        [p.summary() for p in probes.values()]
        t["wall"]["probe"].append(time.perf_counter() - w)
        t["cpu"]["probe"].append(time.process_time() - c)
    n = sum(x.numel() for x in bl)
    out = {"tokens": n}
    for clock in ("wall", "cpu"):
        bare, probe = sum(t[clock]["bare"]), sum(t[clock]["probe"])
        per = [p / q for p, q in zip(t[clock]["probe"], t[clock]["bare"])]
        out[clock] = {"bare_tokens_per_s": n / bare, "probe_tokens_per_s": n / probe, "ratio": probe / bare,
                      "per_batch_median": statistics.median(per), "per_batch_min": min(per), "per_batch_max": max(per)}
    return out


def _worker(rank: int, world: int, store: str, out: str, shape: dict, tokens: int, seq: int, bs: int) -> None:
    import torch
    import torch.distributed as dist

    from normscope.probe import run, shard

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = build(shape)
        stats = run(model, shard(batches(shape["vocab_size"], tokens, seq, bs)), progress=False)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(stats, f)
    finally:
        dist.destroy_process_group()


def _diff(a, b, path="") -> list[str]:
    """Paths where two stats dicts differ (floats beyond 1e-9 relative; everything else exactly)."""
    bad: list[str] = []
    if isinstance(a, dict):
        if set(a) != set(b):
            return [path]
        for k in a:
            if k not in ("world_size", "normscope_version"):
                bad += _diff(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        if len(a) != len(b):
            return [path]
        for i, (x, y) in enumerate(zip(a, b)):
            bad += _diff(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        if not (a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b)) + 1e-12):
            bad.append(path)
    elif a != b:
        bad.append(path)
    return bad


def distributed(shape: dict, tokens: int, seq: int, bs: int) -> dict:
    import torch
    import torch.multiprocessing as mp

    from normscope.probe import run

    with tempfile.TemporaryDirectory() as tmp:
        store, out = os.path.join(tmp, "store"), os.path.join(tmp, "stats")
        t = time.perf_counter()
        mp.spawn(_worker, args=(2, store, out, shape, tokens, seq, bs), nprocs=2, join=True)
        two_s = time.perf_counter() - t
        r0, r1 = (json.loads(open(f"{out}.{r}").read()) for r in (0, 1))  # noqa: SIM115
    t = time.perf_counter()
    single = json.loads(json.dumps(run(build(shape), batches(shape["vocab_size"], tokens, seq, bs), progress=False)))
    one_s = time.perf_counter() - t
    bad = _diff(single, r0) + _diff(r0, r1)
    return {"identical": not bad, "differences": bad[:20], "two_process_s": two_s, "one_process_s": one_s,
            "world_size": r0["models"][0]["world_size"], "tokens": r0["models"][0]["tokens"],
            "torch_threads_single": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: a small Llama (d = 256, 2 layers)")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-distributed", action="store_true")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_scale.json)")
    args = p.parse_args()
    import torch

    shape = QUICK if args.quick else FULL
    tokens, seq, bs = (1024, 128, 2) if args.quick else (args.tokens, args.seq_len, args.batch_size)
    b = Bench("bench_scale")
    b.record("quick", args.quick)
    b.record("shape", shape)
    model = build(shape, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"model: {n_params / 1e9:.3f}B parameters, {size_mb:.0f} MB in bfloat16, device {args.device}", flush=True)
    res = throughput(model, batches(shape["vocab_size"], tokens, seq, bs), args.device)
    for clock in ("cpu", "wall"):
        r = res[clock]
        print(f"{clock}: bare {r['bare_tokens_per_s']:.1f} tok/s, probed {r['probe_tokens_per_s']:.1f} tok/s, "
              f"overhead {r['ratio']:.3f} (per batch {r['per_batch_min']:.3f}-{r['per_batch_max']:.3f}; "
              f"target <= 1.05)", flush=True)
        b.ratios[f"scale_probe_overhead_{clock}"] = {
            "ours": "probe", "reference": "bare forward", "ratio": r["ratio"], "threads": torch.get_num_threads(),
            "ours_s": res["tokens"] / r["probe_tokens_per_s"], "reference_s": res["tokens"] / r["bare_tokens_per_s"],
            "target": "<= 1.05", "label": f"Llama {n_params / 1e9:.2f}B bf16, {res['tokens']} tokens, {args.device}",
            "what": f"probed / bare forward time ({clock}), random-init Llama in bfloat16"}
    peak = peak_rss_mb()
    print(f"peak RSS {peak:.0f} MB, model {size_mb:.0f} MB: excess {peak - size_mb:.0f} MB (target <= 1024 MB)",
          flush=True)
    b.record("throughput", res)
    b.record("memory", {"peak_rss_mb": peak, "model_mb": size_mb, "excess_mb": peak - size_mb, "target": "excess <= 1024",
                        "parameters": n_params})
    del model
    if not args.skip_distributed:
        d = distributed(shape, tokens, seq, bs)
        print(f"2 processes (gloo) vs 1: identical statistics: {d['identical']} "
              f"({d['two_process_s']:.1f} s vs {d['one_process_s']:.1f} s)", flush=True)
        if not d["identical"]:
            print("  differing keys: " + ", ".join(d["differences"]), flush=True)
        b.record("distributed", d)
    b.save(args.out)
    if not args.skip_distributed and not d["identical"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
