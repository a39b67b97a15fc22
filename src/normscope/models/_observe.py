"""The cheap path to norm roles: the architecture table plus one forward hooked on the norms only.

For a family the table (:mod:`normscope.models.architectures`) describes and whose module names
match it, the roles come from the table; one small forward (batch 2 × 11 tokens) with hooks on
the norm modules alone — no recording of other tensor operations, which is what makes the full
trace (:mod:`normscope.models.roles`) slow on a real model — supplies what the table cannot
know: each norm's input shape and token axis (per-head q/k norms, flattened ``(tokens, d)``
inputs), which norms read the same vector (parallel residual), and the eps of norms that store
none. The results and notes equal what the full trace gives (tests/test_roles.py checks every
family both ways), except that a post-LN model's last-block norm keeps the plain post-LN note.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .architectures import PARALLEL_NOTE, ROLE_GROUPS
from .roles import POST_NOTE, SANDWICH_NOTE, Traced, _seq_dim, _seq_lengths, block_stacks, qk_note, with_same_note

__all__ = ["observe", "from_table"]


@dataclass
class _Seen:
    name: str
    x: torch.Tensor
    eps: float | None


class _Stop(Exception):
    """Raised by a forward hook to end the cheap probe's forward early."""


def observe(model: nn.Module, norms: Sequence[nn.Module], example: Any = None,
            need_eps: Sequence[nn.Module] = (), stop_after: nn.Module | None = None,
            names: dict[int, str] | None = None) -> dict[nn.Module, Traced] | None:
    """The cheap probe: one forward with hooks on the norm modules only (no op recording).

    Gives what the architecture table cannot: each norm's input shape and token axis, which
    earlier norm read the same vector (parallel residual, same test as :func:`infer_roles`), and
    for the modules in ``need_eps`` the eps seen inside their forward. ``role`` is left ``""``
    (``"unused"`` when the norm did not run); the caller takes it from the table.

    **Arguments:** as :func:`infer_roles`; ``need_eps`` — norms that store no eps attribute;
    ``stop_after`` — a module after whose forward the pass stops (norms not reached yet are
    ``"unused"``); ``names`` — ``{id(module): name}`` to report links with (default: names in
    ``model``). **Returns:** ``{module: Traced}``, or None when no input could be built or the forward failed.
    """
    from ..probe.hooks import _first_tensor
    from ._dataflow import EpsSeen, run_once
    from .inputs import example_inputs

    if example is None:
        example = example_inputs(model)
        if example is None:
            return None
    names = names or {id(m): n for n, m in model.named_modules()}
    eps_ids = {id(m) for m in need_eps}
    firsts: dict[str, _Seen] = {}
    modes: list = []

    def pre(mod, args, kwargs):
        mode = EpsSeen() if id(mod) in eps_ids else None
        if mode is not None:
            mode.__enter__()
        modes.append(mode)

    def post(mod, args, kwargs, out):
        mode = modes.pop()
        if mode is not None:
            mode.__exit__(None, None, None)
        x = _first_tensor(args, kwargs)
        if isinstance(x, torch.Tensor) and not modes and names[id(mod)] not in firsts:
            firsts[names[id(mod)]] = _Seen(names[id(mod)], x, mode.seen[0] if mode is not None and mode.seen else None)

    handles = [h for m in norms for h in (m.register_forward_pre_hook(pre, with_kwargs=True),
                                          m.register_forward_hook(post, with_kwargs=True))]
    if stop_after is not None:
        handles.append(stop_after.register_forward_hook(lambda *a: (_ for _ in ()).throw(_Stop())))
    try:
        run_once(model, example)
    except _Stop:
        pass
    except Exception as e:  # noqa: BLE001 - a forward we cannot drive: the caller falls back to the trace
        warnings.warn(f"could not run a forward of {type(model).__name__} to observe its norms "
                      f"({type(e).__name__}: {str(e)[:200]}); pass find_norms(model, example=...) with a valid input",
                      stacklevel=3)
        return None
    finally:
        for h in handles:
            h.remove()
    seqs = _seq_lengths(model, example, list(firsts.values()))
    out: dict[nn.Module, Traced] = {}
    prev: list[_Seen] = []
    by_name = {names[id(m)]: m for m in norms}
    for c in firsts.values():  # execution order
        same = next((p.name for p in prev if p.x is c.x or (p.x.shape == c.x.shape and torch.equal(p.x, c.x))), None)
        out[by_name[c.name]] = Traced(role="", seq_dim=_seq_dim(c.x, seqs), reads_same_as=same, eps=c.eps, shape=tuple(c.x.shape))
        prev.append(c)
    for m in norms:
        out.setdefault(m, Traced(role="unused", note="did not run in the forward"))
    return out


def from_table(model: nn.Module, named: Sequence[tuple[str, nn.Module]], table: dict, layers_path: str,
               example: Any = None, need_eps: Sequence[nn.Module] = ()) -> dict[nn.Module, Traced] | None:
    """Table roles completed by :func:`observe`, shaped as :func:`normscope.models.roles.infer_roles`'s result.

    **Arguments:** ``named`` — ``(name, module)`` of every norm, each a key of ``table``
    (``{name: (role, note, seq_dim, reads_same_as)}`` from :func:`normscope.models.registry.table_roles`);
    ``layers_path`` — the full name of the block ``ModuleList``; ``example``, ``need_eps`` — as
    :func:`observe`. The forward stops after block 0: the table describes every block alike, so
    block 0's observations stand for the others (index substituted) and the final norm reads
    the stream with the table's token axis. **Returns:** ``{module: Traced}`` or None.
    """
    from .inputs import example_inputs

    blocks = f"{layers_path}."
    first_block = dict(model.named_modules()).get(f"{layers_path}.0")
    # The base model alone when it holds every norm (skips the LM head: most of a tiny forward's
    # cost), on the tiny prime-sized input: the cheapest forward, with an unambiguous token axis.
    base = getattr(model, "base_model", model)
    inside = {id(m) for m in base.modules()}
    run = base if all(id(m) in inside for _, m in named) else model
    ex = example_inputs(run)
    if ex is None and run is not model:
        run, ex = model, example_inputs(model)
    seen = observe(run, [m for _, m in named], ex if ex is not None else example, need_eps, stop_after=first_block,
                   names={id(m): n for n, m in named})
    if seen is None:
        return None
    by_name = dict(named)
    stacks, stack_of = block_stacks(model, [n for n, _ in named])
    out: dict[nn.Module, Traced] = {}
    for name, m in named:
        o = seen[m]
        if name.startswith(blocks) and o.role == "unused":  # the table's blocks are alike: block 0 speaks for all
            i, rel = name[len(blocks):].split(".", 1)
            o = seen[by_name[f"{blocks}0.{rel}"]] if f"{blocks}0.{rel}" in by_name else o
            same = o.reads_same_as
            if same and same.startswith(blocks):
                same = f"{blocks}{i}." + same[len(blocks):].split(".", 1)[1]
            if o.role != "unused":
                o = Traced(role="", seq_dim=o.seq_dim, reads_same_as=same, eps=o.eps, shape=o.shape)
        elif o.role == "unused" and table[name][0] == "final":  # reads the stream after the last block
            twin = next((seen[x] for _, x in named if type(x) is type(m) and seen[x].role != "unused"), None)
            o = Traced(role="", seq_dim=table[name][2], eps=twin.eps if twin is not None else None)
        if o.role == "unused":
            out[m] = o
            continue
        role, tnote = table[name][0], table[name][1]
        group = ROLE_GROUPS[role]
        if group == "qk":
            note = qk_note(role, o.shape)
        elif group == "post":
            note = POST_NOTE
        elif group == "sandwich":
            note = SANDWICH_NOTE
        else:
            note = PARALLEL_NOTE if group == "pre" and tnote == PARALLEL_NOTE else ""
        out[m] = Traced(role=role, note=with_same_note(note, role, o.reads_same_as), seq_dim=o.seq_dim,
                        reads_same_as=o.reads_same_as, stack=stack_of(name), eps=o.eps, shape=o.shape,
                        layer=stacks[name][1] if name in stacks else None)
    return out
