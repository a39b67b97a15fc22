"""Verify that two models compute the same function, site by site, and find where they part.

Both models run on the same tokens with hooks on every block output (the residual stream)
and every norm input. Per site: ``max |Δ|`` and the relative error
``rel = max|x_a − x_b| / max_rows ‖x_a‖₂``. A site *diverges* when ``rel > c·√d·u``: ``u`` is
the machine epsilon of the arithmetic (the dtype's; float32's for HF RMSNorm classes,
which normalise in float32 even in a float64 model), ``d`` the site's width, ``c`` (default 8) a constant for the
handful of roundings between sites — a length-d dot product computed two ways differs by about
``√d·u·‖w‖‖x‖`` when rounding errors are independent (Higham, *Accuracy and Stability of
Numerical Algorithms*, §3.1, the probabilistic bound). Folding reorders only such products, so
an exact transformation stays below this at every site, while a changed weight shows up at the
first site after it. The bound is conservative (for rows whose entries are of similar size the
rounding is nearer ``u`` than ``√d·u`` relative to ``‖x‖₂``); where it reaches 1 (bfloat16 with
d ≳ 250) it decides nothing and the summary says so. End to end: max |Δlogits|, KL(p_a ‖ p_b) (nats, float64) and top-1
agreement. LayerNorm models are compared on centred streams (writer centring removes only the
mean); a residual ``rotation`` Q compares ``x_a Q`` with ``x_b`` (rotation methods, arXiv:2404.00456).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from normscope._verify import logit_agreement
from normscope.convert.exact import evaluating
from normscope.errors import NonFiniteError  # re-exported: a model produced NaN/Inf at some site

__all__ = ["SiteError", "Verification", "NonFiniteError", "verify", "error_table", "DEFAULT_C"]

DEFAULT_C = 8.0


@dataclass
class SiteError:
    """One site: ``name``, ``what`` (``block`` output or ``norm`` input), width ``d``, ``max_abs``,
    ``rel`` (max |Δ| over the largest row norm), ``tol`` (c·√d·u), ``diverged``."""

    name: str
    what: str
    d: int
    max_abs: float
    rel: float
    tol: float
    diverged: bool


@dataclass
class Verification:
    """Result of :func:`verify`: per-site errors in execution order, the first divergent site, logits.

    ``dtype`` is the compute dtype, ``c`` the tolerance constant, ``tokens`` the positions compared.
    """

    dtype: str
    c: float
    tokens: int
    sites: list[SiteError] = field(default_factory=list)
    first_divergence: str | None = None
    max_abs_dlogits: float = 0.0
    max_abs_logit: float = 0.0
    kl_mean: float = 0.0
    kl_max: float = 0.0
    top1_agreement: float = 1.0
    centred: bool = False
    rotation: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    def table(self, every: bool = False) -> str:
        """Markdown table of the sites (diverged ones and every 4th other, or all with ``every``)."""
        rows = ["| site | d | max abs Δ | rel | tol | |", "|---|---|---|---|---|---|"]
        for i, s in enumerate(self.sites):
            if every or s.diverged or i % 4 == 0 or i == len(self.sites) - 1:
                mark = "DIVERGED" if s.diverged else ""
                rows.append(f"| {s.name} ({s.what}) | {s.d} | {s.max_abs:.2e} | {s.rel:.2e} | {s.tol:.1e} | {mark} |")
        return "\n".join(rows)

    def summary(self) -> str:
        vacuous = self.sites and all(x.tol >= 1.0 for x in self.sites)
        first = self.first_divergence or ("undecidable (c·√d·u ≥ 1 at this dtype)" if vacuous else "none")
        return (f"{self.dtype}: max |Δlogits| {self.max_abs_dlogits:.3e} (max |logit| {self.max_abs_logit:.2f}), "
                f"KL mean {self.kl_mean:.3e} max {self.kl_max:.3e} nats, top-1 agreement {self.top1_agreement:.4f} "
                f"over {self.tokens} tokens; first divergence (rel > {self.c:g}·√d·u): {first}")


def _norm_like(m: nn.Module) -> bool:
    return "norm" in type(m).__name__.lower() and not isinstance(m, (nn.ModuleList, nn.Sequential))


def _blocks(model: nn.Module) -> list[str]:
    """Names of the transformer blocks (the architecture table's layers, else the longest ModuleList)."""
    from normscope.models.architectures import architecture
    from normscope.models.registry import full_path

    arch = architecture(model)
    if arch is not None:
        path = full_path(model, arch.layers)
        try:
            lst = model.get_submodule(path)
            return [f"{path}.{i}" for i in range(len(lst))]
        except AttributeError:
            pass
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        return []
    n, m = max(lists, key=lambda nm: len(nm[1]))
    return [f"{n}.{i}" for i in range(len(m))]


def _capture(model: nn.Module, ids: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[str], torch.Tensor]:
    """Run ``model`` on ``ids``; return site tensors (float64), their execution order and the logits."""
    out: dict[str, torch.Tensor] = {}
    order: list[str] = []
    handles = []

    def keep(key: str, x: Any) -> None:
        if isinstance(x, (tuple, list)):
            x = x[0]
        if isinstance(x, torch.Tensor) and x.is_floating_point() and key not in out:
            out[key] = x.detach().to(torch.float64)
            order.append(key)

    for name in _blocks(model):
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda mod, args, res, k=f"{name}|block": keep(k, res)))
    for name, m in model.named_modules():
        if _norm_like(m):
            handles.append(m.register_forward_pre_hook(lambda mod, args, k=f"{name}|norm": keep(k, args[0] if args else None)))
    try:
        with evaluating(model), torch.no_grad():
            res = model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    logits = res.logits if hasattr(res, "logits") else res[0]
    return out, order, logits.detach().to(torch.float64)


def _centring(model: nn.Module) -> bool:
    from normscope.models.architectures import architecture

    arch = architecture(model)
    return arch is not None and arch.kind == "layernorm"


def verify(
    a: nn.Module | str, b: nn.Module | str, ids: torch.Tensor | None = None, *, rotation: torch.Tensor | None = None,
    c: float = DEFAULT_C, seq_len: int = 32, batch: int = 2, seed: int = 0,
) -> Verification:
    """Compare two models site by site on the same tokens.

    **Arguments:** ``a``, ``b`` — models or names (HF folder, normscope output, packaged name,
    ``.gguf``; see :func:`load_any`); ``ids`` — token ids ``(batch, seq)`` (default: random ids
    from ``seed``); ``rotation`` — Q with ``x_b = x_a Q`` on the residual stream; ``c`` — the
    tolerance constant in ``c·√d·u``.

    **Returns:** :class:`Verification`. Raises :class:`NonFiniteError` naming the first site
    (in execution order) where either model is NaN/inf.
    """
    a, b = load_any(a), load_any(b)
    if ids is None:
        vocab = min(_vocab(a), _vocab(b))
        ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    dtype = next(p.dtype for p in b.parameters() if p.is_floating_point())
    u = max(_unit(a, dtype), _unit(b, dtype))
    xa, order, la = _capture(a, ids)
    xb, _, lb = _capture(b, ids)
    centre = _centring(a) or _centring(b)
    blocks = [k for k in order if k.endswith("|block")]
    d_model = xa[blocks[0]].shape[-1] if blocks else getattr(getattr(a, "config", None), "hidden_size", None)
    r = Verification(str(dtype).removeprefix("torch."), c, int(ids.numel()), centred=centre, rotation=rotation is not None)
    for key in order:
        if key not in xb:
            continue
        x, y = xa[key], xb[key]
        name, what = key.split("|")
        for t, who in ((x, "A"), (y, "B")):
            if not torch.isfinite(t).all():
                raise NonFiniteError(f"model {who} is not finite at {name} ({what}); check its weights and dtype "
                                     "(bfloat16/float16 overflow?) before comparing")
        d = x.shape[-1]
        if rotation is not None and d == rotation.shape[0]:
            x = x @ rotation.to(torch.float64)
        if centre and d == d_model:
            x, y = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
        if x.shape != y.shape:
            continue
        err = float((x - y).abs().max())
        scale = float(torch.linalg.vector_norm(x, dim=-1).max())
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
        tol = c * math.sqrt(d) * u
        bad = rel > tol and tol < 1.0  # a bound ≥ 1 (bfloat16, wide d) decides nothing
        r.sites.append(SiteError(name, what, d, err, rel, tol, bad))
        if bad and r.first_divergence is None:
            r.first_divergence = f"{name} ({what})"
    if la.shape != lb.shape:
        raise ValueError(f"the models' logits have different shapes {tuple(la.shape)} vs {tuple(lb.shape)}; "
                         "compare models with the same vocabulary")
    agree = logit_agreement([(la, lb)], names=("A", "B"))  # fails on NaN/Inf, saying where
    r.max_abs_dlogits, r.max_abs_logit = agree["max_abs_dlogits"], agree["max_abs_logit"]
    r.kl_mean, r.kl_max = agree["kl_mean"], agree["kl_max"]
    r.top1_agreement = float((la.argmax(-1) == lb.argmax(-1)).double().mean())
    return r


def _unit(model: nn.Module, dtype: torch.dtype) -> float:
    """Machine epsilon of the arithmetic: the dtype's, or float32's where HF RMSNorms round to float32."""
    eps = torch.finfo(dtype).eps
    upcast = any(type(m).__name__.endswith("RMSNorm") and type(m).__module__.startswith("transformers")
                 for m in model.modules())
    return max(eps, torch.finfo(torch.float32).eps) if upcast else eps


def _vocab(m: nn.Module) -> int:
    emb = m.get_input_embeddings() if hasattr(m, "get_input_embeddings") else None
    return int(emb.num_embeddings) if emb is not None else int(m.config.vocab_size)


def error_table(
    a: nn.Module | str, b: nn.Module | str, ids: torch.Tensor | None = None,
    dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32, torch.bfloat16), **kw: Any,
) -> list[Verification]:
    """:func:`verify` with both models cast to each dtype (copies; the inputs are untouched)."""
    a, b = load_any(a), load_any(b)
    return [verify(copy.deepcopy(a).to(dt), copy.deepcopy(b).to(dt), ids, **kw) for dt in dtypes]


def load_any(x: nn.Module | str) -> nn.Module:
    """A model from a module (returned as is) or a name: normscope output folder, HF folder, packaged name, .gguf."""
    if isinstance(x, nn.Module):
        return x
    from normscope.models.loading import is_normscope_output

    if is_normscope_output(str(x)):
        from normscope.convert.saving import load

        return load(str(x))
    from normscope.models import load as load_model

    return load_model(str(x), dtype=torch.float32).model
