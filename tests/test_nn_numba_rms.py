"""The fused numba RMSNorm kernel (``normscope.nn._numba``) behind ``RMSNorm(backend="numba")``:
against the rescaled float64 oracle at every scale, the same bits on every row-sharing path and
at every block boundary, non-finite values kept in their row, and ``auto``.

Tolerance (``tests/_nn_bounds.py``): tol = (2u + 4·N·u)·max(max|z| + max|b|, 1) for N-wide rows
(the sum of squares carries at most N·u relative error; no mean, hence no κ term as for LN-G).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import normscope.nn as nsn  # noqa: F401 - the modules under test, through _nn_fused
from _nn_bounds import N, _input, _magnitudes
from _nn_fused import _all_within, _every_split, _rms, _rms_oracle, _same_bits
from normscope.nn import _autotune, _numba

pytestmark = pytest.mark.numerical


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", ["huge", "tiny", "one", "1e30", "1e-30", "mixed"])
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("eps", [None, 1e-5])
def test_rms_numba_matches_the_oracle_at_every_scale_and_split(monkeypatch, dtype, scale, affine, eps):
    """Rows whose mean(x²) over- or underflows (huge, tiny, one row of each in "mixed") fall back
    to the exactly rescaled path; the rest are the kernel's bits, the same on every split."""
    x = _input(dtype, _magnitudes(dtype)["one" if scale == "mixed" else scale], mixed=scale == "mixed", rows=13)
    m = _rms(dtype, affine, eps)
    with torch.no_grad():
        paths = _every_split(monkeypatch, lambda: m(x), entry="rms_norm")
        _, bad = _numba.rms_norm(x, m.weight, m.bias, eps if eps is not None else torch.finfo(dtype).eps)
    _same_bits(paths)
    if scale == "one":  # the kernel's own bits were compared, not the exact fallback's
        assert bad == 0
    ref, tol = _rms_oracle(x, m, eps)
    _all_within(paths, dtype, ref, tol)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.float64]),
    d=st.sampled_from([1, 2, 3, 5, 16, 63, 64, 100, 257]),
    rows=st.integers(0, 9),
    exponent=st.integers(-60, 60),
    eps=st.sampled_from([None, 0.0, 1e-5, 0.5]),
    affine=st.sampled_from(["both", "weight", "none"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_rms_numba_property(dtype, d, rows, exponent, eps, affine, seed):
    """Any width, row count (0 included), scale 2^±60, ε = 0 or the dtype's: the module within
    the bound of the oracle; where the kernel reports no bad row, the module returned its bits."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, d, generator=g, dtype=torch.float64) * 2.0**exponent).to(dtype)
    m = _rms(dtype, affine, eps=eps, d=d)
    with torch.no_grad():
        out = m(x)
        e = eps if eps is not None else torch.finfo(dtype).eps
        z, bad = _numba.rms_norm(x, m.weight, m.bias, e)
    assert out.shape == x.shape and out.dtype == dtype
    if rows == 0:
        return
    ref, tol = _rms_oracle(x, m, eps)
    assert (out.double() - ref).abs().max().item() <= tol
    if not bad:
        assert torch.equal(z, out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_blocks_do_not_change_a_bit(monkeypatch, dtype):
    """The RMSNorm kernel takes rows in blocks (all 1/√m first, then the outputs): blocks of 3 rows
    give the default kernel's bits on 13 rows (every block boundary and a ragged last block), with
    and without a shift, and the same count of bad rows."""
    import numba
    import numpy as np

    x = _input(dtype, 1.0, mixed=True, rows=13)
    x[5, 3] = float("nan")
    xn, nd = x.numpy(), x.numpy().dtype
    jit = numba.njit(fastmath=_numba._FASTMATH, boundscheck=False, error_model="numpy")
    default = jit(_numba._rms_rows(nd.type))  # one block of 4096 rows of 64
    monkeypatch.setattr(_numba, "RMS_BLOCK_ELEMS", 3 * N)
    small = jit(_numba._rms_rows(nd.type))
    w = np.linspace(0.5, 1.5, N).astype(nd)
    fi = torch.finfo(dtype)
    for b in (np.zeros(0, nd), np.linspace(-1, 1, N).astype(nd)):
        outs = [np.empty_like(xn), np.empty_like(xn)]
        args = (w, b, N, 1e-5, fi.tiny / fi.eps, 0, 13)
        bads = [small(xn, outs[0], *args), default(xn, outs[1], *args)]
        assert bads[0] == bads[1] == 2  # the huge row (mean(x²) overflows) and the NaN row; ε keeps the tiny one
        assert np.array_equal(outs[0], outs[1], equal_nan=True)


def test_the_rms_bound_rejects_a_missing_eps():
    """Negative control: x/√mean(x²) (ε dropped) misses the bound by more than 10× on rows where
    ε = 0.5 matters, which the kernel meets."""
    x = torch.randn(16, N) * 0.3
    m = _rms(torch.float32, "none", eps=0.5)
    ref, tol = _rms_oracle(x, m, 0.5)
    with torch.no_grad():
        assert (m(x).double() - ref).abs().max().item() <= tol
    no_eps = x * torch.rsqrt(x.square().mean(-1, keepdim=True))
    assert (no_eps.double() - ref).abs().max().item() > 10 * tol


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 3e38])
def test_the_rms_kernel_keeps_non_finite_values_in_their_row(bad):
    """NaN, ±Inf or a mean square that overflows: that row is reported (one bad row) and every other
    row keeps its bits; the module recomputes it exactly (3e38: finite, the oracle's value)."""
    x = torch.randn(5, N)
    clean, none = _numba.rms_norm(x, None, None, 1e-5)
    x[2, 9] = bad
    z, count = _numba.rms_norm(x, None, None, 1e-5)
    assert none == 0 and count == 1 and torch.equal(z[[0, 1, 3, 4]], clean[[0, 1, 3, 4]])
    with torch.no_grad():
        out = _rms(torch.float32, "none")(x)
    if bad == 3e38:
        ref, tol = _rms_oracle(x, _rms(torch.float32, "none"), 1e-5)
        assert (out.double() - ref).abs().max().item() <= tol
    else:  # as the eager kernel (and torch): NaN where that row's limit is undefined, other rows finite
        with torch.no_grad():
            eager = _rms(torch.float32, "none", backend="eager")(x)
        assert torch.equal(torch.isnan(out), torch.isnan(eager)) and torch.isnan(out[2]).any()
        assert torch.isfinite(out[[0, 1, 3, 4]]).all()


def test_the_rms_kernel_checks_its_arguments():
    x = torch.randn(4, N)
    for args, match in [((x.t(), None, None), "contiguous"), ((x, torch.ones(N // 2), None), "weight must be"),
                        ((x, None, torch.zeros(N, dtype=torch.float64)), "bias must be")]:
        with pytest.raises(ValueError, match=match):
            _numba.rms_norm(*args, 1e-5)


def test_rms_auto_measures_numba_where_it_applies(monkeypatch):
    """RMSNorm's "auto": numba is a candidate only where it applies, and that is part of the bucket."""
    from normscope.nn import rms_norm as rms_mod

    monkeypatch.delenv("NORMSCOPE_COMPILE", raising=False)
    monkeypatch.setattr(_autotune, "_CHOICES", {})
    seen = []
    real = _autotune.measure
    monkeypatch.setattr(_autotune, "measure", lambda mod, x, c: seen.append(list(c)) or real(mod, x, c))
    x = torch.randn(300, N)
    m = _rms(torch.float32, "weight", backend="auto")
    m(x)  # autograd: eager only, nothing to measure
    with torch.no_grad():
        m(x)
    assert seen == [["eager", "numba"]]
    keys = rms_mod.auto_choices()
    assert sorted(k[-1] for k in keys) == [False, True] and set(keys.values()) <= {"eager", "numba"}


