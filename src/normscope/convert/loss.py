"""Cross-entropy for the swap test without full-vocabulary float64 logits.

The LM head ℓ = head(h) is applied to ⌊2²²/V⌋ tokens at a time (V the vocabulary) and each
chunk's −log softmax(ℓ)[target] is taken in float64, so the largest temporary is a 32 MB chunk
instead of a (tokens × V) float64 tensor (+1.6 GB for a SmolLM2 batch of 8 × 256). Non-finite
per-token losses are counted, never summed or raised.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = ["LossSum", "hidden_of", "lm_head", "lm_loss_from_hidden", "lm_loss_from_logits"]

# elements of one float64 logits chunk (tokens × vocabulary): 2**22 → 32 MB
_CHUNK_ELEMENTS = 1 << 22


class LossSum(NamedTuple):
    """Summed cross-entropy over scored positions; non-finite per-token losses are counted, not added.

    ``count`` includes the non-finite positions; ``first`` is the (row, position) of the first
    non-finite one in the batch (None when all are finite)."""

    total: float
    count: int
    nonfinite: int
    first: tuple[int, int] | None = None


def _ce_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy −log softmax(logits)[target] in float64 (logits of any dtype)."""
    lg = logits.double()
    return torch.logsumexp(lg, dim=-1) - lg.gather(-1, targets[:, None]).squeeze(-1)


def _sum_ce(losses: torch.Tensor, where: torch.Tensor, seq: int) -> LossSum:
    """Sum the finite per-position losses; ``where`` holds each loss's flat (row * seq + position)."""
    fin = torch.isfinite(losses)
    bad = int((~fin).sum())
    first = None
    if bad:
        flat = int(where[(~fin).nonzero()[0, 0]])
        first = (flat // seq, flat % seq)
    return LossSum(float(losses[fin].sum()), int(losses.numel()), bad, first)


def lm_head(model: nn.Module) -> tuple[nn.Module, float | None] | None:
    """The LM head (``get_output_embeddings()``) and the logit soft-cap, when logits = cap(head(h))."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module) or not hasattr(head, "weight"):
        return None
    cfg = getattr(model, "config", None)
    if getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):  # Cohere-style scaling: not modelled here
        return None
    return head, getattr(cfg, "final_logit_softcapping", None)


def lm_loss_from_hidden(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor) -> LossSum:
    """Next-token cross-entropy from the last hidden state, in chunks of tokens.

    Logits ℓ = head(h) (``model.get_output_embeddings()``, in the model's dtype, exactly as the
    model computes them; soft-capped as ``cap·tanh(ℓ/cap)`` when the config says so) are built for
    ⌊2²²/V⌋ tokens at a time and turned into −log softmax(ℓ)[next token] in float64, so no
    full-vocabulary (tokens × V) float64 tensor exists. Position t scores token t + 1.

    **Arguments:** ``model`` (an HF causal LM), ``hidden`` (batch, seq, d) final hidden states,
    ``ids`` (batch, seq) token ids.

    **Returns:** :class:`LossSum` (NaN/Inf losses counted in ``nonfinite``, not summed).
    """
    head, cap = lm_head(model)
    seq = max(hidden.shape[1] - 1, 1)
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    tgt = ids[:, 1:].reshape(-1).to(h.device)
    vocab = head.weight.shape[0]
    step = max(1, _CHUNK_ELEMENTS // vocab)
    parts = []
    for a in range(0, h.shape[0], step):
        logits = head(h[a:a + step])
        if cap:
            logits = cap * torch.tanh(logits.double() / cap)
        parts.append(_ce_rows(logits, tgt[a:a + step]))
    losses = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    return _sum_ce(losses, torch.arange(losses.numel(), device=losses.device), seq)


def lm_loss_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> LossSum:
    """Cross-entropy of (batch, seq, V) or (N, V) logits against targets (−100 ignored), float64 in
    chunks of rows."""
    seq = logits.shape[1] if logits.ndim == 3 else logits.shape[0]
    logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1).to(logits.device)
    keep = targets != -100
    where = keep.nonzero().flatten()
    logits, targets = logits[keep], targets[keep]
    step = max(1, _CHUNK_ELEMENTS // logits.shape[-1])
    parts = [_ce_rows(logits[a:a + step], targets[a:a + step]) for a in range(0, logits.shape[0], step)]
    return _sum_ce(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64), where, seq)


def hidden_of(out: Any) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
