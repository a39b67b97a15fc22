"""Scoring one swap-test variant: the loss (LM, masked LM or embedding similarity) over the batches.

:class:`_Evaluator` runs a model variant and scores it against the original;
:class:`BaselineCollector` scores the original model from another forward (the probe's) so the
swap test needs no second forward of it. The swap test itself is :mod:`normscope.convert.swap`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from normscope.convert.loss import (
    hidden_of,
    lm_head,
    lm_loss_from_hidden,
    lm_loss_from_logits,
)

__all__ = ["LOSSES", "BaselineCollector", "PooledScore"]

LOSSES = ("auto", "lm", "mlm", "embedding")



def _pick_loss(model: nn.Module, loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss != "auto":
        return loss
    name = type(model).__name__
    if "MaskedLM" in name:
        return "mlm"
    if "CausalLM" in name or "LMHead" in name:
        return "lm"
    return "embedding"


def _mlm_inputs(ids: torch.Tensor, tokenizer_info: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    special = torch.zeros_like(ids, dtype=torch.bool)
    for t in tokenizer_info["special_ids"]:
        special |= ids == t
    pick = (torch.rand(ids.shape, generator=gen) < 0.15) & ~special
    labels = torch.where(pick, ids, torch.full_like(ids, -100))
    return torch.where(pick, torch.full_like(ids, tokenizer_info["mask_id"]), ids), labels


class _Evaluator:
    """Runs one model variant over the batches and scores it against the original.

    LM losses run the base model (no LM head) and evaluate the head in chunks
    (:func:`lm_loss_from_hidden`); models whose logits are not ``head(h)`` run whole and their
    logits are scored in chunks of rows. A precomputed baseline (:class:`BaselineCollector`,
    filled during the probe's forward) is used instead of a second forward of the original.
    """

    def __init__(self, model: nn.Module, batches: list[torch.Tensor], kind: str, mlm: dict | None) -> None:
        self.model, self.batches, self.kind = model, batches, kind
        self.inputs = [(b, None) for b in batches]
        if kind == "mlm":
            if not mlm or mlm.get("mask_id") is None:
                raise ValueError("masked-LM loss needs the tokenizer's mask token id (pass tokenizer=)")
            self.inputs = [_mlm_inputs(b, mlm, seed=i) for i, b in enumerate(batches)]
        self.reference: list[torch.Tensor] | None = None

    def _split(self) -> nn.Module | None:
        """The base model to run when the loss can be taken from its hidden state (else None)."""
        if self.kind != "lm" or lm_head(self.model) is None:
            return None
        base = getattr(self.model, "base_model", None)
        return base if isinstance(base, nn.Module) and base is not self.model else None

    @torch.no_grad()
    def score_batch(self, ids: torch.Tensor, labels: torch.Tensor | None, out: Any, from_base: bool) -> Any:
        """LossSum (lm/mlm) or :class:`PooledScore` (embedding) of one forward's output."""
        if self.kind == "lm":
            if from_base:
                return lm_loss_from_hidden(self.model, hidden_of(out), ids)
            return lm_loss_from_logits(out.logits[:, :-1], ids[:, 1:])
        if self.kind == "mlm":
            return lm_loss_from_logits(out.logits, labels)
        h = hidden_of(out)
        ok = torch.isfinite(h).all(-1)
        pooled = torch.where(ok.all(-1, keepdim=True), h.double().mean(1), torch.nan)
        bad = ~ok
        first = tuple(int(i) for i in bad.nonzero()[0]) if bool(bad.any()) else None
        return PooledScore(pooled, int(bad.sum()), first)

    @torch.no_grad()
    def __call__(self, parts: list[Any] | None = None) -> dict[str, Any]:
        """Score the current model variant (or, with ``parts``, per-batch scores already computed).

        Positions whose loss (or, for embeddings, hidden state) is NaN/Inf are left out of the loss
        and counted in ``nonfinite_tokens`` (embeddings: a window with any such position is left
        out); ``first_nonfinite`` is ``(batch, row, position)`` of the first one."""
        if parts is None:
            base = self._split()
            fwd = base if base is not None else self.model
            kw = {"use_cache": False} if hasattr(getattr(self.model, "config", None), "use_cache") else {}
            parts = [self.score_batch(ids, labels, fwd(input_ids=ids, **kw), base is not None)
                     for ids, labels in self.inputs]
        bad, first = 0, None
        for bi, p in enumerate(parts):
            if p.nonfinite:
                bad += p.nonfinite
                if first is None and p.first is not None:
                    first = (bi, *p.first)
        extra = {"nonfinite_tokens": bad, "first_nonfinite": first}
        if self.kind == "embedding":
            embs = [p.pooled for p in parts]
            if self.reference is None:  # the first call scores the original model
                self.reference = embs
            cos = torch.cat([F.cosine_similarity(e, r, dim=-1) for e, r in zip(embs, self.reference)])
            cos = cos[torch.isfinite(cos)]
            if cos.numel() == 0:
                return {"loss": math.nan, "cos_mean": math.nan, "cos_min": math.nan, **extra}
            return {"loss": float(1 - cos.mean()), "cos_mean": float(cos.mean()), "cos_min": float(cos.min()), **extra}
        tot = sum(p.total for p in parts)
        n = sum(p.count - p.nonfinite for p in parts)
        if n == 0:
            if bad:
                return {"loss": math.nan, "ppl": math.nan, **extra}
            raise ValueError("no positions to score (sequences of length 1, or no masked tokens)")
        loss = tot / n
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), **extra}


class PooledScore(NamedTuple):
    """Mean-pooled float64 embeddings of one batch (NaN rows for windows holding NaN/Inf), the count of
    non-finite positions and the (row, position) of the first."""

    pooled: torch.Tensor
    nonfinite: int
    first: tuple[int, int] | None


class BaselineCollector:
    """Collects the original model's swap-test baseline during another forward (the probe's).

    Pass :meth:`on_output` as ``normscope.probe.run(..., on_output=...)``: every probed batch
    equal to the next expected swap-test batch is scored from that forward's output (no second
    forward of the original model), then pass the collector as ``swap_test(..., baseline=)``.
    Batches the probe did not see are scored by ``swap_test`` itself. Only the ``lm`` and
    ``embedding`` losses can share the probe's forward (the MLM loss needs masked inputs).

    **Arguments:** ``model`` (HF model or ``LoadedModel``), ``batches`` (the swap-test batches),
    ``loss`` (as in :func:`swap_test`).
    """

    def __init__(self, model: Any, batches: Iterable[torch.Tensor], *, loss: str = "auto") -> None:
        if hasattr(model, "model") and hasattr(model, "tokenizer") and hasattr(model, "family"):
            model = model.model
        self.model = model
        self.batches = [b for b in batches]
        self.kind = _pick_loss(model, loss)
        self.parts: list[Any] = []
        self._ev = _Evaluator(model, self.batches, self.kind, None) if self.kind != "mlm" else None

    @property
    def complete(self) -> bool:
        return self._ev is not None and len(self.parts) == len(self.batches)

    def on_output(self, batch: torch.Tensor, out: Any) -> None:
        """Score ``out`` (the forward's output for ``batch``) if it is the next swap-test batch."""
        if self._ev is None or len(self.parts) >= len(self.batches):
            return
        want = self.batches[len(self.parts)]
        if batch.shape != want.shape or not torch.equal(batch.cpu(), want):
            return
        from_base = not hasattr(out, "logits")
        if self.kind == "lm" and from_base and lm_head(self.model) is None:
            self._ev = None  # cannot score this model from hidden states: swap_test runs the baseline
            return
        self.parts.append(self._ev.score_batch(batch, None, out, from_base))
