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

import contextlib
import warnings
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["Traced", "infer_roles", "trace"]

_PASS = {"to", "float", "half", "bfloat16", "double", "type", "type_as", "contiguous", "clone", "dropout",
         "detach", "alias", "view", "reshape", "flatten", "unflatten"}  # fmt: skip
_ADD = {"add", "__add__", "__radd__", "__iadd__", "add_"}
_ATTN = {"scaled_dot_product_attention", "multi_head_attention_forward", "flex_attention"}
_PRODUCT = {"matmul", "__matmul__", "bmm", "einsum", "baddbmm"}
_MIXING = _ATTN | {"softmax", "_softmax", "conv1d"}
_LINEAR = {"linear", "addmm", "conv1d", "conv2d", "embedding", "layer_norm", "rms_norm", "group_norm"}
_INDEX = {"__getitem__", "select", "narrow"}


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


@dataclass
class _Op:
    name: str
    ins: list  # tensor keys, positional order (kwargs appended, by name in kw)
    outs: list
    kw: dict = field(default_factory=dict)
    params: tuple = ()  # names of the parameters/buffers it reads (directly or through constants)
    n_const: int = 0  # constant tensor operands


def _name(func: Any) -> str:
    return getattr(func, "__name__", str(func))


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors carry no version counter
        return 0


class _Recorder(TorchFunctionMode):
    """Records ops on activations. Parameters, buffers and tensors computed from them alone (a
    transposed weight, rotary tables, masks built with ``arange``) are *constants*: never graph
    nodes; an op's ``params`` names the parameters it reads (directly or through a constant)."""

    def __init__(self, params: dict[int, tuple[torch.Tensor, str]]):
        super().__init__()
        self._uids: dict[int, tuple[Any, int]] = {}  # id(t) -> (weakref to t, unique id)
        self._strong: list[torch.Tensor] = []  # tensors that refuse weak references
        self.origin: dict[int, str] = {self.uid(t): n for t, n in params.values()}  # constant uid -> parameter name
        self.ops: list[_Op] = []
        self.depth = 0  # >0 inside a norm module: its inner ops are not recorded
        self.eps_seen: list[float] = []

    def uid(self, t: torch.Tensor) -> int:
        """A unique id for ``t`` that is never reused, although freed tensors' ``id()`` are."""
        e = self._uids.get(id(t))
        if e is not None and e[0]() is t:
            return e[1]
        try:
            ref = weakref.ref(t)
        except TypeError:
            self._strong.append(t)
            ref = (lambda t=t: t)
        n = self._counter = getattr(self, "_counter", 0) + 1
        self._uids[id(t)] = (ref, n)
        return n

    def key(self, t: torch.Tensor) -> tuple[int, int]:
        """Graph key of a tensor: (unique id, version), so in-place ops make a new node."""
        return self.uid(t), _version(t)

    def _tensors(self, obj: Any, out: list) -> None:
        if isinstance(obj, torch.Tensor):
            out.append(obj)
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                self._tensors(o, out)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if self.depth:
            if name in ("layer_norm", "rms_norm"):
                i = 4 if name == "layer_norm" else 3
                eps = kwargs.get("eps", args[i] if len(args) > i else None)
                if isinstance(eps, (int, float)):
                    self.eps_seen.append(float(eps))
            elif name in _ADD and len(args) == 2 and isinstance(args[1], float):
                self.eps_seen.append(args[1])
            return func(*args, **kwargs)
        flat = self._flat(args, kwargs)
        ins_before = [self.key(t) for t in flat]
        out = func(*args, **kwargs)
        outs: list = []
        self._tensors(out, outs)
        if not outs:
            return out
        consts = [k for k in ins_before if k[0] in self.origin]
        if len(consts) == len(flat):  # computed from constants alone: a constant too
            src = next((self.origin[k[0]] for k in consts if self.origin[k[0]]), "")
            for o in outs:
                self.origin[self.uid(o)] = src
            return out
        kw = {k: self.key(v) for k, v in kwargs.items() if isinstance(v, torch.Tensor) and self.uid(v) not in self.origin}
        ins = [k for k in ins_before if k[0] not in self.origin]
        params = tuple(dict.fromkeys(self.origin[k[0]] for k in consts if self.origin[k[0]]))
        self.ops.append(_Op(name, ins, [self.key(o) for o in outs], kw, params, len(consts)))
        return out

    def _flat(self, args, kwargs) -> list[torch.Tensor]:
        flat: list = []
        self._tensors(args, flat)
        self._tensors(list(kwargs.values()), flat)
        return flat


@dataclass
class _Call:
    name: str
    x: torch.Tensor
    z: torch.Tensor
    kx: tuple[int, int]  # graph keys of x and z
    kz: tuple[int, int]
    eps: float | None


class _Graph:
    """Producers/consumers over tensor keys, with memoised descendant sets."""

    def __init__(self, ops: list[_Op]):
        self.ops = ops
        self.prod: dict = {}
        self.cons: dict = defaultdict(list)
        for i, op in enumerate(ops):
            for k in op.ins:
                self.cons[k].append(i)
            for k in op.outs:
                self.prod.setdefault(k, i)
        self._desc: dict = {}

    def desc(self, key) -> set:
        """Tensor keys computed from ``key`` (including it)."""
        if key not in self._desc:
            seen, todo = {key}, [key]
            while todo:
                for i in self.cons.get(todo.pop(), ()):
                    for o in self.ops[i].outs:
                        if o not in seen:
                            seen.add(o)
                            todo.append(o)
            self._desc[key] = seen
        return self._desc[key]

    def through(self, key, names: set) -> set:
        """``key`` and the tensors reached from it through ops in ``names`` only."""
        seen, todo = {key}, [key]
        while todo:
            for i in self.cons.get(todo.pop(), ()):
                if self.ops[i].name in names:
                    for o in self.ops[i].outs:
                        if o not in seen:
                            seen.add(o)
                            todo.append(o)
        return seen

    def source(self, key, names: set):
        """Follow producers back through ops in ``names``; the first op not in ``names`` (or None)."""
        while key in self.prod:
            op = self.ops[self.prod[key]]
            if op.name not in names or not op.ins:
                return op
            key = op.ins[0]
        return None

    def branch_ops(self, within: set, end) -> list[_Op]:
        """Ops computing ``end`` from tensors in ``within`` (producers walked back while inside it)."""
        out, seen, todo = [], {end}, [end]
        while todo:
            k = todo.pop()
            if k not in self.prod or k not in within:
                continue
            op = self.ops[self.prod[k]]
            out.append(op)
            for i in op.ins:
                if i not in seen:
                    seen.add(i)
                    todo.append(i)
        return out


def _is_linear(op: _Op) -> bool:
    """A learned map or a norm: ``linear``/``conv``/``embedding``, a product with a weight, MHA with its projections."""
    return (op.name in _LINEAR or op.name == "norm" or (op.name in _PRODUCT and op.n_const > 0)
            or (op.name == "multi_head_attention_forward" and bool(op.params)))


def _residual(g: _Graph, op: _Op | None) -> tuple[Any, Any] | None:
    """(stream, branch) when ``op`` adds a tensor and something computed from it (a residual add)."""
    if op is None or not _is_stream_add(op):
        return None
    a, b = op.ins
    return (a, b) if b in g.desc(a) else (b, a) if a in g.desc(b) else None


def _is_stream_add(op: _Op) -> bool:
    return op.name in _ADD and len(op.ins) == 2 and not op.n_const


def _mixes(ops: Iterable[_Op]) -> bool:
    return any(op.name in _MIXING or (op.name in _PRODUCT and len(op.ins) >= 2) for op in ops)


@torch.no_grad()
def trace(model: nn.Module, norms: Sequence[nn.Module], example: Any) -> tuple[_Graph, list[_Call], dict]:
    """Run ``model`` once on ``example`` (dict → kwargs, tensor → positional, callable → ``f(model)``)
    recording every op and every call of the ``norms``. Returns (graph, calls, param names)."""
    from ..probe.hooks import _first_tensor

    # tied weights: the last name wins (lm_head over the embedding it shares a tensor with)
    params = {id(p): (p, n) for n, p in list(model.named_buffers()) + list(model.named_parameters(remove_duplicate=False))}
    rec = _Recorder(params)
    names = {id(m): n for n, m in model.named_modules()}
    calls: list[_Call] = []
    handles = []

    def pre(mod, args, kwargs):
        rec.depth += 1
        if rec.depth == 1:
            rec.eps_seen.clear()

    def post(mod, args, kwargs, out):
        rec.depth -= 1
        x = _first_tensor(args, kwargs)
        z = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(x, torch.Tensor) and isinstance(z, torch.Tensor) and rec.depth == 0:
            kx, kz = rec.key(x), rec.key(z)
            rec.ops.append(_Op("norm", [kx], [kz]))
            calls.append(_Call(names[id(mod)], x, z, kx, kz, rec.eps_seen[0] if rec.eps_seen else None))

    for m in norms:
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "meta":
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        example = {k: move(v) for k, v in example.items()} if isinstance(example, dict) else move(example)
    was = model.training
    model.eval()
    try:
        with _no_fastpath(), rec:
            if callable(example) and not isinstance(example, (torch.Tensor, dict)):
                example(model)
            elif isinstance(example, dict):
                model(**example)
            else:
                model(example)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return _Graph(rec.ops), calls, params


@contextlib.contextmanager
def _no_fastpath():
    """Disable torch's fused TransformerEncoderLayer path, which bypasses the norm modules."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    old = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(old)


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
                    src = g.source(other, _PASS | {"to", "transpose", "view", "reshape", "type_as"}) if other else None
                    if src is not None and src.name in ("softmax", "_softmax", "dropout"):
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
        return _Verdict("post_attention" if mixes else "post_mlp", "post-LN: after the residual add")
    if added:  # sandwich: z is added onto a stream that does not come from it
        other = next((k for k in added[0].ins if k not in zs), None)
        mixes = other is not None and _mixes(g.branch_ops(g.desc(other), kx))
        return _Verdict("attention_output" if mixes else "mlp_output", "on the sublayer output, before the residual add")
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
    return "parallel block: attention and MLP both read this norm's output" if kinds == {True, False} else ""


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
        g, calls, params = trace(model, norms, example)
    except Exception as e:  # noqa: BLE001 - a forward we cannot drive: the caller falls back to the table
        warnings.warn(f"could not trace a forward of {type(model).__name__} to infer norm roles "
                      f"({type(e).__name__}: {str(e)[:200]}); pass find_norms(model, example=...) with a valid input",
                      stacklevel=3)
        return None
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if any(m is x for x in norms)]
    stacks = _stacks(model, names)
    labels = _stack_labels({lp for lp, _ in stacks.values()})
    owner = {lp[: lp.index(lab) + len(lab)]: lab for lp, lab in labels.items() if lab}

    def stack_of(name: str) -> str:
        if name in stacks:
            return labels[stacks[name][0]]
        hits = [o for o in owner if o and name.startswith(f"{o}.")]
        return owner[max(hits, key=len)] if hits else ""

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
        note, d = v.note, c.x.shape[-1]
        if v.role in ("query", "key"):
            per_head = c.x.ndim >= 4  # (…, heads, …, head_dim); OLMo-2 normalises the full projection
            note = f"per-head {v.role} norm (head_dim {d})" if per_head else f"full-width {v.role} norm (d {d})"
        same = next((p.name for p in prev if p.x is c.x or (p.x.shape == c.x.shape and torch.equal(p.x, c.x))), None)
        if same and v.role.startswith("pre_"):
            note = (note + "; " if note else "") + f"parallel residual: reads the same vector as {same.rsplit('.', 1)[-1]}"
        roles[name] = Traced(role=v.role, note=note, seq_dim=_seq_dim(c.x, seqs), reads_same_as=same,
                             stack=stack_of(name), eps=c.eps, readers=_readers(g, c, params), shape=tuple(c.x.shape),
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


def _readers(g: _Graph, c: _Call, params: dict) -> tuple[str, ...]:
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


