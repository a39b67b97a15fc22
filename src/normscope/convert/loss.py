"""Cross-entropy for the swap test without full-vocabulary float64 logits.

The LM head ℓ = head(h) is applied to ⌊2²²/V⌋ tokens at a time (V the vocabulary) and each
chunk's −log softmax(ℓ)[target] = log Σ exp(ℓ − max ℓ) + max ℓ − ℓ[target] is taken in float64
inside two buffers allocated once per call (the head's output dtype and float64, 32 MB at most),
so no (tokens × V) float64 tensor exists (it would be +1.6 GB for a SmolLM2 batch of 8 × 256) and
no chunk allocates afresh: per-chunk allocations of tens of MB fragment glibc's heap and held
~600 MB of RSS in the default report. Non-finite per-token losses are counted, never summed or raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = ["LossSum", "hidden_of", "lm_head", "lm_loss_from_hidden", "lm_loss_from_logits"]

# elements of one float64 logits chunk (tokens × vocabulary): 2**22 → 32 MB
_CHUNK_ELEMENTS = 1 << 22


def chunk_rows(vocab: int, rows: int) -> int:
    """Rows of one logits chunk: ``_CHUNK_ELEMENTS`` elements, at least 1 row, at most ``rows``."""
    return max(1, min(_CHUNK_ELEMENTS // vocab, rows))


class LossSum(NamedTuple):
    """Summed cross-entropy over scored positions; non-finite per-token losses are counted, not added.

    ``count`` includes the non-finite positions; ``first`` is the (row, position) of the first
    non-finite one in the batch (None when all are finite)."""

    total: float
    count: int
    nonfinite: int
    first: tuple[int, int] | None = None


def _chunked_ce(
    rows: int, vocab: int, device: torch.device, logits_at: Callable[[int, int], torch.Tensor],
    targets: torch.Tensor, cap: float | None = None,
) -> torch.Tensor:
    """Per-row −log softmax(ℓ)[target] in float64 for ``rows`` rows, ⌊2²²/V⌋ at a time:
    ``logits_at(a, n)`` gives rows a..a+n (any float dtype), soft-capped as cap·tanh(ℓ/cap) when
    ``cap`` is set, each chunk copied into one float64 scratch and reduced in place."""
    step = chunk_rows(vocab, rows)
    scratch = torch.empty(step, vocab, dtype=torch.float64, device=device)
    losses = torch.empty(rows, dtype=torch.float64, device=device)
    for a in range(0, rows, step):
        n = min(step, rows - a)
        lg = scratch[:n].copy_(logits_at(a, n))
        if cap:
            lg.div_(cap).tanh_().mul_(cap)
        lg.sub_(lg.amax(-1, keepdim=True))
        picked = lg.gather(-1, targets[a:a + n, None]).squeeze(-1)
        losses[a:a + n] = lg.exp_().sum(-1).log_().sub_(picked)
    return losses


def _linear_into(head: nn.Module, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``head(h)`` written into ``out`` for a plain ``nn.Linear`` (same mm/addmm as F.linear) whose
    weight sits on h's device with h's dtype and that has no hooks (accelerate's offloading and
    device placement live in hooks); any other head is called and its result returned."""
    plain = (type(head) is nn.Linear and not head._forward_hooks and not head._forward_pre_hooks
             and not hasattr(head, "_hf_hook"))
    if plain and head.weight.device == h.device and head.weight.dtype == h.dtype == out.dtype:
        w, b = head.weight, head.bias
        return torch.mm(h, w.t(), out=out) if b is None else torch.addmm(b, h, w.t(), out=out)
    return head(h)


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
    raw = torch.empty(chunk_rows(vocab, h.shape[0]), vocab, dtype=h.dtype, device=h.device)
    losses = _chunked_ce(h.shape[0], vocab, h.device, lambda a, n: _linear_into(head, h[a:a + n], raw[:n]), tgt, cap)
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
    losses = _chunked_ce(logits.shape[0], logits.shape[-1], logits.device, lambda a, n: logits[a:a + n], targets)
    return _sum_ce(losses, where, seq)


def hidden_of(out: Any) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
