"""The row runners of the numba kernels (``normscope.nn._parallel``, ``normscope.nn._team``):
torch's OpenMP team and the pool tile the rows exactly once and give the same bits as one thread,
from concurrent callers and at any thread count; a forked child runs on the pool (torch's own
parallel operations hang there); numba's on-disk cache of the team's ``cfunc`` is reused, not
grown, across processes; and every way the team can be missing falls back to the pool.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import normscope.nn as nsn
from _nn_bounds import N
from normscope.nn import _numba, _parallel

pytestmark = pytest.mark.numerical


def _modules():
    g = torch.Generator().manual_seed(5)
    lng = nsn.GroupLayerNorm(N, 8, backend="numba")
    rms = nsn.RMSNorm(N, eps=1e-5, bias=True, backend="numba")
    with torch.no_grad():
        for m in (lng, rms):
            m.weight.copy_(0.5 + torch.rand(N, generator=g))
            m.bias.copy_(torch.randn(N, generator=g))
    return lng, rms


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 200), parts=st.integers(1, 5), step=st.integers(1, 40),
       order=st.lists(st.integers(0, 4), min_size=1, max_size=400))
def test_chunks_cover_every_row_once(rows, parts, step, order):
    """Whatever order the pool's threads claim in, the chunks tile [0, rows) exactly once; a thread
    starts at the front of its own region."""
    parts = min(parts, rows)
    chunks = _parallel._Chunks(rows, parts, step)
    seen = torch.zeros(rows, dtype=torch.int64)
    first = {}
    live = set(range(parts))
    for t in [t % parts for t in order] + [t for t in range(parts) for _ in range(rows)]:
        if t not in live:
            continue
        own = chunks.lo[t] < chunks.hi[t]  # rows of its own region left (not all stolen)
        ab = chunks.claim(t)
        if ab is None:
            live.discard(t)
            continue
        if t not in first and own:
            first[t] = ab[0]
        seen[ab[0]:ab[1]] += 1
    assert torch.equal(seen, torch.ones(rows, dtype=torch.int64))
    assert all(a == rows * t // parts for t, a in first.items())


@pytest.mark.skipif(not _parallel.team_available(), reason="torch's intra-op threads are not libgomp's here")
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), threads=st.integers(2, 5), lo=st.integers(0, 40), seed=st.integers(0, 2**31 - 1))
def test_the_team_writes_every_row_once(rows, threads, lo, seed):
    """On torch's team (any team size, rows fewer than threads included, any [lo, hi)) each row is
    the entry's one-thread row, and no row outside [lo, hi) is touched: an output pre-filled with
    NaN shows a row missed, the count shows one run twice."""
    lo = min(lo, rows - 1)
    x = torch.randn(rows, N, generator=torch.Generator().manual_seed(seed))
    x[rows - 1, 0] = float("nan")  # one bad row: counted once, whichever thread has it
    team = _parallel._team()
    e = team.entry(_numba._kernel(np.dtype(np.float32), "rms"), np.dtype(np.float32))
    task = lambda out: _parallel.RowTask(x.numpy(), out, np.ones(N, np.float32), np.zeros(0, np.float32),  # noqa: E731
                                        N, 1e-5, 2.0**-103)
    want = np.full((rows, N), np.nan, np.float32)
    assert team.run(e, task(want), lo, rows, 1) == (1, 1)
    assert np.isnan(want[:lo]).all()
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = np.full((rows, N), np.nan, np.float32)
        assert team.run(e, task(got), lo, rows, threads) == (1, threads)  # the count once, on the full team
    finally:
        torch.set_num_threads(prev)
    assert np.array_equal(got, want, equal_nan=True)


@pytest.mark.parametrize("runner", ["team", "pool"])
def test_concurrent_callers_and_a_changing_thread_count(monkeypatch, runner):
    """Four Python threads calling at once (each splitting its rows over 2 threads), then 3 and 1
    intra-op threads (the pool rebuilt): the same bits as one caller with one thread."""
    if runner == "pool":
        monkeypatch.setattr(_parallel, "_team", lambda: None)
    elif not _parallel.team_available():
        pytest.skip("torch's intra-op threads are not libgomp's here")
    ran = _spy_runners(monkeypatch)
    monkeypatch.setattr(_parallel, "MIN_ELEMS_PER_THREAD", 1)
    monkeypatch.setattr(_parallel, "CHUNK_ELEMS", 5 * N)
    mods = _modules()
    xs = [torch.randn(97, N, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    prev = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            want = [[m(x) for m in mods] for x in xs]
            torch.set_num_threads(2)

            def call(x):
                with torch.no_grad():  # grad mode is per thread
                    return [[m(x) for m in mods] for _ in range(5)]

            with ThreadPoolExecutor(4) as callers:
                got = list(callers.map(call, xs))
            torch.set_num_threads(3)
            three = [[m(x) for m in mods] for x in xs]
    finally:
        torch.set_num_threads(prev)
    for w, g, t in zip(want, got, three):
        for k in range(len(mods)):
            assert all(torch.equal(w[k], gi[k]) for gi in g) and torch.equal(w[k], t[k])
    assert ran["kernels"] == 2 * 4 * (1 + 5 + 1) and ran[runner] > 0 and ran["team" if runner == "pool" else "pool"] == 0


def _spy_runners(monkeypatch) -> dict:
    """Counts of fused-kernel calls and of the runner each took (so no test passes on the eager path)."""
    ran = {"kernels": 0, "team": 0, "pool": 0}

    def spy(name, obj, attr):
        real = getattr(obj, attr)

        def call(*a, **k):
            ran[name] += 1
            return real(*a, **k)
        monkeypatch.setattr(obj, attr, call)

    spy("kernels", _parallel, "run_rows")
    for mod in (_numba,):
        monkeypatch.setattr(mod, "run_rows", _parallel.run_rows)
    spy("pool", _parallel, "_run_pool")
    team = _parallel._team()
    if team is not None:
        real_run = team.run
        monkeypatch.setattr(team, "run", lambda e, task, lo, hi, parts: ran.__setitem__("team", ran["team"] + (parts > 1))
                            or real_run(e, task, lo, hi, parts))
    return ran


def _child(q):
    torch.set_num_threads(2)
    _parallel.MIN_ELEMS_PER_THREAD, _parallel.CHUNK_ELEMS = 1, 3 * N
    pooled, real = [], _parallel._run_pool
    _parallel._run_pool = lambda *a: pooled.append(1) or real(*a)
    with torch.no_grad():
        outs = [m(_fork_input()).numpy() for m in _modules()]
    q.put((_parallel.team_available(), len(pooled), outs))


def _fork_input():
    return torch.linspace(-3, 5, 40 * N).reshape(40, N)


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_runs_on_the_pool(monkeypatch):
    """A child forked after the parent ran on torch's team (whose workers it does not inherit) runs
    on a pool of its own, to the parent's bits."""
    monkeypatch.setattr(_parallel, "MIN_ELEMS_PER_THREAD", 1)
    ran = _spy_runners(monkeypatch)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            parent = [m(_fork_input()) for m in _modules()]
    finally:
        torch.set_num_threads(prev)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,), daemon=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads alive: the pool is rebuilt
            p.start()
        team, pooled, got = q.get(timeout=60)
        p.join(60)
    finally:
        if p.is_alive():
            p.kill()
    assert p.exitcode == 0 and team is False and pooled == 2
    assert ran["kernels"] == 2 and ran["team" if _parallel.team_available() else "pool"] == 2
    assert all(torch.equal(torch.from_numpy(g), w) for g, w in zip(got, parent))


_CACHE_RUN = textwrap.dedent("""
    import torch
    from normscope.nn import _numba, _parallel
    torch.set_num_threads(2)
    _parallel.MIN_ELEMS_PER_THREAD = 1
    x = torch.randn(64, 64)
    _numba.rms_norm(x, None, None, 1e-5), _numba.group_layer_norm(x, None, None, 8, 1e-5)
    print(_parallel.team_available(), _parallel._team().entry.cache_info().currsize)
""")


@pytest.mark.skipif(not _parallel.team_available(), reason="torch's intra-op threads are not libgomp's here")
def test_the_team_cfunc_cache_is_reused_not_grown(tmp_path):
    """numba keys a closure's cache entry on its pickled closure variables: the team's cfunc closes
    over the kernel's Python source, not a dispatcher (which pickles with a per-process id), so a
    second process loads the first one's entries instead of adding its own."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    counts = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", _CACHE_RUN], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.split() == ["True", "2"]
        counts.append(sorted(p.name for p in tmp_path.rglob("*team_body*.nbc")))
    assert len(counts[0]) == 2 and counts[1] == counts[0]  # one entry per kernel, reused


def test_without_the_team_the_pool_runs(monkeypatch):
    """No libgomp of torch's: the njit kernel (on the pool), silently (expected on macOS); a numba
    that cannot build the team's entry: one warning, then the same. The outputs within the
    oracle's bound of the team's (the njit build is another compile of the same source)."""
    import functools
    import types

    from _nn_fused import _rms_oracle

    monkeypatch.setattr(_parallel, "MIN_ELEMS_PER_THREAD", 1)
    x = torch.randn(33, N)
    ran = _spy_runners(monkeypatch)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            with monkeypatch.context() as m:
                m.setattr(_parallel, "_team", lambda: None)  # _team.py did not import
                assert not _parallel.team_available()
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    quiet = [m_(x) for m_ in _modules()]

            def broken(*a):
                raise TypeError("a numba that cannot build it")

            monkeypatch.setattr(_parallel, "_team", lambda: types.SimpleNamespace(entry=broken))
            monkeypatch.setattr(_parallel, "_entry", functools.cache(_parallel._entry.__wrapped__))
            with pytest.warns(UserWarning, match=r"cannot run on torch's OpenMP threads here \(TypeError"):
                warned = [m_(x) for m_ in _modules()]
    finally:
        torch.set_num_threads(prev)
    assert ran["pool"] == 4 and ran["team"] == 0 and all(torch.equal(a, b) for a, b in zip(quiet, warned))
    rms = _modules()[1]
    ref, tol = _rms_oracle(x, rms, 1e-5)
    assert (quiet[1].double() - ref).abs().max().item() <= tol


def test_the_team_needs_torchs_libgomp(monkeypatch):
    """Importing ``_team`` fails (so the pool runs) where no libgomp, or several and none of them
    torch's, is loaded; among several (scikit-learn and scipy bring their own), torch's is taken,
    not one merely elsewhere in the same site-packages."""
    import threadpoolctl

    if not _parallel.team_available():
        pytest.skip("torch's intra-op threads are not libgomp's here")
    from normscope.nn import _team

    site = os.path.dirname(os.path.dirname(torch.__file__))
    torchs = [i for i in threadpoolctl.threadpool_info()
              if i.get("prefix") == "libgomp" and os.path.realpath(i["filepath"]).startswith(os.path.realpath(os.path.dirname(torch.__file__)))]
    assert len(torchs) == 1  # the one torch's wheel ships and libtorch_cpu loads
    others = [{"prefix": "libgomp", "filepath": os.path.join(site, "scikit_learn.libs", "libgomp-1.so.1")},
              {"prefix": "libgomp", "filepath": "/usr/lib/libgomp.so.1"}]
    for info, ok in [([], False), (others, False), (others[:1] + torchs + others[1:], True), (torchs, True)]:
        monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda info=info: info)
        if ok:
            assert _team._find_libgomp()._name == torchs[0]["filepath"]
        else:
            with pytest.raises(ImportError, match="not libgomp's"):
                _team._find_libgomp()
