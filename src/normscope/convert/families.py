"""Where each supported architecture writes to and reads from its residual stream.

The exact LN → RMSNorm conversion (``lm-hidden-geometry.md`` §6) needs, per family, every
module that *writes* the residual stream (token and position embeddings, attention and MLP
output projections) and every LayerNorm that *reads* it. Paths are relative to the HF base
model (``model.base_model``: ``transformer``, ``gpt_neox``, ``model``, ...), so both
``*ForCausalLM`` and bare base models resolve. Anything we cannot prove exact is refused
with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

SUPPORTED = (
    "gpt2", "gpt_neo", "gpt_bigcode", "gpt_neox", "gptj", "codegen", "opt", "phi", "bloom", "falcon", "stablelm",
)  # fmt: skip

# Post-LN encoders: the residual stream *is* an LN output, and sublayers read it un-normed.
POST_LN = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "mpnet", "camembert", "deberta")


class NotConvertibleError(ValueError):
    """The model is not a pre-LN LayerNorm transformer we can convert exactly."""


@dataclass(frozen=True)
class FamilySpec:
    """Residual-stream writers and readers of one architecture.

    ``embeddings``: writers before the first block (or a function of the config giving them).
    ``layers``: path of the block ModuleList. ``writers``: per-block output projections.
    ``norms``: per-block LayerNorms that read the residual stream (absent names are skipped;
    at least one must exist). ``final``: the final LayerNorm. ``inner_norms``: per-block
    LayerNorms that read something else (per-head q/k norms) and stay as they are.
    ``embedding_norm``: an LN applied to the token embeddings alone before the stream (BLOOM);
    it is folded into the embedding table. ``refuse``: config → reason string or None.
    """

    embeddings: tuple[str, ...] | Callable[[object], tuple[str, ...]]
    layers: str
    writers: tuple[str, ...]
    norms: tuple[str, ...]
    final: str
    inner_norms: tuple[str, ...] = ()
    embedding_norm: str | None = None
    refuse: Callable[[object], str | None] = field(default=lambda cfg: None)


def _opt_embeddings(cfg) -> tuple[str, ...]:
    # With word_embed_proj_dim != hidden_size, the stream's first writer is project_in, not the table.
    proj = getattr(cfg, "word_embed_proj_dim", cfg.hidden_size) != cfg.hidden_size
    return ("decoder.project_in" if proj else "decoder.embed_tokens", "decoder.embed_positions")


def _opt_refuse(cfg) -> str | None:
    if not getattr(cfg, "do_layer_norm_before", True):
        return (
            "this OPT checkpoint is post-LN (do_layer_norm_before=False, as OPT-350m): the residual stream is an LN "
            "output and is read un-normed, so writer centring is not an identity"
        )
    if getattr(cfg, "_remove_final_layer_norm", False):
        return "this OPT checkpoint has no final LayerNorm, so the unembedding reads the residual stream un-normed"
    return None


def _gpt2_refuse(cfg) -> str | None:
    if getattr(cfg, "add_cross_attention", False):
        return "GPT-2 with cross-attention writes encoder states into the residual stream; not supported"
    return None


def _bloom_refuse(cfg) -> str | None:
    if getattr(cfg, "apply_residual_connection_post_layernorm", False):
        return "BLOOM with apply_residual_connection_post_layernorm=True adds LN outputs to the residual stream (post-LN)"
    return None


FAMILIES: dict[str, FamilySpec] = {
    "gpt2": FamilySpec(("wte", "wpe"), "h", ("attn.c_proj", "mlp.c_proj"), ("ln_1", "ln_2"), "ln_f", refuse=_gpt2_refuse),
    "gpt_neo": FamilySpec(("wte", "wpe"), "h", ("attn.attention.out_proj", "mlp.c_proj"), ("ln_1", "ln_2"), "ln_f"),
    "gpt_bigcode": FamilySpec(("wte", "wpe"), "h", ("attn.c_proj", "mlp.c_proj"), ("ln_1", "ln_2"), "ln_f"),
    "gpt_neox": FamilySpec(
        ("embed_in",), "layers", ("attention.dense", "mlp.dense_4h_to_h"),
        ("input_layernorm", "post_attention_layernorm"), "final_layer_norm",
    ),
    "gptj": FamilySpec(("wte",), "h", ("attn.out_proj", "mlp.fc_out"), ("ln_1",), "ln_f"),
    "codegen": FamilySpec(("wte",), "h", ("attn.out_proj", "mlp.fc_out"), ("ln_1",), "ln_f"),
    "opt": FamilySpec(
        _opt_embeddings, "decoder.layers", ("self_attn.out_proj", "fc2"),
        ("self_attn_layer_norm", "final_layer_norm"), "decoder.final_layer_norm", refuse=_opt_refuse,
    ),
    "phi": FamilySpec(
        ("embed_tokens",), "layers", ("self_attn.dense", "mlp.fc2"), ("input_layernorm",), "final_layernorm",
        inner_norms=("self_attn.q_layernorm", "self_attn.k_layernorm"),
    ),
    "bloom": FamilySpec(
        ("word_embeddings",), "h", ("self_attention.dense", "mlp.dense_4h_to_h"),
        ("input_layernorm", "post_attention_layernorm"), "ln_f",
        embedding_norm="word_embeddings_layernorm", refuse=_bloom_refuse,
    ),
    "falcon": FamilySpec(
        ("word_embeddings",), "h", ("self_attention.dense", "mlp.dense_4h_to_h"),
        ("input_layernorm", "post_attention_layernorm", "ln_attn", "ln_mlp"), "ln_f",
    ),
    "stablelm": FamilySpec(
        ("embed_tokens",), "layers", ("self_attn.o_proj", "mlp.down_proj"),
        ("input_layernorm", "post_attention_layernorm"), "norm",
        inner_norms=("self_attn.q_layernorm", "self_attn.k_layernorm"),
    ),
}


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
    if mtype in POST_LN:
        raise NotConvertibleError(
            f"{mtype} is a post-LN encoder: LayerNorm sits after each residual add, so the residual stream is an LN "
            "output read un-normed by the next sublayer; writer centring is not an identity there "
            "(lm-hidden-geometry.md §3, §6.3.5). Use `normscope swap-test` for the naive swap instead."
        )
    if mtype not in FAMILIES:
        has_rms = any(_is_rmsnorm(m) for m in modules.values())
        has_ln = any(is_layernorm(m) for m in modules.values())
        if has_rms and not has_ln:
            raise NotConvertibleError(
                f"{mtype or type(model).__name__} already uses RMSNorm: there is no mean subtraction to remove"
            )
        raise NotConvertibleError(
            f"model type {mtype!r} ({type(model).__name__}) is not supported; supported pre-LN families: "
            + ", ".join(SUPPORTED)
        )
    spec = FAMILIES[mtype]
    reason = spec.refuse(model.config)
    if reason:
        raise NotConvertibleError(reason)

    base = getattr(model, "base_model", model)
    prefix = next((name for name, m in model.named_modules() if m is base), "")
    full = (lambda p: f"{prefix}.{p}") if prefix else (lambda p: p)

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
        found = [f"{lp}.{n}" for n in spec.norms if f"{lp}.{n}" in modules]
        if not found:
            raise NotConvertibleError(f"{mtype}: block {lp} has none of the expected norms {spec.norms}")
        norms += found
        inner += [f"{lp}.{n}" for n in spec.inner_norms if f"{lp}.{n}" in modules]
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
    inside_inner = lambda name: any(name.startswith(f"{i}.") for i in inner)  # noqa: E731
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
