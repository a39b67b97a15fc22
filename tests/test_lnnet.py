"""Tests for normscope.lnnet: width-3 construction, shattering, SSR/LSSR, LN-G nonlinearity measures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from normscope.lnnet import (
    ConstructionError,
    construct,
    hessian_energy,
    hessian_energy_autograd,
    linear_residual,
    lssr,
    shatter,
    ssr,
    xor_demo,
)
from normscope.nn import GroupLayerNorm, LayerNorm

pytestmark = pytest.mark.usefixtures("one_thread")  # restored after each test (conftest)


def _data(m, d, c, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, m)
    y[:c] = np.arange(c)  # every class present
    return rng.standard_normal((m, d)), rng.permutation(y)


def _check_structure(net, d):
    assert all(lin.out_features == 3 for lin in net.linears), "every hidden layer has width 3"
    assert net.linears[0].in_features == d
    assert all(isinstance(n, LayerNorm) and n.eps == 0.0 for n in net.norms)
    assert len(net.norms) == net.depth == net.info.depth
    assert all(p.dtype == torch.float64 for p in net.parameters())


# ---------------------------------------------------------------------------------------- construct


@pytest.mark.parametrize("m,seed", [(10, 0), (40, 1), (40, 2), (120, 3)])
def test_construct_binary_random_labels(m, seed):
    X, y = _data(m, 5, 2, seed)
    net = construct(X, y)
    _check_structure(net, 5)
    assert net.accuracy(X, y) == 1.0
    assert net.info.margin > 0
    assert net.depth <= m - 2 == net.info.bound
    # logits' argmax is the label itself for labels 0..c-1
    with torch.no_grad():
        assert np.array_equal(net(torch.from_numpy(X)).argmax(-1).numpy(), y)
    f32 = net.accuracy(X, y, torch.float32)
    assert 0.0 <= f32 <= 1.0


def test_construct_alternating_labels_is_the_worst_case_for_runs():
    # labels alternate along the line: m runs, the construction needs exactly m - 2 run folds + 1
    m = 12
    X = np.linspace(0, 1, m)[:, None]
    y = np.arange(m) % 2
    net = construct(X, y)
    assert net.accuracy(X, y) == 1.0
    assert net.depth == m - 2


@pytest.mark.parametrize("c,m,seed", [(3, 10, 0), (3, 20, 1), (5, 20, 2), (4, 16, 3)])
def test_construct_multiclass(c, m, seed):
    X, y = _data(m, 4, c, seed)
    net = construct(X, y)
    _check_structure(net, 4)
    assert net.info.n_classes == c
    assert net.accuracy(X, y) == 1.0
    assert net.depth <= m - c + 1 == net.info.bound


def test_construct_arbitrary_label_values():
    X, y01 = _data(30, 3, 2, 7)
    y = np.where(y01 == 1, "cat", "dog")
    net = construct(X, y)
    assert list(net.classes) == ["cat", "dog"]
    assert np.array_equal(net.predict(X), y)


def test_construct_linearly_separable_needs_no_ln_layer():
    X = np.array([[0.0], [1.0], [2.0], [5.0], [6.0]])
    y = np.array([0, 0, 0, 1, 1])
    net = construct(X, y)
    assert net.depth == 0 and net.accuracy(X, y) == 1.0


def test_construct_padding_to_requested_depth_keeps_labels():
    X, y = _data(14, 3, 2, 11)
    base = construct(X, y)
    net = construct(X, y, depth=base.depth + 7)
    assert net.depth == base.depth + 7 and net.info.min_depth == base.depth
    assert net.accuracy(X, y) == 1.0
    with pytest.raises(ValueError, match="too small"):
        construct(X, y, depth=max(base.depth - 1, 1)) if base.depth > 1 else construct(X, y, depth=-1)


def test_width3_layer_is_an_arc_embedding():
    # one construction layer maps s to angle arctan(k (s - s0)) on the sqrt(3)-circle in sum-zero plane
    X, y = _data(12, 2, 2, 5)
    net = construct(X, y, depth=3)
    with torch.no_grad():
        h = net.norms[0](net.linears[0](torch.from_numpy(X)))
    assert torch.allclose(h.sum(-1), torch.zeros(len(X), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(h.norm(dim=-1), torch.full((len(X),), math.sqrt(3), dtype=torch.float64), atol=1e-12)


def _bernoulli(m, seed):
    # the data of benchmarks/bench_lnnet.py --robust: X ~ N(0, I_5), Bernoulli(0.5) labels
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, 5)), rng.integers(0, 2, m)


@pytest.mark.parametrize("seed", [0, 2, 5])
def test_construct_m300_binary(seed):
    X, y = _bernoulli(300, seed)
    net = construct(X, y)
    assert net.accuracy(X, y) == 1.0 and net.info.margin > 0
    assert net.depth <= 298 and 1 <= net.info.attempts <= 32


def test_construct_tries_the_next_first_direction_when_one_runs_out_of_precision():
    X, y = _bernoulli(300, 1)  # its best-gap first direction dies within the first folds
    with pytest.raises(ConstructionError, match="ran out of precision"):
        construct(X, y, restarts=1)
    net = construct(X, y)
    assert net.info.attempts >= 2 and net.accuracy(X, y) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [7, 12, 14])  # the data sets the 4-direction, 4-wide look-ahead build lost
def test_construct_m1000_binary(seed):
    X, y = _bernoulli(1000, seed)
    net = construct(X, y)
    assert net.accuracy(X, y) == 1.0 and net.depth <= 998


# ---------------------------------------------------------------------------------------- bad input


def test_bad_inputs():
    X, y = _data(10, 3, 2, 0)
    Xd = X.copy()
    Xd[3] = Xd[5]
    yd = y.copy()
    yd[3], yd[5] = 0, 1
    with pytest.raises(ValueError, match="identical"):
        construct(Xd, yd)
    yd[3] = yd[5] = 1  # duplicates with equal labels are fine
    assert construct(Xd, yd).accuracy(Xd, yd) == 1.0
    with pytest.raises(ValueError, match="same label"):
        construct(X, np.zeros(10, int))
    with pytest.raises(ValueError, match="m >= 2"):
        construct(X[:1], y[:1])
    Xn = X.copy()
    Xn[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        construct(Xn, y)
    with pytest.raises(ValueError, match="labels"):
        construct(X, y[:-1])
    with pytest.raises(ValueError):
        shatter(2)


# ---------------------------------------------------------------------------------------- shattering


@pytest.mark.parametrize("m,d", [(4, 2), (6, 2), (6, 1)])
def test_shatter_all_labelings_at_depth_m_minus_2(m, d):
    res = shatter(m, d, seed=3)
    assert res.labelings == 2**m
    assert res.realised == 2**m
    assert res.depth == m - 2 and res.vc_lower_bound == m
    assert 1 <= res.max_needed_depth <= m - 2


def test_shatter_cli(capsys):
    from normscope.cli import shatter as cli

    import argparse

    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers())
    args = p.parse_args(["shatter", "--m", "5", "--d", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "32/32" in out and "VC-dim" in out and ">= L + 2 = 5" in out


# ---------------------------------------------------------------------------------------- SSR / LSSR


def test_xor_ln_breaks_lssr_and_linear_cannot():
    r = xor_demo(n_affine=60)
    assert r["lssr_input"] == pytest.approx(1.0, abs=1e-12)
    assert r["lssr_after_linear_min"] >= 1.0 - 1e-9
    assert r["lssr_after_ln"] <= 1e-12
    assert r["accuracy"] == 1.0
    np.testing.assert_allclose(r["scores"][:2], [0.05, 0.05], atol=1e-12)
    np.testing.assert_allclose(r["scores"][2:], [2 / math.sqrt(5) - 0.95] * 2, atol=1e-12)
    np.testing.assert_allclose(r["angles_deg"], [-135, -135, -108.43494882, -161.56505118], atol=1e-6)


def test_lssr_is_min_ssr_and_affine_invariant():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 2)) + np.repeat([[0, 0], [1.5, 0.3], [0.2, 2]], 20, 0)
    y = np.repeat([0, 1, 2], 20)
    L = lssr(X, y)
    from scipy.optimize import minimize_scalar

    f = lambda a: ssr(X, y, [math.cos(a), math.sin(a)])  # noqa: E731
    angles = np.linspace(0, np.pi, 721)
    a0 = angles[int(np.argmin([f(a) for a in angles]))]
    brute = minimize_scalar(f, bounds=(a0 - 0.01, a0 + 0.01), method="bounded", options={"xatol": 1e-10}).fun
    assert L == pytest.approx(brute, abs=1e-6) and L < 0.9
    for _ in range(20):
        W, b = rng.standard_normal((2, 5)), rng.standard_normal(5)
        Z = X @ W + b
        assert lssr(Z, y) >= L - 1e-9
        a = rng.standard_normal(5)
        assert ssr(Z, y, a) >= L - 1e-9


# ---------------------------------------------------------------------------------------- LN-G measures


@pytest.mark.parametrize("d,groups", [(12, 1), (12, 2), (12, 3), (12, 4), (12, 6), (8, 1), (8, 2)])
def test_hessian_energy_closed_form_matches_autograd(d, groups):
    x = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(d * 10 + groups))
    mod = GroupLayerNorm(d, groups, eps=0.0, affine=False)
    closed = hessian_energy(x, groups)
    auto = hessian_energy_autograd(mod, x)
    assert float(auto) == pytest.approx(float(closed), rel=1e-10, abs=1e-12)
    n = d // groups
    if n > 2:
        assert float(closed) > 0


def test_hessian_energy_grows_with_groups_and_scale():
    x = torch.randn(500, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    med = [float(hessian_energy(x, g).median()) for g in (1, 2, 4, 8, 16)]
    assert all(a < b for a, b in zip(med, med[1:]))
    # homogeneous of degree -4 in x
    assert torch.allclose(hessian_energy(2 * x[:3], 4), hessian_energy(x[:3], 4) / 16)


def test_linear_residual_rises_with_groups_and_sign_limit():
    X = torch.randn(6000, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = [linear_residual(GroupLayerNorm(32, g, eps=0.0, affine=False), X) for g in (1, 2, 4, 8, 16)]
    assert all(a < b for a, b in zip(res, res[1:]))
    assert res[-1] == pytest.approx(1 - 2 / math.pi, abs=0.02)  # size 2: sign function
    assert linear_residual(torch.nn.Linear(32, 7).double(), X) == pytest.approx(0.0, abs=1e-12)


def test_measure_bad_inputs():
    with pytest.raises(ValueError):
        hessian_energy(torch.randn(10), 3)
    with pytest.raises(ValueError):
        hessian_energy(torch.tensor([1.0, float("nan"), 0.0, 2.0]), 1)
    with pytest.raises(ValueError):
        hessian_energy(torch.ones(4), 1)
    with pytest.raises(ValueError):
        lssr(np.ones((5, 2)), np.array([0, 1, 0, 1, 0]))
