"""Norm-site registry: every normalisation module of a model, with its role and kind.

Known families (``config.model_type``) get roles from a table of module names, checked against
the installed transformers (lm-hidden-geometry.md §3, §8.1):

| family | per block | final |
|---|---|---|
| gpt2, gpt_neo | ``ln_1`` pre_attention, ``ln_2`` pre_mlp | ``ln_f`` |
| gptj | ``ln_1`` only (attention and MLP run in parallel on its output) | ``ln_f`` |
| gpt_neox (Pythia) | ``input_layernorm`` pre_attention, ``post_attention_layernorm`` pre_mlp; with ``use_parallel_residual`` both read the same vector (``reads_same_as``) | ``final_layer_norm`` |
| opt | ``self_attn_layer_norm``, ``final_layer_norm``: pre_* if ``do_layer_norm_before`` else post_* | ``decoder.final_layer_norm`` |
| bert, roberta (post-LN) | ``embeddings.LayerNorm`` embedding, ``attention.output.LayerNorm`` post_attention, ``output.LayerNorm`` post_mlp | — |
| llama, mistral, qwen2, qwen3, phi3, smollm3, gemma | ``input_layernorm`` pre_attention, ``post_attention_layernorm`` pre_mlp (HF's name notwithstanding) | ``norm`` |
| gemma2, gemma3 | ``input_layernorm`` pre_attention, ``post_attention_layernorm`` post_attention (on the attention output, before the residual add), ``pre_feedforward_layernorm`` pre_mlp, ``post_feedforward_layernorm`` post_mlp, ``q_norm``/``k_norm`` other (per head) | ``norm`` |
| phi | ``input_layernorm`` only (parallel block), optional ``q_layernorm``/``k_layernorm`` other | ``final_layernorm`` |

Kinds: ``layernorm`` (mean removal + variance), ``rmsnorm`` (``x/sqrt(mean(x²)+eps)·g``),
``rmsnorm_offset`` (Gemma: gain stored as ``w``, applied as ``1+w``). Custom norm classes are
classified numerically (their output on a test vector is compared with the three formulas), so a
kind is never guessed from a name alone. Unknown families fall back to detection by module type
and class name, with a warning; their roles come from common module names or are ``"other"``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

__all__ = ["NormSite", "find_norms", "ROLES", "KINDS"]

ROLES = ("embedding", "pre_attention", "pre_mlp", "post_attention", "post_mlp", "final", "other")
KINDS = ("layernorm", "rmsnorm", "rmsnorm_offset")


@dataclass(eq=False)
class NormSite:
    """One normalisation module.

    Fields: ``name`` (dotted module path), ``module``, ``layer`` (block index or None),
    ``role`` (one of :data:`ROLES`), ``kind`` (one of :data:`KINDS`), ``affine``, ``eps``;
    extras: ``label`` (the module's attribute name, e.g. ``ln_1``), ``d`` (normalised width),
    ``reads_same_as`` (name of another site fed the identical vector: parallel residual),
    ``seq_dim`` (axis of token positions in the module's input; 1 for (batch, seq, d), other
    values for per-head q/k norms), ``note``.
    """

    name: str
    module: nn.Module
    layer: int | None
    role: str
    kind: str
    affine: bool
    eps: float
    label: str = ""
    d: int = 0
    reads_same_as: str | None = None
    seq_dim: int = 1
    note: str = ""

    def gain(self) -> torch.Tensor:
        """Effective gain g (``1 + w`` for Gemma's offset RMSNorm; ones without affine).

        Returned detached, in float32 or the weight's dtype if wider.
        """
        w = getattr(self.module, "weight", None)
        if w is None or not self.affine:
            return torch.ones(self.d, dtype=torch.float32)
        w = w.detach()
        w = w.to(torch.promote_types(w.dtype, torch.float32))
        return 1.0 + w if self.kind == "rmsnorm_offset" else w.clone()

    def bias(self) -> torch.Tensor | None:
        """Bias b, or None (RMSNorm, ``bias=False``, no affine)."""
        b = getattr(self.module, "bias", None)
        if b is None or not isinstance(b, torch.Tensor) or not self.affine:
            return None
        b = b.detach()
        return b.to(torch.promote_types(b.dtype, torch.float32)).clone()


# leaf attribute name -> role, for the pre-LN decoders
_PRE_LN_LEAVES = {
    "ln_1": "pre_attention",
    "ln_2": "pre_mlp",
    "input_layernorm": "pre_attention",
    "post_attention_layernorm": "pre_mlp",
    "self_attn_layer_norm": "pre_attention",
    "final_layer_norm": "pre_mlp",
    "pre_feedforward_layernorm": "pre_mlp",
    "ln_attn": "pre_attention",
    "ln_mlp": "pre_mlp",
}
_FINAL_LEAVES = {"ln_f", "norm", "final_layer_norm", "final_layernorm", "final_norm"}
_SANDWICH = {  # gemma2/gemma3/olmo2
    "input_layernorm": "pre_attention",
    "post_attention_layernorm": "post_attention",
    "pre_feedforward_layernorm": "pre_mlp",
    "post_feedforward_layernorm": "post_mlp",
}
_KNOWN = {
    "gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "bert", "roberta", "llama", "mistral", "qwen2",
    "qwen3", "phi3", "smollm3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi", "olmo2",
    "falcon", "bloom",
}
_HEAD_LEAVES = {"q_norm": "query", "k_norm": "key", "q_layernorm": "query", "k_layernorm": "key"}
_LAYER_RE = re.compile(r"(?:^|\.)(?:h|layers?|blocks?)\.(\d+)\.(.+)$")


def _is_norm_module(m: nn.Module) -> bool:
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        return True
    cls = type(m).__name__
    if not re.search(r"(LayerNorm|RMSNorm|RmsNorm)$", cls):
        return False
    return not any(_is_norm_module(c) for c in m.children())


def _eps_of(m: nn.Module) -> float | None:
    for attr in ("eps", "variance_epsilon", "epsilon", "variance_eps"):
        v = getattr(m, attr, None)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def _width(m: nn.Module) -> int:
    shape = getattr(m, "normalized_shape", None)
    if shape:
        return int(shape[-1]) if isinstance(shape, (tuple, list)) else int(shape)
    for attr in ("weight", "bias"):
        t = getattr(m, attr, None)
        if isinstance(t, torch.Tensor):
            return int(t.shape[-1])
    for attr in ("dim", "hidden_size"):
        v = getattr(m, attr, None)
        if isinstance(v, int):
            return v
    raise ValueError(f"cannot tell the normalised width of {type(m).__name__}")


@torch.no_grad()
def _classify_numerically(m: nn.Module, d: int, eps: float) -> str | None:
    """Compare the module's output on a test vector with LN, RMSNorm and 1+w RMSNorm."""
    w = getattr(m, "weight", None)
    b = getattr(m, "bias", None)
    dtype = w.dtype if isinstance(w, torch.Tensor) else torch.float32
    device = w.device if isinstance(w, torch.Tensor) else torch.device("cpu")
    if device.type == "meta":
        return None
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, d, generator=g, dtype=torch.float64) + 2.0).to(dtype)
    try:
        y = m(x.to(device)).to(torch.float64).cpu()
    except Exception:  # noqa: BLE001 - unusual forward signature: cannot check
        return None
    xd = x.to(torch.float64)
    wd = w.detach().to(torch.float64).cpu() if isinstance(w, torch.Tensor) else torch.ones(d, dtype=torch.float64)
    bd = b.detach().to(torch.float64).cpu() if isinstance(b, torch.Tensor) else torch.zeros(d, dtype=torch.float64)
    c = xd - xd.mean(-1, keepdim=True)
    cands = {
        "layernorm": c / torch.sqrt((c * c).mean(-1, keepdim=True) + eps) * wd + bd,
        "rmsnorm": xd / torch.sqrt((xd * xd).mean(-1, keepdim=True) + eps) * wd + bd,
        "rmsnorm_offset": xd / torch.sqrt((xd * xd).mean(-1, keepdim=True) + eps) * (1 + wd) + bd,
    }
    errs = {k: float((v - y).norm() / max(float(y.norm()), 1e-30)) for k, v in cands.items()}
    best = min(errs, key=errs.get)
    return best if errs[best] < 2e-2 else None


def _kind_of(m: nn.Module, d: int, eps: float) -> str | None:
    if isinstance(m, nn.LayerNorm):
        return "layernorm"
    if isinstance(m, nn.RMSNorm):
        return "rmsnorm"
    return _classify_numerically(m, d, eps)


def find_norms(model: nn.Module) -> list[NormSite]:
    """Every normalisation module of ``model``, in module order, with role and kind.

    **Arguments:** ``model``: an HF model (or any ``nn.Module``).

    **Returns:** a list of :class:`NormSite`. Raises ``ValueError`` if the model has no norm
    layer. Warns when the family is not in the registry (roles then come from name heuristics).
    """
    config = getattr(model, "config", None)
    mtype = getattr(config, "model_type", None)
    if mtype is None or mtype not in _KNOWN:
        warnings.warn(
            f"architecture {mtype or type(model).__name__!r} is not in normscope's registry; "
            "norm layers detected by module type/class name and roles guessed from module names",
            stacklevel=2,
        )
    post_ln_opt = mtype == "opt" and not getattr(config, "do_layer_norm_before", True)
    parallel_neox = mtype == "gpt_neox" and getattr(config, "use_parallel_residual", False)
    sandwich = mtype in {"gemma2", "gemma3", "gemma3_text", "olmo2"}
    single_norm = mtype in {"gptj", "phi"}

    sites: list[NormSite] = []
    for name, m in model.named_modules():
        if not _is_norm_module(m):
            continue
        d = _width(m)
        eps = _eps_of(m)
        if eps is None:
            if isinstance(m, nn.RMSNorm):  # torch default: machine epsilon of the input dtype
                w = getattr(m, "weight", None)
                eps = float(torch.finfo(w.dtype if w is not None else torch.float32).eps)
            else:
                warnings.warn(f"{name}: no eps attribute found; assuming eps=0", stacklevel=2)
                eps = 0.0
        kind = _kind_of(m, d, eps)
        if kind is None:
            cls = type(m).__name__
            kind = "rmsnorm" if "RMS" in cls.upper() else "layernorm"
            warnings.warn(f"{name} ({cls}): could not verify its formula numerically; assuming {kind}", stacklevel=2)
        affine = getattr(m, "weight", None) is not None
        match = _LAYER_RE.search(name)
        layer = int(match.group(1)) if match else None
        leaf = name.rsplit(".", 1)[-1]
        role, note, seq_dim = "other", "", 1
        if leaf in _HEAD_LEAVES:
            note = f"per-head {_HEAD_LEAVES[leaf]} norm"
            if d != getattr(config, "hidden_size", d):
                # gemma3 normalises (batch, heads, seq, head_dim); qwen3 (batch, seq, heads, head_dim)
                seq_dim = 2 if mtype in {"gemma3", "gemma3_text", "gemma2"} else 1
        elif mtype in {"bert", "roberta"}:
            if name.endswith("embeddings.LayerNorm"):
                role = "embedding"
            elif name.endswith("attention.output.LayerNorm"):
                role = "post_attention"
            elif layer is not None and name.endswith("output.LayerNorm"):
                role = "post_mlp"
            else:
                note = "prediction head"
        elif layer is None:
            if leaf in _FINAL_LEAVES or "final" in leaf:
                role = "final"
            elif "emb" in name:
                role = "embedding"
        elif sandwich and leaf in _SANDWICH:
            role = _SANDWICH[leaf]
        elif leaf in _PRE_LN_LEAVES:
            role = _PRE_LN_LEAVES[leaf]
            if post_ln_opt:
                role = role.replace("pre_", "post_")
                note = "post-LN (do_layer_norm_before=False)"
        if single_norm and role == "pre_attention":
            note = "parallel block: attention and MLP both read this norm's output"
        sites.append(NormSite(name, m, layer, role, kind, affine, float(eps), leaf, d, None, seq_dim, note))

    if not sites:
        raise ValueError(
            f"{type(model).__name__} has no normalisation layer (no nn.LayerNorm / nn.RMSNorm or "
            "*LayerNorm / *RMSNorm module); nothing to probe"
        )
    if parallel_neox:
        by_layer = {(s.layer, s.label): s for s in sites}
        for s in sites:
            if s.label == "post_attention_layernorm" and (s.layer, "input_layernorm") in by_layer:
                s.reads_same_as = by_layer[(s.layer, "input_layernorm")].name
                s.note = "parallel residual: reads the same vector as input_layernorm"
    return sites


def sites_by_name(sites: Iterable[NormSite]) -> dict[str, NormSite]:
    return {s.name: s for s in sites}
