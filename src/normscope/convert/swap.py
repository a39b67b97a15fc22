"""The naive swap test: replace each norm by the other kind *without* centring the writers.

LayerNorm models get RMSNorm (same γ, β, ε); RMSNorm models get LayerNorm (same γ, no bias,
same ε; Gemma's 1 + w gain is applied as such). Unlike the exact conversion
(:func:`normscope.convert.to_rmsnorm`) this changes the function: for LN → RMSNorm the
output differs exactly by the input's component along 𝟙, so the damage should track the
mean angle θ(x, 𝟙) of the norm's input (Gupta et al. 2024 argue hidden vectors sit near 90°,
making mean subtraction nearly redundant; they never ran this swap, ``docs/deviations.md``).
We report the change in loss per norm site (or per block) and with all norms swapped,
beside the probe's angle statistics for each site.

Losses: causal LM → next-token cross-entropy and perplexity; masked LM → cross-entropy on 15%
of positions masked with a fixed seed; encoders without an LM head (e.g. the packaged MiniLM,
whose folder holds no MLM head weights) → embedding similarity: 1 − cosine between the
original and swapped mean-pooled embeddings of each window. The scoring (and
:class:`BaselineCollector`) lives in :mod:`normscope.convert.swap_eval`; it is re-exported here.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from normscope.convert.exact import evaluating
from normscope.convert.swap_eval import LOSSES, BaselineCollector, PooledScore, _Evaluator, _pick_loss  # noqa: F401
from normscope.nn import RMSNorm


def _replacement(site: Any) -> nn.Module:
    """The other kind of norm for ``site`` (a ``normscope.models.NormSite``), same gain/bias/ε."""
    ref = next((p for p in site.module.parameters()), None)
    kw = {"device": ref.device if ref is not None else None, "dtype": ref.dtype if ref is not None else None}
    g, b = site.gain(), site.bias()
    if site.kind == "layernorm":
        new: nn.Module = RMSNorm(site.d, eps=site.eps, affine=True, bias=b is not None, **kw)
    elif site.kind in ("rmsnorm", "rmsnorm_offset"):
        new = nn.LayerNorm(site.d, eps=site.eps, elementwise_affine=True, bias=b is not None, **kw)
    else:
        raise ValueError(f"cannot swap norm kind {site.kind!r} at {site.name}")
    with torch.no_grad():
        new.weight.copy_(g)
        if b is not None:
            new.bias.copy_(b)
    return new


@contextlib.contextmanager
def swapped(model: nn.Module, sites: Sequence[Any]) -> Iterator[None]:
    """Temporarily replace each site's module by the other norm kind; restored on exit."""
    saved = []
    try:
        for s in sites:
            parent_name, _, leaf = s.name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            saved.append((parent, leaf, getattr(parent, leaf)))
            setattr(parent, leaf, _replacement(s))
        yield
    finally:
        for parent, leaf, mod in reversed(saved):
            setattr(parent, leaf, mod)


def _groups(sites: Sequence[Any], per: str) -> list[tuple[str, list[Any]]]:
    """The swap variants besides "original" and "all": ``(label, sites)`` per site, block or role group.

    ``per="role"`` gives one variant per role group of :func:`normscope.probe.schema.role_group`
    (pre-sublayer, sandwich, post-LN, QK, final, embedding), labelled by
    :data:`normscope.probe.schema.GROUP_VARIANTS`, in that order.
    """
    if per == "role":
        from normscope.probe.schema import GROUP_VARIANTS, ROLE_GROUPS, role_group

        roles = {s.role for s in sites}
        post_ln = not any(r.startswith("pre_") for r in roles) and bool(roles & {"post_attention", "post_mlp"})
        by: dict[str, list[Any]] = {}
        for s in sites:
            by.setdefault(role_group(s.role, s.label, post_ln=post_ln), []).append(s)
        return [(GROUP_VARIANTS[g], by[g]) for g in ROLE_GROUPS if g in by]
    if per == "site":
        return [(s.name, [s]) for s in sites]
    if per == "layer":
        out: dict[str, list[Any]] = {}
        for s in sites:
            key = f"layer {s.layer}" if s.layer is not None else s.name
            out.setdefault(key, []).append(s)
        return list(out.items())
    if per == "all":
        return []
    raise ValueError(f"per must be 'site', 'layer', 'role' or 'all', got {per!r}")


def swap_test(
    model: Any,
    batches: Iterable[torch.Tensor],
    *,
    loss: str = "auto",
    per: str = "site",
    sites: Sequence[Any] | None = None,
    tokenizer: Any = None,
    angles: bool | dict = True,
    exact: bool = True,
    name: str | None = None,
    progress: bool = True,
    baseline: BaselineCollector | None = None,
) -> dict:
    """Swap norms for the other kind without centring; measure the change in loss.

    For LayerNorm sites the swap is LN(x) → γ ⊙ x/√(mean(x²)+ε) + β (RMSNorm); for RMSNorm
    sites RMS(x) → γ ⊙ (x − μ)/√(var(x)+ε) (LayerNorm, no bias). Only residual-stream sites
    are swapped (role ≠ "other"; per-head q/k norms are left alone). Variants: the original,
    each site (``per="site"``), each block (``per="layer"``) or each role group (``per="role"``:
    pre-sublayer, sandwich, post-LN, QK, final, embedding) swapped alone, and all swapped;
    for LN decoders that :func:`normscope.convert.to_rmsnorm` supports, also the exact
    (writer-centred) conversion as a control.

    **Arguments:** ``model`` (HF model or ``LoadedModel``), ``batches`` (LongTensor
    (batch, seq)), ``loss`` ("auto", "lm", "mlm", "embedding"; see module doc), ``per``,
    ``sites`` (default ``find_norms``), ``tokenizer`` (for the MLM mask id), ``angles`` (True: run the
    probe on ``batches`` for the mean angle of each site's input with 𝟙; or a model entry of
    ``probe.run``'s output — ``{"layers": [...]}`` — to take the angles from, with no second
    probe; False: none), ``exact``, ``name``, ``progress``, ``baseline`` (a
    :class:`BaselineCollector` filled during the probe's forward over the same ``batches``: the
    original model is then not run again).

    **Returns:** a dict with ``model``, ``loss_kind``, ``swap``, ``tokens``, ``baseline``, and
    ``rows`` — one per variant: ``variant``, ``sites``, ``layer``, ``role``, ``loss``,
    ``delta_loss``, ``ppl``/``ppl_ratio`` (LM losses) or ``cos_mean``/``cos_min`` (embedding),
    ``angle_in_mean``/``angle_in_std`` (degrees; per-site rows) — and ``angles`` per site.
    """
    from tqdm.auto import tqdm

    from normscope.models import find_norms

    if hasattr(model, "model") and hasattr(model, "tokenizer") and hasattr(model, "family"):
        name = name or model.name
        tokenizer = tokenizer or model.tokenizer
        model = model.model
    batches = [b for b in batches]
    if not batches:
        raise ValueError("swap_test got no batches")
    for b in batches:
        if not isinstance(b, torch.Tensor) or b.ndim != 2 or b.dtype != torch.long:
            raise ValueError("each batch must be a LongTensor of shape (batch, seq)")
    kind = _pick_loss(model, loss)
    all_sites = list(sites) if sites is not None else find_norms(model)
    sites = [s for s in all_sites if s.role != "other"]
    if not sites:
        raise ValueError("the model has no residual-stream norm sites to swap")
    kinds = sorted({s.kind for s in sites})
    mlm = None
    if kind == "mlm":
        mask_id = getattr(tokenizer, "mask_token_id", None)
        mlm = {"mask_id": mask_id, "special_ids": list(getattr(tokenizer, "all_special_ids", []))}

    result: dict[str, Any] = {
        "model": name or getattr(getattr(model, "config", None), "model_type", type(model).__name__),
        "family": getattr(getattr(model, "config", None), "model_type", None),
        "norm_kinds": kinds,
        "swap": " / ".join(
            {"layernorm": "LayerNorm → RMSNorm (γ, β, ε kept; no centring)",
             "rmsnorm": "RMSNorm → LayerNorm (γ, ε kept; no bias)",
             "rmsnorm_offset": "RMSNorm(1+w) → LayerNorm (gain 1+w, ε kept)"}[k] for k in kinds
        ),
        "loss_kind": kind,
        "loss_note": {
            "lm": "next-token cross-entropy (nats/token), all positions",
            "mlm": "masked-LM cross-entropy on 15% of non-special positions (fixed seed)",
            "embedding": "1 − cosine(original, swapped) of mean-pooled final hidden states per window; "
            "the model has no LM head",
        }[kind],
        "tokens": sum(b.numel() for b in batches),
        "per": per,
    }
    if isinstance(angles, dict):
        result["angles"] = _angles(angles)
        result["angles_tokens"] = angles.get("tokens")
    elif angles:
        from normscope.probe import run

        stats = run(model, batches, sites=sites, progress=progress, name=result["model"])
        result["angles"] = _angles(stats["models"][0])
        result["angles_tokens"] = result["tokens"]
    groups = _groups(sites, per)
    variants: list[tuple[str, list[Any] | None]] = [("original", [])] + list(groups) + [("all", sites)]
    with evaluating(model):
        ev = _Evaluator(model, batches, kind, mlm)
        shared = (baseline is not None and baseline.complete and baseline.kind == kind
                  and len(baseline.batches) == len(batches)
                  and all(torch.equal(a, b) for a, b in zip(baseline.batches, batches)))
        base = ev(baseline.parts) if shared else ev()
        result["baseline_source"] = "probe forward" if shared else "separate forward"
        result["baseline"] = base
        rows = []
        for label, group in tqdm(variants, desc="swap-test", disable=not progress):
            if label == "original":
                continue
            with swapped(model, group):
                r = ev()
            rows.append(_row(label, group, r, base, kind, result.get("angles")))
        if exact and kinds == ["layernorm"]:
            rows.append(_exact_row(model, ev, base, kind))
    result["rows"] = [r for r in rows if r is not None]
    return result


def _angles(entry: dict) -> dict:
    """Per-site mean/SD input angle with 𝟙 from a ``probe.run`` model entry."""
    out = {}
    for layer in entry["layers"]:
        a = (layer.get("input") or {}).get("angle_deg") or {}
        if a.get("mean") is not None:
            out[layer["name"]] = {"angle_in_mean": a["mean"], "angle_in_std": a.get("std")}
    return out


def _row(label: str, group: list[Any], r: dict, base: dict, kind: str, angles: dict | None) -> dict:
    row: dict[str, Any] = {
        "variant": label,
        "sites": [s.name for s in group],
        "layer": group[0].layer if len({s.layer for s in group}) == 1 else None,
        "role": "all" if label == "all" else "+".join(dict.fromkeys(s.role for s in group)),
        "loss": r["loss"],
        "delta_loss": r["loss"] - base["loss"],
        "nonfinite_tokens": r["nonfinite_tokens"],
    }
    if kind == "embedding":
        row.update(cos_mean=r["cos_mean"], cos_min=r["cos_min"])
    else:
        row.update(ppl=r["ppl"], ppl_ratio=r["ppl"] / base["ppl"])
    if angles and len(group) == 1 and group[0].name in angles:
        row.update(angles[group[0].name])
    elif angles and len(group) > 1:
        vals = [angles[s.name]["angle_in_mean"] for s in group
                if s.name in angles and angles[s.name]["angle_in_mean"] is not None]  # None: no finite token
        row["angle_in_mean"] = sum(vals) / len(vals) if vals else None
    return row


def _exact_row(model: nn.Module, ev: _Evaluator, base: dict, kind: str) -> dict | None:
    from normscope.convert.exact import to_rmsnorm
    from normscope.convert.families import NotConvertibleError

    try:
        converted = to_rmsnorm(model)
    except NotConvertibleError:
        return None
    original, ev.model = ev.model, converted.eval()
    try:
        r = ev()
    finally:
        ev.model = original
    row = {"variant": "exact (centred writers)", "sites": converted.config.normscope_conversion["norms"],
           "layer": None, "role": "all", "loss": r["loss"], "delta_loss": r["loss"] - base["loss"],
           "nonfinite_tokens": r["nonfinite_tokens"]}
    if kind == "embedding":
        row.update(cos_mean=r["cos_mean"], cos_min=r["cos_min"])
    else:
        row.update(ppl=r["ppl"], ppl_ratio=r["ppl"] / base["ppl"])
    return row
