"""Exact LayerNorm → RMSNorm conversion of pre-LN transformers by writer centring.

In a pre-LN transformer every reader of the residual stream sits behind a LayerNorm, which
discards the stream's component along 𝟙. Subtracting from every *writer* (token and position
embeddings, attention and MLP output projections, weights and biases) its mean over the
d_model axis therefore leaves the outputs unchanged and makes every residual vector
zero-mean, after which LN(x) = γ ⊙ x/√(mean(x²) + ε) + β = RMSNorm(x) with the same ε
(Jiang et al. 2023; TransformerLens ``center_writing_weights``; ``docs/convert.md``).

Design choice: γ and β stay in the norm — each LayerNorm becomes ``normscope.nn.RMSNorm``
with ``bias=True`` holding the same weight and bias — rather than being folded into the
readers. The architecture and state-dict keys stay those of the original model (only the
norm class changes), which keeps the conversion a small, auditable identity and makes a
saved conversion loadable into the original HF class.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterable

import torch
from torch import nn

from normscope.convert.families import centre_, plan
from normscope.models.tying import untie_embedding
from normscope.nn import RMSNorm

FORMAT = 1


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def rmsnorm_like(ln: nn.LayerNorm) -> RMSNorm:
    """An RMSNorm with ``ln``'s ε, gain and bias (same dtype and device)."""
    w = ln.weight
    norm = RMSNorm(
        tuple(ln.normalized_shape), eps=float(ln.eps), affine=w is not None, bias=ln.bias is not None,
        device=w.device if w is not None else None, dtype=w.dtype if w is not None else None,
    )
    with torch.no_grad():
        if w is not None:
            norm.weight.copy_(w)
        if ln.bias is not None:
            norm.bias.copy_(ln.bias)
    return norm


class CentredLayerNorm(nn.LayerNorm):
    """LayerNorm whose output is made zero-mean: ``LN(x) − mean(LN(x))·𝟙`` (BLOOM's embedding LN).

    Same parameters and state-dict keys as ``nn.LayerNorm``, so a checkpoint holding it loads in
    the stock class. There the plain LN leaves a per-token offset along 𝟙 in the residual stream,
    which every later (stock) LayerNorm removes, so both classes compute the same function; in
    normscope's converted model the stream is exactly centred and RMSNorm equals LayerNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y - y.mean(-1, keepdim=True)

    @classmethod
    def like(cls, ln: nn.LayerNorm) -> "CentredLayerNorm":
        w = ln.weight
        new = cls(tuple(ln.normalized_shape), eps=ln.eps, elementwise_affine=w is not None,
                  bias=ln.bias is not None, device=w.device if w is not None else None,
                  dtype=w.dtype if w is not None else None)
        new.load_state_dict(ln.state_dict())
        return new


def _centre_embedding_norm(model: nn.Module, norm_path: str) -> None:
    """Replace the embedding LN (BLOOM) by :class:`CentredLayerNorm` with the same γ, β.

    The token table stays as it is (it is read only through that LN, and may be tied to the
    unembedding), and the state-dict keys stay those of the stock class.
    """
    _set(model, norm_path, CentredLayerNorm.like(model.get_submodule(norm_path)))


def to_rmsnorm(model: nn.Module) -> nn.Module:
    """Return a copy of a pre-LN transformer with every LayerNorm replaced by RMSNorm, exactly.

    For each residual writer W (rows of the embedding tables; the d_model axis of attention
    and MLP output projections, layout-aware for HF ``Conv1D``) and its bias b:
    W ← W − mean_dmodel(W), b ← b − mean(b), computed in float64 and cast back. A tied
    unembedding is untied first so it keeps the original matrix. BLOOM's embedding LN is
    kept as a :class:`CentredLayerNorm` (same keys; the table is untouched). Each residual-reading LayerNorm (γ, β, ε) becomes
    ``normscope.nn.RMSNorm(d, eps=ε, bias=True)`` with the same γ, β. The input is not modified.
    The conversion record is stored in ``config.normscope_conversion``.

    **Arguments:** ``model`` — an HF model of a supported family (``families.SUPPORTED``).

    **Returns:** the converted model. Raises ``NotConvertibleError`` (a ``ValueError``) with
    the reason for post-LN models, RMSNorm models and unknown architectures.
    """
    p = plan(model)
    new = copy.deepcopy(model)
    modules = dict(new.named_modules())
    emb = new.get_input_embeddings() if hasattr(new, "get_input_embeddings") else None
    # behind an embedding LN the table's row means do not reach the stream: centre the LN's output instead
    writers = [w for w in p.writers if not (p.embedding_norm and modules[w] is emb)]
    touches_table = any(modules[w] is emb for w in writers)
    head = new.get_submodule(p.unembedding) if touches_table and p.unembedding else None
    untied = head is not None and untie_embedding(new, head) > 0
    if p.embedding_norm:
        _centre_embedding_norm(new, p.embedding_norm)
    removed = {w: centre_(modules[w]) for w in writers}
    for n in p.norms:
        _set(new, n, rmsnorm_like(modules[n]))
    record = {
        "format": FORMAT,
        "family": p.family,
        "norms": p.norms,
        "embedding_norm_centred": p.embedding_norm,
        "untied_unembedding": untied,
        "norm_module": "normscope.nn.RMSNorm(bias=True)",
    }
    new.config.normscope_conversion = record
    new._normscope_centring = removed  # largest |mean| removed per writer, for the manifest
    return new


def apply_structure(model: nn.Module, record: dict) -> nn.Module:
    """Rebuild a conversion's module structure on a freshly built original model (for loading).

    Replaces the recorded norms by RMSNorm and a centred embedding LN by
    :class:`CentredLayerNorm`; the weights come from the saved state dict afterwards.
    """
    if record.get("format") != FORMAT:
        raise ValueError(f"unknown normscope conversion format {record.get('format')!r} (expected {FORMAT})")
    for n in record["norms"]:
        _set(model, n, rmsnorm_like(model.get_submodule(n)))
    if record.get("embedding_norm_centred"):
        _centre_embedding_norm(model, record["embedding_norm_centred"])
    if record.get("embedding_norm_folded"):  # folders written before the embedding LN was kept
        _set(model, record["embedding_norm_folded"], nn.Identity())
    model.config.normscope_conversion = record
    return model


@contextlib.contextmanager
def evaluating(*models: nn.Module):
    """Put models in eval mode (no dropout) for the block, restoring their modes after."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out[0]


@torch.no_grad()
def compare(
    original: nn.Module,
    converted: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    names: tuple[str, str] = ("original", "converted"),
) -> dict:
    """Logit agreement of two models on token batches; a verification, so NaN/Inf fails it.

    Runs both models (in eval mode) on each batch and hands the logits to
    :func:`normscope._verify.logit_agreement`: a NaN or ±Inf logit in either model raises
    :class:`normscope.errors.NonFiniteError` naming the model (``names``), batch, row, position
    and output, instead of being dropped by ``max``.

    **Arguments:** ``original``, ``converted`` (HF models), ``batches`` (LongTensor
    ``(batch, seq)``), ``names`` (how the two models are called in error messages).

    **Returns:** ``max_abs_dlogits`` (max |Δlogit|), ``mean_abs_dlogits``, ``max_abs_logit``, and the
    KL divergence KL(p_original ‖ p_converted) of next-token distributions (``kl_mean``,
    ``kl_max``, in nats), over ``tokens`` positions.
    """
    from normscope._verify import logit_agreement

    def pairs():
        for ids in batches:
            with evaluating(original, converted):
                yield _logits(original, ids), _logits(converted, ids)

    return logit_agreement(pairs(), names=names)


@torch.no_grad()
def residual_mean(converted: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Largest |mean(x)| / RMS(x) of the input to every converted norm (0 for a centred stream)."""
    record = converted.config.normscope_conversion
    worst: dict[str, float] = {n: 0.0 for n in record["norms"]}
    handles = []
    for n in record["norms"]:
        def hook(mod, args, n=n):
            x = args[0].double()
            r = (x.mean(-1).abs() / x.square().mean(-1).sqrt().clamp_min(1e-300)).max()
            r = float(r)
            worst[n] = r if r != r else max(worst[n], r)  # keep NaN (Python's max would drop it)
        handles.append(converted.get_submodule(n).register_forward_pre_hook(hook))
    try:
        with evaluating(converted):
            for ids in batches:
                converted(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return worst


def describe(model: nn.Module) -> dict:
    """The conversion record plus per-writer centring (for the manifest)."""
    record = dict(model.config.normscope_conversion)
    removed = getattr(model, "_normscope_centring", None)
    if removed is not None:
        record["writers_centred"] = {k: {"max_abs_mean_removed": v} for k, v in removed.items()}
    return record


