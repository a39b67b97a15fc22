"""Property-based cross-checks of attention.unselectable (Brody et al., arXiv:2305.02582, Sec. 3.2).

Truth comes from configurations whose answer is unambiguous: integer lattice points (coordinates
in [-6, 6], exactly representable) plus boundary points built from them exactly in binary
(midpoints of two keys, centroids of four), duplicates, collinear/coplanar sets and integer points
on a sphere. For such sets the distance of a key to the hull of the others is either exactly 0
or at least ~1/(12^d·d!) ≫ tol, so the HiGHS LP and Qhull decide them reliably on the lattice itself.
The default method must reproduce that truth after an exact per-coordinate scaling by 2^e
(e ∈ [-400, 400], coordinates spanning up to 2^800 ≈ 1e240) and after an inexact scaling by
1e±150 (each coordinate then carries a relative rounding error ≤ u = 2^-53, far inside the
relative tolerance 1e-9 of the criterion). Runtime: ~60 examples per test, a few seconds each file.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial import ConvexHull, QhullError

from normscope.attention import unselectable

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def lattice_sets(draw):
    d = draw(st.integers(1, 4))
    n0 = draw(st.integers(1, 12))
    coords = st.integers(-6, 6)
    pts = [draw(st.lists(coords, min_size=d, max_size=d)) for _ in range(n0)]
    keys = np.array(pts, dtype=np.float64)
    kind = draw(st.sampled_from(["plain", "collinear", "coplanar", "sphere"]))
    if kind == "collinear":
        v = np.array(draw(st.lists(st.integers(-3, 3), min_size=d, max_size=d)), dtype=np.float64)
        t = np.array(draw(st.lists(st.integers(-4, 4), min_size=2, max_size=8)), dtype=np.float64)
        keys = np.vstack([keys[:1] + np.outer(t, v), keys[1:3]])
    elif kind == "coplanar" and d >= 3:
        keys[:, -1] = 2.0  # a face: every key in the hyperplane x_d = 2
    elif kind == "sphere":
        circle = [(5, 0), (4, 3), (3, 4), (0, 5), (-3, 4), (-4, 3), (-5, 0), (-4, -3), (-3, -4), (0, -5), (3, -4), (4, -3)]
        take = draw(st.lists(st.integers(0, 11), min_size=1, max_size=12, unique=True))
        ring = np.zeros((len(take), d))
        ring[:, : min(d, 2)] = np.array([circle[k] for k in take], dtype=np.float64)[:, : min(d, 2)]
        keys = np.vstack([ring, np.zeros((1, d))]) if draw(st.booleans()) else ring
    n = len(keys)
    extra = []
    for _ in range(draw(st.integers(0, 4))):  # exact boundary/interior points and duplicates
        how = draw(st.sampled_from(["mid", "centroid4", "dup"]))
        idx = draw(st.lists(st.integers(0, n - 1), min_size=4, max_size=4))
        if how == "mid":
            extra.append((keys[idx[0]] + keys[idx[1]]) / 2)
        elif how == "centroid4":
            extra.append(keys[idx].sum(axis=0) / 4)
        else:
            extra.append(keys[idx[0]].copy())
    if extra:
        keys = np.vstack([keys, np.array(extra)])
    return keys


def truth_lp(keys):
    """The LP method on the unscaled lattice set (distances are 0 or >> HiGHS's 1e-7)."""
    return unselectable(keys, method="lp")


def qhull_mask(keys):
    """Unselectable per Qhull: not a hull vertex, or repeated. None where Qhull does not apply
    (n < d + 2, or the set is not full-dimensional)."""
    n, d = keys.shape
    if d < 2 or n < d + 2:
        return None
    # Qhull crashes (segfault, scipy 1.17) on coordinates ~1e150: give it the keys divided per
    # coordinate by a power of two near their max, exact and verdict-preserving.
    keys = np.ldexp(keys, -np.frexp(np.abs(keys).max(axis=0))[1])
    try:
        hull = ConvexHull(keys)
    except QhullError:
        return None
    mask = np.ones(n, dtype=bool)
    mask[hull.vertices] = False
    _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    mask |= counts[inv.reshape(-1)] > 1
    return mask


@SETTINGS
@given(keys=lattice_sets())
def test_default_matches_lp_and_qhull_on_lattice_sets(keys):
    truth = truth_lp(keys)
    got = unselectable(keys)
    assert np.array_equal(got, truth), (keys.tolist(), got, truth)
    q = qhull_mask(keys)
    if q is not None:
        assert np.array_equal(got, q), (keys.tolist(), got, q)


@SETTINGS
@given(keys=lattice_sets(), exps=st.lists(st.integers(-400, 400), min_size=4, max_size=4),
       factor=st.sampled_from([1.0, 1e150, 1e-150, 3.0e100, 7e-120]))
def test_verdict_survives_scaling(keys, exps, factor):
    """Exact 2^e per coordinate (norms spanning up to 2^1000), then an inexact overall factor."""
    d = keys.shape[1]
    scaled = np.ldexp(keys, np.array(exps[:d]))
    scaled = scaled * factor
    # |keys| ≤ 12 and 2^±400·1e±150 stays inside float64's normal range: nothing over/underflows
    assert np.isfinite(scaled).all() and not (np.abs(scaled[keys != 0]) < np.finfo(float).tiny).any()
    assert np.array_equal(unselectable(scaled), truth_lp(keys))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 40), d=st.integers(2, 5),
       scale=st.sampled_from([1.0, 1e150, 1e-150]))
def test_random_sets_match_lp_and_qhull(seed, n, d, scale):
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, d)) * rng.uniform(0.1, 10.0, size=d) * scale
    got = unselectable(keys)
    assert np.array_equal(got, unselectable(keys, method="lp"))
    q = qhull_mask(keys)
    if q is not None:
        assert np.array_equal(got, q)


def test_edge_midpoint_of_the_square():
    keys = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0]], dtype=np.float64)
    assert unselectable(keys).tolist() == [False, False, False, False, True]
    assert unselectable(keys, method="lp").tolist() == [False, False, False, False, True]


def test_face_point_in_3d_and_cube_centre():
    cube = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
    keys = np.vstack([cube, [[0.5, 0.5, 0.0], [0.5, 0.5, 0.5], [0.25, 0.0, 0.0]]])
    assert unselectable(keys).tolist() == [False] * 8 + [True, True, True]


def test_norms_spanning_1e13_are_not_merged():
    """Distinct keys of norm ~1e-7 beside keys of norm ~1e6 (rotated 45°, so no coordinate
    separates them): rounding the keys scaled to max-abs 1 at 12 absolute decimals merged the
    two small keys into a "duplicate". Truth, by construction: k2 = ½k3 + ¼k0 + ¼k1 is inside,
    k3 is the apex of the thin triangle (selectable by q ∝ (-1, 1))."""
    rot = np.array([[1.0, 1.0], [-1.0, 1.0]])
    base = np.array([[1e6, 0.0], [-1e6, 0.0], [0.0, 1e-7], [0.0, 2e-7]])
    keys = base @ rot
    assert unselectable(keys).tolist() == [False, False, True, False]
    assert unselectable(base).tolist() == [False, False, True, False]


@pytest.mark.parametrize("tol", [0.0, -1.0])
def test_tol_must_be_positive(tol):
    with pytest.raises(ValueError, match="tol must be positive"):
        unselectable(np.ones((3, 2)), tol=tol)
