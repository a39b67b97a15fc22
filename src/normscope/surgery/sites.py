"""The foldability map: every norm site of a model, whether its affine can go into its readers, and why not.

A norm ``y = g ⊙ x/√(mean(x²)+ε) + β`` (after writer centring for LayerNorm models) whose output
is read only by linear maps ``W`` can hand its gain and bias to them:
``W y + b = (W diag g) x̂ + (b + W β)``. That holds for pre-sublayer norms and the final norm.
It does not hold when something else reads the output (see :data:`REASONS`). The readers come
from the architecture table (:mod:`normscope.models.architectures`, field ``readers`` /
``final_readers``); ``docs/fold.md`` explains the rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from normscope.models.architectures import ROLE_GROUPS, architecture
from normscope.models.registry import full_path
from normscope.models.tying import tied_to_input

__all__ = ["Site", "FoldMap", "NotFoldableError", "foldability", "REASONS"]

REASONS = {
    "qk": "QK-norm: RoPE (or the per-head attention product) mixes dimensions after it, so its gain is not a "
          "per-input-column scale of one linear map",
    "sandwich": "post-sublayer (sandwich) norm: its output is added to the residual stream; nothing linear reads it",
    "post": "post-LN: the norm's output is the residual stream itself, read un-normed by the next sublayer",
    "final_bias": "final-norm bias: the unembedding has no bias to absorb W·β (a constant logit offset per token)",
    "no_bias": "a reader ({reader}) has no bias and {cls} cannot hold one, so the norm bias β cannot be absorbed",
    "embedding": "embedding norm: kept (centred) so the stock class still finds its keys",
    "other": "not a pre-sublayer or final norm",
}  # fmt: skip

# Families whose config can give block Linears a bias in the stock class (so the output stays loadable):
# model_type -> (config flag, the block-relative Linears that flag gives a bias; None: every block Linear).
BIAS_FLAGS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "falcon": ("bias", None),
    "stablelm": ("use_qkv_bias", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
}


class NotFoldableError(ValueError):
    """The model has no norm whose affine can be folded (unknown family, post-LN, ...)."""


@dataclass
class Site:
    """One norm site and its fate.

    **Fields:** ``name`` (module path from the model root), ``role`` (architecture role), ``kind``
    (``layernorm`` / ``rmsnorm`` / ``rmsnorm_offset``: gain ``1 + w``), ``readers`` (module paths),
    ``foldable``, ``reason`` (why kept, empty when folded), ``create_bias`` (the family's config
    flag to set so readers get a bias), ``untie`` (the reader shares its matrix with the input
    embedding and must be copied first).
    """

    name: str
    role: str
    kind: str
    readers: list[str] = field(default_factory=list)
    foldable: bool = False
    reason: str = ""
    create_bias: str | None = None
    untie: bool = False

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FoldMap:
    """All norm sites of one model (``family``: ``config.model_type``)."""

    family: str
    kind: str
    sites: list[Site]

    @property
    def folded(self) -> list[Site]:
        return [s for s in self.sites if s.foldable]

    @property
    def kept(self) -> list[Site]:
        return [s for s in self.sites if not s.foldable]

    def to_json(self) -> dict:
        return {"family": self.family, "kind": self.kind, "sites": [s.to_json() for s in self.sites]}

    def table(self) -> str:
        """Markdown table: site, role, readers, folded or kept and why."""
        rows = ["| site | role | readers | fate |", "|---|---|---|---|"]
        for s in self.sites:
            fate = "folded" if s.foldable else f"kept: {s.reason}"
            rows.append(f"| {s.name} | {s.role} | {', '.join(s.readers) or '–'} | {fate} |")
        return "\n".join(rows)


def _is_linear(m: nn.Module | None) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def _has_bias(m: nn.Module) -> bool:
    return isinstance(getattr(m, "bias", None), torch.Tensor)


def _nonzero_bias(norm: nn.Module) -> bool:
    b = getattr(norm, "bias", None)
    if not isinstance(b, torch.Tensor):
        return False
    return b.is_meta or bool(b.detach().ne(0).any())  # shapes only: assume a bias is there to fold


def foldability(model: nn.Module) -> FoldMap:
    """Classify every norm site of ``model`` as foldable or kept (with the reason).

    **Arguments:** ``model`` — an HF model of a family in the architecture table.

    **Returns:** :class:`FoldMap`. Raises :class:`NotFoldableError` for unknown families.
    """
    arch = architecture(model)
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    if arch is None:
        raise NotFoldableError(
            f"model type {mtype!r} ({type(model).__name__}) is not in normscope's architecture table; "
            "add it to normscope/models/architectures.py (see docs/architectures.md)"
        )
    modules = dict(model.named_modules())
    full = lambda p: full_path(model, p)  # noqa: E731
    layers = modules.get(full(arch.layers))
    if not isinstance(layers, nn.ModuleList):
        raise NotFoldableError(f"{mtype}: block list {full(arch.layers)!r} is missing; cannot map the norms")
    flag = BIAS_FLAGS.get(mtype)
    cls = type(model).__name__
    sites: list[Site] = []
    if arch.embedding_norm and full(arch.embedding_norm) in modules:
        sites.append(Site(full(arch.embedding_norm), "embedding", arch.kind, reason=REASONS["embedding"]))

    def judge(site: Site, final: bool) -> Site:
        readers = [modules.get(r) for r in site.readers]
        if not site.readers or not all(_is_linear(r) for r in readers):
            site.reason = site.reason or REASONS["other"]
            return site
        norm = modules[site.name]
        if _nonzero_bias(norm):
            lacking = [p for p, r in zip(site.readers, readers) if not _has_bias(r)]
            if lacking and final:
                site.reason = REASONS["final_bias"]
                return site
            covered = flag is not None and (flag[1] is None or all(p.endswith(tuple(f".{m}" for m in flag[1]))
                                                                  for p in lacking))
            if lacking and not covered:
                bad = [p for p in lacking if flag is None or flag[1] is None or not p.endswith(tuple(flag[1]))]
                site.reason = REASONS["no_bias"].format(reader=bad[0], cls=cls)
                return site
            site.create_bias = flag[0] if lacking else None
        site.untie = any(tied_to_input(model, r) for r in readers)
        site.foldable = True
        return site

    for i in range(len(layers)):
        lp = f"{full(arch.layers)}.{i}"
        for bn in (*arch.norms, *arch.inner_norms):
            name = f"{lp}.{bn.path}"
            if name not in modules:
                continue
            group = ROLE_GROUPS[bn.role]
            site = Site(name, bn.role, arch.kind, [f"{lp}.{r}" for r in bn.readers])
            if group == "pre":
                sites.append(judge(site, final=False))
            else:
                site.readers = []
                site.reason = REASONS.get(group, REASONS["other"])
                sites.append(site)
    if arch.final and full(arch.final) in modules:
        readers = list(arch.final_readers)
        if mtype == "opt" and full("decoder.project_out") in modules and modules[full("decoder.project_out")] is not None:
            readers = [full("decoder.project_out")]  # OPT-350m-style: final LN → project_out → lm_head
        readers = [r for r in readers if r in modules]
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not readers and head is not None:  # the table's name is from another transformers version
            readers = [n for n, m in modules.items() if m is head][:1]
        site = Site(full(arch.final), "final", arch.kind, readers)
        sites.append(judge(site, final=True) if not arch.post_ln else _kept(site, "post"))
    if arch.post_ln:
        for s in sites:
            s.foldable, s.readers = False, []
            s.reason = s.reason or REASONS["post"]
    return FoldMap(mtype, arch.kind, sites)


def _kept(site: Site, key: str) -> Site:
    site.readers, site.reason = [], REASONS[key]
    return site
