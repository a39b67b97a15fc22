"""``normscope.probe.run``: stream a model over token batches and summarise every norm layer.

See SCHEMA.md (next to this file) for the output dictionary.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..models.registry import NormSite, find_norms
from .hooks import norm_hooks
from .metrics import METRIC_ROWS, ROW, token_metrics
from .stats import SPECS, StreamStats, TailStats, token_locations

__all__ = ["run", "shard", "SiteProbe", "layer_geometry", "random_baseline", "SCHEMA_VERSION"]

SCHEMA_VERSION = "normscope.stats/1"
_SPECS = [SPECS[m] for _, m in METRIC_ROWS]


def random_baseline(d: int) -> dict:
    """Angle of an isotropic random vector with 𝟙: 90° ± (180/π)/√d (small-angle approximation)."""
    return {"d": d, "angle_deg": {"mean": 90.0, "std": (180.0 / math.pi) / math.sqrt(d)},
            "note": "isotropic Gaussian vector: cos θ ~ N(0, 1/d), so θ ≈ 90° ± 57.3°/√d"}


class SiteProbe:
    """Accumulates the statistics of one norm site (hook callback target)."""

    def __init__(self, site: NormSite, *, skip_first: bool = False, dtype: torch.dtype | None = None):
        self.site = site
        self.skip_first = skip_first
        self.dtype = dtype
        self.stats = StreamStats(_SPECS)
        self.gain = site.gain()
        self.bias = site.bias()
        self.calls = 0
        self.tail = TailStats(site.d)
        dist = _dist()
        self._rank, self._world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
        self._loc: dict = {}
        self.nonfinite = {"input_tokens": 0, "output_tokens": 0, "input_values": 0, "output_values": 0}
        self._dev: torch.device | None = None

    def _params_on(self, device: torch.device) -> None:
        if self._dev != device:
            self.gain = self.gain.to(device, torch.float64)
            self.bias = None if self.bias is None else self.bias.to(device, torch.float64)
            self._dev = device

    def __call__(self, site: NormSite, x: torch.Tensor, z: torch.Tensor) -> None:
        self.calls += 1
        if self.skip_first:
            seq_dim = 1 if x.ndim <= 3 else site.seq_dim
            if x.ndim >= 2:
                x = x.narrow(seq_dim, 1, x.shape[seq_dim] - 1)
                z = z.narrow(seq_dim, 1, z.shape[seq_dim] - 1)
        d = x.shape[-1]
        lead = tuple(x.shape[:-1])
        x2 = x.reshape(-1, d)
        z2 = z.reshape(-1, z.shape[-1])
        if x2.shape[0] == 0:
            return
        self._params_on(x2.device)
        values, fin_in, fin_out = token_metrics(
            x2, z2, kind=site.kind, eps=site.eps, gain=self.gain, bias=self.bias, dtype=self.dtype
        )
        ok = fin_in & fin_out
        if not bool(ok.all()):
            bad_in, bad_out = ~fin_in, ~fin_out
            self.nonfinite["input_tokens"] += int(bad_in.sum())
            self.nonfinite["output_tokens"] += int(bad_out.sum())
            self.nonfinite["input_values"] += int((~torch.isfinite(x2[bad_in])).sum())
            self.nonfinite["output_values"] += int((~torch.isfinite(z2[bad_out])).sum())
            values = values[:, ok]
        self.stats.update(values)
        self._update_tail(lead, values[ROW[("input", "cos2")]], None if bool(ok.all()) else ok)

    def _update_tail(self, lead: tuple, share: torch.Tensor, ok: torch.Tensor | None) -> None:
        """Tail statistics of the input's share along 𝟙 (stats.TailStats) for this batch."""
        first = 1 if self.skip_first else 0
        key = (lead, first)
        if key not in self._loc:
            win, pos, wshape = token_locations(lead, self.site.seq_dim, first)
            self._loc = {key: (win, pos, torch.arange(win.numel()), wshape)}
        win, pos, row, wshape = self._loc[key]
        if ok is not None:
            ok = ok.cpu()
            win, pos, row = win[ok], pos[ok], row[ok]
        batch = (self.calls - 1) * self._world + self._rank  # shard()'s round-robin order
        self.tail.update(share.cpu(), batch, win, pos, row, wshape)

    def summary(self) -> dict:
        site = self.site
        i = 0
        out: dict[str, Any] = {
            "name": site.name, "role": site.role, "kind": site.kind, "label": site.label,
            "layer": site.layer, "d": site.d, "eps": site.eps, "affine": site.affine,
            "has_bias": self.bias is not None, "reads_same_as": site.reads_same_as, "note": site.note,
            "count": int(self.stats.n[0]), "nonfinite": dict(self.nonfinite),
            "input": {}, "output": {},
        }
        for i, (side, metric) in enumerate(METRIC_ROWS):
            s = self.stats.summary(i)
            if side is None:
                out[metric] = s
            else:
                out[side][metric] = s
        out["input"]["tail"] = self.tail.summary()
        out["geometry"] = layer_geometry(site)
        return out


def layer_geometry(site: NormSite) -> dict:
    """Parameter geometry of a norm layer (Riechers; layernorm-geometry.md).

    LayerNorm: the output lies on the (d−1)-dimensional hyperellipsoid (semi-axes from
    ``normscope.geometry.LayerNormGeometry``, i.e. the eigen-decomposition of GΠG) inside the
    hyperplane α·z = α·b with α = 1/g; ``offset`` = αᵀb and ``offset_normalized`` = α̂ᵀb (the
    plane's distance from the origin). RMSNorm: the output lies on the d-dimensional ellipsoid
    with semi-axes √d·|gᵢ| (no projection); no hyperplane. Axes are for ε = 0 (ε shrinks the
    radius by ρ).
    """
    g = site.gain().to(torch.float64).cpu()
    b = site.bias()
    d = g.numel()
    out: dict[str, Any] = {
        "d": d, "eps": site.eps,
        "gain": {"mean": float(g.mean()), "std": float(g.std(correction=0)), "min": float(g.min()),
                 "max": float(g.max()), "min_abs": float(g.abs().min())},
        "bias_norm": None if b is None else float(b.to(torch.float64).norm()),
    }
    if site.kind == "layernorm":
        axes = _ln_axes(g, b)
        out["offset"] = None
        out["offset_normalized"] = None
        if b is not None and bool((g != 0).all()):
            alpha = 1.0 / g
            bd = b.to(torch.float64).cpu()
            out["offset"] = float(alpha @ bd)
            out["offset_normalized"] = float(alpha @ bd / alpha.norm())
        out["ellipsoid_dim"] = d - 1
    else:
        axes = (math.sqrt(d) * g.abs()).sort(descending=True).values
        out["offset"] = None
        out["offset_normalized"] = None
        out["ellipsoid_dim"] = d
    out["semi_axis_max"] = float(axes[0])
    out["semi_axis_min"] = float(axes[-1])
    out["semi_axis_ratio"] = float(axes[0] / axes[-1]) if float(axes[-1]) > 0 else math.inf
    return out


def _ln_axes(g: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Nonzero semi-axes of the LN output ellipsoid, descending (d−1 of them)."""
    try:
        from ..geometry import LayerNormGeometry
    except ImportError:
        LayerNormGeometry = None
    if LayerNormGeometry is not None:
        lengths = LayerNormGeometry(g, b, eps=0.0).axes()
        lengths = torch.as_tensor(np.array(lengths, dtype=np.float64))
    else:  # dense fallback: eigenvalues ζ of M = diag(g²) − g gᵀ/d, lengths √(d ζ)
        d = g.numel()
        m = torch.diag(g * g) - torch.outer(g, g) / d
        zeta = torch.linalg.eigvalsh(m).clamp(min=0).flip(0)
        lengths = (d * zeta).sqrt()
    return lengths[: g.numel() - 1]


def _forward_module(model: nn.Module, sites: Sequence[NormSite]) -> nn.Module:
    """The base model (no LM head) when every site lives inside it: same norms, no logits."""
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        inside = {id(m) for m in base.modules()}
        if all(id(s.module) in inside for s in sites):
            return base
    return model


def _device_of(model: nn.Module) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def run(
    model: Any,
    batches: Iterable[torch.Tensor],
    *,
    skip_first: bool = False,
    progress: bool = True,
    sites: Sequence[NormSite] | None = None,
    name: str | None = None,
    dtype: torch.dtype | None = None,
    total: int | None = None,
    on_output: Callable[[torch.Tensor, Any], None] | None = None,
) -> dict:
    """Probe every norm layer of ``model`` over ``batches`` and return the stats dictionary.

    For each norm site and each token, the hooks compute the input/output metrics of
    :mod:`normscope.probe.metrics`; the statistics are streamed (memory independent of the token
    count). Under ``torch.distributed`` (initialised, world size > 1) each process probes its
    own batches and the accumulator states are all-gathered and merged in rank order, so every
    rank returns the result of one run over the union of the data (equal up to fp rounding).

    **Arguments:**

    - ``model``: an HF model or a :class:`normscope.models.LoadedModel`.
    - ``batches``: iterable of ``LongTensor (batch, seq)`` token ids (see
      :func:`normscope.models.text.token_batches`).
    - ``skip_first``: drop position 0 (BOS / [CLS]) from every statistic.
    - ``progress``: show a tqdm bar (rank 0 only).
    - ``sites``: the norm sites to probe (default: :func:`normscope.models.find_norms`).
    - ``name``: model name recorded in the output.
    - ``dtype``: precision of the (token, d)-sized passes (default float32, float64 for float64
      models); per-token quantities are always float64 (see :func:`metrics.token_metrics`).
    - ``total``: number of batches, for the progress bar.
    - ``on_output``: optional ``on_output(batch, outputs)`` called after each forward with the
      batch and the forward's output (the base model's, e.g. ``last_hidden_state``, when every
      site lives in it; else the whole model's), so a caller can reuse the same forward, e.g.
      :class:`normscope.convert.swap.BaselineCollector` for the swap test's baseline loss.

    **Returns:** ``{"schema", "normscope_version", "models": [ {...} ]}`` (SCHEMA.md).

    Distributed use (e.g. ``torchrun --nproc-per-node 4 script.py``): initialise the process
    group, then ``stats = run(model, shard(batches))`` on every rank.
    """
    from tqdm.auto import tqdm

    family = None
    if hasattr(model, "model") and hasattr(model, "tokenizer") and hasattr(model, "family"):
        name = name or model.name
        family = model.family
        model = model.model
    config = getattr(model, "config", None)
    family = family or getattr(config, "model_type", None)
    if sites is None:
        sites = find_norms(model)
    probes = {s.name: SiteProbe(s, skip_first=skip_first, dtype=dtype) for s in sites}

    def callback(site: NormSite, x: torch.Tensor, z: torch.Tensor) -> None:
        probes[site.name](site, x, z)

    fwd = _forward_module(model, sites)
    device = _device_of(model)
    kwargs: dict[str, Any] = {}
    if config is not None and hasattr(config, "use_cache"):
        kwargs["use_cache"] = False
    dist = _dist()
    rank = dist.get_rank() if dist else 0
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), norm_hooks(model, sites, callback):
            bar = tqdm(batches, total=total, disable=not progress or rank != 0, unit="batch",
                       desc=f"probing {name or family or type(model).__name__}")
            for batch in bar:
                if not isinstance(batch, torch.Tensor) or batch.ndim != 2:
                    raise ValueError("each batch must be a LongTensor of shape (batch, seq)")
                out = fwd(input_ids=batch.to(device), **kwargs)
                if on_output is not None:
                    on_output(batch, out)
                del out
                tokens += batch.numel() - (batch.shape[0] if skip_first else 0)
                bar.set_postfix(tokens=tokens)
    finally:
        model.train(was_training)

    if dist:
        tokens = _merge_distributed(dist, probes, tokens)
    if tokens == 0:
        raise ValueError("no tokens were probed (empty batches)")
    for p in probes.values():
        if p.calls == 0:
            warnings.warn(f"norm site {p.site.name} never ran during the forward pass", stacklevel=2)

    hidden = getattr(config, "hidden_size", None) or max(s.d for s in sites)
    entry = {
        "name": name or family or type(model).__name__,
        "family": family,
        "hidden_size": hidden,
        "tokens": tokens,
        "skip_first": skip_first,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "metric_dtype": str(dtype).replace("torch.", "") if dtype else "float32 passes, float64 per token (float64 for float64 models)",
        "num_layers": getattr(config, "num_hidden_layers", None),
        "world_size": dist.get_world_size() if dist else 1,
        "random_baseline": random_baseline(hidden),
        "layers": [probes[s.name].summary() for s in sites],
    }
    return {"schema": SCHEMA_VERSION, "normscope_version": __version__, "models": [entry]}


def shard(batches: Iterable[torch.Tensor], rank: int | None = None, world_size: int | None = None):
    """This process's share of ``batches`` under torch.distributed: batches rank, rank + W, ...

    Defaults to the initialised process group (all batches when there is none). Use it with
    :func:`run` under ``torchrun``: ``run(model, shard(token_batches(...)))``.
    """
    dist = _dist()
    rank = (dist.get_rank() if dist else 0) if rank is None else rank
    world_size = (dist.get_world_size() if dist else 1) if world_size is None else world_size
    for i, b in enumerate(batches):
        if i % world_size == rank:
            yield b


def _dist():
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        return tdist
    return None


def _merge_distributed(dist: Any, probes: dict[str, SiteProbe], tokens: int) -> int:
    """All-gather every rank's accumulator states and merge them in rank order."""
    mine = {
        "tokens": tokens,
        "sites": {k: (p.stats.state(), dict(p.nonfinite), p.calls, p.tail.state()) for k, p in probes.items()},
    }
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    total = 0
    for name, p in probes.items():
        merged = StreamStats(_SPECS)
        nonfinite = {k: 0 for k in p.nonfinite}
        calls = 0
        tail = TailStats(p.site.d)
        for g in gathered:
            state, nf, c, tstate = g["sites"][name]
            merged.merge(StreamStats.from_state(_SPECS, state))
            tail.merge(TailStats.from_state(tstate))
            for k in nonfinite:
                nonfinite[k] += nf[k]
            calls += c
        p.stats, p.nonfinite, p.calls, p.tail = merged, nonfinite, calls, tail
    for g in gathered:
        total += g["tokens"]
    return total
