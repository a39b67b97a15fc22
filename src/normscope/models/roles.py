"""Norm roles inferred from the computation: one traced forward of any ``nn.Module``.

A ``TorchFunctionMode`` records every tensor operation of one forward on a small input (op name,
input and output tensors, keyed by identity and version so in-place ``+=`` stays acyclic), and
hooks record each norm's input x and output z. Each norm is then classified from the data flow
alone (x and z are tensors, *desc* = everything computed from a tensor, a *stream add* is an
addition of two activations of equal shape):

1. **query / key** — z reaches the query (key) operand of an attention product (SDPA, ``Q·Kᵀ``
   matmul, ``multi_head_attention_forward``) without passing a linear map (QK-norm,
   arXiv:2302.05442); *per head* when its width is below the projection width, else *full width*.
2. **embedding** — no other norm is upstream of x, and z is the stream (added to its own
   descendants, or read by another norm).
3. **post_attention / post_mlp** — z is added to one of its own descendants: the stream *is* the
   norm's output, so the norm sits after the residual add (post-LN, arXiv:1706.03762).
4. **attention_output / mlp_output** — z is added to a tensor that does not descend from z: the
   norm normalises a sublayer's output before the add ("sandwich", arXiv:2408.00118).
5. **pre_attention / pre_cross_attention / pre_mlp** — z feeds a branch that is added back to x (or
   to a descendant of x not computed from z): the norm reads the residual stream (pre-LN,
   arXiv:2002.04745). Cross-attention when the attention's keys do not descend from x.
6. **final** — x is a stream add (or indexes one) and nothing computed from z returns to it.
   A block norm whose evidence is ambiguous (the last block of a post-LN stack) takes the role of
   the same norm in the other blocks.

*Attention* vs *MLP*: the branch mixes tokens (softmax, SDPA, a product of two activations, a 1-D
convolution — Mamba's mixer counts as attention) or not. Two norms whose inputs are the same
tensor (or equal) read the same vector (parallel residual). The token axis of a norm's input is
the axis whose length equals the traced sequence length.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ._dataflow import (
    _ATTN, _INDEX, _PASS, _PRODUCT, _Call, _Graph, _is_linear, _is_stream_add, _mixes, _Op, _residual, trace,
)  # fmt: skip
from .architectures import PARALLEL_NOTE

__all__ = ["Traced", "infer_roles", "block_stacks"]


POST_NOTE = "post-LN: after the residual add"
SANDWICH_NOTE = "on the sublayer output, before the residual add"


def qk_note(role: str, shape: tuple[int, ...]) -> str:
    """Per-head when the input has a head axis (…, heads, …, head_dim); OLMo-2 normalises the full projection."""
    d = shape[-1]
    return f"per-head {role} norm (head_dim {d})" if len(shape) >= 4 else f"full-width {role} norm (d {d})"


def with_same_note(note: str, role: str, same: str | None) -> str:
    """``note`` plus the parallel-residual remark for a pre-sublayer norm that reads ``same``'s vector."""
    if not (same and role.startswith("pre_")):
        return note
    return (note + "; " if note else "") + f"parallel residual: reads the same vector as {same.rsplit('.', 1)[-1]}"


@dataclass
class Traced:
    """What the traced forward says about one norm module.

    ``role`` (see module docstring; ``"unused"`` if it never ran), ``note``, ``seq_dim`` (token axis
    of its input; None when the input has no token axis), ``reads_same_as`` (name of an earlier norm
    fed the same vector), ``stack`` (``"encoder"``, ``"decoder"``, ... when the model has several
    block stacks), ``eps`` (seen in its forward's ``layer_norm``/``rms_norm`` call or ``+ eps``),
    ``readers`` (modules whose parameters read z directly), ``shape`` (its traced input shape).
    """

    role: str
    note: str = ""
    seq_dim: int | None = 1
    reads_same_as: str | None = None
    stack: str = ""
    eps: float | None = None
    readers: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    layer: int | None = None


def _attention_operand(g: _Graph, starts: set) -> tuple[str, _Op] | None:
    """Which attention operand (query/key/value) the tensors in ``starts`` reach without a linear map."""
    seen, todo = set(starts), list(starts)
    while todo:
        k = todo.pop()
        for i in g.cons.get(k, ()):
            op = g.ops[i]
            if _is_linear(op):  # a projection: z is read as the stream, not as queries/keys
                continue
            if op.name in _ATTN or (op.name in _PRODUCT and len(op.ins) == 2):
                pos = op.ins.index(k) if k in op.ins else -1
                if op.name in _PRODUCT:
                    other = op.ins[1 - pos] if pos in (0, 1) else None
                    src = g.source(other, _PASS | {"transpose"}) if other is not None else None
                    if src is not None and src.name in ("softmax", "_softmax"):  # probabilities · V
                        return "value", op
                for nm, idx in (("query", 0), ("key", 1), ("value", 2)):
                    if pos == idx or op.kw.get(nm) == k:
                        return nm, op
                continue
            for o in op.outs:
                if o not in seen:
                    seen.add(o)
                    todo.append(o)
    return None


def _key_of(op: _Op):
    return op.kw.get("key", op.ins[1] if len(op.ins) > 1 else None)


@dataclass
class _Verdict:
    role: str
    note: str = ""
    ambiguous: bool = False


def _classify(g: _Graph, c: _Call, norm_upstream: bool) -> _Verdict:
    """The role of one norm call from the data flow around its input x and output z."""
    kx, kz = c.kx, c.kz
    zs = g.through(kz, _PASS)
    qk = _attention_operand(g, zs)
    if qk is not None and qk[0] in ("query", "key"):
        return _Verdict(qk[0])
    dz = g.desc(kz)
    added = [g.ops[i] for k in zs for i in g.cons.get(k, ()) if _is_stream_add(g.ops[i])]
    read_by_norm = any(g.ops[i].name == "norm" for k in zs for i in g.cons.get(k, ()))
    stream_self = [op for op in added if all(k in dz for k in op.ins)]
    res = _residual(g, g.source(kx, _PASS))
    if not norm_upstream and res is None and (stream_self or read_by_norm):
        return _Verdict("embedding")
    if stream_self:  # post-LN: the stream is z
        mixes = res is not None and _mixes(g.branch_ops(g.desc(res[0]), res[1]))
        return _Verdict("post_attention" if mixes else "post_mlp", POST_NOTE)
    if added:  # sandwich: z is added onto a stream that does not come from it
        other = next((k for k in added[0].ins if k not in zs), None)
        mixes = other is not None and _mixes(g.branch_ops(g.desc(other), kx))
        return _Verdict("attention_output" if mixes else "mlp_output", SANDWICH_NOTE)
    dx = g.desc(kx)
    for i in sorted({i for k in dz for i in g.cons.get(k, ())}):
        op = g.ops[i]
        back = [k for k in op.ins if k in dx and k not in dz]
        mine = [k for k in op.ins if k in dz]
        if not (_is_stream_add(op) and back and mine):
            continue
        path = g.branch_ops(dz, mine[0])
        if not _mixes(path):
            return _Verdict("pre_mlp")
        products = [p for p in path if p.name in _PRODUCT and len(p.ins) == 2]
        cross = any(k not in dx for p in products for k in p.ins) or any(
            (k := _key_of(p)) is not None and k not in dx for p in path if p.name in _ATTN)
        note = _parallel_note(g, zs, mine[0])
        return _Verdict("pre_cross_attention" if cross else "pre_attention", note)
    src = g.source(kx, _PASS | _INDEX)
    if src is not None and (_is_stream_add(src) or src.name == "norm"):
        return _Verdict("final", ambiguous=True)
    return _Verdict("other", "reads neither the residual stream nor a sublayer output (e.g. a prediction-head norm)",
                    ambiguous=True)


def _parallel_note(g: _Graph, zs: set, end) -> str:
    """A note when the linear maps reading z lead to both a token-mixing and a token-wise branch."""
    kinds = set()
    for k in zs:
        for i in g.cons.get(k, ()):
            if g.ops[i].params and g.ops[i].outs:
                kinds.add(_mixes(g.branch_ops(g.desc(g.ops[i].outs[0]), end)))
    return PARALLEL_NOTE if kinds == {True, False} else ""


def _stacks(model: nn.Module, norm_names: list[str]) -> dict[str, tuple[str, int]]:
    """``{norm name: (block-list path, block index)}`` for norms inside a ModuleList of blocks."""
    from .registry import is_norm_module

    lists = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)
             and not any(is_norm_module(c) for c in m)]  # fmt: skip
    out = {}
    for name in norm_names:
        owners = [lp for lp in lists if name.startswith(f"{lp}.")]
        if owners:
            lp = min(owners, key=len)
            idx = name[len(lp) + 1 :].split(".", 1)[0]
            if idx.isdigit():
                out[name] = (lp, int(idx))
    return out


def _stack_labels(paths: set[str]) -> dict[str, str]:
    """Short distinct labels for block lists: ``model.encoder.layers`` → ``encoder``."""
    if len(paths) < 2:
        return {p: "" for p in paths}
    parts = {p: p.split(".") for p in paths}
    pre = 0
    while all(len(v) > pre + 1 for v in parts.values()) and len({tuple(v[: pre + 1]) for v in parts.values()}) == 1:
        pre += 1
    suf = 0
    while all(len(v) > pre + suf + 1 for v in parts.values()) and len({v[-1 - suf] for v in parts.values()}) == 1:
        suf += 1
    return {p: ".".join(v[pre : len(v) - suf]) for p, v in parts.items()}


def infer_roles(model: nn.Module, norms: Sequence[nn.Module], example: Any = None) -> dict[nn.Module, Traced] | None:
    """Trace one forward and classify every norm in ``norms`` (see the module docstring).

    **Arguments:** ``model``; ``norms`` — its norm modules; ``example`` — an input for its forward
    (dict of kwargs, tensor, or callable ``f(model)``; default :func:`normscope.models.inputs.example_inputs`).

    **Returns:** ``{module: Traced}``, or None when no input could be built or the forward failed.
    """
    from .inputs import example_inputs

    if example is None:
        example = example_inputs(model)
        if example is None:
            return None
    try:
        g, calls = trace(model, norms, example)
    except Exception as e:  # noqa: BLE001 - a forward we cannot drive: the caller falls back to the table
        warnings.warn(f"could not trace a forward of {type(model).__name__} to infer norm roles "
                      f"({type(e).__name__}: {str(e)[:200]}); pass find_norms(model, example=...) with a valid input",
                      stacklevel=3)
        return None
    modules = dict(model.named_modules())
    ids = {id(x) for x in norms}
    names = [n for n, m in modules.items() if id(m) in ids]
    stacks, stack_of = block_stacks(model, names)
    seqs = _seq_lengths(model, example, calls)
    firsts: dict[str, _Call] = {}
    for c in calls:
        firsts.setdefault(c.name, c)
    prev: list[_Call] = []
    ambiguous: list[str] = []
    roles: dict[str, Traced] = {}
    for name, c in firsts.items():
        upstream = any(c.kx in g.desc(p.kz) for p in prev)
        v = _classify(g, c, upstream)
        if v.ambiguous and name in stacks:
            ambiguous.append(name)
        note = v.note
        if v.role in ("query", "key"):
            note = qk_note(v.role, tuple(c.x.shape))
        same = next((p.name for p in prev if p.x is c.x or (p.x.shape == c.x.shape and torch.equal(p.x, c.x))), None)
        note = with_same_note(note, v.role, same)
        roles[name] = Traced(role=v.role, note=note, seq_dim=_seq_dim(c.x, seqs), reads_same_as=same,
                             stack=stack_of(name), eps=c.eps, readers=_readers(g, c), shape=tuple(c.x.shape),
                             layer=stacks[name][1] if name in stacks else None)
        prev.append(c)
    for name in ambiguous:  # take the role the same norm has in the other blocks
        lp, i = stacks[name]
        rel = name[len(lp) + 1 :].split(".", 1)[1] if "." in name[len(lp) + 1 :] else ""
        sibs = [roles[f"{lp}.{j}.{rel}"].role for j in range(len(modules[lp])) if j != i and f"{lp}.{j}.{rel}" in roles
                and f"{lp}.{j}.{rel}" not in ambiguous]  # fmt: skip
        if sibs:
            roles[name].role = max(set(sibs), key=sibs.count)
            roles[name].note = "role of the same norm in the other blocks (the last block's output is not reused)"
    out: dict[nn.Module, Traced] = {}
    for name in names:
        out[modules[name]] = roles.get(name) or Traced(role="unused", note="did not run in the traced forward")
    return out


def block_stacks(model: nn.Module, names: list[str]):
    """``(stacks, stack_of)``: ``{norm name: (block-list path, block index)}`` and a function
    giving each norm's stack label (``"encoder"``, ``"decoder"``, ...; ``""`` with one stack)."""
    stacks = _stacks(model, names)
    labels = _stack_labels({lp for lp, _ in stacks.values()})
    owner = {lp[: lp.index(lab) + len(lab)]: lab for lp, lab in labels.items() if lab}

    def stack_of(name: str) -> str:
        if name in stacks:
            return labels[stacks[name][0]]
        hits = [o for o in owner if o and name.startswith(f"{o}.")]
        return owner[max(hits, key=len)] if hits else ""

    return stacks, stack_of


def _seq_lengths(model: nn.Module, example: Any, calls: list[_Call]) -> set[int]:
    """Sequence lengths of the traced input: token-id widths, else the length axis of 3-D norm inputs."""
    if isinstance(example, torch.Tensor) and example.ndim >= 2:
        batch_first = all(getattr(m, "batch_first", True) for m in model.modules())
        return {example.shape[1] if batch_first else example.shape[0]}
    seqs = set()
    if isinstance(example, dict):
        seqs = {v.shape[1] for k, v in example.items() if k.endswith("input_ids") and v.ndim == 2}
        batch = {v.shape[0] for v in example.values() if isinstance(v, torch.Tensor) and v.ndim >= 2}
        seqs |= {c.x.shape[1] for c in calls if c.x.ndim == 3 and c.x.shape[0] in batch}
    return seqs or {c.x.shape[1] for c in calls if c.x.ndim == 3}


def _seq_dim(x: torch.Tensor, seqs: set[int]) -> int | None:
    """The axis of ``x`` (not the last) whose length is a traced sequence length; None if none or ambiguous."""
    axes = [a for a in range(x.ndim - 1) if x.shape[a] in seqs]
    if len(axes) > 1 and x.ndim >= 3:
        axes = [a for a in axes if a != 0]
    return axes[0] if len(axes) == 1 else None


def _readers(g: _Graph, c: _Call) -> tuple[str, ...]:
    """Modules whose parameters are read by an op taking z (through casts/dropout) as input."""
    zs = g.through(c.kz, _PASS | _INDEX)
    mods = []
    for k in zs:
        for i in g.cons.get(k, ()):
            for pname in g.ops[i].params:
                m = pname.rsplit(".", 1)[0]
                if m not in mods:
                    mods.append(m)
    return tuple(mods)


