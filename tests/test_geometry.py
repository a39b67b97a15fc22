"""normscope.geometry against dense eigh, brute force and the reference's asserted values (maps: test_geometry_maps.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normscope.nn as nsn
from _geometry_bounds import (
    EPS, backward_error, clusters, dense_reference, eig_tol, ln_condition, orth_tol, projector_tol,
    rounded_evaluation_tol, scaled_zeta,
)
from normscope.geometry import LayerNormGeometry, principal_axes, rho_cdf

# Every tolerance below is derived (tests/_geometry_bounds.py states the bounds and constants):
# eigenvalues ± eig_tol = 2·8·N·ε·‖M‖, orthogonality 8·N·ε, eigenspaces by Davis–Kahan.
# Values quoted from the reference tables (6–8 printed digits) are compared to half a unit in
# their last printed digit.


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Dense references on one BLAS thread: multi-threaded OpenBLAS collapses on a loaded machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _check_against_dense(g, lengths, V):
    """Lengths, orthogonality, residual and eigenspaces of ``principal_axes`` vs dense eigh."""
    n = g.size
    zeta_ref, V_ref, e = dense_reference(g)
    norm_m = float(np.max(np.ldexp(g, -e) ** 2))
    m = lengths.size
    zeta = scaled_zeta(lengths, n, e)
    padded = np.zeros(n)
    padded[:m] = zeta
    assert np.abs(padded - zeta_ref).max() <= eig_tol(n, norm_m)
    assert np.all(np.diff(lengths) <= 0)
    assert np.abs(V.T @ V - np.eye(m)).max() <= orth_tol(n)
    gt = np.ldexp(g, -e)
    M = np.diag(gt * gt) - np.outer(gt, gt) / n
    assert np.abs(M @ V - V * zeta).max() <= eig_tol(n, norm_m)
    for a, b, gap in clusters(zeta_ref, n, norm_m):
        if b > m or zeta_ref[a] <= 64 * eig_tol(n, norm_m):
            continue
        P, P_ref = V[:, a:b] @ V[:, a:b].T, V_ref[:, a:b] @ V_ref[:, a:b].T
        assert np.abs(P - P_ref).max() <= projector_tol(n, norm_m, gap)
    return zeta_ref, norm_m


def _gain_cases():
    rng = np.random.default_rng(7)
    cases = {
        "generic": 1 + 0.3 * rng.standard_normal(200),
        "signed_loguniform": np.exp(rng.uniform(-2, 2, 150)) * rng.choice([-1.0, 1.0], 150),
        "repeated_signed": rng.choice([-2.0, -1.0, 0.5, 1.0, 2.0], 120),
        "ones": np.ones(50),
    }
    g = 1 + 0.3 * rng.standard_normal(90)
    g[[4]] = 0.0
    cases["one_zero"] = g
    g = 1 + 0.3 * rng.standard_normal(90)
    g[[0, 13, 77]] = 0.0
    cases["three_zeros"] = g
    g = rng.choice([-1.5, 0.0, 0.7, 1.0], 100)
    g[:2] = [0.3, 2.2]
    cases["ties_and_zeros"] = g
    cases["small_three"] = np.array([0.6, 1.0, 1.5])
    cases["two"] = np.array([-0.5, 2.0])
    return cases


@pytest.mark.parametrize("name", list(_gain_cases()))
@pytest.mark.parametrize("method", ["secular", "dense"])
def test_axes_match_dense_eigh(name, method):
    g = _gain_cases()[name]
    n, k = g.size, int(np.sum(g == 0))
    lengths, V = principal_axes(g, directions=True, method=method)
    assert lengths.size == (n - 1 if k == 0 else n - k)
    _zeta_ref, norm_m = _check_against_dense(g, lengths, V)
    lengths_only = principal_axes(g, directions=False, method=method)[0]
    np.testing.assert_allclose(lengths_only**2 / n, lengths**2 / n, rtol=0, atol=eig_tol(n, norm_m))


def test_secular_larger_n_vs_dense():
    rng = np.random.default_rng(3)
    g = 1 + 0.3 * rng.standard_normal(700)
    g[[10, 11]] = g[12]  # a tie
    g[50] = -g[51]  # a tie across signs
    lengths, V = principal_axes(g, directions=True)
    assert lengths.size == 699
    _check_against_dense(g, lengths, V)


def test_engine_regressions_issue_9():
    """Gains all above 1 (dlaed4 needs ‖z‖ = 1) and extreme scales: must solve, not raise."""
    for g, scales in ((np.linspace(1.01, 2, 64), (1.0, 1e-100, 1e-200, 1e160)),
                      (1 + np.random.default_rng(0).uniform(0, 1, 768), (1.0,))):
        for scale in scales:
            lengths, V = principal_axes(g * scale, directions=True)
            assert lengths.size == g.size - 1 and np.all(lengths > 0)
            _check_against_dense(g * scale, lengths, V)
    dense = principal_axes(np.linspace(1.01, 2, 64) * 1e-200, method="dense").lengths
    assert np.all(dense > 0)  # used to underflow to zero axes


@pytest.mark.parametrize("gain", [np.zeros(4), np.zeros(300), -0.0 * np.ones(5)])
def test_all_zero_gain_is_refused(gain):
    with pytest.raises(ValueError, match=r"^gain is all zero: .*check that the layer's weights were loaded$"):
        principal_axes(gain)
    with pytest.raises(ValueError, match="all zero"):
        LayerNormGeometry(gain).axes()


@pytest.mark.parametrize(
    "g, expected",
    [
        ((0.0, 1.0, 1.0), (math.sqrt(3), 1.0)),
        ((0.0, 1.0, 2.0), (2.93352199, 1.18086778)),
        ((0.6, 1.0, 1.5), (2.29672864, 1.39464603)),
        ((0.9, -0.6, 0.8), (1.484444, 1.190137)),
    ],
)
@pytest.mark.parametrize("method", ["secular", "dense"])
def test_reference_asserted_axes(g, expected, method):
    lengths = LayerNormGeometry(g).axes(method=method)
    np.testing.assert_allclose(lengths, expected, atol=5e-7)  # printed to 6 decimals: half a unit


@pytest.mark.parametrize("n", [2, 3, 17, 300])
def test_unit_gain_is_sphere(n):
    lengths = LayerNormGeometry(np.ones(n)).axes(method="secular")
    assert lengths.size == n - 1
    # one tie group: ζ = g̃² exactly, ℓ = 2ᵉ√(Nζ) with one rounding (in √), as is math.sqrt(n)
    np.testing.assert_array_equal(lengths, math.sqrt(n))


def test_zero_gain_brute_force_and_paper_recipe_differs():
    # g = (0, 1, 1): the image is y = b + G u, u ⟂ 1, |u| = √3; sweep the circle of u.
    g = np.array([0.0, 1.0, 1.0])
    t = np.linspace(0, 2 * np.pi, 20001)
    e1 = np.array([1.0, -1.0, 0.0]) / math.sqrt(2)
    e2 = np.array([1.0, 1.0, -2.0]) / math.sqrt(6)
    u = math.sqrt(3) * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2)
    r = np.linalg.norm(u * g, axis=1)
    # grid maximum/minimum of a smooth r(t) with |r''| ≤ 2·max|g|·√3·2 is off by ≤ |r''|·Δt²/8 < 1e-7
    np.testing.assert_allclose([r.max(), r.min()], LayerNormGeometry(g).axes(), atol=1e-7)
    # the paper's Drazin recipe: Π₂ = I, G⁻² -> pseudo-inverse: eigenvalues 1, 1 -> √3, √3
    ginv2 = np.diag([0.0, 1.0, 1.0])
    lam = np.linalg.eigvalsh(ginv2)
    recipe = np.sqrt(3 / lam[lam > 0.5])  # exact eigenvalues 0, 1, 1
    assert np.allclose(recipe, math.sqrt(3)) and not np.allclose(sorted(recipe), sorted(LayerNormGeometry(g).axes()))


def test_paper_matrix_when_gains_nonzero():
    rng = np.random.default_rng(1)
    g = np.exp(rng.uniform(-1, 1, 40)) * rng.choice([-1.0, 1.0], 40)
    n = g.size
    alpha = 1 / g
    P2 = np.eye(n) - np.outer(alpha, alpha) / (alpha @ alpha)
    lam, W = np.linalg.eigh(P2 @ np.diag(1 / g**2) @ P2)
    norm_mp, norm_m = float(np.max(1 / g**2)), float(np.max(g**2))  # ‖M⁺‖ ≤ max 1/g², ‖M‖ ≤ max g²
    # one backward-stable eigh of M⁺ (built with O(N) roundings per entry, inside the same bound)
    assert abs(lam[0]) <= backward_error(n, norm_mp)  # one zero eigenvalue, eigenvector α
    lam, W = lam[1:], W[:, 1:]
    lengths, V = LayerNormGeometry(g).axes(directions=True, method="secular")
    # λ = N/ℓ² = 1/ζ: ours |Δζ| ≤ E_M, so |Δλ| ≤ λ²E_M/(1 − λE_M); the reference |Δλ| ≤ E_M⁺
    e_m, e_mp = backward_error(n, norm_m), backward_error(n, norm_mp)
    lam_ours = np.sort(n / lengths**2)
    assert np.all(np.abs(lam_ours - lam) <= lam**2 * e_m / (1 - lam * e_m) + e_mp)
    # directions: sin θ ≤ E/gap on each side (Davis–Kahan); the λ are distinct here
    gaps_lam = np.minimum(np.diff(lam, prepend=-np.inf), np.diff(lam, append=np.inf))
    zeta = lengths**2 / n
    gaps_zeta = np.minimum(-np.diff(zeta, prepend=np.inf), -np.diff(zeta, append=-np.inf))
    cos = np.sum(V * W, axis=0)  # λ ascending ↔ ζ descending: same column order
    sin = np.linalg.norm(V - W * cos, axis=0)  # sin θ without the cancellation of √(1 − cos²)
    bound = e_mp / (gaps_lam - 2 * e_mp) + e_m / (gaps_zeta - 2 * e_m)
    assert np.all(sin <= bound)


def test_interlacing_and_outer_axes():
    rng = np.random.default_rng(2)
    g = rng.standard_normal(60)
    geo = LayerNormGeometry(g)
    inner = np.sort(geo.axes()) ** 2 / 60  # ζ ascending
    outer = np.sort(geo.outer_axes) ** 2 / 60  # d = g² ascending
    np.testing.assert_array_equal(geo.outer_axes, math.sqrt(60) * np.abs(g))
    # Cauchy interlacing d₍ᵢ₎ ≤ ζ₍ᵢ₎ ≤ d₍ᵢ₊₁₎, up to one solver's backward error (plus ℓ²/N's roundings)
    tol = backward_error(60, float(np.max(g * g))) + 4 * EPS * outer[-1]
    assert np.all(outer[:-1] - tol <= inner) and np.all(inner <= outer[1:] + tol)


def test_normal_offset_and_reference_values():
    geo = LayerNormGeometry([0.9, -0.6, 0.8], [0.15, -0.10, 0.20], eps=0.1)
    np.testing.assert_allclose(geo.normal, [0.470588, -0.705882, 0.529412], atol=5e-7)
    assert geo.offset == pytest.approx(0.583333, abs=5e-7)
    assert geo.plane_distance == pytest.approx(geo.normal @ geo.bias)


@pytest.mark.parametrize(
    "eps, median, p05, lo, frac",
    [
        (1e-1, 0.903199, 0.575343, 0.120430, 0.000),
        (1e-3, 0.998873, 0.990046, 0.771633, 0.950),
        (1e-5, 0.999989, 0.999899, 0.996620, 1.000),
    ],
)
def test_reference_rho_table(eps, median, p05, lo, frac):
    a = np.random.default_rng(0).uniform(-1.5, 1.5, size=(500, 3))
    geo = LayerNormGeometry([0.9, -0.6, 0.8], [0.15, -0.10, 0.20], eps=eps)
    y = F.layer_norm(torch.from_numpy(a), (3,), torch.from_numpy(geo.gain.copy()), torch.from_numpy(geo.bias.copy()), eps)
    rho = geo.radial_fraction(y).numpy()
    kappa = ln_condition(a, geo.gain, geo.bias, eps)
    np.testing.assert_allclose(rho, geo.input_radial_fraction(a), rtol=0, atol=rounded_evaluation_tol(3, kappa))
    assert np.median(rho) == pytest.approx(median, abs=5e-7)
    assert np.percentile(rho, 5) == pytest.approx(p05, abs=5e-7)
    assert rho.min() == pytest.approx(lo, abs=5e-7)
    assert np.mean(rho > 0.99) == pytest.approx(frac, abs=5e-4)  # printed to 3 decimals (500 samples)


GAINS_FOR_SAMPLES = {
    "signed": lambda rng, n: rng.standard_normal(n),
    "one_zero": lambda rng, n: np.where(np.arange(n) == 3, 0.0, 1 + 0.3 * rng.standard_normal(n)),
    "two_zeros": lambda rng, n: np.where(np.isin(np.arange(n), [1, 5]), 0.0, rng.standard_normal(n)),
    "ties": lambda rng, n: rng.choice([-1.0, 0.5, 2.0], n),
}


@pytest.mark.parametrize("name", list(GAINS_FOR_SAMPLES))
@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.3])
def test_sampled_outputs_on_plane_inside_ellipsoid(name, eps):
    rng = np.random.default_rng(11)
    n = 16
    g = GAINS_FOR_SAMPLES[name](rng, n)
    b = rng.standard_normal(n)
    geo = LayerNormGeometry(g, b, eps)
    x = torch.from_numpy(rng.standard_normal((400, n)) * rng.uniform(0.05, 3, (400, 1)) + 0.5)
    y = F.layer_norm(x, (n,), torch.from_numpy(g), torch.from_numpy(b), eps)
    tol = rounded_evaluation_tol(n, ln_condition(x.numpy(), g, b, eps))  # relative to max(|g|, |b|)
    scale = max(np.abs(g).max(), np.abs(b).max())
    np.testing.assert_allclose(geo.forward(x).numpy(), y.numpy(), rtol=0, atol=tol * scale)
    assert torch.as_tensor(geo.plane_residual(y)).abs().max() <= tol * scale * math.sqrt(n)
    assert bool(geo.contains(y).all())
    rho = geo.radial_fraction(y)
    ellipsoid = ((y - torch.from_numpy(b)) ** 2 / torch.from_numpy(np.where(g == 0, 1.0, g)) ** 2).sum(-1) / n
    rtol = tol * (1 + np.abs(b).max() / np.abs(g[g != 0]).min())  # y − b relative to g: bias cancels
    assert torch.all(ellipsoid <= 1 + rtol)  # inside the N-ellipsoid (zero-gain coordinates sit at b)
    if geo.solid_image:
        assert float(rho.max()) <= 1 + rtol and float(rho.min()) < 0.9  # filled even at eps = 0
    else:
        torch.testing.assert_close(rho, torch.as_tensor(geo.input_radial_fraction(x)), rtol=0, atol=rtol)
        if eps == 0.0:
            torch.testing.assert_close(rho, torch.ones_like(rho), rtol=0, atol=rtol)
        else:
            assert float(rho.max()) < 1.0
    # points off the image are rejected
    assert not bool(geo.contains(y + 0.1 * torch.from_numpy(geo.orthogonal_subspace[:, 0])).any())
    scaled = geo.contains(torch.from_numpy(b) + 1.5 * (y - torch.from_numpy(b)))
    clear = (1.5 * rho - 1).abs() > 1e-6  # away from the boundary by far more than float64 rounding
    assert torch.equal(scaled[clear], (1.5 * rho <= 1.0)[clear])


def test_axis_endpoints_are_on_the_surface():
    rng = np.random.default_rng(5)
    for g in (rng.standard_normal(7), np.array([0.0, 1.0, 2.0, 2.0, -1.0]), np.array([0.0, 0.0, 1.0, 3.0])):
        geo = LayerNormGeometry(g, rng.standard_normal(g.size))
        lengths, V = geo.axes(directions=True)
        ends = geo.bias + (lengths * V).T
        assert bool(geo.contains(ends).all())
        kappa = 1 + np.abs(geo.bias).max() / np.abs(g[g != 0]).min()  # bias added then subtracted
        np.testing.assert_allclose(geo.radial_fraction(ends), 1.0, rtol=0, atol=rounded_evaluation_tol(g.size, kappa))


def test_zero_gain_subspace_normal_and_flags():
    geo = LayerNormGeometry([0.0, 1.0, 0.0, 2.0], [1.0, 2.0, 3.0, 4.0])
    assert geo.solid_image and list(geo.zero_gains) == [0, 2]
    np.testing.assert_array_equal(geo.orthogonal_subspace, np.eye(4)[:, [0, 2]])
    with pytest.raises(ValueError, match="orthogonal_subspace"):
        geo.normal
    with pytest.raises(ValueError, match="orthogonal_subspace"):
        geo.offset
    assert geo.axes().size == 2
    one = LayerNormGeometry([1.0, 0.0, 2.0], [1.0, 2.0, 3.0])
    assert not one.solid_image
    np.testing.assert_array_equal(one.normal, [0.0, 1.0, 0.0])
    assert one.offset == 2.0
    ok = LayerNormGeometry([2.0, -4.0, 1.0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(ok.normal, np.array([0.5, -0.25, 1.0]) / np.linalg.norm([0.5, -0.25, 1.0]))
    assert ok.offset == pytest.approx(0.5 - 0.25 + 1.0)


def test_from_module():
    m = torch.nn.LayerNorm(6, eps=1e-3)
    with torch.no_grad():
        m.weight.copy_(torch.arange(1.0, 7.0))
        m.bias.fill_(0.5)
    geo = LayerNormGeometry.from_module(m)
    np.testing.assert_allclose(geo.gain, np.arange(1.0, 7.0))
    np.testing.assert_allclose(geo.bias, 0.5)
    assert geo.eps == 1e-3
    plain = LayerNormGeometry.from_module(torch.nn.LayerNorm(5, elementwise_affine=False))
    np.testing.assert_array_equal(plain.gain, np.ones(5))
    np.testing.assert_array_equal(plain.bias, np.zeros(5))
    ours = LayerNormGeometry.from_module(nsn.LayerNorm(4, eps=0.1, affine=False))
    assert ours.dim == 4 and ours.eps == 0.1
    assert LayerNormGeometry.from_module(nsn.LayerNorm((2, 3))).dim == 6
    with pytest.raises(ValueError, match="RMSNorm"):
        LayerNormGeometry.from_module(torch.nn.RMSNorm(4))
    with pytest.raises(ValueError, match="RMSNorm"):
        LayerNormGeometry.from_module(nsn.LayerNorm(4, project=False))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gain": [1.0, float("nan"), 2.0]}, "gain contains 1 NaN/Inf"),
        ({"gain": [1.0, 2.0], "bias": [0.0, float("inf")]}, "bias contains 1 NaN/Inf"),
        ({"gain": [1.0, 2.0, 3.0], "bias": [0.0, 1.0]}, "bias has 2 entries but gain has 3"),
        ({"gain": [1.0]}, "N >= 2"),
        ({"gain": [1.0, 2.0], "eps": -1e-5}, "eps must be"),
        ({"gain": [1.0, 2.0], "eps": float("nan")}, "eps must be"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerNormGeometry(**kwargs)


def test_bad_inputs():
    geo = LayerNormGeometry([1.0, 2.0, 3.0])
    for f in (geo.radial_fraction, geo.input_radial_fraction, geo.contains, geo.jacobian, geo.forward):
        with pytest.raises(ValueError, match="last dimension N = 3"):
            f(np.zeros((4, 2)))
        with pytest.raises(ValueError, match="NaN/Inf"):
            f(np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="method"):
        geo.axes(method="qr")
    with pytest.raises(ValueError, match="r0"):
        rho_cdf(1.5, 3, 0.1)
    with pytest.raises(ValueError, match="N must be"):
        rho_cdf(0.5, 1, 0.1)
    with pytest.raises(ValueError, match="NaN/Inf"):
        principal_axes(np.array([1.0, np.inf, 2.0]))
    with pytest.raises(ValueError, match="N >= 2"):
        principal_axes(np.ones((2, 2)))


def test_tiny_gain():
    g = 1 + 0.3 * np.random.default_rng(0).standard_normal(80)
    g[7] = 1e-13  # deflated as negligible: still N - 1 axes, matching dense
    lengths, V = principal_axes(g, directions=True)
    assert lengths.size == 79
    _check_against_dense(g, lengths, V)


def test_threaded_root_finding_matches_single_thread():
    g = 1 + 0.3 * np.random.default_rng(9).standard_normal(900)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        l1, V1 = principal_axes(g, directions=True)
        torch.set_num_threads(2)
        l2, V2 = principal_axes(g, directions=True)
    finally:
        torch.set_num_threads(old)
    # torch may split a row's sums differently across threads: each root still passes dlaed4's
    # stopping test, so the two runs agree within the solvers' bound (tests/_geometry_bounds.py)
    norm_m = float(np.max(g * g))
    assert np.abs(l2**2 - l1**2).max() / g.size <= eig_tol(g.size, norm_m)
    # ŵ's product is accumulated in another order: ŵ, hence V, differ by O(N·ε) (orth_tol)
    np.testing.assert_allclose(np.abs(np.sum(V1 * V2, axis=0)), 1.0, rtol=0, atol=orth_tol(g.size))


def test_secular_falls_back_to_dense_without_lapack(monkeypatch):
    from normscope.geometry import _secular

    g = np.random.default_rng(5).normal(1.0, 0.3, 64)
    want, _ = _secular.principal_axes(g, method="dense")
    monkeypatch.setattr(_secular, "have_dlaed4", lambda: False)
    with pytest.warns(UserWarning, match="dlaed4"):
        got, _ = _secular.principal_axes(g, method="secular")
    np.testing.assert_array_equal(got, want)  # the same dense computation
