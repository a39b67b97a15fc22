"""Forward hooks on norm modules.

One forward hook per site, registered ``with_kwargs=True`` because HF modules sometimes pass
the hidden states as a keyword. The hook sees the module's input x and output z exactly as the
model computes them (no recomputation), in the model's dtype and device.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..models.registry import NormSite

__all__ = ["norm_hooks"]

_INPUT_KWARGS = ("hidden_states", "x", "input", "hidden_state", "inputs")


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for k in _INPUT_KWARGS:
        v = kwargs.get(k)
        if isinstance(v, torch.Tensor):
            return v
    for v in kwargs.values():
        if isinstance(v, torch.Tensor):
            return v
    return None


@contextlib.contextmanager
def norm_hooks(
    model: nn.Module,
    sites: Sequence[NormSite],
    callback: Callable[[NormSite, torch.Tensor, torch.Tensor], Any],
) -> Iterator[None]:
    """Call ``callback(site, x_in, z_out)`` on every forward of each norm site.

    Tensors are passed as the module received/returned them, e.g. ``(batch, seq, d)`` (per-head
    q/k norms: 4-D, see ``NormSite.seq_dim``). Hooks are removed on exit, also on error.

    **Arguments:** ``model`` (used only for its identity in error messages), ``sites`` (from
    :func:`normscope.models.find_norms`), ``callback``.
    """
    handles = []

    def make(site: NormSite):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = _first_tensor(args, kwargs)
            z = output[0] if isinstance(output, (tuple, list)) else output
            if x is None or not isinstance(z, torch.Tensor):
                raise RuntimeError(f"norm hook on {site.name}: could not find the input/output tensor")
            callback(site, x, z)

        return hook

    try:
        for site in sites:
            handles.append(site.module.register_forward_hook(make(site), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
