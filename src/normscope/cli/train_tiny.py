"""``normscope train-tiny --out DIR``: train the tiny pre-LN GPT-2 used by the conversion demos."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-tiny",
        help="train a small pre-LN GPT-2 (LayerNorm) on local text and save it as an HF folder",
        description=(
            "Train a GPT2LMHeadModel (4 layers, 256 wide, 4 heads, 256 positions, byte-level tokenizer; "
            "about 3.3M parameters) on CPython's pydoc_data.topics and save it with save_pretrained + tokenizer. "
            "Held-out loss is measured on the last 10%% of every topic (nats per byte)."
        ),
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps (default 400)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--max-minutes", type=float, default=9.0,
                   help="wall-clock budget; the LR schedule follows whichever of steps/time runs out first (default 9)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from normscope.models.tiny import train_tiny

    s = train_tiny(args.out, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                   n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                   seed=args.seed, threads=args.threads, force=args.force,
                   max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    print(f"trained {s['parameters']:,} parameters for {s['steps']} of {s['steps_planned']} steps in {s['train_seconds']:.0f} s "
          f"({s['threads']} threads)")
    print(f"held-out loss {s['heldout_loss']:.4f} nats/byte ({s['heldout_bits_per_byte']:.3f} bits/byte; "
          f"untrained {s['heldout_loss_initial']:.4f}) on {s['heldout_tokens']:,} held-out bytes")
    print(f"wrote {Path(args.out).resolve()}")
    return 0
