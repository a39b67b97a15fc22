"""normscope.geometry against dense eigh, brute force, autograd and the reference's asserted values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normscope.nn as nsn
from normscope.geometry import LayerNormGeometry, principal_axes, rho_cdf, rho_quantile


EPS64 = float(np.finfo(np.float64).eps)


def _dense(g):
    """Reference: eigenpairs of M = diag(g²) − ggᵀ/N with ζ above rounding level, descending."""
    n = g.size
    z, V = np.linalg.eigh(np.diag(g * g) - np.outer(g, g) / n)
    keep = z > 1e-9 * max(z.max(), 1e-300)
    return np.sqrt(n * z[keep])[::-1], V[:, keep][:, ::-1]


def _projectors_by_cluster(lengths, V, rtol=1e-9):
    """Spectral projectors, one per cluster of (numerically) equal lengths."""
    out, start = [], 0
    for i in range(1, lengths.size + 1):
        if i == lengths.size or abs(lengths[i] - lengths[start]) > rtol * lengths[0]:
            B = V[:, start:i]
            out.append((lengths[start], i - start, B @ B.T))
            start = i
    return out


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
    ref_len, ref_V = _dense(g)
    assert lengths.size == (n - 1 if k == 0 else n - k) == ref_len.size
    assert np.all(np.diff(lengths) <= 1e-12 * lengths[0])
    # compare ζ = ℓ²/N: eigh's error is absolute, ~ machine-ε·‖M‖
    np.testing.assert_allclose(lengths**2 / n, ref_len**2 / n, rtol=1e-12, atol=64 * EPS64 * (g * g).max())
    assert np.abs(V.T @ V - np.eye(V.shape[1])).max() < 1e-12
    M = np.diag(g * g) - np.outer(g, g) / n
    assert np.abs(M @ V - V * (lengths**2 / n)).max() < 1e-12 * (g * g).max()
    mine, ref = _projectors_by_cluster(lengths, V), _projectors_by_cluster(ref_len, ref_V)
    assert [(m[1]) for m in mine] == [r[1] for r in ref]
    for (_l, _m, P), (_lr, _mr, Pr) in zip(mine, ref):
        assert np.abs(P - Pr).max() < 1e-9
    lengths_only = principal_axes(g, directions=False, method=method)[0]
    np.testing.assert_allclose(lengths_only, lengths, rtol=1e-13)


def test_secular_larger_n_vs_dense():
    rng = np.random.default_rng(3)
    g = 1 + 0.3 * rng.standard_normal(700)
    g[[10, 11]] = g[12]  # a tie
    g[50] = -g[51]  # a tie across signs
    lengths, V = principal_axes(g, directions=True)
    ref_len, ref_V = _dense(g)
    n = g.size
    np.testing.assert_allclose(lengths**2 / n, ref_len**2 / n, rtol=1e-12, atol=64 * EPS64 * (g * g).max())
    cos = np.abs(np.sum(V * ref_V, axis=0))
    distinct = np.concatenate([[True], np.abs(np.diff(ref_len)) > 1e-9])
    distinct[:-1] &= np.abs(np.diff(ref_len)) > 1e-9
    assert np.max(1 - cos[distinct]) < 1e-10
    assert np.abs(V.T @ V - np.eye(V.shape[1])).max() < 1e-12


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
    np.testing.assert_allclose(lengths, expected, atol=5e-7)


@pytest.mark.parametrize("n", [2, 3, 17, 300])
def test_unit_gain_is_sphere(n):
    lengths = LayerNormGeometry(np.ones(n)).axes(method="secular")
    assert lengths.size == n - 1
    np.testing.assert_allclose(lengths, math.sqrt(n), rtol=1e-14)


def test_zero_gain_brute_force_and_paper_recipe_differs():
    # g = (0, 1, 1): the image is y = b + G u, u ⟂ 1, |u| = √3; sweep the circle of u.
    g = np.array([0.0, 1.0, 1.0])
    t = np.linspace(0, 2 * np.pi, 20001)
    e1 = np.array([1.0, -1.0, 0.0]) / math.sqrt(2)
    e2 = np.array([1.0, 1.0, -2.0]) / math.sqrt(6)
    u = math.sqrt(3) * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2)
    r = np.linalg.norm(u * g, axis=1)
    np.testing.assert_allclose([r.max(), r.min()], LayerNormGeometry(g).axes(), atol=1e-7)
    # the paper's Drazin recipe: Π₂ = I, G⁻² -> pseudo-inverse: eigenvalues 1, 1 -> √3, √3
    ginv2 = np.diag([0.0, 1.0, 1.0])
    lam = np.linalg.eigvalsh(ginv2)
    recipe = np.sqrt(3 / lam[lam > 1e-12])
    assert np.allclose(recipe, math.sqrt(3)) and not np.allclose(sorted(recipe), sorted(LayerNormGeometry(g).axes()))


def test_paper_matrix_when_gains_nonzero():
    rng = np.random.default_rng(1)
    g = np.exp(rng.uniform(-1, 1, 40)) * rng.choice([-1.0, 1.0], 40)
    n = g.size
    alpha = 1 / g
    P2 = np.eye(n) - np.outer(alpha, alpha) / (alpha @ alpha)
    lam, W = np.linalg.eigh(P2 @ np.diag(1 / g**2) @ P2)
    lam, W = lam[1:], W[:, 1:]  # one zero eigenvalue, eigenvector α
    assert abs(np.linalg.eigvalsh(P2 @ np.diag(1 / g**2) @ P2)[0]) < 1e-12
    lengths, V = LayerNormGeometry(g).axes(directions=True, method="secular")
    np.testing.assert_allclose(lengths, np.sqrt(n / lam), rtol=1e-11)
    np.testing.assert_allclose(np.abs(np.sum(V * W, axis=0)), 1.0, atol=1e-10)


def test_interlacing_and_outer_axes():
    rng = np.random.default_rng(2)
    g = rng.standard_normal(60)
    geo = LayerNormGeometry(g)
    inner = np.sort(geo.axes())
    outer = np.sort(geo.outer_axes)
    np.testing.assert_allclose(geo.outer_axes, math.sqrt(60) * np.abs(g))
    assert np.all(outer[:-1] <= inner * (1 + 1e-12)) and np.all(inner <= outer[1:] * (1 + 1e-12))


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
    np.testing.assert_allclose(rho, geo.input_radial_fraction(a), atol=1e-12)
    assert np.median(rho) == pytest.approx(median, abs=5e-7)
    assert np.percentile(rho, 5) == pytest.approx(p05, abs=5e-7)
    assert rho.min() == pytest.approx(lo, abs=5e-7)
    assert np.mean(rho > 0.99) == pytest.approx(frac, abs=1e-12)


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
    np.testing.assert_allclose(geo.forward(x).numpy(), y.numpy(), atol=1e-13)
    assert torch.as_tensor(geo.plane_residual(y)).abs().max() < 1e-12
    assert bool(geo.contains(y).all())
    rho = geo.radial_fraction(y)
    ellipsoid = ((y - torch.from_numpy(b)) ** 2 / torch.from_numpy(np.where(g == 0, 1.0, g)) ** 2).sum(-1) / n
    assert torch.all(ellipsoid <= 1 + 1e-12)  # inside the N-ellipsoid (zero-gain coordinates sit at b)
    if geo.solid_image:
        assert float(rho.max()) <= 1 + 1e-12 and float(rho.min()) < 0.9  # filled even at eps = 0
    else:
        torch.testing.assert_close(rho, torch.as_tensor(geo.input_radial_fraction(x)), rtol=0, atol=1e-12)
        if eps == 0.0:
            torch.testing.assert_close(rho, torch.ones_like(rho), rtol=0, atol=1e-12)
        else:
            assert float(rho.max()) < 1.0
    # points off the image are rejected
    assert not bool(geo.contains(y + 0.1 * torch.from_numpy(geo.orthogonal_subspace[:, 0])).any())
    scaled = geo.contains(torch.from_numpy(b) + 1.5 * (y - torch.from_numpy(b)))
    assert torch.equal(scaled, 1.5 * rho <= 1.0)


def test_axis_endpoints_are_on_the_surface():
    rng = np.random.default_rng(5)
    for g in (rng.standard_normal(7), np.array([0.0, 1.0, 2.0, 2.0, -1.0]), np.array([0.0, 0.0, 1.0, 3.0])):
        geo = LayerNormGeometry(g, rng.standard_normal(g.size))
        lengths, V = geo.axes(directions=True)
        ends = geo.bias + (lengths * V).T
        assert bool(geo.contains(ends).all())
        np.testing.assert_allclose(geo.radial_fraction(ends), 1.0, atol=1e-12)


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


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.3])
@pytest.mark.parametrize("n", [5, 40])
def test_jacobian_matches_autograd(eps, n):
    rng = np.random.default_rng(n)
    g = rng.standard_normal(n)
    b = rng.standard_normal(n)
    geo = LayerNormGeometry(g, b, eps)
    x = torch.from_numpy(rng.standard_normal((3, n)) * 1.7 + 0.4)
    gt, bt = torch.from_numpy(g), torch.from_numpy(b)
    J = geo.jacobian(x)
    assert J.shape == (3, n, n) and J.dtype == torch.float64
    for i in range(3):
        ref = torch.func.jacrev(lambda v: F.layer_norm(v, (n,), gt, bt, eps))(x[i])
        assert (J[i] - ref).abs().max() < 1e-10
        assert (J[i] @ torch.ones(n, dtype=torch.float64)).abs().max() < 1e-12
        assert (torch.from_numpy(geo.normal) @ J[i]).abs().max() < 1e-12
        assert int(torch.linalg.matrix_rank(J[i], rtol=1e-10)) == (n - 2 if eps == 0 else n - 1)
    # numpy in -> numpy out, single vector
    Jn = geo.jacobian(x[0].numpy())
    assert isinstance(Jn, np.ndarray) and Jn.shape == (n, n)


def test_jacobian_float32_and_degenerate_input():
    geo = LayerNormGeometry(np.ones(4), eps=0.0)
    J = geo.jacobian(torch.tensor([1.0, 2.0, 3.0, 5.0]))
    assert J.dtype == torch.float32
    with pytest.raises(ValueError, match="proportional"):
        geo.jacobian(torch.ones(4, dtype=torch.float64))
    assert torch.isnan(geo.input_radial_fraction(torch.ones(4, dtype=torch.float64)))
    assert float(LayerNormGeometry(np.ones(4), eps=1e-3).input_radial_fraction(torch.ones(4, dtype=torch.float64))) == 0


@pytest.mark.parametrize(
    "n, eps, r0, expected",
    [
        (3, 1e-1, 0.9, 4.7243e-1),
        (3, 1e-1, 0.99, 9.9938e-1),
        (3, 1e-3, 0.9, 6.3743e-3),
        (3, 1e-3, 0.99, 7.1214e-2),
        (3, 1e-3, 0.999, 5.2710e-1),
        (3, 1e-5, 0.9, 6.3945e-5),
        (3, 1e-5, 0.99, 7.3850e-4),
        (3, 1e-5, 0.999, 7.4608e-3),
        (768, 1e-1, 0.9, 1.67e-48),
    ],
)
def test_rho_cdf_reference_table(n, eps, r0, expected):
    assert rho_cdf(r0, n, eps) == pytest.approx(expected, rel=2e-4)


def test_rho_law_monte_carlo_and_quantile():
    n, eps, s = 3, 1e-3, 0.7
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200_000, n)) * s + 2.0
    geo = LayerNormGeometry(np.ones(n), eps=eps)
    rho = geo.input_radial_fraction(a)
    for r0 in (0.9, 0.99, 0.999):
        p = float(geo.rho_cdf(r0, scale=s))
        assert np.mean(rho < r0) == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / a.shape[0]) + 1e-4)
    p = np.array([0.01, 0.5, 0.99])
    np.testing.assert_allclose(rho_cdf(rho_quantile(p, n, eps, s), n, eps, s), p, rtol=1e-10)
    np.testing.assert_allclose(np.quantile(rho, p), geo.rho_quantile(p, scale=s), rtol=2e-3)
    assert rho_cdf(0.5, 10, 0.0) == 0.0 and rho_cdf(1.0, 10, 0.0) == 0.0 and rho_cdf(1.0, 10, 1e-3) == 1.0


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


def test_all_zero_gains_and_tiny_gain():
    geo = LayerNormGeometry(np.zeros(4))
    assert geo.axes().size == 0 and geo.axes(directions=True)[1].shape == (4, 0)
    g = 1 + 0.3 * np.random.default_rng(0).standard_normal(80)
    g[7] = 1e-13  # deflated as negligible: still N - 1 axes, matching dense
    lengths, V = principal_axes(g, directions=True)
    ref, _ = np.linalg.eigh(np.diag(g * g) - np.outer(g, g) / g.size)
    assert lengths.size == 79
    np.testing.assert_allclose(lengths, np.sqrt(g.size * ref[1:])[::-1], rtol=1e-12)
    assert np.abs(V.T @ V - np.eye(79)).max() < 1e-12


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
    np.testing.assert_allclose(l2, l1, rtol=1e-14)
    np.testing.assert_allclose(np.abs(np.sum(V1 * V2, axis=0)), 1.0, atol=1e-12)


def test_secular_falls_back_to_dense_without_lapack(monkeypatch):
    from normscope.geometry import _secular

    g = np.random.default_rng(5).normal(1.0, 0.3, 64)
    want, _ = _secular.principal_axes(g, method="dense")
    monkeypatch.setattr(_secular, "_have_dlaed4", lambda: False)
    with pytest.warns(UserWarning, match="dlaed4"):
        got, _ = _secular.principal_axes(g, method="secular")
    np.testing.assert_allclose(got, want, rtol=1e-12)
