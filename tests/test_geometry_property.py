"""Property-based: the secular solver against dense ``eigh`` of M = GΠG on any finite nonzero gains.

Widths 2…2048 (mostly ≤ 256, eigenvectors up to 512), gain laws (all > 1, all < 1, mixed signs,
zeros, exact ties, near-ties, heavy tails) and scales 1e−150…1e150. Every tolerance comes from
``tests/_geometry_bounds.py`` (derived from the solvers' backward error; see its docstring).
"""

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from _geometry_bounds import clusters, dense_reference, eig_tol, orth_tol, projector_tol, scaled_zeta
from normscope.geometry import _secular, principal_axes

LAWS = ("above_one", "below_one", "mixed_signs", "zeros", "ties", "near_ties", "heavy_tails")
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def make_gain(law: str, n: int, seed: int, log10_scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if law == "above_one":
        g = 1.0 + rng.uniform(0.0, 1.0, n)
    elif law == "below_one":
        g = rng.uniform(0.01, 1.0, n)
    elif law == "mixed_signs":
        g = rng.standard_normal(n)
    elif law == "zeros":
        g = rng.standard_normal(n) * (rng.uniform(size=n) > rng.uniform(0.05, 0.9))
    elif law == "ties":
        g = rng.choice(rng.standard_normal(rng.integers(1, 6)), n)
    elif law == "near_ties":
        base = rng.choice(rng.standard_normal(rng.integers(1, 6)), n)
        g = base * (1.0 + rng.choice([1e-16, 1e-14, 1e-12, 1e-9], n) * rng.standard_normal(n))
    else:  # heavy tails: Cauchy magnitudes spanning many decades
        g = rng.standard_cauchy(n)
    if not np.any(g):
        g[rng.integers(n)] = 1.0
    return g * 10.0**log10_scale


# mostly ≤ 256 (cheap dense references), one branch in seven up to 1024, and N = 2048 as an explicit example
widths = st.one_of(st.integers(2, 32), *[st.integers(2, 256)] * 5, st.integers(257, 1024))


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Dense references on one BLAS thread: multi-threaded OpenBLAS collapses on a loaded machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
cases = st.tuples(st.sampled_from(LAWS), st.integers(0, 2**32 - 1), st.floats(-150.0, 150.0))

# the root engine: dlaed4 root by root below 1536 poles (the default dispatch), or the vectorised
# iteration of geometry/_roots.py forced from 3 poles on
ENGINES = pytest.mark.parametrize("vector_min", [_secular._VECTOR_MIN, 3], ids=["dispatch", "vectorised"])


@contextlib.contextmanager
def engine(vector_min: int):
    old, _secular._VECTOR_MIN = _secular._VECTOR_MIN, vector_min
    try:
        yield
    finally:
        _secular._VECTOR_MIN = old


def _check_lengths(g, lengths, zeta_ref, e):
    n = g.size
    norm_m = float(np.max(np.ldexp(g, -e) ** 2))
    ours = np.zeros(n)
    ours[: lengths.size] = scaled_zeta(lengths, n, e)
    assert np.all(np.isfinite(lengths)) and np.all(lengths >= 0)
    assert np.all(np.diff(lengths) <= 0), "lengths must be sorted longest first"
    err = np.abs(ours - zeta_ref).max()
    assert err <= eig_tol(n, norm_m), f"max |Δζ| {err:.3e} > {eig_tol(n, norm_m):.3e}"


@ENGINES
@settings(max_examples=40, **SETTINGS)
@given(n=widths, case=cases)
@example(n=64, case=("above_one", 0, 0.0))
@example(n=2048, case=("above_one", 1, 10.0))
@example(n=300, case=("mixed_signs", 2, -150.0))
@example(n=300, case=("mixed_signs", 3, 150.0))
def test_lengths_match_dense(vector_min, n, case):
    law, seed, log10_scale = case
    g = make_gain(law, n, seed, log10_scale)
    zeta_ref, _, e = dense_reference(g, vectors=False)
    for method in ("secular", "dense"):
        with engine(vector_min):
            lengths, V = principal_axes(g, method=method)
        assert V is None
        _check_lengths(g, lengths, zeta_ref, e)


@ENGINES
@settings(max_examples=40, **SETTINGS)
@given(n=st.one_of(st.integers(2, 64), st.integers(2, 512)), case=cases)
@example(n=64, case=("above_one", 0, 0.0))
@example(n=200, case=("near_ties", 5, -120.0))
@example(n=2, case=("near_ties", 65, 0.0))  # 2x2 with poles 1e-9 apart: vectors must come from dlaed5
@example(n=200, case=("zeros", 6, 140.0))
def test_directions_match_dense(vector_min, n, case):
    law, seed, log10_scale = case
    g = make_gain(law, n, seed, log10_scale)
    zeta_ref, V_ref, e = dense_reference(g)
    norm_m = float(np.max(np.ldexp(g, -e) ** 2))
    with engine(vector_min):
        lengths, V = principal_axes(g, directions=True)
    _check_lengths(g, lengths, zeta_ref, e)
    m = lengths.size
    assert V.shape == (n, m)
    assert np.abs(V.T @ V - np.eye(m)).max() <= orth_tol(n)
    gt = np.ldexp(g, -e)
    M = np.diag(gt * gt) - np.outer(gt, gt) / n
    zeta = scaled_zeta(lengths, n, e)
    assert np.abs(M @ V - V * zeta).max() <= eig_tol(n, norm_m)
    # eigenspaces by projectors, clusters of (near-)tied ζ compared as a whole; the ζ ≈ 0 cluster
    # (null directions and the normal α) is left out: which of its vectors count as axes is a
    # deflation decision at rounding level, not a property of the geometry.
    ours = np.zeros(n)
    ours[:m] = zeta
    for a, b, gap in clusters(zeta_ref, n, norm_m):
        if b > m or zeta_ref[a] <= 64 * eig_tol(n, norm_m):
            continue
        P = V[:, a:b] @ V[:, a:b].T
        P_ref = V_ref[:, a:b] @ V_ref[:, a:b].T
        assert np.abs(P - P_ref).max() <= projector_tol(n, norm_m, gap), (a, b, gap)


@ENGINES
@settings(max_examples=30, **SETTINGS)
@given(n=st.integers(2, 400), case=cases, k=st.integers(1, 40), which=st.sampled_from(["longest", "shortest"]))
def test_top_k_matches_all_axes(vector_min, n, case, k, which):
    law, seed, log10_scale = case
    g = make_gain(law, n, seed, log10_scale)
    with engine(vector_min):
        full, V_full = principal_axes(g, directions=True)
        lengths, V = principal_axes(g, directions=True, k=k, which=which)
        lengths_only = principal_axes(g, k=k, which=which).lengths
    m = min(k, full.size)
    sl = slice(0, m) if which == "longest" else slice(full.size - m, full.size)
    e = int(np.frexp(np.max(np.abs(g)))[1])
    norm_m = float(np.max(np.ldexp(g, -e) ** 2))
    np.testing.assert_allclose(scaled_zeta(lengths, n, e), scaled_zeta(full[sl], n, e), rtol=0,
                               atol=eig_tol(n, norm_m))
    np.testing.assert_array_equal(lengths_only, lengths)
    assert V.shape == (n, m)
    assert np.abs(V.T @ V - np.eye(m)).max() <= orth_tol(n)
    gt = np.ldexp(g, -e)
    M = np.diag(gt * gt) - np.outer(gt, gt) / n
    assert np.abs(M @ V - V * scaled_zeta(lengths, n, e)).max() <= eig_tol(n, norm_m)


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-100, 1.0, 1e100, 1e160, 1e300])
@pytest.mark.parametrize("method", ["secular", "dense"])
def test_scale_covariance(scale, method):
    """ℓ(cg) = |c|ℓ(g) at every scale; the engine scales by a power of two exactly, so powers are exact."""
    g = np.linspace(1.01, 2.0, 300)
    n = g.size
    base = principal_axes(g, method=method).lengths
    got = principal_axes(g * scale, method=method).lengths
    e = int(np.frexp(np.max(np.abs(g * scale)))[1])
    # g·c rounds each gain by ≤ u = ε/2: M' = (I+Δ)M(I+Δ), |Δ| ≤ u, so ‖M' − M‖ ≤ (2u + u²)‖M‖;
    # ℓ·c rounds ℓ by ≤ u, i.e. ζ by ≤ (2u + u²)ζ ≤ (2u + u²)‖M‖; plus the two solves (eig_tol).
    # ‖M‖ ≤ max g̃² in the scaled units of scaled_zeta.
    u = np.finfo(float).eps / 2
    norm_m = float(np.max(np.ldexp(g * scale, -e) ** 2))
    zeta_base = scaled_zeta(base * scale, n, e) if np.isfinite(base * scale).all() else None
    if zeta_base is not None:
        np.testing.assert_allclose(scaled_zeta(got, n, e), zeta_base, rtol=0,
                                   atol=2 * (2 * u + u * u) * norm_m + eig_tol(n, norm_m))
    two = principal_axes(g * 2.0**-700, method=method).lengths
    np.testing.assert_array_equal(two, np.ldexp(base, -700))
