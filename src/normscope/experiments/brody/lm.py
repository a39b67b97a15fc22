"""Language modelling with and without LN scaling (Brody et al. 2023, Sec. 4.2; Tables 1–2, Fig. 4).

The paper trains a 4-layer, 4-head, d = 8 GPT-2 from scratch on English Wikipedia (GPT-2 BPE,
context 1024, 50k steps) twice: ``ln_1`` (the norm before attention) is a standard LN ("w/
scaling") or projection only ("w/o scaling"); in both, ``ln_1``'s γ/β are frozen at 1/0 and the
QKV bias at 0. It then counts, per layer, the vectors at the ``ln_1`` input/output of one
sequence (≥ 768 tokens, all positions, causal mask ignored, not per head) that lie inside the
convex hull of the others.

CPU proxy (deviations, also printed in the output): a GPT-2-style model of the same shape
(pre-LN, learned positions N(0, 0.02²), tied read-out, GELU MLP 8 → 32 → 8, standard ``ln_2`` and
``ln_f``, no dropout) with ``ln_1`` = normscope ``LayerNorm(8, affine=False)`` (w/ scaling) or
``LayerNorm(8, scale=False, affine=False)`` (w/o scaling), bias-free QKV; a byte-level BPE
tokenizer (``tokenizers``) trained on the training text; corpus: CPython's ``pydoc_data.topics``
(every 20th document held out); AdamW lr 3e-3, linear decay, batches of 16 random windows. The
"after" vectors are recomputed in float64 from the captured ``ln_1`` input so projected vectors
lie exactly in 𝟙^⊥ (float32 residue along 𝟙 would otherwise count as a real dimension).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normscope._io import atomic_write_json, atomic_write_text
from normscope.attention import unselectable
from normscope.experiments.brody.common import PAPER, default_jobs, fmt, md_table, parallel_map, pyplot, seed_all
from normscope.nn import LayerNorm

PAPER_TABLE1 = {"without_scaling": [51.0, 32.2, 34.7, 36.8], "with_scaling": [0.0, 0.0, 0.0, 0.0]}
PAPER_TABLE2 = {"before": [44.8, 28.5, 22.3, 26.1], "after": [0.0, 0.0, 0.0, 0.0]}
PAPER_FIG4 = {"with_scaling": {"train": 7.28, "test": 7.33}, "without_scaling": {"train": 7.32, "test": 7.38}}
MODELS = {"with_scaling": "ln_1 = LN without affine (projection + scaling)", "without_scaling": "ln_1 = projection only"}


@dataclass
class LMConfig:
    d: int = 8
    layers: int = 4
    heads: int = 4
    vocab_size: int = 512
    block: int = 256
    batch_size: int = 8
    steps: int = 1200
    lr: float = 3e-3
    eval_every: int = 200
    eval_windows: int = 32
    measure_windows: int = 20
    measure_len: int = 256
    seed: int = 0


def budget_config(paper_scale: bool = False) -> LMConfig:
    """CPU budget: context 256, batch 8, 1,200 steps (about 2 min per model on one free core), 20
    held-out windows of 256 tokens. ``paper_scale``: context 1024, batch 16, 10,000 steps, windows
    of 768 tokens (the paper's minimum length), still on the local corpus (the paper: Wikipedia,
    50k steps; hours on a CPU)."""
    if paper_scale:
        return LMConfig(block=1024, batch_size=16, steps=10_000, eval_every=1000, measure_len=768, measure_windows=20)
    return LMConfig()


# --- data ------------------------------------------------------------------------------------


def corpus(vocab_size: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(tokenizer, train ids, held-out ids): byte-level BPE trained on the training documents."""
    from tokenizers import ByteLevelBPETokenizer

    from normscope.models.text import default_texts

    docs = default_texts()
    held = docs[::20]
    train = [d for i, d in enumerate(docs) if i % 20]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(train, vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=["<|sep|>"])
    sep = tok.token_to_id("<|sep|>")

    def encode(texts: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for t in texts:
            ids.extend(tok.encode(t).ids)
            ids.append(sep)
        return torch.tensor(ids, dtype=torch.long)

    return tok, encode(train), encode(held)


# --- model -----------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, d: int, heads: int, scaling: bool):
        super().__init__()
        self.heads = heads
        self.ln_1 = LayerNorm(d, affine=False) if scaling else LayerNorm(d, scale=False, affine=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)  # the paper's c_attn bias, frozen at 0
        self.proj = nn.Linear(d, d)
        self.ln_2 = LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc_out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class TinyLM(nn.Module):
    """GPT-2-shaped causal LM (d = 8, 4 layers, 4 heads by default) with a switchable ``ln_1``."""

    def __init__(self, cfg: LMConfig, scaling: bool):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d)
        self.pos = nn.Embedding(cfg.block, cfg.d)
        self.blocks = nn.ModuleList(Block(cfg.d, cfg.heads, scaling) for _ in range(cfg.layers))
        self.ln_f = LayerNorm(cfg.d)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x) @ self.tok.weight.T


def _windows(ids: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    if len(ids) < length + 1:
        raise ValueError(f"corpus part of {len(ids)} tokens is shorter than one window of {length + 1}")
    start = torch.randint(0, len(ids) - length, (n,), generator=gen)
    return torch.stack([ids[s : s + length + 1] for s in start.tolist()])


@torch.no_grad()
def _val_loss(model: TinyLM, val: torch.Tensor) -> float:
    logits = model(val[:, :-1])
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), val[:, 1:].reshape(-1)))


@torch.no_grad()
def measure(model: TinyLM, windows: torch.Tensor, scaling: bool) -> dict[str, Any]:
    """% unselectable among the ln_1 input ("before") and output ("after") vectors per layer and
    window, and among W_K·ln_1(x) per head (not in the paper: head_dim = 2)."""
    captured: list[torch.Tensor] = []
    hooks = [blk.ln_1.register_forward_hook(lambda m, a, o: captured.append(a[0].detach().double())) for blk in model.blocks]
    try:
        model(windows)
    finally:
        for h in hooks:
            h.remove()
    res = {"before": [], "after": [], "keys_per_head": [], "duplicates": []}
    for layer, x in enumerate(captured):
        ln = model.blocks[layer].ln_1
        y = F.layer_norm(x, (x.shape[-1],), eps=ln.eps) if scaling else x - x.mean(-1, keepdim=True)  # LN without γ, β
        heads = model.blocks[layer].heads
        d = x.shape[-1]
        wk = model.blocks[layer].qkv.weight.detach().double()[d : 2 * d].view(heads, d // heads, d)
        res["before"].append([100 * float(unselectable(x[s].numpy()).mean()) for s in range(len(x))])
        res["after"].append([100 * float(unselectable(y[s].numpy()).mean()) for s in range(len(x))])
        res["keys_per_head"].append([[100 * float(unselectable((y[s] @ wk[h].T).numpy()).mean()) for s in range(len(x))]
                                     for h in range(heads)])
        res["duplicates"].append([100 * float(len(x[s]) - len(torch.unique(x[s], dim=0))) / len(x[s]) for s in range(len(x))])
    return res


def train_and_measure(task: tuple[dict[str, Any], str]) -> dict[str, Any]:
    cfg_d, which = task
    cfg = LMConfig(**cfg_d)
    scaling = which == "with_scaling"
    _, train_ids, held_ids = corpus(cfg.vocab_size)
    seed_all(cfg.seed)
    model = TinyLM(cfg, scaling)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    val = _windows(held_ids, cfg.eval_windows, cfg.block, torch.Generator().manual_seed(999))
    log: dict[str, list[float]] = {"step": [], "train_loss": [], "val_loss": []}
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = _windows(train_ids, cfg.batch_size, cfg.block, gen)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            log["step"].append(step)
            log["train_loss"].append(float(np.mean(losses)))
            log["val_loss"].append(_val_loss(model, val))
            losses = []
    train_s = time.perf_counter() - t0
    windows = _windows(held_ids, cfg.measure_windows, cfg.measure_len, torch.Generator().manual_seed(1234))[:, :-1]
    t1 = time.perf_counter()
    meas = measure(model, windows, scaling)
    return {"model": which, "log": log, "measure": meas, "train_seconds": train_s, "measure_seconds": time.perf_counter() - t1,
            "train_tokens": len(train_ids), "heldout_tokens": len(held_ids)}


def _mean(rows: list[list[float]]) -> list[float]:
    return [float(np.mean(r)) for r in rows]


def run(out: Path, *, paper_scale: bool = False, jobs: int | None = None, progress: bool = True,
        cfg: LMConfig | None = None) -> dict[str, Any]:
    cfg = cfg or budget_config(paper_scale)
    jobs = default_jobs() if jobs is None else jobs
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = parallel_map(train_and_measure, [(asdict(cfg), m) for m in MODELS], jobs, "LM runs" if progress else None)
    res = {r["model"]: r for r in runs}
    w, wo = res["with_scaling"], res["without_scaling"]
    result = {"experiment": "lm (Tables 1-2, Fig. 4)", "config": asdict(cfg), "paper_scale": paper_scale,
              "elapsed_s": time.perf_counter() - t0, "runs": res,
              "table1": {"with_scaling": _mean(w["measure"]["after"]), "without_scaling": _mean(wo["measure"]["after"])},
              "table2": {"before": _mean(w["measure"]["before"]), "after": _mean(w["measure"]["after"])}}
    atomic_write_json(out / "lm.json", result)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in res.items():
        ax.plot(r["log"]["step"], r["log"]["train_loss"], label=f"{name} train")
        ax.plot(r["log"]["step"], r["log"]["val_loss"], "--", label=f"{name} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.set_title("d = 8 LM with / without LN scaling (Brody et al. Fig. 4)")
    fig.tight_layout()
    fig.savefig(out / "fig4_loss.png", dpi=120)
    plt.close(fig)

    L = range(1, cfg.layers + 1)
    t1 = result["table1"]
    t2 = result["table2"]
    heads_rows = []
    for name, r in res.items():
        for li, per_head in enumerate(r["measure"]["keys_per_head"]):
            heads_rows.append([name, li + 1] + [fmt(float(np.mean(h)), 1) for h in per_head])
    md = [
        "# LM with and without LN scaling: unselectable keys (Tables 1–2, Fig. 4)",
        "",
        f"{PAPER}. **CPU proxy**: d = {cfg.d}, {cfg.layers} layers, {cfg.heads} heads, byte-level BPE vocabulary {cfg.vocab_size} "
        f"trained on CPython `pydoc_data.topics` ({w['train_tokens']} train / {w['heldout_tokens']} held-out tokens), context "
        f"{cfg.block}, batch {cfg.batch_size}, {cfg.steps} AdamW steps (lr {cfg.lr}, linear decay), no dropout, seed {cfg.seed}. "
        f"Measured on {cfg.measure_windows} held-out windows of {cfg.measure_len} tokens (paper: GPT-2 BPE on Wikipedia, context 1024, "
        "50k steps, SQuAD contexts ≥ 768 tokens). QKV without bias, ln_1 without affine in both models.",
        "",
        "## Table 1: % unselectable vectors right before attention (after ln_1), per layer",
        "",
        md_table(["model"] + [f"L{i}" for i in L] + ["source"],
                 [["w/o scaling (projection only)"] + [fmt(v, 1) for v in t1["without_scaling"]] + ["ours"],
                  ["w/o scaling"] + [fmt(v, 1) for v in PAPER_TABLE1["without_scaling"]] + ["paper"],
                  ["w/ scaling (LN)"] + [fmt(v, 1) for v in t1["with_scaling"]] + ["ours"],
                  ["w/ scaling"] + [fmt(v, 1) for v in PAPER_TABLE1["with_scaling"]] + ["paper"]]),
        "## Table 2: the w/-scaling model, before vs after its LayerNorm",
        "",
        md_table(["measured at"] + [f"L{i}" for i in L] + ["source"],
                 [["before LN"] + [fmt(v, 1) for v in t2["before"]] + ["ours"],
                  ["before LN"] + [fmt(v, 1) for v in PAPER_TABLE2["before"]] + ["paper"],
                  ["after LN"] + [fmt(v, 1) for v in t2["after"]] + ["ours"],
                  ["after LN"] + [fmt(v, 1) for v in PAPER_TABLE2["after"]] + ["paper"]]),
        "w/o-scaling model, before its projection: " + ", ".join(f"L{i} {fmt(v, 1)}" for i, v in zip(L, _mean(wo["measure"]["before"])))
        + " (projection removes a dimension, so it can raise the fraction).",
        "",
        "## Fig. 4: loss (nats/token)",
        "",
        md_table(["model", "final train loss (ours)", "final held-out loss (ours)", "paper final train", "paper final test"],
                 [[n, fmt(res[n]["log"]["train_loss"][-1], 3), fmt(res[n]["log"]["val_loss"][-1], 3), fmt(PAPER_FIG4[n]["train"]),
                   fmt(PAPER_FIG4[n]["test"])] for n in MODELS]),
        f"The paper's losses are over a 50k-token vocabulary, ours over a {cfg.vocab_size}-token one: compare the direction of the gap, not the values. "
        "One seed: a small gap is within noise.",
        "",
        "## Not in the paper: % unselectable among W_K·ln_1(x) per head (head_dim = 2)",
        "",
        md_table(["model", "layer"] + [f"head {h}" for h in range(cfg.heads)], heads_rows),
        "A 2-D key map is not injective on the 7-dim hyperplane, so the sphere's image is a filled ellipse: scaling no longer "
        "guarantees selectable keys once W_K projects to fewer dimensions.",
        "",
        "Plot: `fig4_loss.png`.",
    ]
    atomic_write_text(out / "lm.md", "\n".join(md) + "\n")
    return result
