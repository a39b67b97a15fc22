"""Shared by the fused-kernel tests (``tests/test_nn_numba*.py``, ``tests/test_nn_parallel.py``):
modules with non-trivial parameters, the float64 oracles and bounds of LN-G and RMSNorm (see
``tests/test_nn_numba.py`` for the derivation), and :func:`_every_split`, which runs a call on
every row-sharing path."""

from __future__ import annotations

import torch

import normscope.nn as nsn
from _nn_bounds import N, _oracle, _tol, _u
from normscope.nn import _numba, _parallel


def _group_oracle(x, groups, w, b, eps):
    """float64 LN-G oracle: the rescaled LayerNorm oracle per group, then the affine."""
    xg = x.double().unflatten(-1, (groups, x.shape[-1] // groups))
    z = torch.stack([_oracle("layernorm", xg[..., k, :], None, None, eps) for k in range(groups)], -2).flatten(-2)
    return z * (w.double() if w is not None else 1.0) + (b.double() if b is not None else 0.0)


def _kappa(x, groups, eps):
    """max over groups of max|x|/√(mean(p²)+ε), in float64 on exactly rescaled groups."""
    xg = x.double().unflatten(-1, (groups, x.shape[-1] // groups))
    s = xg.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    y = xg / s
    ms = (y - y.mean(-1, keepdim=True)).square().mean(-1, keepdim=True) + eps / s.square()
    return (y.abs().amax(-1, keepdim=True) / ms.sqrt()).max().item()


def _lng_tol(x, groups, ref, w, b, eps):
    u = _u(x.dtype)
    wmax = w.double().abs().max().item() if w is not None else 1.0
    n = x.shape[-1] // groups
    return _tol(x.dtype, n, ref, bias=b.double() if b is not None else None) + (n + 3) * u * wmax * _kappa(x, groups, eps)


def _lng(dtype, groups, affine, eps=1e-5, d=N, backend="numba"):
    m = nsn.GroupLayerNorm(d, groups, eps=eps, elementwise_affine=affine != "none", bias=affine == "both",
                           dtype=dtype, backend=backend)
    return _filled(m, d, seed=3)


def _rms(dtype, affine, eps=1e-5, d=N, backend="numba"):
    m = nsn.RMSNorm(d, eps=eps, elementwise_affine=affine != "none", bias=affine == "both", dtype=dtype,
                    backend=backend)
    return _filled(m, d, seed=4)


def _filled(m, d, seed):
    """m with gains in [0.5, 1.5) and shifts ~ N(0, 1) (where it has them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if m.weight is not None:
            m.weight.copy_(0.5 + torch.rand(d, generator=g, dtype=torch.float64))
        if m.bias is not None:
            m.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64))
    return m


def _rms_oracle(x, m, eps):
    e = eps if eps is not None else torch.finfo(x.dtype).eps
    w = m.weight.double() if m.weight is not None else None
    b = m.bias.double() if m.bias is not None else None
    return _oracle("rmsnorm", x, w, b, e), (_tol(x.dtype, x.shape[-1], _oracle("rmsnorm", x, w, b, e), bias=b))


class Paths(dict):
    """Outputs by path: "one" (1 thread), "team" (2 of torch's threads), "child" (the pool, as in a
    forked child), all three through the one compiled team entry; "njit_one", "njit_pool" (no team
    here: the njit build, 1 thread and the pool). Missing keys: paths this machine does not have."""


def _every_split(monkeypatch, fn, entry="group_layer_norm"):
    """fn() on every row-sharing path (:class:`Paths`), 2 threads in chunks of 3 rows; asserts that
    the fused kernel ran each time (not a silent eager fallback) and on the path named."""
    calls, real = [], getattr(_numba, entry)
    monkeypatch.setattr(_numba, entry, lambda *a, **k: calls.append(1) or real(*a, **k))
    runs, real_pool = [], _parallel._run_pool
    monkeypatch.setattr(_parallel, "_run_pool", lambda *a: runs.append("pool") or real_pool(*a))
    team = _parallel._team()
    if team is not None:
        real_run = team.run
        monkeypatch.setattr(team, "run", lambda e, task, lo, hi, parts: runs.append(parts) or _granted(real_run(e, task, lo, hi, parts), parts))
    prev = torch.get_num_threads()
    out = Paths()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(_parallel, "MIN_ELEMS_PER_THREAD", 1)
        monkeypatch.setattr(_parallel, "CHUNK_ELEMS", 3 * N)
        if team is not None:
            out["one"] = _on(fn, runs, [1])
            torch.set_num_threads(2)
            out["team"] = _on(fn, runs, [2])
            with monkeypatch.context() as m:
                m.setitem(_parallel._FORKED, "child", True)
                out["child"] = _on(fn, runs, lambda r: r[0] == "pool" and set(r[1:]) == {1})
        with monkeypatch.context() as m:
            m.setattr(_parallel, "_team", lambda: None)
            torch.set_num_threads(1)
            out["njit_one"] = _on(fn, runs, [])
            torch.set_num_threads(2)
            out["njit_pool"] = _on(fn, runs, ["pool"])
    finally:
        torch.set_num_threads(prev)
    assert len(calls) == len(out)
    return out


def _granted(run, parts):
    assert run.threads == parts  # libgomp gave the team asked for (else the split test proves less)
    return run


def _on(fn, runs, expect):
    runs.clear()
    z = fn()
    assert (expect(runs) if callable(expect) else runs == expect), runs
    return z


def _all_within(paths: Paths, dtype, ref, tol) -> None:
    """Every path's output has the dtype, is finite, and is within ``tol`` of the oracle ``ref``."""
    for z in paths.values():
        assert z.dtype == dtype and torch.isfinite(z).all()
        assert (z.double() - ref).abs().max().item() <= tol


def _same_bits(paths: Paths) -> None:
    """The team entry's paths agree bit for bit, and so do the njit build's."""
    team = [paths[k] for k in ("one", "team", "child") if k in paths]
    assert all(torch.equal(team[0], z) for z in team)
    assert torch.equal(paths["njit_one"], paths["njit_pool"])
