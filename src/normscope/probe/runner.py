"""``normscope.probe.run``: stream a model over token batches and summarise every norm layer.

See SCHEMA.md (next to this file) for the output dictionary.
"""

from __future__ import annotations

import inspect
import itertools
import math
import warnings
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .. import __version__
from ..models.registry import NormSite, find_norms
from ..models._dataflow import _no_fastpath
from .hooks import norm_hooks
from .metrics import METRIC_ROWS, ROW, token_metrics, workspace
from .site_geometry import layer_geometry
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
        self.rows = 0  # token positions seen (after skip_first), finite or not
        self.order: int | None = None  # rank of its first call in the forward
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

    def __call__(self, site: NormSite, x: torch.Tensor, z: torch.Tensor,
                 batch_seq: tuple[int, int] | None = None) -> None:
        self.calls += 1
        if self.skip_first:
            x, z = _drop_first(site, x, z, batch_seq)
        d = x.shape[-1]
        lead = tuple(x.shape[:-1])
        x2 = x.reshape(-1, d)
        z2 = z.reshape(-1, z.shape[-1])
        self.rows += x2.shape[0]
        if x2.shape[0] == 0:
            return
        self._params_on(x2.device)
        values, fin_in, fin_out = token_metrics(
            x2, z2, kind=site.kind, eps=site.eps, gain=self.gain, bias=self.bias, dtype=self.dtype
        )
        ok = fin_in & fin_out
        all_ok = bool(ok.all())  # one device sync per call
        if not all_ok:
            bad_in, bad_out = ~fin_in, ~fin_out
            self.nonfinite["input_tokens"] += int(bad_in.sum())
            self.nonfinite["output_tokens"] += int(bad_out.sum())
            self.nonfinite["input_values"] += int((~torch.isfinite(x2[bad_in])).sum())
            self.nonfinite["output_values"] += int((~torch.isfinite(z2[bad_out])).sum())
            values = values[:, ok]
        self.stats.update(values)
        self._update_tail(lead, values[ROW[("input", "cos2")]], None if all_ok else ok)

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
            "stack": getattr(site, "stack", ""),
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


def _drop_first(site: NormSite, x: torch.Tensor, z: torch.Tensor, batch_seq: tuple[int, int] | None):
    """Drop token position 0 along the site's token axis (``seq_dim``).

    A 2-D ``(tokens, d)`` input whose row count is batch × seq of the current batch is read as
    batch-major flattened tokens; an input with no token axis (a pooled ``(batch, d)`` vector) is kept whole.
    """
    axis = site.seq_dim if site.seq_dim is not None and site.seq_dim < x.ndim - 1 else None
    if axis is None and x.ndim == 2 and batch_seq and x.shape[0] == batch_seq[0] * batch_seq[1] > 0:
        b, s = batch_seq
        return x.reshape(b, s, -1)[:, 1:], z.reshape(b, s, -1)[:, 1:]
    if axis is None or x.shape[axis] == 0:
        return x, z
    return x.narrow(axis, 1, x.shape[axis] - 1), z.narrow(axis, 1, z.shape[axis] - 1)


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

    - ``model``: an HF model, a :class:`normscope.models.LoadedModel`, or any ``nn.Module``.
    - ``batches``: iterable of whatever the model's forward takes: ``LongTensor (batch, seq)``
      token ids (passed as ``input_ids=``, see :func:`normscope.models.text.token_batches`; passed
      positionally to modules whose forward has no ``input_ids``), dicts of keyword tensors
      (``pixel_values``, ``input_features``, ``decoder_input_ids``, ...; see
      :mod:`normscope.models.inputs` for offline images and audio), or callables ``f(model)``.
      The first batch is also the input traced to infer norm roles. Tokens are counted as the
      norms saw them: positions along the token axis of the first norm to run.
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
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("no tokens were probed (empty batches)")
    batches = itertools.chain([first], batches)
    fwd = _forward_module(model, sites) if sites is not None else model
    if sites is None:
        sites = find_norms(model, example=_as_example(fwd, first))
        fwd = _forward_module(model, sites)
    probes = {s.name: SiteProbe(s, skip_first=skip_first, dtype=dtype) for s in sites}
    context: dict[str, Any] = {"batch_seq": None, "order": 0}

    def callback(site: NormSite, x: torch.Tensor, z: torch.Tensor) -> None:
        p = probes[site.name]
        if p.order is None:
            p.order = context["order"]
            context["order"] += 1
        p(site, x, z, context["batch_seq"])

    device = _device_of(model)
    call_kwargs, takes_ids = _call_kwargs(fwd, config)
    dist = _dist()
    rank = dist.get_rank() if dist else 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), norm_hooks(model, sites, callback), _no_fastpath(), workspace():
            bar = tqdm(batches, total=total, disable=not progress or rank != 0, unit="batch",
                       desc=f"probing {name or family or type(model).__name__}")
            for batch in bar:
                context["batch_seq"] = _batch_seq(batch)
                out = _call(fwd, batch, device, call_kwargs, takes_ids)
                if on_output is not None:
                    on_output(batch, out)
                del out
                bar.set_postfix(tokens=_tokens(probes))
    finally:
        model.train(was_training)
    tokens = _tokens(probes)

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
    for layer in entry["layers"]:  # a geometry that could not be computed names the model too
        geo = layer.get("geometry") or {}
        if geo.get("status") == "not measured":
            geo["reason"] = f"{entry['name']}: {geo['reason']}"
    return {"schema": SCHEMA_VERSION, "normscope_version": __version__, "models": [entry]}


def _forward_accepts(fwd: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(fwd.forward).parameters
    except (TypeError, ValueError):
        return False


def _as_example(fwd: nn.Module, batch: Any) -> Any:
    """The first batch in the form :func:`normscope.models.find_norms` traces with."""
    if isinstance(batch, torch.Tensor) and _forward_accepts(fwd, "input_ids"):
        return {"input_ids": batch}
    return batch


def _call_kwargs(fwd: nn.Module, config: Any) -> tuple[dict[str, Any], bool]:
    """(keyword arguments every forward gets, whether token ids go in as ``input_ids=``), found once
    per run from ``fwd``'s signature rather than per batch."""
    kwargs: dict[str, Any] = {}
    if config is not None and hasattr(config, "use_cache") and _forward_accepts(fwd, "use_cache"):
        kwargs["use_cache"] = False
    return kwargs, _forward_accepts(fwd, "input_ids")


def _call(fwd: nn.Module, batch: Any, device: torch.device, kwargs: dict[str, Any], takes_ids: bool) -> Any:
    """One forward on ``batch``: a token-id tensor (``input_ids=``, or positional for modules without
    that argument), a dict of keyword tensors, or a callable ``f(model)``."""
    if isinstance(batch, dict):
        return fwd(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, **kwargs)
    elif isinstance(batch, torch.Tensor):
        if takes_ids:
            if batch.ndim != 2:
                raise ValueError("each token batch must be a LongTensor of shape (batch, seq)")
            return fwd(input_ids=batch.to(device), **kwargs)
        return fwd(batch.to(device))
    if callable(batch):
        return batch(fwd)
    raise ValueError(f"a batch must be a tensor, a dict of tensors or a callable f(model), not {type(batch).__name__}")


def _batch_seq(batch: Any) -> tuple[int, int] | None:
    """(batch, seq) of the token ids in ``batch``, if it has any."""
    ids = batch.get("input_ids") if isinstance(batch, dict) else batch
    return tuple(ids.shape) if isinstance(ids, torch.Tensor) and ids.ndim == 2 else None


def _tokens(probes: dict[str, SiteProbe]) -> int:
    """Token positions as the norms saw them: rows of the first norm to run (QK-norms aside)."""
    ran = [p for p in probes.values() if p.order is not None]
    main = [p for p in ran if p.site.role not in ("query", "key")] or ran
    return min(main, key=lambda p: p.order).rows if main else 0


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
