"""``normscope swap-test MODEL``: swap each norm for the other kind without centring; report Δloss."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "swap-test",
        help="replace norms by the other kind (LN<->RMSNorm) without centring and report the change in loss",
        description=(
            "Naive swap test: each residual-stream norm is replaced by the other kind (LayerNorm -> RMSNorm, or "
            "RMSNorm -> LayerNorm) with the same gain/eps and no writer centring, one at a time and all at once. "
            "Reports loss and perplexity (causal LM), masked-LM loss, or embedding similarity (encoders without an "
            "LM head), beside the probe's mean angle of each norm's input with the all-ones vector."
        ),
    )
    p.add_argument("model", help="HF folder, hub name (cached), packaged name (minilm, smollm2)")
    p.add_argument("--out", help="folder for swap_test.json and swap_test.md (printed only if omitted)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window (default 128)")
    p.add_argument("--max-tokens", type=int, default=2048, help="tokens of pydoc text (default 2048)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--per", choices=["site", "layer", "all"], default="site",
                   help="swap one norm site at a time (default), one block at a time, or only all at once")
    p.add_argument("--loss", choices=["auto", "lm", "mlm", "embedding"], default="auto")
    p.add_argument("--no-angles", action="store_true", help="skip the probe's angle statistics")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from normscope._io import check_out
    from normscope._threads import threads

    if args.out is not None:
        check_out(args.out, force=args.force, inputs=[args.model])
    with threads(args.threads):  # restores torch's thread count when main() runs in-process
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from normscope._io import atomic_write_json, atomic_write_text, output_dir
    from normscope.convert import swap_markdown, swap_test
    from normscope.models import load
    from normscope.models.text import context_length, default_texts, token_batches

    lm = load(args.model, dtype=torch.float32)
    ctx = context_length(lm.model)
    seq_len = min(args.seq_len, ctx) if ctx else args.seq_len
    batches = list(token_batches(lm.tokenizer, default_texts(), seq_len=seq_len, max_tokens=args.max_tokens,
                                 batch_size=args.batch_size, context=ctx))
    result = swap_test(lm, batches, loss=args.loss, per=args.per, angles=not args.no_angles)
    result["text"] = "CPython pydoc_data.topics"
    result["seq_len"] = seq_len
    md = f"# Naive norm swap: {result['model']}\n\n" + swap_markdown(result)
    print(md)
    if args.out is not None:
        with output_dir(args.out, force=args.force, inputs=[args.model]) as tmp:
            atomic_write_json(tmp / "swap_test.json", result)
            atomic_write_text(tmp / "swap_test.md", md)
        print(f"wrote {Path(args.out).resolve()}/swap_test.json and swap_test.md")
    return _nonfinite_verdict(result)


def _nonfinite_verdict(result: dict) -> int:
    """NaN/Inf outputs were counted and left out of the losses; say so (a warning for swapped variants).

    Fails (:class:`normscope.errors.NonFiniteError`) if the *original* model's outputs are not
    finite (its baseline is no reference) or if the exact (writer-centred) control is not finite
    where the original is (that control is a verification).
    """
    import sys

    from normscope.errors import NonFiniteError

    base = result["baseline"]
    if base.get("nonfinite_tokens"):
        b, r, p = base["first_nonfinite"]
        raise NonFiniteError(
            f"the original model's outputs are not finite at {base['nonfinite_tokens']} token position(s), the first "
            f"at batch {b}, row {r}, position {p}; they were left out of every loss shown - check the model's weights"
        )
    exact = [r for r in result["rows"] if r["variant"].startswith("exact") and r.get("nonfinite_tokens")]
    if exact:
        raise NonFiniteError(
            f"the exact (writer-centred) conversion's outputs are not finite at {exact[0]['nonfinite_tokens']} token "
            "position(s) where the original's are finite; the conversion is broken for this model"
        )
    swapped = [(r["variant"], r["nonfinite_tokens"]) for r in result["rows"] if r.get("nonfinite_tokens")]
    if swapped:
        print("warning: token positions with NaN/Inf outputs, left out of the loss: "
              + "; ".join(f"{v}: {n}" for v, n in swapped), file=sys.stderr)
    return 0
