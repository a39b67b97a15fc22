"""The fused numba LN-G kernel (``normscope.nn._numba``) behind ``GroupLayerNorm(backend="numba")``,
and what the fused kernels share (where they apply, ``auto``, the fallback without numba): against
the rescaled float64 oracle at every scale, the same bits on every row-sharing path, non-finite
values kept in their group. (RMSNorm's kernel: ``tests/test_nn_numba_rms.py``; the row runners:
``tests/test_nn_parallel.py``.)

Tolerance (``tests/_nn_bounds.py``): tol = (2u + 4·n·u)·max(max|z| + max|b|, 1) for n-wide
groups, plus (n + 3)·u·max|g|·κ with κ = max over groups of max|x|/√(mean(p²) + ε): μ carries up
to (n − 1)·u·max|x| of summation error and x − μ is rounded relative to |x|, not to |x − μ|, so a
group far from its mean loses (n + 3)·u·κ relative to its spread (torch's ``layer_norm`` too).
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import normscope.nn as nsn
from _nn_bounds import N, _input, _magnitudes
from _nn_fused import _all_within, _every_split, _group_oracle, _lng, _lng_tol, _rms, _same_bits
from normscope.nn import _autotune, _numba

pytestmark = pytest.mark.numerical


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", ["huge", "tiny", "one", "1e30", "1e-30"])
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("groups", [1, 8, 16, 32])
def test_lng_numba_matches_the_oracle_at_every_scale_and_split(monkeypatch, dtype, scale, affine, groups):
    """Groups of 64, 8, 4 and 2; rows over- or underflowing mean(p²) fall back to the exact trace path."""
    x = _input(dtype, _magnitudes(dtype)[scale], rows=13)
    m = _lng(dtype, groups, affine)
    with torch.no_grad():
        paths = _every_split(monkeypatch, lambda: m(x))
    _same_bits(paths)  # each row's arithmetic is independent of the split
    ref = _group_oracle(x, groups, m.weight, m.bias, 1e-5)
    tol = _lng_tol(x, groups, ref, m.weight, m.bias, 1e-5)
    _all_within(paths, dtype, ref, tol)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.float64]),
    n=st.sampled_from([1, 2, 3, 4, 5, 16, 33, 64, 96]),
    groups=st.sampled_from([1, 2, 3, 4]),
    rows=st.integers(0, 9),
    exponent=st.integers(-60, 60),
    shift=st.sampled_from([0.0, 3.0, 100.0]),
    eps=st.sampled_from([0.0, 1e-5, 0.5]),
    seed=st.integers(0, 2**31 - 1),
)
def test_lng_numba_property(dtype, n, groups, rows, exponent, shift, eps, seed):
    """Any width, group count, row count (0 included), scale 2^±60, a mean shift up to 100σ and
    ε = 0: within the κ-aware bound of the oracle, or exactly the trace path where it falls back."""
    d = n * groups
    g = torch.Generator().manual_seed(seed)
    x = ((torch.randn(rows, d, generator=g, dtype=torch.float64) + shift) * 2.0**exponent).to(dtype)
    m = _lng(dtype, groups, "both", eps=eps, d=d)
    with torch.no_grad():
        out = m(x)
    assert out.shape == x.shape and out.dtype == dtype
    if rows == 0:
        return
    if n == 1 and eps == 0:  # one neuron per group and ε = 0: 0/0, NaN like torch
        assert torch.isnan(out).all()
        return
    ref = _group_oracle(x, groups, m.weight, m.bias, eps)
    tol = _lng_tol(x, groups, ref, m.weight, m.bias, eps)
    assert (out.double() - ref).abs().max().item() <= tol
    with torch.no_grad():  # the kernel itself: where it reports nothing bad, the module returned its bits
        z, bad = _numba.group_layer_norm(x, m.weight, m.bias, n, eps)
    if not bad:
        assert torch.equal(z, out)
    fi = torch.finfo(dtype)  # groups whose mean(p²) + ε is well inside the usable range, in float64
    xg = x.double().unflatten(-1, (groups, n))
    m64 = (xg - xg.mean(-1, keepdim=True)).square().mean(-1) + eps
    cols = ((m64 >= 4 * fi.tiny / fi.eps) & (m64 <= fi.max / 4)).repeat_interleave(n, dim=1)
    if cols.any():
        assert (z.double() - ref)[cols].abs().max().item() <= tol


@settings(max_examples=50, deadline=None)
@given(shift=st.integers(0, 2047), size=st.integers(0, 3000), dtype=st.sampled_from(["float32", "float64"]))
def test_parameters_are_placed_away_from_4k_aliasing(shift, size, dtype):
    """_placed returns p's values at an address at most half a span above out's modulo 4 KiB (p
    itself where it already is, a copy elsewhere): loads of p never alias the output's recent stores."""
    import numpy as np

    out = np.empty(4096, dtype=np.float32)
    pool = np.arange(size + 1024, dtype=dtype)
    k = shift // pool.itemsize
    p = pool[k:k + size]
    q = _numba._placed(p, out)
    assert np.array_equal(q, p) and q.dtype == p.dtype
    if size:
        assert (q.ctypes.data - out.ctypes.data) % _numba.ALIAS_SPAN < _numba.ALIAS_SPAN // 2
        assert (q is p) == ((p.ctypes.data - out.ctypes.data) % _numba.ALIAS_SPAN < _numba.ALIAS_SPAN // 2)


def test_the_bound_rejects_the_uncentred_variance():
    """Negative control: Σx²/n − μ² in float32 (one pass, cancelling) at a mean 300σ away misses
    the bound that the fused, centred kernel meets on the same input."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, N, generator=g, dtype=torch.float64) + 300.0).float()
    m = _lng(torch.float32, 8, "none")
    ref = _group_oracle(x, 8, None, None, 1e-5)
    tol = _lng_tol(x, 8, ref, None, None, 1e-5)
    xg = x.unflatten(-1, (8, N // 8))
    mu = xg.mean(-1, keepdim=True)
    uncentred = ((xg - mu) / torch.sqrt(xg.square().mean(-1, keepdim=True) - mu.square() + 1e-5)).flatten(-2)
    with torch.no_grad():
        assert (m(x).double() - ref).abs().max().item() <= tol
    assert (uncentred.double() - ref).abs().max().item() > 10 * tol


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_stay_in_their_group(bad):
    x = torch.randn(5, N)
    x[2, 9] = bad  # group 1 of row 2 (groups of 8)
    m = _lng(torch.float32, 8, "both")
    with torch.no_grad():
        out = m(x)
    mask = torch.zeros(5, N, dtype=torch.bool)
    mask[2, 8:16] = True
    assert torch.equal(torch.isnan(out), mask)
    clean = torch.where(mask, 0.0, x)
    ref = _group_oracle(clean, 8, m.weight, m.bias, 1e-5)
    assert (out[~mask].double() - ref[~mask]).abs().max().item() <= _lng_tol(clean, 8, ref, m.weight, m.bias, 1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_kernel_keeps_non_finite_values_in_their_group(bad):
    """The kernel's own output (the module above falls back on NaN statistics): a NaN or ±Inf
    makes its group's outputs NaN, is counted as one bad group, and leaves every other group's bits alone."""
    x = torch.randn(5, N)
    clean, none = _numba.group_layer_norm(x, None, None, 8, 1e-5)
    x[2, 9] = bad
    z, count = _numba.group_layer_norm(x, None, None, 8, 1e-5)
    mask = torch.zeros(5, N, dtype=torch.bool)
    mask[2, 8:16] = True
    assert torch.isnan(z[mask]).all() and torch.equal(z[~mask], clean[~mask])
    assert none == 0 and count == 1  # the one group, reported for the caller's exact path


def test_the_kernel_checks_its_arguments():
    x = torch.randn(4, N)
    for args, match in [((x.t(), None, None, 8), "contiguous"), ((x, None, None, 5), "n \\| C"),
                        ((x, torch.ones(N // 2), None, 8), "weight must be"),
                        ((x, None, torch.zeros(N, dtype=torch.float64), 8), "bias must be")]:
        with pytest.raises(ValueError, match=match):
            _numba.group_layer_norm(*args, 1e-5)


def test_leading_dims_and_strided_input(monkeypatch):
    base = torch.randn(3, N, 7)
    x = base.transpose(1, 2)  # (3, 7, N), not contiguous
    m = _lng(torch.float32, 8, "both")
    with torch.no_grad():
        paths = _every_split(monkeypatch, lambda: m(x))
        flat = m(x.contiguous().reshape(21, N)).reshape(3, 7, N)
    _same_bits(paths)
    assert torch.equal(paths.get("one", paths["njit_one"]), flat) and flat.shape == (3, 7, N)


def test_tracing_records_torch_operations():
    """Under torch.jit.trace the fused kernel is invisible to the tracer, so it is not used: the
    traced graph recomputes a new input correctly."""
    m = _lng(torch.float32, 8, "both", backend="numba")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the eager path's Python control flow
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace itself
        traced = torch.jit.trace(m, torch.randn(4, N), check_trace=False)
        x = torch.randn(4, N)
        assert (traced(x) - m(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("n", [2, 8])
def test_a_read_only_cache_folder_compiles_without_caching(monkeypatch, n):
    import numba
    import numpy as np

    real = numba.njit

    def njit(*a, **k):
        if k.get("cache"):
            raise RuntimeError("cannot cache function 'lng_rows': no locator available")
        return real(*a, **k)

    monkeypatch.setattr(numba, "njit", njit)
    kernel = _numba._kernel.__wrapped__(np.dtype(np.float32), "lng", n).jitted
    x = torch.randn(3, N).numpy()
    z = x.copy()
    assert kernel(x, z, torch.ones(N).numpy(), torch.zeros(N).numpy(), n, 1e-5, 2.0**-103, 0, 3) == 0
    want, _ = _numba.group_layer_norm(torch.from_numpy(x), None, None, n, 1e-5)
    assert torch.equal(torch.from_numpy(z), want)


def test_small_groups_have_their_own_kernel(monkeypatch):
    """Group sizes 2 and 4 run the kernel with n a constant (vectorised over groups); others share
    the general one. Both are checked against the oracle above (groups of 2 and 4 there and in the
    property test)."""
    used, real = [], _numba._kernel
    monkeypatch.setattr(_numba, "_kernel", lambda *a: used.append(real(*a).source.__qualname__) or real(*a))
    for n in (2, 3, 4, 8, 16):
        _numba.group_layer_norm(torch.randn(3, 48), None, None, n, 1e-5)
    assert [q.split(".")[0] for q in used] == ["_lng_rows_n", "_lng_rows", "_lng_rows_n", "_lng_rows", "_lng_rows"]
    assert real.cache_info().currsize <= 2 * 4  # (float32, float64) x (LN-G n=2, n=4, general; rms): not one per n


def test_numba_applies_only_where_it_may():
    """Autograd, half precision and mixed-dtype parameters take the eager path (same result as
    backend="eager"), with no error."""
    x = torch.randn(4, N)
    m, e = _lng(torch.float32, 8, "both"), _lng(torch.float32, 8, "both", backend="eager")
    out = m(x)  # grad enabled, parameters require grad: autograd path
    assert out.requires_grad and torch.equal(out, e(x))
    with torch.no_grad():
        h = x.to(torch.bfloat16)
        assert torch.equal(m.to(torch.bfloat16)(h), e.to(torch.bfloat16)(h))
    assert not _numba.applies(x, torch.ones(N, dtype=torch.float64))


def test_auto_measures_numba_and_never_compiles_unasked(monkeypatch):
    monkeypatch.delenv("NORMSCOPE_COMPILE", raising=False)
    monkeypatch.setattr(_autotune, "_CHOICES", {})
    x = torch.randn(300, N)
    m = _lng(torch.float32, 8, "both", backend="auto")
    assert m._candidates(x) == ["eager"]  # parameters requiring grad, grad enabled: autograd path only
    with torch.no_grad():
        assert m._candidates(x) == ["eager", "numba"]
        m(x)
    assert set(_autotune.choices(nsn.GroupLayerNorm).values()) <= {"eager", "numba"}


@pytest.mark.parametrize("make", [lambda: _rms(torch.float32, "weight", backend="auto"),
                                  lambda: _lng(torch.float32, 8, "both", backend="auto")])
def test_auto_measuring_is_invisible_to_hooks(monkeypatch, make):
    """The first call of a bucket times every candidate; forward hooks (a probe's, a user's) still
    see one call with one output, the returned one."""
    monkeypatch.setattr(_autotune, "_CHOICES", {})
    m = make()
    seen = []
    m.register_forward_pre_hook(lambda mod, args: seen.append("pre"))
    m.register_forward_hook(lambda mod, args, out: seen.append(out))
    measured = []
    real = _autotune.measure
    monkeypatch.setattr(_autotune, "measure", lambda *a: measured.append(1) or real(*a))
    with torch.no_grad():
        out = m(torch.randn(300, N))
    assert measured == [1] and len(seen) == 2 and seen[0] == "pre" and seen[1] is out


def test_without_numba_a_warning_and_the_torch_kernels(monkeypatch):
    """numba missing (or built for another numpy): one warning naming the fix; backend="numba"
    then runs the eager kernel (same bits), and "auto" does not offer numba."""
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    with pytest.warns(UserWarning, match=r"numba is unavailable here \((ModuleNotFound|Import)Error.*the norm modules use their torch kernels \(pip install numba"):
        assert _numba._import_numba.__wrapped__() is None
    monkeypatch.setattr(_numba, "_import_numba", lambda: None)
    x = torch.randn(6, N)
    m, e = _lng(torch.float32, 8, "both"), _lng(torch.float32, 8, "both", backend="eager")
    with torch.no_grad():
        assert torch.equal(m(x), e(x))
        assert m._candidates(x) == ["eager"]
        r, re = _rms(torch.float32, "weight"), _rms(torch.float32, "weight", backend="eager")
        assert torch.equal(r(x), re(x))
