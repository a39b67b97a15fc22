"""``normscope verify A B``: do two models compute the same function? Per-site errors and the first divergence."""

from __future__ import annotations

import argparse
from pathlib import Path

_DTYPES = ("float64", "float32", "bfloat16", "float16")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify",
        help="compare two models site by site (residual stream, every norm) and find the first divergence",
        description=(
            "Run A and B on the same tokens with hooks on every block output and norm input; print per-site max |Δ| "
            "and relative error, the first site diverging beyond c·√d·u (u: the dtype's machine epsilon), and end-"
            "to-end max |Δlogits|, KL and top-1 agreement, for each --dtypes. A and B: HF folders, normscope outputs, "
            "packaged names (smollm2, minilm) or .gguf files. Exits 1 on any non-finite value or when --tol is "
            "exceeded."
        ),
    )
    p.add_argument("a", help="reference model")
    p.add_argument("b", help="model to check against A")
    p.add_argument("--dtypes", default="float64,float32,bfloat16", help="comma-separated (default float64,float32,bfloat16)")
    p.add_argument("--rotation", default=None, help="torch .pt file holding Q with x_B = x_A Q on the residual stream")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128, help="tokens compared (default 128)")
    p.add_argument("--c", type=float, default=8.0, help="tolerance constant in c·√d·u (default 8)")
    p.add_argument("--tol", type=float, default=None, help="fail if float32 max |Δlogits| exceeds this")
    p.add_argument("--all-sites", action="store_true", help="print every site (default: diverged and a sample)")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from normscope._io import atomic_write_json
    from normscope.cli.fold import load_for_surgery
    from normscope.models.text import context_length, default_texts, token_batches
    from normscope.surgery import error_table

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in _DTYPES]
    if bad or not dtypes:
        raise ValueError(f"--dtypes: unknown {bad or dtypes}; choose from {', '.join(_DTYPES)}")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise FileExistsError(f"{out} exists; choose another --out")
    la = load_for_surgery(args.a, torch.float32)
    b = load_for_surgery(args.b, torch.float32).model
    a = la.model
    ctx = context_length(a)
    seq_len = min(args.seq_len, ctx) if ctx else args.seq_len
    if la.tokenizer is not None:
        ids = torch.cat(list(token_batches(la.tokenizer, default_texts(), seq_len=seq_len, max_tokens=args.max_tokens,
                                           batch_size=max(1, args.max_tokens // seq_len), context=ctx))[:1])
        text = "CPython pydoc_data.topics"
    else:
        vocab = a.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (max(1, args.max_tokens // seq_len), seq_len), generator=torch.Generator().manual_seed(0))
        text = "random token ids"
    rotation = torch.load(args.rotation, map_location="cpu") if args.rotation else None
    rows = error_table(a, b, ids, dtypes=[getattr(torch, d) for d in dtypes], rotation=rotation, c=args.c)
    print(f"verify {args.a} vs {args.b} on {ids.numel()} tokens ({text})")
    for r in rows:
        print(f"\n## {r.dtype}\n{r.table(every=args.all_sites)}\n{r.summary()}")
    print("\n| dtype | max abs Δlogits | KL mean | KL max | top-1 agreement | first divergence |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.dtype} | {r.max_abs_dlogits:.3e} | {r.kl_mean:.3e} | {r.kl_max:.3e} | {r.top1_agreement:.4f} | "
              f"{r.first_divergence or 'none'} |")
    if out is not None:
        atomic_write_json(out, {"a": args.a, "b": args.b, "text": text, "tokens": int(ids.numel()),
                                "results": [r.to_json() for r in rows]})
        print(f"wrote {out}")
    f32 = next((r for r in rows if r.dtype == "float32"), None)
    if args.tol is not None and f32 is not None and not f32.max_abs_dlogits <= args.tol:
        raise ValueError(f"float32 max |Δlogits| {f32.max_abs_dlogits:.3e} exceeds --tol {args.tol:g}")
    return 0

