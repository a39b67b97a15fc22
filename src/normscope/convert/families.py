"""Where each supported architecture writes to and reads from its residual stream.

The exact LN → RMSNorm conversion (writer centring, arXiv:2305.14858) needs, per family, every
module that *writes* the residual stream (token and position embeddings, attention and MLP
output projections) and every LayerNorm that *reads* it. Both come from the one architecture
description, :mod:`normscope.models.architectures` (``convertible=True`` entries). Anything we
cannot prove exact is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from normscope.models.architectures import architecture, convertible_families, post_ln_families
from normscope.models.registry import full_path

SUPPORTED = convertible_families()
# Post-LN encoders: the residual stream *is* an LN output, and sublayers read it un-normed.
POST_LN = post_ln_families()


class NotConvertibleError(ValueError):
    """The model is not a pre-LN LayerNorm transformer we can convert exactly."""


@dataclass
class Plan:
    """Concrete module paths (from the model root) for one model's conversion."""

    family: str
    writers: list[str]  # embeddings first, then per-layer output projections
    norms: list[str]  # residual-reading LayerNorms → RMSNorm
    embedding_norm: str | None
    unembedding: str | None  # lm_head (untied if tied to the input embeddings)


def is_layernorm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or "LayerNorm" in type(m).__name__


def _is_rmsnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.RMSNorm) or "RMSNorm" in type(m).__name__


def model_type(model: nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None)


def plan(model: nn.Module) -> Plan:
    """Resolve the conversion plan for ``model`` or raise :class:`NotConvertibleError` saying why."""
    mtype = model_type(model)
    modules = dict(model.named_modules())
    spec = architecture(model)
    if spec is not None and spec.post_ln and not spec.convertible:
        raise NotConvertibleError(
            f"{mtype} is a post-LN encoder: LayerNorm sits after each residual add, so the residual stream is an LN "
            "output read un-normed by the next sublayer; writer centring is not an identity there "
            "(docs/architectures.md). Use `normscope swap-test` for the naive swap instead."
        )
    if spec is None or not spec.convertible:
        has_rms = any(_is_rmsnorm(m) for m in modules.values())
        has_ln = any(is_layernorm(m) for m in modules.values())
        if (spec is not None and spec.kind != "layernorm") or (has_rms and not has_ln):
            raise NotConvertibleError(
                f"{mtype or type(model).__name__} already uses RMSNorm: there is no mean subtraction to remove"
            )
        raise NotConvertibleError(
            f"model type {mtype!r} ({type(model).__name__}) is not supported; supported pre-LN families: "
            + ", ".join(SUPPORTED)
        )
    reason = spec.refuse(model.config)
    if reason:
        raise NotConvertibleError(reason)

    full = lambda p: full_path(model, p)  # noqa: E731

    def need(path: str, kinds: tuple[type, ...] | None = None) -> nn.Module:
        m = modules.get(path)
        if m is None:
            raise NotConvertibleError(f"{mtype}: expected module {path!r} is missing; cannot prove the conversion exact")
        if kinds is not None and not isinstance(m, kinds):
            raise NotConvertibleError(f"{mtype}: {path!r} is {type(m).__name__}, expected {[k.__name__ for k in kinds]}")
        return m

    embeddings = spec.embeddings(model.config) if callable(spec.embeddings) else spec.embeddings
    writers = [full(e) for e in embeddings]
    for w in writers:
        need(w, (nn.Embedding, nn.Linear))
    layer_list = need(full(spec.layers), (nn.ModuleList,))
    norms: list[str] = []
    inner: list[str] = []
    for i in range(len(layer_list)):
        lp = f"{full(spec.layers)}.{i}"
        for w in spec.writers:
            m = need(f"{lp}.{w}")
            if not (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"):
                raise NotConvertibleError(f"{mtype}: writer {lp}.{w} is {type(m).__name__}, expected Linear or Conv1D")
            writers.append(f"{lp}.{w}")
        for n in spec.stream_norms:
            need(f"{lp}.{n.path}")
            norms.append(f"{lp}.{n.path}")
        inner += [f"{lp}.{n.path}" for n in spec.inner_norms if f"{lp}.{n.path}" in modules]
    if spec.final is None:
        raise NotConvertibleError(f"{mtype}: no final norm, so the unembedding reads the residual stream un-normed")
    final = full(spec.final)
    need(final)
    norms.append(final)
    emb_norm = full(spec.embedding_norm) if spec.embedding_norm else None
    if emb_norm:
        need(emb_norm)

    for n in norms:
        m = modules[n]
        if _is_rmsnorm(m):
            raise NotConvertibleError(f"{n} is already an RMSNorm ({type(m).__name__})")
        if not isinstance(m, nn.LayerNorm):
            raise NotConvertibleError(f"{n} is {type(m).__name__}, expected torch.nn.LayerNorm")
        if len(m.normalized_shape) != 1:
            raise NotConvertibleError(f"{n} normalises over {tuple(m.normalized_shape)}; only the last axis is supported")
    # Every LayerNorm must be accounted for; an unknown one could read the stream un-normed.
    known = set(norms) | set(inner) | ({emb_norm} if emb_norm else set())
    # ... a container of inner norms (StableLM's per-head LayerNorm list) counts as inner too
    inside_inner = lambda name: any(name.startswith(f"{i}.") or i.startswith(f"{name}.") for i in inner)  # noqa: E731
    unknown = [name for name, m in modules.items() if is_layernorm(m) and name not in known and not inside_inner(name)]
    if unknown:
        raise NotConvertibleError(
            f"{mtype}: unrecognised LayerNorm module(s) {unknown[:5]}; cannot prove the conversion exact"
        )
    lm_head = "lm_head" if isinstance(modules.get("lm_head"), nn.Linear) else None
    return Plan(mtype, writers, norms, emb_norm, lm_head)


def writer_axis(m: nn.Module) -> int:
    """Axis of ``m.weight`` that indexes d_model (the residual-stream coordinate)."""
    if isinstance(m, nn.Embedding):
        return -1  # (num, d_model)
    if isinstance(m, nn.Linear):
        return 0  # (out = d_model, in)
    if type(m).__name__ == "Conv1D":
        return -1  # HF Conv1D stores (in, out = d_model)
    raise TypeError(f"not a residual writer: {type(m).__name__}")


def centre_(m: nn.Module) -> float:
    """Subtract the mean over the d_model axis from ``m``'s weight (and bias) in float64.

    Returns the largest |mean| removed (how far from centred the writer was).
    """
    axis = writer_axis(m)
    with torch.no_grad():
        w = m.weight.detach().to(torch.float64)
        mean = w.mean(dim=axis, keepdim=True)
        m.weight.copy_((w - mean).to(m.weight.dtype))
        removed = float(mean.abs().max())
        b = getattr(m, "bias", None)
        if isinstance(b, torch.Tensor) and not isinstance(m, nn.Embedding):
            b64 = b.detach().to(torch.float64)
            bm = b64.mean()
            b.copy_((b64 - bm).to(b.dtype))
            removed = max(removed, abs(float(bm)))
    return removed
