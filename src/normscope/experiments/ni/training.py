"""Small trainable networks for the Ni et al. experiments: linear, LN, LN-G and ReLU MLPs.

Setup (ours; the paper's was not available): ``depth`` hidden layers, each Linear(width) followed
by the nonlinearity under test, then Linear(classes). Weights N(0, 1/fan_in), biases 0; LN and
LN-G are :class:`normscope.nn.GroupLayerNorm` (ε = 1e-5) followed by a learnable per-neuron
affine (γ init 1, β init 0) — exactly GroupLayerNorm(affine=True), kept separate only so that
several seeds train as one batched model; softmax cross-entropy; Adam (0.9, 0.999, 1e-8) with
cosine decay lr·½(1 + cos(πt/T)). This recipe is ours (``docs/lnnet.md``).

All seeds of one configuration train together: weights carry a leading seed axis S and the
layers are batched matmuls, which is the same computation as S separate models (each seed's
initialisation, data order and loss are independent; the summed loss has per-seed gradients).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from normscope.nn import GroupLayerNorm

KINDS = ("linear", "ln", "lng", "relu")


class BatchedMLP(nn.Module):
    """S independent MLPs d_in → (width, act)×depth → n_out, evaluated on (S, N, d_in) inputs.

    ``kind``: ``"linear"`` (no nonlinearity), ``"ln"`` (LayerNorm = LN-G with 1 group),
    ``"lng"`` (LN-G with ``groups`` groups), ``"relu"``.
    """

    def __init__(self, n_seeds: int, d_in: int, width: int, depth: int, n_out: int, kind: str,
                 groups: int | None = None, *, seed: int = 0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown nonlinearity {kind!r}; choose from {KINDS}")
        if kind == "lng" and not groups:
            raise ValueError("kind='lng' needs groups")
        self.kind = kind
        self.groups = 1 if kind == "ln" else groups
        gen = torch.Generator().manual_seed(seed)
        dims = [d_in] + [width] * depth + [n_out]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(n_seeds, a, b, generator=gen) / math.sqrt(a)) for a, b in zip(dims[:-1], dims[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n_seeds, 1, b)) for b in dims[1:])
        self.norm = GroupLayerNorm(width, self.groups, affine=False) if kind in ("ln", "lng") else None
        if self.norm is not None:
            self.gains = nn.ParameterList(nn.Parameter(torch.ones(n_seeds, 1, width)) for _ in range(depth))
            self.shifts = nn.ParameterList(nn.Parameter(torch.zeros(n_seeds, 1, width)) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i == last:
                break
            if self.kind == "relu":
                h = torch.relu(h)
            elif self.norm is not None:
                h = torch.addcmul(self.shifts[i], self.norm(h), self.gains[i])
        return h


def train(model: BatchedMLP, X: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
          batch_size: int | None = None, seed: int = 0) -> BatchedMLP:
    """Adam + cosine decay on cross-entropy; X (N, d) or (S, N, d), y (N,) or (S, N).

    Full batch unless ``batch_size``; minibatches are drawn independently per seed.
    """
    S = model.weights[0].shape[0]
    X = X.expand(S, *X.shape) if X.ndim == 2 else X
    y = y.expand(S, *y.shape) if y.ndim == 1 else y
    N = X.shape[1]
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    gen = torch.Generator().manual_seed(seed + 12345)
    model.train()
    for _ in range(steps):
        if batch_size and batch_size < N:
            idx = torch.randint(N, (S, batch_size), generator=gen)
            xb = torch.gather(X, 1, idx[..., None].expand(-1, -1, X.shape[2]))
            yb = torch.gather(y, 1, idx)
        else:
            xb, yb = X, y
        logits = model(xb)
        # sum over seeds of each seed's mean loss: seeds stay independent
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum") / yb.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: BatchedMLP, X: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per-seed accuracy."""
    S = model.weights[0].shape[0]
    X = X.expand(S, *X.shape) if X.ndim == 2 else X
    y = y.expand(S, *y.shape) if y.ndim == 1 else y
    return (model(X).argmax(-1) == y).float().mean(1).tolist()
