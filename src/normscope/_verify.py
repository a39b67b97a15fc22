"""Shared checks for every verification: a maximum difference is only reported if every value is finite.

Python's ``max`` drops NaN (``max(0.0, nan) == 0.0``), and ``nan <= tol`` is False while
``not nan > tol`` is True, so an accumulator written the obvious way certifies a model whose
outputs are NaN as exact. Every verification in normscope (``convert``, its reload check, the
swap test's exact control, ``fold`` and its streamed check, any later ``verify``) goes through
one check, ``_finite_abs_diff`` (behind :func:`finite_max_abs_diff`), which refuses non-finite
values with a message naming the model, batch, position and output. :func:`logit_agreement` is
the one logit/KL comparison built on it.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from normscope.errors import NonFiniteError

__all__ = ["NonFinite", "first_nonfinite", "finite_max_abs_diff", "logit_agreement"]

_AXES3 = ("row", "position", "output")


class NonFinite(NamedTuple):
    """Where a tensor first holds NaN/±Inf (row-major order) and how many such values it holds."""

    index: tuple[int, ...]
    value: float
    count: int

    def where(self, axes: Sequence[str] | None = None) -> str:
        """``"row 0, position 3, output 17"`` (axis names default to row/position/output for 3-D)."""
        if axes is None:
            axes = _AXES3 if len(self.index) == 3 else [f"axis {i}" for i in range(len(self.index))]
        return ", ".join(f"{a} {i}" for a, i in zip(axes, self.index))


def first_nonfinite(t: torch.Tensor) -> NonFinite | None:
    """The first non-finite entry of ``t`` (None if all are finite).

    **Arguments:** ``t`` — a floating tensor of any shape.

    **Returns:** :class:`NonFinite` (index, value, number of non-finite entries) or None.
    """
    bad = ~torch.isfinite(t)
    n = int(bad.sum())
    if n == 0:
        return None
    flat = int(bad.reshape(-1).nonzero()[0, 0])
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), t.shape))
    return NonFinite(index, float(t.reshape(-1)[flat]), n)


def finite_max_abs_diff(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    what: str = "logits",
    names: tuple[str, str] = ("original", "converted"),
    batch: int | None = None,
    axes: Sequence[str] | None = None,
) -> float:
    """max |a − b| in float64, refusing NaN/±Inf anywhere in ``a``, ``b`` or the difference.

    **Arguments:**

    - ``a``, ``b``: tensors of the same shape (e.g. logits ``(batch, position, vocab)``).
    - ``what``: what they are, for the message (``"logits"``).
    - ``names``: the models (or sources) that produced ``a`` and ``b``.
    - ``batch``: the index of this batch in the verification stream, for the message.
    - ``axes``: axis names for the message (default row/position/output for 3-D tensors).

    **Returns:** the maximum absolute difference as a Python float (exact: the float64
    difference of two float32 values is exact, and the maximum is exact).

    Raises :class:`normscope.errors.NonFiniteError` naming the model, batch, row, position and
    output of the first non-finite value and how many there are.
    """
    d = _finite_abs_diff(a.double(), b.double(), what=what, names=names, batch=batch, axes=axes)
    return float(d.max()) if d.numel() else 0.0


def _finite_abs_diff(ad, bd, *, what, names, batch, axes) -> torch.Tensor:
    """|ad − bd| for float64 copies ``ad``, ``bd`` of the two outputs (the copy keeps every shape,
    NaN/Inf position and value); raises as :func:`finite_max_abs_diff` says (shape mismatch,
    NaN/±Inf in either or in the difference)."""
    if ad.shape != bd.shape:
        raise ValueError(f"cannot compare {what} of shapes {tuple(ad.shape)} and {tuple(bd.shape)}")
    d = (ad - bd).abs()
    if bool(torch.isfinite(d).all()):  # the usual case: NaN/Inf in a or b would make d non-finite too
        return d
    at = f"batch {batch}, " if batch is not None else ""
    for t, name in ((ad, names[0]), (bd, names[1])):
        nf = first_nonfinite(t)
        if nf is not None:
            raise NonFiniteError(
                f"the {name} model's {what} are not finite: {nf.count} NaN/Inf value(s), the first ({nf.value}) "
                f"at {at}{nf.where(axes)}; nothing was certified - check the model's weights and inputs"
            )
    nf = first_nonfinite(d)  # finite inputs whose float64 difference overflows
    raise NonFiniteError(f"the {what} difference overflows float64 at {at}{nf.where(axes)}; nothing was certified")


@torch.no_grad()
def logit_agreement(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    names: tuple[str, str] = ("original", "converted"),
) -> dict:
    """Agreement of two models' logits, batch by batch; a verification, so NaN/Inf fails it.

    Each pair goes through the check of :func:`finite_max_abs_diff` first (on the float64 copies
    the KL needs anyway): a NaN or ±Inf logit raises
    :class:`normscope.errors.NonFiniteError` naming the model (``names``), batch, row, position
    and output, instead of being dropped by ``max``. The KL divergence of the next-token
    distributions, KL(p_a ‖ p_b) = Σ_v p_a(v) (log p_a(v) − log p_b(v)), is computed from float64
    log-softmaxes and clamped at 0 (rounding can make it a tiny negative number).

    **Arguments:**

    - ``pairs``: ``(a, b)`` logits of the same shape ``(batch, position, vocab)`` per batch, any
      floating dtype (a generator that runs the two models is fine: one batch is held at a time).
    - ``names``: what produced ``a`` and ``b``, for error messages.

    **Returns:** a dict with ``tokens`` (positions compared), ``max_abs_dlogits`` (max |a − b|),
    ``mean_abs_dlogits``, ``max_abs_logit`` (max |a|), ``kl_mean`` and ``kl_max`` (nats).
    Raises ``ValueError`` when ``pairs`` is empty.
    """
    mx = mean_num = kl_sum = kl_max = big = 0.0
    n_tok = n_el = 0
    for i, (a, b) in enumerate(pairs):
        ad, bd = a.double(), b.double()  # once per batch: these are the large tensors
        d = _finite_abs_diff(ad, bd, what="logits", names=names, batch=i, axes=None)
        mx = max(mx, float(d.max()) if d.numel() else 0.0)
        mean_num += float(d.sum())
        n_el += d.numel()
        big = max(big, float(ad.abs().max()))
        la, lb = F.log_softmax(ad, -1), F.log_softmax(bd, -1)
        kl = (la.exp() * (la - lb)).sum(-1).clamp_min(0.0)
        kl_sum += float(kl.sum())
        kl_max = max(kl_max, float(kl.max()))
        n_tok += kl.numel()
    if n_tok == 0:
        raise ValueError("compare() got no batches")
    return {
        "tokens": n_tok,
        "max_abs_dlogits": mx,
        "mean_abs_dlogits": mean_num / n_el,
        "max_abs_logit": big,
        "kl_mean": kl_sum / n_tok,
        "kl_max": kl_max,
    }
