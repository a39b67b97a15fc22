"""normscope.attention.unselectable against independent checks (Brody et al. 2023, Sec. 3.2)."""

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from scipy.spatial import ConvexHull

from normscope.attention import unselectable, unselectable_fraction


def hull_membership(keys: np.ndarray) -> np.ndarray:
    """Independent reference: LP (F2) on the raw keys, k_i ∈ conv(others) (duplicates: inside)."""
    n = len(keys)
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        others = np.delete(keys, i, axis=0)
        a_eq = np.vstack([others.T, np.ones(n - 1)])
        res = linprog(np.zeros(n - 1), A_eq=a_eq, b_eq=np.append(keys[i], 1.0), bounds=(0, None), method="highs")
        assert res.status in (0, 2)
        out[i] = res.status == 0
    return out


@pytest.mark.parametrize("n,d", [(5, 2), (12, 2), (30, 3), (40, 4), (25, 6), (60, 5)])
def test_matches_hull_lp_and_qhull(n, d):
    rng = np.random.default_rng(n * 100 + d)
    keys = rng.standard_normal((n, d))
    got = unselectable(keys)
    assert np.array_equal(got, hull_membership(keys))
    assert np.array_equal(got, unselectable(keys, method="lp"))
    qhull = np.ones(n, dtype=bool)
    qhull[ConvexHull(keys).vertices] = False
    assert np.array_equal(got, qhull)


@pytest.mark.parametrize("seed", range(2))
def test_prefilter_agrees_with_all_lp_medium(seed):
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((200, 7)) * rng.uniform(0.1, 10.0, size=7)  # anisotropic
    fast = unselectable(keys)
    assert 0.05 < fast.mean() < 0.95  # a non-trivial mix, so the test can fail either way
    assert np.array_equal(fast, unselectable(keys, method="lp"))


def test_constructed_interior_points():
    rng = np.random.default_rng(1)
    verts = rng.standard_normal((10, 4))
    inside = rng.dirichlet(np.ones(10), size=6) @ verts
    mask = unselectable(np.vstack([verts, inside]))
    assert mask[10:].all()
    # the outer points are selectable unless one happens to lie inside the others' hull
    assert np.array_equal(mask[:10], hull_membership(verts))


def test_regular_polygon_with_centre_and_edge_midpoint():
    t = np.linspace(0, 2 * np.pi, 7)[:-1]
    poly = np.stack([np.cos(t), np.sin(t)], axis=1)
    keys = np.vstack([poly, [[0.0, 0.0]], [(poly[0] + poly[1]) / 2]])
    assert unselectable(keys).tolist() == [False] * 6 + [True, True]


def test_duplicates_are_unselectable():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((8, 3)) * 5
    keys = np.vstack([base, base[[0, 3]]])
    mask = unselectable(keys)
    assert mask[[0, 3, 8, 9]].all()
    ref = hull_membership(base)
    assert np.array_equal(mask[[1, 2, 4, 5, 6, 7]], ref[[1, 2, 4, 5, 6, 7]])
    # all keys equal: every one ties with another
    assert unselectable(np.ones((4, 3))).all()


def test_rank_deficient_embedding_matches_low_dimensional():
    rng = np.random.default_rng(3)
    low = rng.standard_normal((40, 3))
    basis, _ = np.linalg.qr(rng.standard_normal((9, 3)))  # 3-D subspace of R^9, then shifted
    high = low @ basis.T + rng.standard_normal(9)
    assert np.array_equal(unselectable(high), unselectable(low))
    assert np.array_equal(unselectable(high), unselectable(high, method="lp"))


def test_affine_invariance():
    rng = np.random.default_rng(4)
    keys = rng.standard_normal((50, 4))
    a = rng.standard_normal((4, 4)) + 3 * np.eye(4)
    assert np.array_equal(unselectable(keys), unselectable(keys @ a.T + 7.0))


def test_fewer_keys_than_d_plus_one():
    rng = np.random.default_rng(5)
    assert not unselectable(rng.standard_normal((5, 16))).any()  # affinely independent
    collinear = np.outer([0.0, 1.0, 2.0, 5.0], rng.standard_normal(16))
    assert unselectable(collinear).tolist() == [False, True, True, False]


def test_one_dimensional_and_trivial_sizes():
    assert unselectable(np.array([[1.0], [3.0], [2.0], [-1.0]])).tolist() == [True, False, True, False]
    assert unselectable(np.array([[1.0], [3.0], [3.0]])).tolist() == [False, True, True]
    assert unselectable(np.ones((1, 4))).tolist() == [False]
    assert unselectable(np.zeros((0, 4))).shape == (0,)


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        unselectable(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="2-D"):
        unselectable(np.ones(5))
    with pytest.raises(ValueError, match="d >= 1"):
        unselectable(np.ones((3, 0)))
    with pytest.raises(ValueError, match="method"):
        unselectable(np.ones((3, 2)), method="gurobi")


def test_torch_input_and_fraction():
    rng = np.random.default_rng(6)
    keys = rng.standard_normal((30, 2))
    t = torch.tensor(keys, dtype=torch.float64)
    assert np.array_equal(unselectable(t), unselectable(keys))
    assert unselectable_fraction(keys) == pytest.approx(unselectable(keys).mean())


# --- theory checks (Sec. 3.1–3.2) -------------------------------------------------------------


def _layer_norm(x: np.ndarray) -> np.ndarray:
    c = x - x.mean(axis=1, keepdims=True)
    return c / np.sqrt((c * c).mean(axis=1, keepdims=True))


def test_scaling_leaves_no_unselectable_keys():
    rng = np.random.default_rng(7)
    for d in (3, 5, 8):
        x = rng.standard_normal((200, d))
        assert unselectable(x).any()  # plenty inside the hull before the norm
        y = _layer_norm(x)
        # c/√mean(c²): d-term sums for mean and mean square, a root, a division: ≤ (2d + 8)·u relative
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.sqrt(d), rtol=(2 * d + 8) * np.finfo(float).eps)
        assert not unselectable(y).any()  # distinct points on a sphere are all extreme
        w_k = rng.standard_normal((d, d))  # injective on H (generic), sphere -> ellipsoid
        assert not unselectable(y @ w_k.T).any()


def test_non_injective_key_map_can_create_unselectable_keys():
    rng = np.random.default_rng(8)
    y = _layer_norm(rng.standard_normal((100, 6)))
    w_k = rng.standard_normal((2, 6))  # rank 2: the 4-sphere in H collapses onto a filled ellipse
    assert unselectable(y @ w_k.T).mean() > 0.5


def test_projection_gives_exactly_uniform_attention_along_ones():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((20, 8))
    p = x - x.mean(axis=1, keepdims=True)
    scores = p @ (3.7 * np.ones(8))
    # Σ_j p_j = 0 exactly; in floats each p_j is off by ≤ 2u·max|x| and the 8-term sum adds ≤ 8u·Σ|p_j|:
    # |scores| ≤ 3.7·(2·8 + 8·8·2)·u·max|x|.
    u = np.finfo(float).eps
    atol = 3.7 * (2 * 8 + 8 * 8 * 2) * u * np.abs(x).max()
    np.testing.assert_allclose(scores, 0.0, atol=atol)
    att = np.exp(scores - scores.max())
    # exp(s) = 1 + s to first order: the weights differ from 1/20 by ≤ 2·max|s| plus a 20-term sum's 20u
    np.testing.assert_allclose(att / att.sum(), 1 / 20, rtol=2 * 2 * atol + 40 * u)
    # without projection no nonzero query is orthogonal to 20 generic keys in R^8
    assert np.linalg.matrix_rank(x) == 8


def test_projection_without_scaling_keeps_unselectable_keys():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((200, 6))
    p = x - x.mean(axis=1, keepdims=True)
    assert unselectable(p).mean() > 0.1
