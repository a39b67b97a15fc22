"""Per-layer and per-head attention geometry of real models (Brody et al., 2023, Sec. 3–4).

For every attention layer we take the norm whose output the attention reads and, per sequence
(all positions are keys, the causal mask ignored, as in the paper's Tables 1–2):

- ``before``: % unselectable among the norm's input vectors;
- ``after``: % unselectable among the norm's output vectors (recomputed in float64 from the
  captured input, so LN outputs lie on their hyperplane to ~1e-16 rather than float32
  round-off; the recomputation is checked against the model's own output);
- ``keys``: % unselectable among W_K·y per key head (the paper counts the norm outputs only;
  a key bias is a translation and cannot change selectability);
- ``angle_ones``: the angle between each effective query q̃ = W_Kᵀ(W_Q y + b_Q) (key-input space)
  and the line through 𝟙, min(θ, 180° − θ), per query head, all positions;
- ``angle_normalized`` (LayerNorm sites): the same for γ ⊙ q̃, the effective query acting on the
  pre-affine vector (x − μ)/σ ∈ 𝟙^⊥. 0° here means exactly uniform attention (projection,
  Sec. 3.1); with γ = 1 the two angles coincide.

Attention sites: pre-LN models (GPT-2, Llama family, ...) read their ``pre_attention`` norm of
the same layer. **Post-LN BERT** has no norm right before attention: layer l reads the output of
the previous layer's output LayerNorm (``post_mlp``; ``embeddings.LayerNorm`` for layer 0), and
that is what we measure ("before" = sublayer output + residual, "after" = the LN output).
Rotary models (Llama family): q̃ is computed without the rotary embedding (relative offset 0).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from normscope.attention.unselectable import unselectable

__all__ = ["AttentionLayer", "attention_layers", "measure_attention"]

_LAYER_RE = re.compile(r"(?:^|\.)(?:h|layers?|blocks?)\.(\d+)\.")


@dataclass
class AttentionLayer:
    """Query/key maps of one attention layer and the norm site feeding it (float64, CPU).

    ``wq`` (H, hd, d), ``bq`` (H, hd) or None, ``wk`` (KV, hd, d); query head h uses key head
    h // (H // KV) (grouped-query attention). ``rotary`` marks rotary position embeddings.
    """

    layer: int
    site: Any
    wq: torch.Tensor
    bq: torch.Tensor | None
    wk: torch.Tensor
    rotary: bool
    module_name: str

    @property
    def heads(self) -> int:
        return self.wq.shape[0]

    @property
    def kv_heads(self) -> int:
        return self.wk.shape[0]


def _head_counts(config: Any, d: int) -> tuple[int, int, int]:
    h = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not h:
        raise ValueError("config has no num_attention_heads / n_head")
    kv = getattr(config, "num_key_value_heads", None) or h
    hd = getattr(config, "head_dim", None) or d // h
    return int(h), int(kv), int(hd)


def _qk_of(name: str, m: nn.Module, config: Any, d: int):
    """(wq (H*hd, d), bq, wk (KV*hd, d), rotary) for a recognised attention module, else None."""
    if hasattr(m, "c_attn") and type(m.c_attn).__name__ == "Conv1D":  # GPT-2: y = x @ W + b, W (d, 3d)
        w = m.c_attn.weight.detach().double().T
        b = m.c_attn.bias.detach().double() if m.c_attn.bias is not None else None
        return w[:d], (b[:d] if b is not None else None), w[d : 2 * d], False
    for q, k in (("q_proj", "k_proj"), ("query", "key")):
        if isinstance(getattr(m, q, None), nn.Linear) and isinstance(getattr(m, k, None), nn.Linear):
            lq, lk = getattr(m, q), getattr(m, k)
            bq = lq.bias.detach().double() if lq.bias is not None else None
            return lq.weight.detach().double(), bq, lk.weight.detach().double(), False
    return None


def attention_layers(model: nn.Module, sites: Iterable[Any] | None = None) -> list[AttentionLayer]:
    """Every attention layer of ``model`` with its Q/K maps and the norm site that feeds it.

    Supports GPT-2 (``c_attn`` Conv1D), q_proj/k_proj models (Llama family, GQA) and BERT
    (``query``/``key``; post-LN, see the module docstring). Raises ``ValueError`` otherwise.
    """
    from normscope.models import find_norms

    sites = list(find_norms(model) if sites is None else sites)
    config = getattr(model, "config", None)
    found: dict[int, tuple[str, Any]] = {}
    for name, m in model.named_modules():
        match = _LAYER_RE.search(name + ".")
        if match is None:
            continue
        layer = int(match.group(1))
        if layer in found:
            continue
        d = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
        if d is None:
            continue
        qk = _qk_of(name, m, config, int(d))
        if qk is not None:
            found[layer] = (name, qk)
    if not found:
        raise ValueError(f"{type(model).__name__}: no supported attention module (c_attn / q_proj+k_proj / query+key)")
    d = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
    h, kv, hd = _head_counts(config, d)
    rotary_model = any("rotary" in n or "rope" in type(m).__name__.lower() for n, m in model.named_modules())
    pre = {s.layer: s for s in sites if s.role == "pre_attention" and s.layer is not None}
    post_mlp = {s.layer: s for s in sites if s.role == "post_mlp" and s.layer is not None}
    emb = [s for s in sites if s.role == "embedding"]
    out = []
    for layer in sorted(found):
        name, (wq, bq, wk, _) = found[layer]
        rotary = rotary_model
        if layer in pre:
            site = pre[layer]
        elif layer == 0 and emb:
            site = emb[0]
        elif layer - 1 in post_mlp:
            site = post_mlp[layer - 1]
        else:
            raise ValueError(f"layer {layer} ({name}): no norm feeds its attention (neither pre-LN nor post-LN layout)")
        out.append(
            AttentionLayer(
                layer, site, wq.reshape(h, hd, d), None if bq is None else bq.reshape(h, hd), wk.reshape(kv, hd, d), rotary, name
            )
        )
    return out


def _norm64(site: Any, x: torch.Tensor) -> torch.Tensor:
    """The site's norm recomputed in float64 (:meth:`normscope.models.NormSite.reference`)."""
    return site.reference(x)


def _duplicate_fraction(x: np.ndarray) -> float:
    """Fraction of rows equal to another row (these count as unselectable, strict definition)."""
    _, inv, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inv.reshape(-1)] > 1).mean())


def _line_angle_deg(v: torch.Tensor) -> torch.Tensor:
    """min(θ, 180° − θ) between each row of v and 𝟙."""
    d = v.shape[-1]
    cos = v.sum(-1).abs() / (v.norm(dim=-1) * math.sqrt(d)).clamp_min(1e-300)
    return torch.rad2deg(torch.arccos(cos.clamp(max=1.0)))


def _stats(values: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


@torch.no_grad()
def measure_attention(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    name: str = "",
    max_sequences: int | None = None,
    per_head: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Unselectable-key fractions and effective-query angles of every attention layer.

    **Arguments:** ``model`` (HF model, eval mode); ``batches`` of token ids (batch, seq)
    (e.g. :func:`normscope.models.text.token_batches`); ``max_sequences`` caps the sequences
    measured; ``per_head`` adds the W_K·y key sets and the query angles.

    **Returns:** a JSON-able dict ``{"model", "hidden_size", "sequences", "seq_len", "notes",
    "layers": [{"layer", "site", "role", "kind", "heads", "kv_heads", "head_dim",
    "before": stats, "after": stats, "duplicates": stats (% of positions whose norm
    input repeats another position's exactly, e.g. repeated tokens at layer 0 without absolute
    positions; duplicates are unselectable by the strict definition), "keys": [stats per key head], "angle_ones": [stats per
    query head], "angle_normalized": [...] or None, "recompute_rel_err"}]}`` where percentages
    are per-sequence % of positions and stats are ``{"mean","std","min","max","n"}``.
    """
    from normscope.probe.hooks import norm_hooks

    layers = attention_layers(model)
    by_site: dict[str, list[AttentionLayer]] = {}
    for al in layers:
        by_site.setdefault(al.site.name, []).append(al)
    sites = [al.site for al in layers]
    sites = list({s.name: s for s in sites}.values())
    acc = {
        al.layer: {"before": [], "after": [], "keys": [[] for _ in range(al.kv_heads)], "ang1": [[] for _ in range(al.heads)],
                   "angn": [[] for _ in range(al.heads)], "dup": [], "err": 0.0}
        for al in layers
    }
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def grab(site: Any, x: torch.Tensor, y: torch.Tensor) -> None:
        captured[site.name] = (x.detach().double().cpu(), y.detach().double().cpu())

    done, seq_len = 0, 0
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=f"attention {name}", unit="batch", leave=False)
    device = next(model.parameters()).device
    for batch in it:
        if max_sequences is not None and done >= max_sequences:
            break
        if max_sequences is not None:
            batch = batch[: max_sequences - done]
        captured.clear()
        with norm_hooks(model, sites, grab):
            model(input_ids=batch.to(device))
        for site in sites:
            x, y_model = captured[site.name]
            y = _norm64(site, x)
            err = float((y - y_model).abs().max() / y.abs().max().clamp_min(1e-300))
            for al in by_site[site.name]:
                a = acc[al.layer]
                a["err"] = max(a["err"], err)
                for s in range(x.shape[0]):
                    a["before"].append(100.0 * unselectable(x[s].numpy()).mean())
                    a["after"].append(100.0 * unselectable(y[s].numpy()).mean())
                    a["dup"].append(100.0 * _duplicate_fraction(x[s].numpy()))
                    if not per_head:
                        continue
                    for g in range(al.kv_heads):
                        a["keys"][g].append(100.0 * unselectable((y[s] @ al.wk[g].T).numpy()).mean())
                    gain = site.gain().double()
                    group = al.heads // al.kv_heads
                    for hh in range(al.heads):
                        q = y[s] @ al.wq[hh].T
                        if al.bq is not None:
                            q = q + al.bq[hh]
                        qt = q @ al.wk[hh // group]
                        a["ang1"][hh].extend(_line_angle_deg(qt).tolist())
                        if site.kind == "layernorm":
                            a["angn"][hh].extend(_line_angle_deg(qt * gain).tolist())
        done += batch.shape[0]
        seq_len = max(seq_len, batch.shape[1])
    if done == 0:
        raise ValueError("no sequences to measure")
    config = getattr(model, "config", None)
    d = int(layers[0].wq.shape[-1])
    notes = []
    if any(al.site.role != "pre_attention" for al in layers):
        notes.append(
            "post-LN: layer l's attention reads the previous layer's output LayerNorm (embeddings.LayerNorm for "
            "layer 0); 'before' is that LN's input (sublayer output + residual), 'after' its output"
        )
    if any(al.rotary for al in layers):
        notes.append("rotary position embeddings: effective queries computed without the rotation (relative offset 0)")
    if seq_len <= d:
        notes.append(
            f"sequences of {seq_len} tokens in d = {d}: {seq_len} points span at most {seq_len - 1} dimensions, so "
            "generic hidden states are all selectable; only the per-head keys (head_dim < seq) can show unselectable keys"
        )
    if any(al.site.kind != "layernorm" for al in layers):
        notes.append("RMSNorm sites: no projection, so no query direction gives exactly uniform attention; angle_ones is descriptive")
    out_layers = []
    for al in layers:
        a = acc[al.layer]
        out_layers.append(
            {
                "layer": al.layer,
                "site": al.site.name,
                "role": al.site.role,
                "kind": al.site.kind,
                "attention": al.module_name,
                "heads": al.heads,
                "kv_heads": al.kv_heads,
                "head_dim": int(al.wq.shape[1]),
                "before": _stats(a["before"]),
                "after": _stats(a["after"]),
                "duplicates": _stats(a["dup"]),
                "keys": [_stats(k) for k in a["keys"]] if per_head else [],
                "angle_ones": [_stats(v) for v in a["ang1"]] if per_head else [],
                "angle_normalized": [_stats(v) for v in a["angn"]] if per_head and al.site.kind == "layernorm" else None,
                "recompute_rel_err": a["err"],
            }
        )
    return {
        "model": name or getattr(config, "_name_or_path", "") or type(model).__name__,
        "family": getattr(config, "model_type", None),
        "hidden_size": d,
        "sequences": done,
        "seq_len": seq_len,
        "notes": notes,
        "layers": out_layers,
    }
