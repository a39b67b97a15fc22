"""The "majority" task (Brody et al. 2023, Sec. 4.1; Figs. 1a/b, 2, 3).

Data (the logic of the authors' official ``majority_exp.py``, but seeded; ``docs/attention.md``): each
sequence of length L comes from an integer partition of L into non-decreasing parts (at most
min(L, C) parts, found by a depth-first search with shuffled candidates); a partition is kept if
it has >= 2 parts and largest - second >= ``min_delta`` (6); 10 sequences per kept partition,
each with a fresh random class permutation, tokens in contiguous blocks (harmless: no
positional encoding, no mask). Label = the plurality class, predicted at every position.
Stratified 80/20 split.

Model: embedding (N(0, 1)) -> x + W_O·Attn(norm1(x)) -> x + FFN(norm2(x)) -> logits x·Eᵀ
(tied); one head, bias-free W_Q/W_K/W_V, d -> d -> d ReLU FFN; no positions, no mask, no
dropout. ``norm2`` is an affine LayerNorm with ε = 1e-5 (the original uses ε = 0).
``norm1`` variants (normscope.nn.LayerNorm, no affine, ε = 1e-12):

- ``proj_scale``: projection + scaling to norm √d (LN without affine; the paper's "with projection");
- ``scale_sqrt_d``: scaling only, norm √d (RMSNorm-like; LN's scale without the projection);
- ``scale_inv_sqrt_d``: scaling only, norm 1/√d (the original code's ``WITHOUT_PROJ``, i.e. the
  paper's "without projection"; its 8× smaller norm is a confound, ``docs/attention.md``);
- ``none``: identity.

Training: Adam, lr 1e-3 with the original's linear decay planned over 10,000 epochs (nearly
constant). Metrics per evaluation: mean train loss since the last one, test per-token and
per-sequence accuracy, and the angle between the effective query q̃ = norm1(x)·W_Qᵀ·W_K/√d and
the line through 𝟙 (min(θ, 180° − θ); 0° = uniform attention with projection), over test positions.
Both the optimiser step and the epoch are logged (the paper's "Step" axis is ambiguous).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normscope.experiments.brody.common import (
    default_jobs,
    parallel_map,
    seed_all,
)
from normscope.nn import LayerNorm

VARIANTS = {
    "proj_scale": "projection + scaling, norm √d (LN w/o affine; paper: with projection)",
    "scale_sqrt_d": "scaling only, norm √d (RMSNorm-like)",
    "scale_inv_sqrt_d": "scaling only, norm 1/√d (original code's WITHOUT_PROJ; paper: without projection)",
    "none": "no norm (identity)",
}
# 1.0 and 0.75 are reached within the CPU budget by all variants but 1/sqrt(d) scaling; 0.5-0.2 need --paper-scale (paper: ~5k steps to 0.2).
THRESHOLDS = (1.0, 0.75, 0.5, 0.3, 0.2)

# Our approximate readings of the paper's Figs. 1a/b and 2 (arXiv:2305.02582): (step, with projection, without projection).
PAPER_LOSS = [(1000, 0.75, 1.45), (2000, 0.35, 0.85), (3000, None, 0.55), (5000, 0.2, 0.42)]
PAPER_ACC = [(1000, 0.74, 0.52), (2000, 0.86, 0.70), (3000, 0.90, 0.79), (5000, 0.93, 0.85)]
PAPER_ANGLE = "with projection ≈ 70° → ≈ 30° at 4k → ≈ 15° at 8k → ≈ 11–12° from 10k steps; without ≈ 70–83°"


@dataclass
class MajorityConfig:
    d: int = 8
    num_classes: int = 20
    seq_len: int = 50
    num_samples: int = 10_000
    min_delta: int = 6
    per_partition: int = 10
    batch_size: int = 250
    steps: int = 1200
    eval_every: int = 100
    lr: float = 1e-3
    decay_epochs: int = 10_000
    eval_sequences: int = 2000
    norm2_eps: float = 1e-5
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))


def budget_config(paper_scale: bool = False) -> MajorityConfig:
    """CPU budget (default): 10k sequences, batch 250, 1,200 steps (about 30 s per run on one free
    core; 4 variants × 3 seeds + 2 d = 3 runs ≈ 4 min on 2 cores). Paper scale: 100k sequences, batch 6000, 1000 epochs = 14,000 steps (hours on a CPU)."""
    if paper_scale:
        return MajorityConfig(num_samples=100_000, batch_size=6000, steps=14_000, eval_every=140, eval_sequences=20_002)
    return MajorityConfig()


def config_3d(paper_scale: bool = False) -> MajorityConfig:
    """Fig. 1a/b: d = 3, 10 classes, L = 30, 6000 samples, full-batch. Paper: 10,000 epochs."""
    steps = 10_000 if paper_scale else 600
    return MajorityConfig(d=3, num_classes=10, seq_len=30, num_samples=6000, batch_size=6000, steps=steps,
                          eval_every=max(steps // 10, 1), variants=["proj_scale", "scale_inv_sqrt_d"])


# --- data ------------------------------------------------------------------------------------


def partitions(total: int, max_parts: int, rng: np.random.Generator):
    """Integer partitions of ``total`` into non-decreasing parts, depth-first, shuffled per level."""

    def rec(remaining: int, smallest: int, parts: list[int]):
        if remaining == 0:
            yield list(parts)
            return
        if len(parts) == max_parts:
            return
        cands = np.arange(smallest, remaining + 1)
        rng.shuffle(cands)
        for c in cands:
            parts.append(int(c))
            yield from rec(remaining - int(c), int(c), parts)
            parts.pop()

    yield from rec(total, 1, [])


def make_data(cfg: MajorityConfig, seed: int) -> dict[str, torch.Tensor]:
    """Sequences (N, L) and plurality labels (N,), split 80/20 stratified by label."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    kept: list[list[int]] = []
    for p in partitions(cfg.seq_len, min(cfg.seq_len, cfg.num_classes), rng):
        if len(p) >= 2 and p[-1] - p[-2] >= cfg.min_delta:
            kept.append(p)
            if cfg.per_partition * len(kept) > cfg.num_samples:
                break
    if len(kept) < 2:
        raise ValueError(f"only {len(kept)} partitions of L = {cfg.seq_len} have a margin >= {cfg.min_delta}; lower min_delta or raise seq_len")
    seqs, labels = [], []
    for p in kept:
        for _ in range(cfg.per_partition):
            perm = rng.permutation(cfg.num_classes)
            seqs.append(np.repeat(perm[: len(p)], p))
            labels.append(perm[len(p) - 1])
    x = np.stack(seqs)
    y = np.array(labels)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), train_size=0.8, stratify=y, random_state=seed)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).long()  # noqa: E731
    return {"x_train": t(x[idx_tr]), "y_train": t(y[idx_tr]), "x_test": t(x[idx_te]), "y_test": t(y[idx_te])}


# --- model -----------------------------------------------------------------------------------


def make_norm1(variant: str, d: int) -> nn.Module:
    if variant == "proj_scale":
        return LayerNorm(d, eps=1e-12, affine=False)
    if variant == "scale_sqrt_d":
        return LayerNorm(d, eps=1e-12, project=False, affine=False, radius="sqrt_d")
    if variant == "scale_inv_sqrt_d":
        return LayerNorm(d, eps=1e-12, project=False, affine=False, radius="inv_sqrt_d")
    if variant == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm1 variant {variant!r}; choose from {list(VARIANTS)}")


class MajorityModel(nn.Module):
    """One pre-LN encoder layer, one head, tied read-out, no positions (the original's model)."""

    def __init__(self, num_classes: int, d: int, variant: str, norm2_eps: float = 1e-5):
        super().__init__()
        self.d = d
        self.emb = nn.Embedding(num_classes, d)
        self.norm1 = make_norm1(variant, d)
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d)
        self.norm2 = LayerNorm(d, eps=norm2_eps)
        self.ff1 = nn.Linear(d, d)
        self.ff2 = nn.Linear(d, d)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        h = self.norm1(x)
        att = F.scaled_dot_product_attention(self.wq(h), self.wk(h), self.wv(h))
        x = x + self.wo(att)
        x = x + self.ff2(F.relu(self.ff1(self.norm2(x))))
        return x @ self.emb.weight.T

    def effective_queries(self, tokens: torch.Tensor) -> torch.Tensor:
        """q̃ = norm1(x)·W_Qᵀ·W_K/√d, so that score(q, k) = q̃ · norm1(x_k)."""
        h = self.norm1(self.emb(tokens))
        return self.wq(h) @ self.wk.weight / math.sqrt(self.d)


def line_angle_deg(v: torch.Tensor) -> torch.Tensor:
    """min(θ, 180° − θ) between rows of v and 𝟙."""
    cos = v.sum(-1).abs() / (v.norm(dim=-1) * math.sqrt(v.shape[-1])).clamp_min(1e-30)
    return torch.rad2deg(torch.arccos(cos.clamp(max=1.0)))


@torch.no_grad()
def evaluate(model: MajorityModel, x: torch.Tensor, y: torch.Tensor, chunk: int = 2000) -> dict[str, float]:
    correct_tok, correct_seq, angles = 0, 0, []
    for i in range(0, len(x), chunk):
        xb, yb = x[i : i + chunk], y[i : i + chunk]
        pred = model(xb).argmax(-1)
        hit = pred == yb[:, None]
        correct_tok += int(hit.sum())
        correct_seq += int(hit.all(dim=1).sum())
        angles.append(line_angle_deg(model.effective_queries(xb)).flatten())
    a = torch.cat(angles)
    return {"test_acc": correct_tok / y.numel() / x.shape[1], "test_seq_acc": correct_seq / len(y),
            "angle_mean": float(a.mean()), "angle_std": float(a.std())}


def train_one(task: tuple[dict[str, Any], str, int]) -> dict[str, Any]:
    """Train one (variant, seed); returns the logged curves."""
    cfg_d, variant, seed = task
    cfg = MajorityConfig(**cfg_d)
    seed_all(seed)
    data = make_data(cfg, seed)
    seed_all(seed + 1)
    model = MajorityModel(cfg.num_classes, cfg.d, variant, cfg.norm2_eps)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n_train = len(data["y_train"])
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = steps_per_epoch * cfg.decay_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    gen = torch.Generator().manual_seed(seed + 2)
    x_te, y_te = data["x_test"][: cfg.eval_sequences], data["y_test"][: cfg.eval_sequences]
    log: dict[str, list[float]] = {k: [] for k in ("step", "epoch", "train_loss", "test_acc", "test_seq_acc", "angle_mean", "angle_std")}

    def record(step: int, loss: float) -> None:
        ev = evaluate(model, x_te, y_te)
        log["step"].append(step)
        log["epoch"].append(step / steps_per_epoch)
        log["train_loss"].append(loss)
        for k, v in ev.items():
            log[k].append(v)

    record(0, float("nan"))
    t0 = time.perf_counter()
    perm = torch.randperm(n_train, generator=gen)
    pos, losses = 0, []
    for step in range(1, cfg.steps + 1):
        if pos + cfg.batch_size > n_train and pos > 0:
            perm, pos = torch.randperm(n_train, generator=gen), 0
        idx = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        xb, yb = data["x_train"][idx], data["y_train"][idx]
        logits = model(xb)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.repeat_interleave(xb.shape[1]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record(step, float(np.mean(losses)))
            losses = []
    out = {"variant": variant, "seed": seed, "n_train": n_train, "n_test": len(data["y_test"]),
           "steps_per_epoch": steps_per_epoch, "train_seconds": time.perf_counter() - t0, "log": log}
    if cfg.d == 3:
        with torch.no_grad():
            keys = model.norm1(model.emb.weight).numpy()
            q = model.effective_queries(x_te[:20]).reshape(-1, 3).numpy()
        out["keys"] = keys.tolist()
        out["queries"] = q.tolist()
    return out


def run(out: Path, *, paper_scale: bool = False, seeds: int = 3, jobs: int | None = None, progress: bool = True,
        cfg: MajorityConfig | None = None, cfg3d: MajorityConfig | None = None) -> dict[str, Any]:
    """Train every variant for ``seeds`` seeds (+ the d = 3 runs), write tables and plots into ``out``."""
    from normscope.experiments.brody.majority_report import write_outputs

    cfg = cfg or budget_config(paper_scale)
    cfg3d = cfg3d or config_3d(paper_scale)
    jobs = default_jobs() if jobs is None else jobs
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(seeds))
    t0 = time.perf_counter()
    tasks = [(asdict(cfg), v, s) for v in cfg.variants for s in seed_list]
    tasks += [(asdict(cfg3d), v, 0) for v in cfg3d.variants]
    runs = parallel_map(train_one, tasks, jobs, "majority runs" if progress else None)
    main_runs, runs3d = runs[: len(tasks) - len(cfg3d.variants)], runs[len(tasks) - len(cfg3d.variants) :]
    elapsed = time.perf_counter() - t0

    return write_outputs(out, cfg, cfg3d, main_runs, runs3d, seed_list=seed_list, paper_scale=paper_scale,
                         elapsed=elapsed)
