"""The default ``normscope report``: stage times, peak RSS and wall time against the unavoidable work.

1. Runs ``normscope report`` (default models minilm + smollm2, default settings) in a fresh
   process and records its wall time, peak RSS (VmHWM) and the stage times it writes into
   stats.json (load and probe per model, swap test / extras, rendering = the rest).
2. In another fresh process, times the **unavoidable work** of that report: loading each model
   and the forward passes it needs: the probe's base-model forward over the probe tokens (no hooks),
   and, per swap variant, one forward over the swap-test tokens with its loss (the default
   ``--swap-test role``: one variant per role group of norms plus all norms at once; plus the
   exact conversion for LayerNorm decoders it supports). The original model's swap-test baseline
   is *not* counted: it shares the probe's forward.
3. ``--cold``: the same report with an empty model cache (smollm2 is dequantised from its GGUF).

Targets: peak RSS <= 1.5 GB; wall / unavoidable <= 1.25; cold first run <= 45 s.

Usage: python benchmarks/bench_report.py [--quick] [--cold] [--threads N]
JSON: benchmarks/results/bench_report.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))  # benchmarks/: the harness, for this script and its children
sys.path.insert(0, _HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _harness import Bench

_REPORT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from _harness import peak_rss_mb
import torch; torch.set_num_threads(int(sys.argv[2]))
from normscope.cli import main
t = time.perf_counter()
rc = main(["report", "--quiet", "--out", sys.argv[3]] + sys.argv[4:])
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}))
"""

_WORK = r"""
import json, math, sys, time
import torch; torch.set_num_threads(int(sys.argv[1]))
from normscope import models as nm
from normscope.models import text as nt
from normscope.convert.swap import swapped, _pick_loss, _groups, _Evaluator
opts = json.loads(sys.argv[2])
texts = nt.default_texts()
out = {}
for name in opts["models"]:
    t = time.perf_counter(); lm = nm.load(name); load_s = time.perf_counter() - t
    sites = nm.find_norms(lm.model); ctx = nt.context_length(lm.model)
    from normscope.probe.runner import _forward_module
    fwd = _forward_module(lm.model, sites)
    kw = {"use_cache": False} if hasattr(lm.model.config, "use_cache") else {}
    def batches(n):
        return list(nt.token_batches(lm.tokenizer, texts, seq_len=opts["seq_len"], max_tokens=n,
                                     batch_size=opts["batch_size"], context=ctx))
    with torch.inference_mode():
        t = time.perf_counter()
        for b in batches(opts["max_tokens"]):
            fwd(input_ids=b, **kw)
        probe_fwd = time.perf_counter() - t
        swap_fwd = 0.0
        if opts["swap"]:
            sb = batches(opts["swap_tokens"])
            block = [s for s in sites if s.role != "other"]
            base = getattr(lm.model, "base_model", lm.model)
            kind = _pick_loss(lm.model, "auto")
            n_variants = len(_groups(block, "role")) + 1  # each role group, then all norms at once
            t = time.perf_counter()
            with swapped(lm.model, block):
                if kind == "mlm":  # masked inputs need the tokenizer's mask: time the forward alone
                    for b in sb:
                        base(input_ids=b, **kw)
                else:  # the forward and its loss, exactly as one swap variant is scored
                    _Evaluator(lm.model, sb, kind, None)()
            swap_fwd = (time.perf_counter() - t) * n_variants
            if sorted({s.kind for s in block}) == ["layernorm"]:
                from normscope.convert.exact import to_rmsnorm
                from normscope.convert.families import NotConvertibleError
                try:
                    conv = to_rmsnorm(lm.model).eval()
                except NotConvertibleError:
                    conv = None
                if conv is not None:
                    cb = getattr(conv, "base_model", conv)
                    t = time.perf_counter()
                    for b in sb:
                        cb(input_ids=b, **kw)
                    swap_fwd += time.perf_counter() - t
    out[name] = {"load_s": load_s, "probe_forward_s": probe_fwd, "swap_forwards_s": swap_fwd}
    del lm
print(json.dumps(out))
"""


def _child(code: str, *argv: str, env: dict | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise SystemExit(f"child failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def report_run(args, extra: list[str], env: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report")
        res = _child(_REPORT, _HERE, str(args.threads), out, *extra, env=env)
        with open(os.path.join(out, "stats.json")) as f:
            stats = json.load(f)
    run = stats["run"]
    stages = {f"{m['name']}_load_s": m["run"]["load_seconds"] for m in stats["models"]}
    stages.update({f"{m['name']}_probe_s": m["run"]["probe_seconds"] for m in stats["models"]})
    stages["swap_s"] = (run.get("stages") or {}).get("swap", 0.0)
    stages["render_s"] = max(res["wall_s"] - run["seconds"], 0.0)
    res["stages"] = stages
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1024 probe tokens, 512 swap tokens")
    p.add_argument("--cold", action="store_true", help="also time a first run with an empty model cache")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_report.json)")
    args = p.parse_args()
    b = Bench("bench_report")
    opts = {"models": ["minilm", "smollm2"], "max_tokens": 8192, "swap_tokens": 2048, "seq_len": 256,
            "batch_size": 8, "swap": True}
    extra: list[str] = []
    if args.quick:
        opts.update(max_tokens=1024, swap_tokens=512)
        extra = ["--max-tokens", "1024", "--swap-tokens", "512"]
    b.record("quick", args.quick)
    b.record("settings", opts)
    rep = report_run(args, extra)
    print(f"report: wall {rep['wall_s']:.1f} s, peak RSS {rep['peak_rss_mb']:.0f} MB (target <= 1536 MB)", flush=True)
    for k, v in rep["stages"].items():
        print(f"  {k:<22} {v:8.2f} s", flush=True)
    work = _child(_WORK, str(args.threads), json.dumps(opts))
    unavoidable = sum(sum(v.values()) for v in work.values())
    for name, v in work.items():
        print(f"  unavoidable {name}: load {v['load_s']:.2f} s, probe forward {v['probe_forward_s']:.2f} s, "
              f"swap forwards {v['swap_forwards_s']:.2f} s", flush=True)
    ratio = rep["wall_s"] / unavoidable
    print(f"report wall / unavoidable work = {rep['wall_s']:.1f} / {unavoidable:.1f} = {ratio:.3f} (target <= 1.25)",
          flush=True)
    b.record("report", rep)
    b.record("unavoidable", work)
    b.ratios["report_vs_unavoidable"] = {
        "ours": "normscope report", "reference": "model loads + forwards it needs", "ratio": ratio,
        "ours_s": rep["wall_s"], "reference_s": unavoidable, "threads": args.threads, "target": "<= 1.25",
        "label": "default report (minilm + smollm2)" + (" quick" if args.quick else ""),
        "what": "wall time of the default report / (model loads + bare forwards it needs), warm cache"}
    b.record("peak_rss_mb", {"value": rep["peak_rss_mb"], "target": "<= 1536"})
    if args.cold:
        with tempfile.TemporaryDirectory() as cache:
            cold = report_run(args, extra, env={"NORMSCOPE_CACHE": cache})
        print(f"cold first run: wall {cold['wall_s']:.1f} s (target <= 45 s), peak RSS {cold['peak_rss_mb']:.0f} MB",
              flush=True)
        b.record("cold", {**cold, "target": "wall_s <= 45"})
    b.save(args.out)


if __name__ == "__main__":
    main()
