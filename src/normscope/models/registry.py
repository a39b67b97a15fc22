"""Norm sites: every normalisation module of a model, with its role, kind and eps.

A norm module is any ``nn.LayerNorm`` / ``nn.RMSNorm`` or a leaf class named ``*LayerNorm`` /
``*RMSNorm``. Its *kind* (:data:`KINDS`: ``layernorm`` = mean removal + variance, ``rmsnorm`` =
``x/sqrt(mean(x²)+eps)·g``, ``rmsnorm_offset`` = Gemma's ``1 + w`` gain) is checked numerically
on a test vector, so it is never guessed from a name. Its *role* (:data:`ROLES`) comes from the
one architecture description (:mod:`normscope.models.architectures`) for known families and is
cross-checked against the roles inferred from a traced forward (:mod:`normscope.models.roles`),
which also serves every other model.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from ..nn.functional import reference
from .architectures import KINDS, ROLE_GROUPS, ROLES, Architecture, architecture

__all__ = ["NormSite", "find_norms", "full_path", "ROLES", "ROLE_GROUPS", "KINDS", "is_norm_module", "sites_by_name"]


@dataclass(eq=False)
class NormSite:
    """One normalisation module (build it with keywords).

    **Fields:** ``name`` (dotted module path), ``module``, ``layer`` (block index or None),
    ``role`` (:data:`ROLES`), ``kind`` (:data:`KINDS`), ``affine``, ``eps``, ``label`` (the
    module's attribute name, e.g. ``ln_1``), ``d`` (normalised width), ``reads_same_as`` (name of
    another site fed the identical vector: parallel residual), ``seq_dim`` (axis of token
    positions in the module's input: 1 for ``(batch, seq, d)``, 0 for ``(tokens, d)``, 2 for
    per-head ``(batch, heads, seq, head_dim)``; None when the input has no token axis), ``note``,
    ``stack`` (``"encoder"``/``"decoder"`` in encoder-decoder models, else ``""``).
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
    seq_dim: int | None = 1
    note: str = ""
    stack: str = ""

    @property
    def group(self) -> str:
        """Role group: ``pre``, ``sandwich``, ``post``, ``qk``, ``final``, ``embedding`` or ``other``."""
        return ROLE_GROUPS.get(self.role, "other")

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

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """This norm's output on ``x`` in float64 from the recorded kind, eps, weight and bias.

        :func:`normscope.nn.functional.reference` (``layernorm``: arXiv:1607.06450; ``rmsnorm``:
        arXiv:1910.07467; ``rmsnorm_offset``: gain 1 + w, added in float64) over the last axis.

        **Arguments:** ``x`` — input of any shape ``(..., d)``. **Returns:** float64 tensor of ``x``'s shape.
        """
        w = getattr(self.module, "weight", None) if self.affine else None
        return reference(self.kind, x, w.detach() if isinstance(w, torch.Tensor) else None, self.bias(), self.eps,
                         normalized_shape=(x.shape[-1],))


def is_norm_module(m: nn.Module) -> bool:
    """True for ``nn.LayerNorm``/``nn.RMSNorm`` and leaf modules whose class ends in LayerNorm/RMSNorm."""
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        return True
    if not re.search(r"(LayerNorm|RMSNorm|RmsNorm)$", type(m).__name__):
        return False
    return not any(is_norm_module(c) for c in m.children())


def _eps_of(m: nn.Module) -> float | None:
    for attr in ("eps", "variance_epsilon", "epsilon", "variance_eps"):
        v = getattr(m, attr, None)
        if isinstance(v, (int, float)):
            return float(v)
    if isinstance(m, nn.RMSNorm):  # eps=None: torch uses the machine epsilon of the input dtype
        w = getattr(m, "weight", None)
        return float(torch.finfo(w.dtype if w is not None else torch.float32).eps)
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
    raise ValueError(f"cannot tell the normalised width of {type(m).__name__}; give it a normalized_shape or weight")


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
    wd = w.detach().cpu() if isinstance(w, torch.Tensor) else None
    bd = b.detach().cpu() if isinstance(b, torch.Tensor) else None
    cands = {k: reference(k, x, wd, bd, eps, normalized_shape=(d,)) for k in KINDS}
    errs = {k: float((v - y).norm() / max(float(y.norm()), 1e-30)) for k, v in cands.items()}
    best = min(errs, key=errs.get)
    return best if errs[best] < 2e-2 else None


def _kind_of(m: nn.Module, d: int, eps: float, memo: dict | None = None) -> str | None:
    """The formula of ``m``: by type for torch's modules, else checked numerically once per
    configuration (class, width, eps, which parameters exist, the module's plain settings)."""
    if isinstance(m, nn.LayerNorm):
        return "layernorm"
    if isinstance(m, nn.RMSNorm):
        return "rmsnorm"
    if memo is None:
        return _classify_numerically(m, d, eps)
    settings = tuple(sorted((k, v) for k, v in vars(m).items() if isinstance(v, (bool, int, float, str, tuple))))
    params = tuple(sorted((n, p.dtype) for n, p in m.named_parameters(recurse=False)))
    key = (type(m), d, eps, params, settings)
    if key not in memo:
        memo[key] = _classify_numerically(m, d, eps)
    return memo[key]


def full_path(model: nn.Module, path: str) -> str:
    """A path relative to the HF base model (the architecture table's paths) as a module name in ``model``.

    The base model is ``model.base_model`` (``base_model_prefix``: ``transformer``, ``model``, ...),
    or ``model`` itself; its name in ``model`` is prefixed (``"h"`` → ``"transformer.h"`` in a
    ``GPT2LMHeadModel``, unchanged in a ``GPT2Model``).

    **Arguments:** ``model`` — any ``nn.Module``; ``path`` — a dotted path relative to its base model.

    **Returns:** the dotted module name in ``model``.
    """
    base = getattr(model, "base_model", model)
    prefix = next((n for n, m in model.named_modules() if m is base), "")
    return f"{prefix}.{path}" if prefix else path


def table_roles(model: nn.Module, arch: Architecture) -> dict[str, tuple[str, str, int, str | None]]:
    """``{module name: (role, note, seq_dim, reads_same_as)}`` for every norm the description names."""
    full = lambda p: full_path(model, p)  # noqa: E731
    modules = dict(model.named_modules())
    out: dict[str, tuple[str, str, int, str | None]] = {}
    layers = modules.get(full(arch.layers))
    for i in range(len(layers) if isinstance(layers, nn.ModuleList) else 0):
        first = None
        for n in arch.norms + arch.inner_norms:
            path = f"{full(arch.layers)}.{i}.{n.path}"
            same = first if arch.parallel and n.role == "pre_mlp" else None
            note = n.note or (f"parallel residual: reads the same vector as {first.rsplit('.', 1)[-1]}" if same else "")
            out[path] = (n.role, note, n.seq_dim, same)
            first = first or (path if n.role == "pre_attention" else None)
    if arch.final:
        out[full(arch.final)] = ("final", "", 1, None)
    if arch.embedding_norm:
        out[full(arch.embedding_norm)] = ("embedding", "", 1, None)
    return out


# Name heuristics for models with neither a table entry nor a traceable forward.
_GUESS_LEAVES = {
    "ln_1": "pre_attention", "ln_2": "pre_mlp", "norm1": "pre_attention", "norm2": "pre_mlp",
    "norm_1": "pre_attention", "norm_2": "pre_mlp", "input_layernorm": "pre_attention",
    "ln_attn": "pre_attention", "ln_mlp": "pre_mlp", "q_norm": "query", "k_norm": "key",
}  # fmt: skip
_FINAL_LEAVES = {"ln_f", "norm", "norm_f", "final_layer_norm", "final_layernorm", "final_norm"}


def _guess_role(name: str, in_block: bool) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if in_block:
        return _GUESS_LEAVES.get(leaf, "other")
    if leaf in _FINAL_LEAVES or "final" in leaf:
        return "final"
    return "embedding" if "emb" in name else "other"


_LAYER_RE = re.compile(r"(?:^|\.)(?:h|layers?|blocks?|albert_layers)\.(\d+)\.")


def find_norms(model: nn.Module, *, infer: bool = True, example: Any = None, trace: bool = False) -> list[NormSite]:
    """Every normalisation module of ``model``, in module order, with role, kind and eps.

    **Fast path** (a family in :mod:`normscope.models.architectures` whose norm module names
    are exactly the table's): roles from the table, completed by one small forward hooked on the
    norms only (:func:`normscope.models._observe.from_table`: token axis, parallel-residual
    links, eps not stored). **Full trace** otherwise, or with ``trace=True``: roles inferred
    from one forward recording every tensor op (:func:`normscope.models.roles.infer_roles`),
    cross-checked against the table when there is one (a disagreement warns; the traced role
    wins). Both give the same sites on every family the tests cover. With ``infer=False`` no
    forward runs: known families use the table, other models get name-guessed roles.

    **Arguments:** ``model`` — an HF model or any ``nn.Module``; ``infer`` — run a forward;
    ``example`` — the input for it (dict of kwargs, tensor, or ``f(model)``; default: a small
    random input built by :func:`normscope.models.inputs.example_inputs`); ``trace`` — force
    the full trace even when the table matches.

    **Returns:** a list of :class:`NormSite`. Raises ``ValueError`` if the model has no norm layer.
    """
    from ._observe import from_table
    from .roles import infer_roles

    config = getattr(model, "config", None)
    mtype = getattr(config, "model_type", None)
    arch = architecture(model) if config is not None else None
    if arch is None:
        warnings.warn(
            f"architecture {mtype or type(model).__name__!r} is not in normscope's registry; norm roles come from a "
            "traced forward pass (module names if it cannot be traced), with no table to cross-check them",
            stacklevel=2,
        )
    named = [(n, m) for n, m in model.named_modules() if is_norm_module(m)]
    if not named:
        raise ValueError(
            f"{type(model).__name__} has no normalisation layer (no nn.LayerNorm / nn.RMSNorm or "
            "*LayerNorm / *RMSNorm module); nothing to probe"
        )
    table = table_roles(model, arch) if arch is not None else {}
    graph = None
    if infer and not trace and table and set(table) == {n for n, _ in named}:
        graph = from_table(model, named, table, full_path(model, arch.layers), example,
                           need_eps=[m for _, m in named if _eps_of(m) is None])
    if infer and graph is None:
        graph = infer_roles(model, [m for _, m in named], example)
    sites: list[NormSite] = []
    memo: dict = {}
    for name, m in named:
        d = _width(m)
        traced = graph.get(m) if graph is not None else None
        eps = _eps_of(m)
        if eps is None and traced is not None and traced.eps is not None:
            eps = traced.eps
        if eps is None and arch is not None and arch.eps is not None:
            eps = arch.eps
        if eps is None:
            warnings.warn(f"{name}: no eps attribute and none seen in its forward; assuming eps=0", stacklevel=2)
            eps = 0.0
        kind = _kind_of(m, d, eps, memo)
        if kind is None:
            kind = "rmsnorm" if "RMS" in type(m).__name__.upper() else "layernorm"
            warnings.warn(f"{name} ({type(m).__name__}): could not verify its formula numerically; assuming {kind}",
                          stacklevel=2)
        match = _LAYER_RE.search(name)
        layer = int(match.group(1)) if match else None
        guess = (_guess_role(name, match is not None), "role guessed from the module name", 1, None)
        role, note, seq_dim, reads_same_as = table.get(name) or (guess if arch is None else ("other", "", 1, None))
        stack = ""
        if traced is not None:
            if name in table and traced.role != role and traced.role != "unused":
                warnings.warn(f"{name}: the architecture table says {role!r}, the traced forward says "
                              f"{traced.role!r}; using the traced role", stacklevel=2)
            if traced.role != "unused":
                role, note = traced.role, traced.note or (note if traced.role == role and name in table else "")
                seq_dim, reads_same_as, stack = traced.seq_dim, traced.reads_same_as, traced.stack
                layer = traced.layer if traced.layer is not None else layer
        sites.append(NormSite(
            name=name, module=m, layer=layer, role=role, kind=kind,
            affine=getattr(m, "weight", None) is not None, eps=float(eps), label=name.rsplit(".", 1)[-1], d=d,
            reads_same_as=reads_same_as, seq_dim=seq_dim, note=note, stack=stack,
        ))
    return sites


def sites_by_name(sites: Iterable[NormSite]) -> dict[str, NormSite]:
    return {s.name: s for s in sites}
