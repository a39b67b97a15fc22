"""The vectorised secular iteration (``geometry/_roots.py``) against LAPACK ``dlaed4``, root by root.

Tolerance (derived, not tuned): both solvers stop at a λ with |f(λ)| ≤ ε·E, E being ``dlaed4``'s
bound on the rounding error of f(λ) (ε = 2⁻⁵³; ours uses a bound ≤ E). f is monotone between
poles, so two such points differ by at most 2ε·E/min f′ on the segment between them; f′ is
taken at LAPACK's root and halved for its change across that (≤ 1e−12 relative) segment:
|λ_ours − λ_lapack| ≤ 4·ε·E/f′(λ_lapack), plus 2 ulps of |λ| for the final origin + τ.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normscope.geometry import _roots, _secular, principal_axes
from normscope.geometry._lapack import dlaed4_roots
from _geometry_bounds import eig_tol
from test_geometry import _check_against_dense
from test_geometry_property import LAWS, SETTINGS, make_gain

EPS = _roots.EPS


def reduced(g: np.ndarray):
    """The deflated problem diag(D) + ρzzᵀ that ``principal_axes`` hands to the root finder."""
    expo = int(np.frexp(np.max(np.abs(g)))[1])
    gt = np.ldexp(g, -expo)
    defl = _secular._deflate(gt * gt, gt / math.sqrt(g.size))
    rho = float(defl.wpole @ defl.wpole)
    return np.ascontiguousarray(-defl.dpole), defl.wpole / math.sqrt(rho), rho


def lapack_tolerance(D, z, rho, lam, q) -> float:
    """4ε·E/f′ at LAPACK's root q (E exactly as dlaed4 forms it, prefix sums included)."""
    tau_origin = D[q] if lam - D[q] <= D[q + 1] - lam else D[q + 1]
    ii = q if tau_origin == D[q] else q + 1
    delta = (D - tau_origin) - (lam - tau_origin)
    t = z * z / delta
    psi, phi = t[:ii], t[ii + 1 :]
    err = abs(np.cumsum(psi).sum()) + np.cumsum(phi[::-1]).sum()
    dw = float(np.sum((z / delta) ** 2))
    E = 8 * (phi.sum() - psi.sum()) + err + 2 / rho + 3 * abs(t[ii]) + abs(lam - tau_origin) * dw
    return 4 * EPS * E / dw + 2 * np.spacing(abs(lam))


def lapack_roots(D, z, rho, qs):
    return dlaed4_roots(D, z, rho, np.asarray(qs))


def check(D, z, rho):
    qs = np.arange(D.size - 1)
    r = _roots.interior_roots(D, z, rho, qs)
    ours = (r.origin + r.tau).numpy()
    ref = lapack_roots(D, z, rho, qs)
    tol = np.array([lapack_tolerance(D, z, rho, ref[q], q) for q in qs])
    done = np.setdiff1d(qs, r.unconverged.numpy())
    assert np.all(np.abs(ours - ref)[done] <= tol[done])
    # the differences D − λ keep relative accuracy next to the root's own poles
    delta = _roots.differences(torch.from_numpy(D), r.origin, r.tau, torch.empty(qs.size, D.size, dtype=torch.float64))
    near = delta.numpy()[qs, qs]  # D_q − λ_q < 0, relative error ≲ the root's
    assert np.all(near < 0) and np.all(delta.numpy()[qs, qs + 1] > 0)
    return r


@settings(max_examples=40, **SETTINGS)
@given(law=st.sampled_from(LAWS), n=st.integers(4, 300), seed=st.integers(0, 2**32 - 1))
def test_roots_match_dlaed4(law, n, seed):
    D, z, rho = reduced(make_gain(law, n, seed, 0.0))
    if D.size < 3:
        return  # K ≤ 2 never reaches the vectorised iteration
    r = check(D, z, rho)
    assert r.unconverged.numel() == 0  # no gain law here needs dlaed4's fallback


@pytest.mark.parametrize("n", [3, 17, 2048])
def test_roots_match_dlaed4_wide_and_tiny(n):
    rng = np.random.default_rng(n)
    for g in (1 + 0.3 * rng.standard_normal(n), np.exp(2 * rng.standard_normal(n)),
              np.round(1 + 0.3 * rng.standard_normal(n), 3) + 1e-9 * rng.standard_normal(n)):
        D, z, rho = reduced(g)
        if D.size >= 3:
            check(D, z, rho)


def test_iteration_is_what_makes_it_exact(monkeypatch):
    """Negative control: the start alone (no full step) misses LAPACK's roots by far more than
    the tolerance, and is reported unconverged; ``principal_axes`` then hands those roots to
    ``dlaed4`` and still matches the dense reference."""
    g = 1 + 0.3 * np.random.default_rng(5).standard_normal(400)
    D, z, rho = reduced(g)
    qs = np.arange(D.size - 1)
    monkeypatch.setattr(_roots, "MAXIT", 0)
    monkeypatch.setattr(_secular, "_VECTOR_MIN", 3)  # the vectorised engine at this size too
    r = _roots.interior_roots(D, z, rho, qs)
    ours = (r.origin + r.tau).numpy()
    ref = lapack_roots(D, z, rho, qs)
    tol = np.array([lapack_tolerance(D, z, rho, ref[q], q) for q in qs])
    assert np.sum(np.abs(ours - ref) > tol) > qs.size // 2
    assert r.unconverged.numel() > qs.size // 2
    calls = []
    real = _secular.dlaed4_roots
    monkeypatch.setattr(_secular, "dlaed4_roots", lambda *a, **k: calls.extend(a[3].tolist()) or real(*a, **k))
    fallback = principal_axes(g).lengths
    assert sorted(calls) == sorted(qs[r.unconverged.numpy()].tolist())  # exactly the unconverged roots
    monkeypatch.undo()
    zeta_ref = np.linalg.eigvalsh(np.diag(g * g) - np.outer(g, g) / g.size)[::-1][: qs.size]
    for got in (fallback, principal_axes(g).lengths):
        assert np.abs(got**2 / g.size - zeta_ref).max() <= eig_tol(g.size, float(np.max(g * g)))


def test_bad_root_indices_are_refused():
    D, z, rho = reduced(1 + 0.3 * np.random.default_rng(1).standard_normal(10))
    with pytest.raises(ValueError, match="interior roots are 0..8"):
        _roots.interior_roots(D, z, rho, np.array([9]))


@pytest.mark.parametrize("maxit", [0, 1])
def test_unconverged_roots_get_dlaed4_vectors(monkeypatch, maxit):
    """Directions when ``dlaed4`` takes over (nearly) all roots (MAXIT 0) or some of them (MAXIT 1:
    a mix inside the blocks of the vector builder): orthonormal, residual and lengths within the dense
    comparison's bounds (tests/_geometry_bounds.py)."""
    g = 1 + 0.3 * np.random.default_rng(8).standard_normal(600)
    D, z, rho = reduced(g)
    monkeypatch.setattr(_roots, "MAXIT", maxit)
    monkeypatch.setattr(_secular, "_VECTOR_MIN", 3)
    left = _roots.interior_roots(D, z, rho, np.arange(D.size - 1)).unconverged.numel()
    assert (left >= D.size - 2) if maxit == 0 else (0 < left < D.size - 2)
    lengths, V = principal_axes(g, directions=True)
    _check_against_dense(g, lengths, V)  # lengths, orthonormality, residual (and eigenspaces) vs dense eigh
