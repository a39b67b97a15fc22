"""Data flow of one forward pass: every tensor operation on activations, recorded by a ``TorchFunctionMode``.

Used by :mod:`normscope.models.roles`. Tensors are keyed by (unique id, version): ``id()`` values
of freed tensors are reused, so each tensor gets a never-reused id through a weak reference (no
activation is kept alive), and the version makes in-place ``+=`` a new node. Parameters,
buffers and tensors computed from them alone are constants, not nodes.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_PASS = {"to", "float", "half", "bfloat16", "double", "type", "type_as", "contiguous", "clone", "dropout",
         "detach", "alias", "view", "reshape", "flatten", "unflatten"}  # fmt: skip
_ADD = {"add", "__add__", "__radd__", "__iadd__", "add_"}
_ATTN = {"scaled_dot_product_attention", "multi_head_attention_forward", "flex_attention"}
_PRODUCT = {"matmul", "__matmul__", "bmm", "einsum", "baddbmm"}
_MIXING = _ATTN | {"softmax", "_softmax", "conv1d"}
_LINEAR = {"linear", "addmm", "conv1d", "conv2d", "embedding", "layer_norm", "rms_norm", "group_norm"}
_INDEX = {"__getitem__", "select", "narrow"}



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
            eps = eps_of_call(name, args, kwargs)
            if eps is not None:
                self.eps_seen.append(eps)
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
def trace(model: nn.Module, norms: Sequence[nn.Module], example: Any) -> tuple[_Graph, list[_Call]]:
    """Run ``model`` once on ``example`` (dict → kwargs, tensor → positional, callable → ``f(model)``)
    recording every op and every call of the ``norms``. Returns (graph, norm calls in execution order)."""
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
    try:
        run_once(model, example, rec)
    finally:
        for h in handles:
            h.remove()
    return _Graph(rec.ops), calls


@torch.no_grad()
def run_once(model: nn.Module, example: Any, mode: Any = None) -> None:
    """One eval-mode forward of ``model`` on ``example`` (dict → kwargs, tensor → positional,
    callable → ``f(model)``), moved to the model's device, with torch's fused encoder path off;
    ``mode`` (a ``TorchFunctionMode``) is active during the forward only, not the move."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "meta":
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        example = {k: move(v) for k, v in example.items()} if isinstance(example, dict) else move(example)
    was = model.training
    model.eval()
    try:
        with _no_fastpath(), (mode if mode is not None else contextlib.nullcontext()):
            if callable(example) and not isinstance(example, (torch.Tensor, dict)):
                example(model)
            elif isinstance(example, dict):
                model(**example)
            else:
                model(example)
    finally:
        model.train(was)


def eps_of_call(name: str, args: tuple, kwargs: dict) -> float | None:
    """The ε a torch call reveals: the ``eps`` of ``layer_norm``/``rms_norm`` (positional or
    keyword), or the float of ``x + float`` (how HF norms add ε to the variance); else None."""
    if name in ("layer_norm", "rms_norm"):
        i = 4 if name == "layer_norm" else 3
        eps = kwargs.get("eps", args[i] if len(args) > i else None)
        return float(eps) if isinstance(eps, (int, float)) else None
    if name in _ADD and len(args) == 2 and isinstance(args[1], float):
        return args[1]
    return None


class EpsSeen(TorchFunctionMode):
    """Records the eps of ``layer_norm``/``rms_norm`` calls and of ``+ float`` while active
    (entered around one norm module's forward only, so it costs nothing elsewhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        eps = eps_of_call(_name(func), args, kwargs)
        if eps is not None:
            self.seen.append(eps)
        return func(*args, **kwargs)


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
