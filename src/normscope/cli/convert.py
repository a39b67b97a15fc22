"""``normscope convert MODEL OUT``: exact LayerNorm → RMSNorm conversion, verified before writing."""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import math
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a pre-LN LayerNorm transformer to RMSNorm exactly (writer centring) and save it",
        description=(
            "Centre every residual-stream writer, replace each LayerNorm by RMSNorm (same gain, bias and eps), "
            "verify on sample text (max |Δlogits|, KL) and write safetensors + config + manifest.json to OUT. "
            "Refuses to write if the float32 max |Δlogits| exceeds --tol. Post-LN and RMSNorm models are refused."
        ),
    )
    p.add_argument("model", help="HF folder, hub name (cached), or packaged name")
    p.add_argument("out", help="output folder (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--tol", type=float, default=1e-4, help="max allowed float32 |Δlogits| (default 1e-4)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per verification window (default 128)")
    p.add_argument("--max-tokens", type=int, default=1024, help="verification tokens (default 1024)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-shard-size", default=None,
                   help="split the weights into shards with model.safetensors.index.json, e.g. 2GB (default: one file)")
    p.add_argument("--no-fp64", action="store_true", help="skip the float64 check (saves memory on big models)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from normscope import __version__
    from normscope._io import atomic_write_json, atomic_write_text, check_out, output_dir
    from normscope.convert import compare, load, residual_mean, to_rmsnorm, write
    from normscope.convert.exact import describe
    from normscope.models import load as load_model
    from normscope.models.text import context_length, default_texts, token_batches
    from normscope.surgery.tensors import parse_size

    parse_size(args.max_shard_size)  # a bad size is refused before any slow work
    out = Path(args.out)
    check_out(out, force=args.force, inputs=[args.model])
    lm = load_model(args.model, dtype=torch.float32)
    model = lm.model.eval()
    converted = to_rmsnorm(model).eval()
    ctx = context_length(model)
    seq_len = min(args.seq_len, ctx) if ctx else args.seq_len
    batches = list(token_batches(lm.tokenizer, default_texts(), seq_len=seq_len, max_tokens=args.max_tokens,
                                 batch_size=args.batch_size, context=ctx))
    fp32 = compare(model, converted, batches)
    res = residual_mean(converted, batches[:1])
    fp64 = None
    if not args.no_fp64:
        m64 = copy.deepcopy(model).double()
        fp64 = compare(m64, to_rmsnorm(m64), batches[:1], names=("original (float64)", "converted (float64)"))
        del m64
    print(f"converted {args.model} ({converted.config.normscope_conversion['family']}): "
          f"{len(converted.config.normscope_conversion['norms'])} LayerNorms -> RMSNorm")
    print(f"  float32: max |Δlogits| {fp32['max_abs_dlogits']:.3e} (max |logit| {fp32['max_abs_logit']:.2f}), "
          f"KL mean {fp32['kl_mean']:.3e} max {fp32['kl_max']:.3e} nats over {fp32['tokens']} tokens")
    if fp64:
        print(f"  float64: max |Δlogits| {fp64['max_abs_dlogits']:.3e}")
    print(f"  residual stream: max |mean|/RMS at any converted norm input {max(res.values()):.2e}")
    if not fp32["max_abs_dlogits"] <= args.tol or not math.isfinite(fp32["max_abs_dlogits"]):
        raise ValueError(
            f"refusing to write: float32 max |Δlogits| {fp32['max_abs_dlogits']:.3e} exceeds --tol {args.tol:g}"
        )
    manifest = {
        "tool": f"normscope {__version__} convert",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"name": args.model, "path": lm.source, "class": type(model).__name__},
        "method": (
            "writer centring (normscope docs/convert.md): residual writers centred over d_model in float64; "
            "each residual-reading LayerNorm replaced by normscope.nn.RMSNorm(bias=True) with the same gain, bias "
            "and eps (bias kept in the norm, not folded into the readers)"
        ),
        "conversion": describe(converted),
        "verification": {
            "text": "CPython pydoc_data.topics",
            "seq_len": seq_len,
            "float32": fp32,
            "float64": fp64,
            "residual_mean_over_rms_max": max(res.values()),
            "tolerance": args.tol,
        },
    }
    with output_dir(out, force=args.force, inputs=[args.model]) as tmp:
        write(converted, tmp, tokenizer=lm.tokenizer, max_shard_size=args.max_shard_size)
        reloaded = load(tmp)
        again = compare(converted, reloaded, batches[:1], names=("converted", "reloaded"))
        if again["max_abs_dlogits"] > 1e-6 * max(1.0, again["max_abs_logit"]):
            raise ValueError(f"reloading the written model changed the logits by {again['max_abs_dlogits']:.3e}")
        manifest["verification"]["reload_max_abs_dlogits"] = again["max_abs_dlogits"]
        atomic_write_json(tmp / "manifest.json", manifest)
        atomic_write_text(tmp / "README.md", _readme(args.model, manifest))
    print(f"wrote {out.resolve()} (model.safetensors, config.json, tokenizer, manifest.json); "
          "load it with normscope.convert.load(OUT)")
    return 0


def _readme(name: str, manifest: dict) -> str:
    v = manifest["verification"]
    f64 = v["float64"]["max_abs_dlogits"] if v["float64"] else None
    return (
        f"# {name}, converted LayerNorm → RMSNorm by normscope\n\n"
        f"{manifest['method']}.\n\n"
        "| check | value |\n|---|---|\n"
        f"| float32 max abs Δlogits | {v['float32']['max_abs_dlogits']:.3e} |\n"
        f"| float32 KL mean / max (nats) | {v['float32']['kl_mean']:.3e} / {v['float32']['kl_max']:.3e} |\n"
        f"| float64 max abs Δlogits | {'–' if f64 is None else f'{f64:.3e}'} |\n"
        f"| residual max mean/RMS | {v['residual_mean_over_rms_max']:.2e} |\n"
        f"| tokens | {v['float32']['tokens']} |\n\n"
        "Load with `normscope.convert.load(folder)` (the norm modules are `normscope.nn.RMSNorm`).\n"
    )
