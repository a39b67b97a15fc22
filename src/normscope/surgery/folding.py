"""Fold norm gains (and LayerNorm biases) into the linear layers that read them.

For a norm ``y = g ⊙ x̂ + β`` with ``x̂ = x/√(mean(x²)+ε)`` read only by linear maps
``z = W y + b``: ``z = (W diag g) x̂ + (b + W β)``. After folding, the norm is weightless
(gain 1, bias 0): a plain RMSNorm. LayerNorm models are first centred exactly
(:func:`normscope.convert.to_rmsnorm`: every residual writer made zero-mean, so LN = RMSNorm;
Jiang et al., arXiv:2305.14858), then folded. Gemma stores its gain as ``w`` and applies
``1 + w``; the sum is formed in float64 (in bfloat16, ``1 + w`` rounds small ``w`` away).
All arithmetic is float64, cast back once to the model's dtype. This is the "fold LayerNorm"
step of TransformerLens and of rotation methods (QuaRot, arXiv:2404.00456; SliceGPT,
arXiv:2401.15024), for every family in the architecture table; ``docs/fold.md`` has the
derivation and what cannot be folded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from normscope.models.tying import untie_embedding
from normscope.surgery.sites import FoldMap, NotFoldableError, foldability

__all__ = ["FoldResult", "fold", "fold_site_", "RECORD_FORMAT"]

RECORD_FORMAT = 1


@dataclass
class FoldResult:
    """A folded copy of a model.

    **Fields:** ``model`` (the folded copy; the input is untouched), ``map`` (the
    :class:`~normscope.surgery.sites.FoldMap`: every site, folded or kept and why),
    ``untied_bytes`` (extra bytes stored because the unembedding had to be untied from the
    input embedding to take the final norm's gain; 0 if it was not tied), ``record`` (the
    manifest / ``config.normscope_fold`` record).
    """

    model: nn.Module
    map: FoldMap
    untied_bytes: int
    record: dict


def _in_axis(m: nn.Module) -> int:
    """Axis of ``m.weight`` indexing the input features (Linear: (out, in); HF Conv1D: (in, out))."""
    return 0 if type(m).__name__ == "Conv1D" else 1


def fold_site_(readers: list[nn.Module], gain: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Fold one norm's affine into its readers, in place: ``W ← W diag g``, ``b ← b + W β``.

    **Arguments:** ``readers`` (Linear or HF Conv1D; each has a bias when ``bias`` is given),
    ``gain`` (effective gain, float64), ``bias`` (float64 or None).
    """
    with torch.no_grad():
        for r in readers:
            ax = _in_axis(r)
            w = r.weight.detach().to(torch.float64)
            if bias is not None and bias.ne(0).any():
                b_add = w @ bias if ax == 1 else bias @ w
                r.bias.copy_((r.bias.detach().to(torch.float64) + b_add).to(r.bias.dtype))
            shape = (1, -1) if ax == 1 else (-1, 1)
            r.weight.copy_((w * gain.view(shape)).to(r.weight.dtype))


def _add_zero_biases(layers: nn.ModuleList, which: tuple[str, ...] | None) -> None:
    """Give the block Linears ``which`` (None: all) a zero bias, as the stock class builds them with the flag set."""
    for block in layers:
        mods = block.modules() if which is None else (block.get_submodule(w) for w in which)
        for m in mods:
            if isinstance(m, nn.Linear) and m.bias is None:
                m.bias = nn.Parameter(torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device))


def effective_gain(norm: nn.Module, kind: str) -> torch.Tensor:
    """The norm's gain in float64 (``1 + w`` for Gemma's offset convention)."""
    w = norm.weight.detach().to(torch.float64)
    return 1.0 + w if kind == "rmsnorm_offset" else w


def make_weightless_(norm: nn.Module, kind: str) -> None:
    """Set a folded norm's stored gain to the identity (1; 0 for offset norms) and its bias to 0."""
    with torch.no_grad():
        norm.weight.fill_(0.0 if kind == "rmsnorm_offset" else 1.0)
        if isinstance(getattr(norm, "bias", None), torch.Tensor):
            norm.bias.zero_()


def fold(model: nn.Module) -> FoldResult:
    """Return a copy of ``model`` with every foldable norm's gain (and bias) folded into its readers.

    LayerNorm families are centred first (:func:`normscope.convert.to_rmsnorm`; a model it already
    converted is taken as it is), so every residual-reading LayerNorm becomes a weightless RMSNorm;
    RMSNorm families keep their norm
    modules with gain 1 (Gemma: stored ``w = 0``). Sites that cannot be folded keep their
    affine; :attr:`FoldResult.map` says why. A tied unembedding is untied only when the final
    norm's gain goes into it. The input model is not modified.

    **Arguments:** ``model`` — an HF model of a family in the architecture table.

    **Returns:** :class:`FoldResult`. Raises :class:`NotFoldableError` (a ``ValueError``) when
    nothing can be folded (post-LN, unknown family), with the reason.
    """
    fmap = foldability(model)
    if not fmap.folded:
        why = sorted({s.reason for s in fmap.kept}) or ["no norm sites"]
        raise NotFoldableError(f"{fmap.family}: no norm can be folded ({'; '.join(why)})")
    from normscope.convert.saving import _records

    if fmap.kind == "layernorm" and _records(model.config)[0] is None:  # a convert output is centred already
        from normscope.convert import to_rmsnorm

        new = to_rmsnorm(model)
    else:
        new = copy.deepcopy(model)
    modules = dict(new.named_modules())
    untied = 0
    flags = {s.create_bias for s in fmap.folded if s.create_bias}
    for flag in flags:  # e.g. Falcon: config.bias=True gives every block Linear a (zero) bias
        from normscope.models.architectures import architecture
        from normscope.models.registry import full_path
        from normscope.surgery.sites import BIAS_FLAGS

        setattr(new.config, flag, True)
        _add_zero_biases(new.get_submodule(full_path(new, architecture(new).layers)), BIAS_FLAGS[fmap.family][1])
    for s in fmap.folded:
        norm = modules[s.name]
        readers = [new.get_submodule(r) for r in s.readers]
        untied += sum(untie_embedding(new, r) for r in readers)
        bias = norm.bias.detach().to(torch.float64) if isinstance(getattr(norm, "bias", None), torch.Tensor) else None
        fold_site_(readers, effective_gain(norm, s.kind), bias)
        make_weightless_(norm, s.kind)
    record = {
        "format": RECORD_FORMAT,
        "family": fmap.family,
        "kind": fmap.kind,
        "folded": [s.name for s in fmap.folded],
        "kept": {s.name: s.reason for s in fmap.kept},
        "untied_unembedding_bytes": untied,
        "created_biases": sorted(flags),
        "norm_module": "normscope.nn.RMSNorm" if fmap.kind != "rmsnorm_offset" else "stock",
        "centred": fmap.kind == "layernorm",
    }
    new.config.normscope_fold = record
    return FoldResult(new, fmap, untied, record)


def check_folded(result: FoldResult) -> None:
    """Raise ``ValueError`` if a folded site's stored gain is not the identity (a guard for writers)."""
    for name in result.record["folded"]:
        norm = result.model.get_submodule(name)
        target = 0.0 if result.record["kind"] == "rmsnorm_offset" else 1.0
        if not bool(norm.weight.detach().eq(target).all()):
            raise ValueError(f"{name}: gain not folded (expected all {target}); re-run normscope.surgery.fold")


__all__ += ["check_folded", "effective_gain", "make_weightless_", "NotFoldableError"]
