"""Shared checks for every verification: a maximum difference is only reported if every value is finite.

Python's ``max`` drops NaN (``max(0.0, nan) == 0.0``), and ``nan <= tol`` is False while
``not nan > tol`` is True, so an accumulator written the obvious way certifies a model whose
outputs are NaN as exact. Every verification in normscope (``convert``, its reload check, the
swap test's exact control, any later ``verify``) goes through :func:`finite_max_abs_diff`,
which refuses non-finite values with a message naming the model, batch, position and output.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from normscope.errors import NonFiniteError

__all__ = ["NonFinite", "first_nonfinite", "finite_max_abs_diff"]

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
    if a.shape != b.shape:
        raise ValueError(f"cannot compare {what} of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    d = (a.double() - b.double()).abs()
    if bool(torch.isfinite(d).all()):  # the usual case: NaN/Inf in a or b would make d non-finite too
        return float(d.max()) if d.numel() else 0.0
    at = f"batch {batch}, " if batch is not None else ""
    for t, name in ((a, names[0]), (b, names[1])):
        nf = first_nonfinite(t)
        if nf is not None:
            raise NonFiniteError(
                f"the {name} model's {what} are not finite: {nf.count} NaN/Inf value(s), the first ({nf.value}) "
                f"at {at}{nf.where(axes)}; nothing was certified - check the model's weights and inputs"
            )
    nf = first_nonfinite(d)  # finite inputs whose float64 difference overflows
    raise NonFiniteError(f"the {what} difference overflows float64 at {at}{nf.where(axes)}; nothing was certified")
