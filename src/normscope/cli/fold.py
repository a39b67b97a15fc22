"""``normscope fold MODEL OUT``: fold every foldable norm's gain (and LayerNorm bias) into its readers, verified."""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import math
from pathlib import Path

_DTYPES = ("float32", "bfloat16", "float16", "float64")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fold",
        help="fold norm gains/biases into the layers that read them; write a stock-loadable checkpoint",
        description=(
            "Fold each pre-sublayer and final norm's gain (and, for LayerNorm models after exact writer centring, its "
            "bias) into the linear layers reading it, in float64, so the norm becomes a weightless RMSNorm. Prints and "
            "saves the per-site foldability map (foldability.json), verifies on sample text (float32 and float64 max "
            "|Δlogits|, KL), writes safetensors (sharded with --max-shard-size) that stock "
            "transformers.AutoModelForCausalLM loads, and re-checks that stock reload. --streaming folds a "
            "safetensors folder tensor by tensor without loading the model (then verifies one model at a time)."
        ),
    )
    p.add_argument("model", help="HF folder, hub name (cached), packaged name (smollm2) or .gguf")
    p.add_argument("out", help="output folder (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--tol", type=float, default=1e-4,
                   help="max allowed float32 max |Δlogits| / max(1, max |logit|) (default 1e-4)")
    p.add_argument("--dtype", choices=_DTYPES, default="float32", help="model dtype (fold arithmetic is float64)")
    p.add_argument("--max-shard-size", default=None, help="split the weights into shards, e.g. 2GB (default: one file)")
    p.add_argument("--streaming", action="store_true", help="fold the safetensors folder MODEL shard by shard")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per verification window (default 128)")
    p.add_argument("--max-tokens", type=int, default=512, help="verification tokens (default 512)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--no-fp64", action="store_true", help="skip the float64 check (saves memory on big models)")
    p.set_defaults(func=run)


def _batches(lm, args, model):
    import torch

    from normscope.models.text import context_length, default_texts, token_batches

    ctx = context_length(model)
    seq_len = min(args.seq_len, ctx) if ctx else args.seq_len
    if lm.tokenizer is not None:
        return list(token_batches(lm.tokenizer, default_texts(), seq_len=seq_len, max_tokens=args.max_tokens,
                                  batch_size=args.batch_size, context=ctx)), "CPython pydoc_data.topics"
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    n = max(1, args.max_tokens // seq_len)
    return [torch.randint(0, vocab, (n, seq_len), generator=g)], "random token ids (tiny vocabulary)"


def load_for_surgery(name: str, dtype):
    """``normscope.models.load``; a local folder without a tokenizer loads bare (verified on random
    ids): a normscope convert/fold output with its norms rebuilt, any other through
    ``AutoModelForCausalLM``."""
    from normscope.models import LoadedModel, load
    from normscope.models.folder_checks import has_tokenizer
    from normscope.models.loading import _quiet_transformers, is_normscope_output

    path = Path(name)
    if not path.is_dir() or has_tokenizer(path):
        return load(name, dtype=dtype)
    if is_normscope_output(path):
        return load(name, dtype=dtype, tokenizer=False)
    from transformers import AutoModelForCausalLM

    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return LoadedModel(model.eval(), None, name, model.config.model_type, str(path))


def _check(name: str, r: dict, tol: float | None) -> None:
    vals = [r["max_abs_dlogits"], r["kl_mean"], r["kl_max"]]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"refusing to write: {name} check is not finite ({vals}); the model or its dtype overflows")
    scale = max(1.0, r["max_abs_logit"])  # float32 rounding of a logit grows with its size
    if tol is not None and not r["max_abs_dlogits"] <= tol * scale:
        raise ValueError(f"refusing to write: {name} max |Δlogits| {r['max_abs_dlogits']:.3e} exceeds --tol {tol:g} × "
                         f"max(1, max |logit| {r['max_abs_logit']:.1f}); a fold should be exact up to rounding — "
                         "please report this model")


def run(args: argparse.Namespace) -> int:
    import torch

    from normscope import __version__
    from normscope._io import atomic_write_json, check_out, output_dir
    from normscope.convert import compare
    from normscope.surgery import fold, write

    out = check_out(Path(args.out), force=args.force, inputs=[args.model])
    if args.streaming:
        return _run_streaming(args, out)
    dtype = getattr(torch, args.dtype)
    lm = load_for_surgery(args.model, dtype)
    model = lm.model.eval()
    res = fold(model)
    folded = res.model.eval()
    print(f"foldability map of {args.model} ({res.map.family}, {res.map.kind}): {len(res.map.folded)} folded, "
          f"{len(res.map.kept)} kept")
    print(res.map.table())
    if res.untied_bytes:
        print(f"untied the unembedding from the input embedding to take the final norm's gain: "
              f"+{res.untied_bytes / 2**20:.1f} MiB stored")
    batches, text = _batches(lm, args, model)
    check = compare(model, folded, batches)
    _check(args.dtype, check, args.tol if dtype == torch.float32 else None)
    fp64 = None
    if not args.no_fp64:
        m64 = copy.deepcopy(model).double()
        fp64 = compare(m64, fold(m64).model, batches[:1])
        del m64
        _check("float64", fp64, None)
    print(f"  {args.dtype}: max |Δlogits| {check['max_abs_dlogits']:.3e} (max |logit| {check['max_abs_logit']:.2f}), "
          f"KL mean {check['kl_mean']:.3e} max {check['kl_max']:.3e} nats over {check['tokens']} tokens")
    if fp64:
        print(f"  float64: max |Δlogits| {fp64['max_abs_dlogits']:.3e}, KL max {fp64['kl_max']:.3e}")
    manifest = {
        "tool": f"normscope {__version__} fold",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"name": args.model, "path": lm.source, "class": type(model).__name__},
        "method": "norm gains (and LayerNorm biases, after exact writer centring) folded into their readers in "
                  "float64, cast back once; see docs/fold.md",
        "fold": res.record,
        "foldability": res.map.to_json(),
        "verification": {"text": text, args.dtype: check, "float64": fp64, "tolerance": args.tol},
    }
    with output_dir(out, force=args.force, inputs=[args.model]) as tmp:
        files = write(folded, tmp, tokenizer=lm.tokenizer, max_shard_size=args.max_shard_size)
        manifest["verification"]["stock_reload"] = _stock_reload(tmp, folded, batches[:1], args.tol)
        manifest["files"] = files
        atomic_write_json(tmp / "foldability.json", res.map.to_json())
        atomic_write_json(tmp / "manifest.json", manifest)
    sr = manifest["verification"]["stock_reload"]
    print(f"  stock AutoModelForCausalLM reload: no missing/unexpected keys, max |Δlogits| vs folded "
          f"{sr['max_abs_dlogits']:.3e}")
    print(f"wrote {out} ({', '.join(files)}, config.json, foldability.json, manifest.json); it loads with stock "
          "transformers, or with normscope.surgery.load(OUT) for normscope's RMSNorm")
    return 0


def _stock_reload(folder: Path, folded, batches, tol: float) -> dict:
    """Load ``folder`` with stock transformers; fail on missing/unexpected keys or logits off by > tol."""
    from transformers import AutoModelForCausalLM

    from normscope.convert import compare
    from normscope.models.loading import _quiet_transformers

    dtype = next(p.dtype for p in folded.parameters() if p.is_floating_point())
    with _quiet_transformers():
        stock, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, dtype=dtype)
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ValueError(f"stock reload mismatch (missing {sorted(info['missing_keys'])[:5]}, unexpected "
                         f"{sorted(info['unexpected_keys'])[:5]}); please report this family")
    r = compare(folded, stock.eval(), batches)
    _check("stock reload", r, tol if dtype.is_floating_point and dtype.itemsize >= 4 else None)
    return r


def _run_streaming(args: argparse.Namespace, out: Path) -> int:
    """Fold shard by shard, then verify holding one model at a time (reference logits kept, model freed)."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    from normscope._io import atomic_write_json, output_dir
    from normscope._verify import logit_agreement
    from normscope.models.loading import _quiet_transformers
    from normscope.surgery import fold_checkpoint

    src = Path(args.model)
    if not src.is_dir():
        raise ValueError(f"--streaming needs a safetensors checkpoint folder, got {args.model!r}")
    with output_dir(out, force=args.force, inputs=[args.model]) as tmp:
        rep = fold_checkpoint(src, tmp, max_shard_size=args.max_shard_size)
        print(rep.map.table())
        lm = load_for_surgery(str(src), torch.float32)
        batches, text = _batches(lm, args, lm.model)
        with torch.no_grad():
            ref = [lm.model(input_ids=b).logits for b in batches]  # float64 inside logit_agreement
        del lm
        gc.collect()
        with _quiet_transformers():
            stock, info = AutoModelForCausalLM.from_pretrained(tmp, output_loading_info=True, dtype=torch.float32)
        if info["missing_keys"] or info["unexpected_keys"]:
            raise ValueError(f"stock reload mismatch (missing {sorted(info['missing_keys'])[:5]}, unexpected "
                             f"{sorted(info['unexpected_keys'])[:5]}); please report this family")
        with torch.no_grad():
            new = (stock.eval()(input_ids=b).logits for b in batches)
            check = logit_agreement(zip(ref, new), names=("original", "folded (stock reload)"))
        _check("float32 (streamed, stock reload)", check, args.tol)
        manifest = dict(rep.to_json(), verification={"text": text, "float32": check, "tolerance": args.tol})
        atomic_write_json(tmp / "foldability.json", rep.map.to_json())
        atomic_write_json(tmp / "manifest.json", manifest)
    print(f"  float32 (stock reload): max |Δlogits| {check['max_abs_dlogits']:.3e} (max |logit| "
          f"{check['max_abs_logit']:.2f}), KL mean {check['kl_mean']:.3e} max {check['kl_max']:.3e} nats")
    if rep.untied_bytes:
        print(f"untied the unembedding: +{rep.untied_bytes / 2**20:.1f} MiB stored")
    print(f"wrote {out} shard by shard ({len(rep.files)} weight file(s)); it loads with stock transformers")
    return 0

