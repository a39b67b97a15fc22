"""Probe: per-token metrics against a dense NumPy computation, streaming statistics, run()."""

import math
import warnings

import numpy as np
import pytest
import torch

from normscope.models import find_norms
from normscope.probe import norm_hooks, run
from normscope.probe.metrics import METRIC_ROWS, ROW, token_metrics
from normscope.probe.runner import SiteProbe, layer_geometry
from normscope.probe.stats import SPECS, StreamStats, hist_edges

from conftest import make_batches, make_gpt2, make_llama

pytestmark = pytest.mark.usefixtures("one_thread")


def dense_metrics(x, z, kind, eps, g, b):
    """Straightforward float64 NumPy reference, one formula per metric."""
    x = np.asarray(x, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    d = x.shape[1]
    out = {}
    for side, v in (("input", x), ("output", z)):
        n = np.linalg.norm(v, axis=1)
        out[(side, "norm")] = n
        out[(side, "angle_deg")] = np.degrees(np.arccos(np.clip(v.sum(1) / (n * np.sqrt(d)), -1, 1)))
        out[(side, "mean")] = v.mean(1)
        out[(side, "std")] = v.std(1)
        out[(side, "rms")] = np.sqrt((v**2).mean(1))
        out[(side, "cos2")] = (v.mean(1) / np.sqrt((v**2).mean(1))) ** 2
    xs = x / np.linalg.norm(x, axis=1, keepdims=True)
    zs = z / np.linalg.norm(z, axis=1, keepdims=True)
    out[(None, "rotation_deg")] = np.degrees(2 * np.arcsin(np.linalg.norm(xs - zs, axis=1) / 2))  # chord: exact near 0
    base = x.var(1) if kind == "layernorm" else (x**2).mean(1)
    out[(None, "radial_fraction")] = (1 + eps / base) ** -0.5
    ref = g * x / np.sqrt((x**2).mean(1, keepdims=True) + eps) + (0 if b is None else b)
    out[(None, "rms_gap")] = np.linalg.norm(z - ref, axis=1) / np.linalg.norm(z, axis=1)
    return out


def _ln(x, g, b, eps):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), g, b, eps)


# absolute tolerance per metric for float32 / float64 passes (angles in degrees)
# float32 sums: |Δμ| ≈ eps32·√d·RMS, so means and cos² get an absolute (not relative) tolerance
TOL32 = {"angle_deg": 2e-4, "rotation_deg": 5e-4, "mean": 1e-5, "cos2": 1e-8}
TOL64 = {"angle_deg": 1e-6, "rotation_deg": 1e-5}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_token_metrics_match_dense(dtype, kind):
    gen = torch.Generator().manual_seed(1)
    t, d, eps = 64, 48, 1e-3
    x = torch.randn(t, d, generator=gen, dtype=torch.float64)
    x[:8] += 5.0  # |mean| >> std: the cancellation-prone rows (cos² > 0.5)
    x[8:16] -= 40.0  # angles near 180°
    x[16:20] *= 1e-3  # small variance: rho clearly below 1
    x = x.to(dtype)
    g = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(d, generator=gen, dtype=torch.float64) * 0.1 if kind == "layernorm" else None
    if kind == "layernorm":
        z = _ln(x, g.to(dtype), b.to(dtype), eps)
    else:
        z = torch.nn.functional.rms_norm(x, (d,), g.to(dtype), eps)
    tm = token_metrics(x, z, kind=kind, eps=eps, gain=g, bias=b)
    vals, fin_in, fin_out = tm
    assert vals.dtype == torch.float64 and fin_in.all() and fin_out.all()
    ref = dense_metrics(x.numpy(), z.numpy(), kind, eps, g.numpy(), None if b is None else b.numpy())
    rel = 2e-6 if dtype == torch.float32 else 1e-12
    for key in METRIC_ROWS:
        got = tm.get(*key).numpy()
        want = ref[key]
        if key[1] == "rms_gap":
            if kind == "rmsnorm":  # the layer *is* that RMSNorm: rounding level
                assert got.max() < (1e-6 if dtype == torch.float32 else 1e-14)
                continue
            np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == torch.float32 else 1e-9)
            continue
        atol = (TOL32 if dtype == torch.float32 else TOL64).get(key[1], 0.0)
        np.testing.assert_allclose(got, want, rtol=rel, atol=atol, err_msg=str(key))
    # sanity of the crafted rows: angles near 180° for strongly negative means
    assert (tm.get("input", "angle_deg")[8:16] > 170).all()
    # radial fraction of the small-variance rows is visibly below 1
    assert (tm.get(None, "radial_fraction")[16:20] < 0.999).all()


def test_rms_gap_of_layernorm_is_naive_swap_error():
    """On centred inputs LN == RMSNorm (gap 0); the gap grows with |cos θ(x, 1)|."""
    d = 32
    x = torch.randn(10, d, dtype=torch.float64)
    x = x - x.mean(-1, keepdim=True)
    g, b = torch.rand(d, dtype=torch.float64) + 0.5, torch.randn(d, dtype=torch.float64)
    z = _ln(x, g, b, 1e-5)
    tm = token_metrics(x, z, kind="layernorm", eps=1e-5, gain=g, bias=b)
    assert tm.get(None, "rms_gap").max() < 1e-13
    tm2 = token_metrics(x + 1.0, _ln(x + 1.0, g, b, 1e-5), kind="layernorm", eps=1e-5, gain=g, bias=b)
    assert tm2.get(None, "rms_gap").min() > 1e-3


def test_stream_merge_equals_single_pass():
    gen = torch.Generator().manual_seed(2)
    specs = [SPECS["angle_deg"], SPECS["norm"], SPECS["mean"]]
    v = torch.stack([90 + 3 * torch.randn(3000, generator=gen, dtype=torch.float64),
                     torch.exp(torch.randn(3000, generator=gen, dtype=torch.float64)),
                     torch.randn(3000, generator=gen, dtype=torch.float64) * 1e-2])
    one = StreamStats(specs)
    one.update(v)
    parts = [StreamStats(specs) for _ in range(3)]
    for j, sl in enumerate([slice(0, 7), slice(7, 1800), slice(1800, 3000)]):
        parts[j].update(v[:, sl])
    merged = StreamStats(specs)  # empty state merges as identity
    for p in parts:
        merged.merge(p)
    streamed = StreamStats(specs)
    for sl in torch.split(torch.arange(3000), 97):
        streamed.update(v[:, sl])
    for other in (merged, streamed):
        assert torch.equal(other.n, one.n) and torch.equal(other.hist, one.hist)
        assert torch.equal(other.min, one.min) and torch.equal(other.max, one.max)
        torch.testing.assert_close(other.mean, one.mean, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(other.m2, one.m2, rtol=1e-11, atol=0)
    vn = v.numpy()
    np.testing.assert_allclose(one.mean.numpy(), vn.mean(1), rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(one.m2.numpy() / 3000), vn.std(1), rtol=1e-12)


@pytest.mark.parametrize("metric,sampler", [
    ("angle_deg", lambda g, n: 90 + 0.8 * torch.randn(n, generator=g, dtype=torch.float64)),
    ("norm", lambda g, n: torch.exp(2 + torch.randn(n, generator=g, dtype=torch.float64))),
    ("mean", lambda g, n: torch.randn(n, generator=g, dtype=torch.float64) * 0.05),
    ("cos2", lambda g, n: torch.rand(n, generator=g, dtype=torch.float64) ** 4),
    ("radial_fraction", lambda g, n: 1 - torch.rand(n, generator=g, dtype=torch.float64) * 1e-2),
])
def test_quantiles_within_one_bin(metric, sampler):
    gen = torch.Generator().manual_seed(3)
    spec = SPECS[metric]
    v = sampler(gen, 20000)
    s = StreamStats([spec])
    s.update(v[None])
    for q, key in ((0.01, "p01"), (0.5, "p50"), (0.99, "p99")):
        got = s.summary(0)[key]
        want = float(np.percentile(v.numpy(), 100 * q))
        tg = spec.transform(torch.tensor(got, dtype=torch.float64))
        tw = spec.transform(torch.tensor(want, dtype=torch.float64))
        assert abs(float(tg - tw)) <= spec.width * 1.0001, (metric, key, got, want)


def test_histogram_under_overflow_and_nan():
    s = StreamStats([SPECS["norm"]])
    s.update(torch.tensor([[0.0, 1e-9, 1.0, 1e9, math.nan]], dtype=torch.float64))
    h = s.hist_summary(0)
    assert h["underflow"] == 2 and h["overflow"] == 1 and sum(h["counts"]) == 1
    assert s.n.item() == 4  # NaN skipped
    assert len(hist_edges(h)) == len(h["counts"]) + 1


def _tiny_llama():
    return make_llama(d=32, kv_heads=2, vocab=61, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)


def _tiny_gpt2():
    model = make_gpt2(d=32, vocab=61)
    with torch.no_grad():  # non-trivial gains/biases
        for n, p in model.named_parameters():
            if "ln" in n:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _batches(n=3, b=2, s=9, seed=5):
    return make_batches(n, b, s, 61, seed=seed)


@pytest.mark.parametrize("make", [_tiny_gpt2, _tiny_llama])
def test_run_matches_dense_end_to_end(make):
    model = make()
    batches = _batches()
    sites = find_norms(model)
    got: dict = {s.name: ([], []) for s in sites}
    with torch.no_grad(), norm_hooks(model, sites, lambda s, x, z: (got[s.name][0].append(x.reshape(-1, x.shape[-1])),
                                                                        got[s.name][1].append(z.reshape(-1, z.shape[-1])))):
        for bt in batches:
            model(input_ids=bt)
    stats = run(model, batches, progress=False)
    m = stats["models"][0]
    assert m["tokens"] == 3 * 2 * 9 and m["hidden_size"] == 32 and len(m["layers"]) == len(sites)
    assert m["random_baseline"]["angle_deg"]["std"] == pytest.approx(57.29578 / math.sqrt(32), rel=1e-6)
    for site, layer in zip(sites, m["layers"]):
        x = torch.cat(got[site.name][0]).numpy()
        z = torch.cat(got[site.name][1]).numpy()
        b = site.bias()
        ref = dense_metrics(x, z, site.kind, site.eps, site.gain().numpy(), None if b is None else b.numpy())
        assert layer["count"] == 54 and layer["name"] == site.name and layer["role"] == site.role
        for side, metric in METRIC_ROWS:
            summ = layer[metric] if side is None else layer[side][metric]
            want = ref[(side, metric)]
            if metric == "rms_gap" and site.kind == "rmsnorm":
                assert summ["max"] < 1e-6
                continue
            atol = 2e-4 if metric.endswith("deg") else 1e-7
            assert summ["mean"] == pytest.approx(want.mean(), rel=1e-5, abs=atol), (site.name, side, metric)
            assert summ["std"] == pytest.approx(want.std(), rel=1e-4, abs=atol), (site.name, side, metric)
            assert summ["min"] == pytest.approx(want.min(), rel=1e-5, abs=atol)
            assert summ["max"] == pytest.approx(want.max(), rel=1e-5, abs=atol)
            assert summ["count"] == 54 and sum(summ["hist"]["counts"]) + summ["hist"]["underflow"] + summ["hist"]["overflow"] == 54


def test_run_skip_first():
    model = _tiny_llama()
    batches = _batches()
    full = run(model, batches, progress=False)["models"][0]
    skip = run(model, batches, skip_first=True, progress=False)["models"][0]
    assert skip["tokens"] == 3 * 2 * 8 and full["tokens"] == 3 * 2 * 9
    assert all(layer["count"] == 48 for layer in skip["layers"])
    # skip_first equals probing positions 1.. directly
    site = find_norms(model)[0]
    a, b = SiteProbe(site, skip_first=True), SiteProbe(site)
    x = torch.randn(2, 5, 32)
    z = site.module(x)
    a(site, x, z)
    b(site, x[:, 1:], z[:, 1:])
    assert torch.equal(a.stats.hist, b.stats.hist)
    torch.testing.assert_close(a.stats.mean, b.stats.mean, rtol=0, atol=0)


def test_skip_first_per_head_layout():
    """(batch, heads, seq, head_dim) inputs drop position 0 along seq_dim=2."""
    from normscope.models.registry import NormSite

    mod = torch.nn.RMSNorm(4, eps=1e-6)
    site = NormSite("q", mod, 0, "other", "rmsnorm", True, 1e-6, "q_norm", 4, None, 2)
    x = torch.randn(2, 3, 5, 4)
    p, q = SiteProbe(site, skip_first=True), SiteProbe(site)
    p(site, x, mod(x))
    q(site, x[:, :, 1:], mod(x[:, :, 1:]))
    assert int(p.stats.n[0]) == 2 * 3 * 4
    torch.testing.assert_close(p.stats.mean, q.stats.mean, rtol=0, atol=0)


def test_nonfinite_counted_not_crashing():
    model = _tiny_llama()
    with torch.no_grad():
        model.model.embed_tokens.weight[7, 3] = float("nan")
        model.model.embed_tokens.weight[8, 0] = float("inf")
    bt = torch.tensor([[3, 7, 4, 5], [8, 3, 3, 3]])
    m = run(model, [bt], progress=False)["models"][0]
    first = m["layers"][0]  # layers.0.input_layernorm sees the embeddings directly
    assert first["nonfinite"]["input_tokens"] == 2
    assert first["nonfinite"]["input_values"] == 2
    assert first["count"] == 6
    assert all(la["count"] + max(la["nonfinite"]["input_tokens"], la["nonfinite"]["output_tokens"]) <= 8
               for la in m["layers"])
    assert all(math.isfinite(la["input"]["norm"]["mean"]) for la in m["layers"] if la["count"])


def test_geometry_fields():
    model = _tiny_gpt2()
    sites = find_norms(model)
    geo = layer_geometry(sites[0])
    g = sites[0].gain().double()
    b = sites[0].bias().double()
    m = torch.diag(g * g) - torch.outer(g, g) / 32
    axes = (32 * torch.linalg.eigvalsh(m).clamp(min=0)).sqrt().flip(0)[:31]
    assert geo["semi_axis_max"] == pytest.approx(float(axes[0]), rel=1e-6)
    assert geo["semi_axis_min"] == pytest.approx(float(axes[-1]), rel=1e-6)
    assert geo["offset"] == pytest.approx(float((1 / g) @ b), rel=1e-9)
    rms_site = find_norms(_tiny_llama())[0]
    geo2 = layer_geometry(rms_site)
    ga = rms_site.gain().abs() * math.sqrt(32)
    assert geo2["semi_axis_max"] == pytest.approx(float(ga.max())) and geo2["offset"] is None


def test_hooks_see_keyword_inputs_and_are_removed():
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(4)

        def forward(self, h):
            return self.ln(input=h)  # hidden state passed as a keyword

    net = Net()
    with pytest.warns(UserWarning):
        sites = find_norms(net)
    seen = []
    h = torch.randn(2, 3, 4)
    with norm_hooks(net, sites, lambda s, x, z: seen.append((x, z))):
        out = net(h)
    assert len(seen) == 1 and seen[0][0] is h and seen[0][1] is out
    net(h)
    assert len(seen) == 1  # removed on exit


def test_bf16_inputs_are_upcast_exactly():
    x = torch.randn(16, 24).to(torch.bfloat16)
    z = torch.nn.functional.rms_norm(x, (24,), eps=1e-5)
    g = torch.ones(24, dtype=torch.float64)
    a, _, _ = token_metrics(x, z, kind="rmsnorm", eps=1e-5, gain=g, bias=None)
    b, _, _ = token_metrics(x.float(), z.float(), kind="rmsnorm", eps=1e-5, gain=g, bias=None)
    assert torch.equal(a, b)
    assert a[ROW[(None, "rms_gap")]].max() < 1e-2  # bf16 output rounding (8-bit mantissa) bounds the gap


def test_shard_round_robin():
    from normscope.probe import shard

    items = [torch.tensor([[i]]) for i in range(7)]
    assert [int(b) for b in shard(items, 1, 3)] == [1, 4]
    assert len(list(shard(items))) == 7  # no process group: everything


def test_scratch_buffer_usable_in_and_out_of_inference_mode():
    from normscope.probe import metrics

    metrics._LOCAL.work.clear()
    x, g = torch.randn(300, 40), torch.ones(40, dtype=torch.float64)
    with torch.inference_mode():
        a, _, _ = token_metrics(x, x, kind="rmsnorm", eps=0.0, gain=g, bias=None)
    b, _, _ = token_metrics(x, x, kind="rmsnorm", eps=0.0, gain=g, bias=None)
    assert torch.equal(a, b)


def test_block_sweep_is_bitwise_independent_of_block_size(monkeypatch):
    """Each token's sums are row reductions, so the cache blocking cannot change a single bit."""
    from normscope.probe import metrics

    gen = torch.Generator().manual_seed(9)
    x = torch.randn(257, 40, generator=gen) + 0.3
    g, b = torch.rand(40, dtype=torch.float64) + 0.5, torch.randn(40, dtype=torch.float64)
    z = _ln(x, g.float(), b.float(), 1e-5)
    one = token_metrics(x, z, kind="layernorm", eps=1e-5, gain=g, bias=b)
    monkeypatch.setattr(metrics, "_BLOCK_BYTES", 7 * 40 * 4)  # 7 tokens per block, ragged last block
    many = token_metrics(x, z, kind="layernorm", eps=1e-5, gain=g, bias=b)
    assert torch.equal(one.values, many.values)


@pytest.mark.parametrize("where", ["compile", "call"])
def test_compile_failure_falls_back_to_eager_once(monkeypatch, where):
    """torch.compile failing (no compiler) or the compiled kernel rejecting a call: one warning,
    the eager sweep's exact values, and no compiled kernel for the rest of the process."""
    from normscope.probe import metrics

    def broken(*a, **k):
        raise RuntimeError("no compiler, or a shape the compiler cannot handle")

    x = torch.randn(30, 16)
    g = torch.ones(16, dtype=torch.float64)
    want = token_metrics(x, x, kind="rmsnorm", eps=1e-6, gain=g, bias=None).values
    monkeypatch.setenv("NORMSCOPE_COMPILE", "1")
    if where == "compile":
        monkeypatch.setattr(torch, "compile", broken)
        monkeypatch.setattr(metrics.compiled_sums, "_compiled", None)  # not tried yet in this process
    else:
        monkeypatch.setattr(metrics.compiled_sums, "_compiled", broken)
    with pytest.warns(UserWarning, match=r"torch.compile is unavailable here \(RuntimeError\); the probe's per-token"):
        got = token_metrics(x, x, kind="rmsnorm", eps=1e-6, gain=g, bias=None).values
    assert torch.equal(got, want) and metrics.compiled_sums() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process
        assert torch.equal(token_metrics(x, x, kind="rmsnorm", eps=1e-6, gain=g, bias=None).values, want)


@pytest.mark.slow
def test_compiled_sweep_matches_dense(monkeypatch):
    """The compiled single kernel (NORMSCOPE_COMPILE=1) meets the same tolerances as the eager sweep."""
    from normscope.probe import metrics

    monkeypatch.setenv("NORMSCOPE_COMPILE", "1")
    monkeypatch.setattr(metrics.compiled_sums, "_compiled", None)
    calls = []
    real = metrics._sums_eager
    monkeypatch.setattr(metrics, "_sums_eager", lambda *a: calls.append(1) or real(*a))
    test_token_metrics_match_dense(torch.float32, "layernorm")
    test_token_metrics_match_dense(torch.float32, "rmsnorm")
    assert metrics.compiled_sums() is not None and not calls  # the compiled kernel did every sum


@pytest.mark.parametrize("skip_first", [False, True])
def test_tail_matches_dense(skip_first):
    """The tail block against a dense NumPy pass: top-k shares with their locations, the mean share
    by position and the fractions above 10/d and 100/d."""
    model = _tiny_llama()
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randint(0, 61, (3, 7 + i), generator=gen) for i in range(3)]
    for b in batches:
        b[:, 0] = 1  # identical first tokens: tied shares at position 0 across windows
    sites = find_norms(model)
    xs: dict = {s.name: [] for s in sites}
    with torch.no_grad(), norm_hooks(model, sites, lambda s, x, z: xs[s.name].append(x.double())):
        for bt in batches:
            model(input_ids=bt)
    m = run(model, batches, skip_first=skip_first, progress=False)["models"][0]
    first = 1 if skip_first else 0
    for site, layer in zip(sites, m["layers"]):
        rows = []  # (share, batch, window, position, token)
        offset = 0
        for bi, x in enumerate(xs[site.name]):
            x = x.numpy()
            bsz, seq, d = x.shape
            sq = (x**2).sum(-1)
            share = np.where(sq > 0, x.sum(-1) ** 2 / (d * np.where(sq > 0, sq, 1.0)), 0.0)  # 0 for x = 0
            for w in range(bsz):
                for p in range(first, seq):
                    rows.append((share[w, p], bi, w, p, offset + w * seq + p))
            offset += bsz * seq
        tail = layer["input"]["tail"]
        want = sorted(rows, key=lambda r: (-r[0], r[1], r[2], r[3]))[:8]
        got = tail["top"]
        assert [(t["batch"], t["window"], t["position"], t["token"]) for t in got] == [r[1:] for r in want]
        # shares from float32 sums, recomputed in float64 where cos² > 0.5: relative ~1e-6 (float32 rounding
        # of the model's activations is identical on both sides; only the sums' rounding differs)
        np.testing.assert_allclose([t["share"] for t in got], [r[0] for r in want], rtol=2e-6, atol=1e-9)
        shares = np.array([r[0] for r in rows])
        pos = np.array([r[3] for r in rows])
        for lab, sel in (("0", pos == 0), ("1", pos == 1), ("3", pos == 3), (">=4", pos >= 4)):
            if sel.any():
                assert tail["mean_share_by_position"][lab] == pytest.approx(shares[sel].mean(), rel=2e-6, abs=1e-9)
                assert tail["count_by_position"][lab] == int(sel.sum())
            else:
                assert tail["mean_share_by_position"][lab] is None
        d = site.d
        assert tail["frac_above_10_over_d"] == pytest.approx(float((shares > 10 / d).mean()))
        assert tail["frac_above_100_over_d"] == pytest.approx(float((shares > 100 / d).mean()))


def test_tail_merge_equals_one_pass():
    from normscope.probe.stats import TailStats

    gen = torch.Generator().manual_seed(8)
    share = torch.rand(3, 40, generator=gen, dtype=torch.float64) ** 3
    share[:, :5] = 2.0  # ties across batches, above every rand()³
    win = torch.arange(40) // 10
    pos = torch.arange(40) % 10
    one, parts = TailStats(16), [TailStats(16), TailStats(16)]
    for b in range(3):
        one.update(share[b], b, win, pos, torch.arange(40), (4, 10))
        parts[b % 2].update(share[b], b, win, pos, torch.arange(40), (4, 10))
    merged = TailStats.from_state(parts[1].state()).merge(parts[0])
    assert merged.summary()["top"] == one.summary()["top"]
    assert [t["share"] for t in one.summary()["top"]][:5] == [2.0] * 5
    assert [t["token"] for t in one.summary()["top"]][:5] == [0, 1, 2, 3, 4]  # ties: earliest location first
    assert torch.equal(merged.pos_n, one.pos_n) and torch.equal(merged.above, one.above)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("rows", ["all", "some"])
def test_small_rotations_are_float64_exact(dtype, rows):
    """Rotations below 5° are recomputed in float64 (scratch buffers, all rows or a subset): they
    match the dense float64 chord formula on the same (rounded) values to ~1e-9 relative (the
    chord of unit vectors rounds at u64·√d ≈ 1e-15 absolute, c ≳ 1e-4 here)."""
    gen = torch.Generator().manual_seed(7)
    t, d = 40, 96
    x = torch.randn(t, d, generator=gen, dtype=torch.float64)
    tilt = 1 + 1e-2 * torch.randn(t, d, generator=gen, dtype=torch.float64)
    if rows == "some":
        tilt[::2] = 1 + torch.rand(t // 2, d, generator=gen, dtype=torch.float64) * 3  # large angles
    x, z = x.to(dtype), (x * tilt).to(dtype)
    g = torch.ones(d, dtype=torch.float64)
    tm = token_metrics(x, z, kind="rmsnorm", eps=1e-6, gain=g, bias=None)
    want = dense_metrics(x.double().numpy(), z.double().numpy(), "rmsnorm", 1e-6, g.numpy(), None)
    got = tm.get(None, "rotation_deg").numpy()
    small = want[(None, "rotation_deg")] < 5.0
    assert small.sum() >= (t if rows == "all" else t // 2)
    np.testing.assert_allclose(got[small], want[(None, "rotation_deg")][small], rtol=1e-9)
    assert x.dtype == dtype and z.dtype == dtype  # inputs untouched (scratch copies only)


def test_concurrent_threads_do_not_share_scratch():
    """Two threads computing bf16 metrics at once (scratch buffers in use: dtype conversion and the
    small-rotation refinement) give bit-identical results to one thread alone."""
    from concurrent.futures import ThreadPoolExecutor

    gen = torch.Generator().manual_seed(11)
    g = torch.ones(64, dtype=torch.float64)
    work = []
    for _ in range(2):
        x = torch.randn(500, 64, generator=gen).to(torch.bfloat16)
        z = (x.float() * (1 + 1e-2 * torch.randn(500, 64, generator=gen))).to(torch.bfloat16)
        work.append((x, z))
    run1 = lambda xz: token_metrics(xz[0], xz[1], kind="rmsnorm", eps=1e-6, gain=g, bias=None).values  # noqa: E731
    alone = [run1(xz) for xz in work]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(20):
            together = list(pool.map(run1, work))
            assert all(torch.equal(a, b) for a, b in zip(alone, together))


def test_scratch_is_kept_only_inside_workspace():
    """One-off calls keep no scratch memory; inside ``workspace()`` (a probe run) the buffers stay
    between calls and are freed when the block ends."""
    from normscope.probe import metrics

    x = torch.randn(50, 16).to(torch.bfloat16)
    g = torch.ones(16, dtype=torch.float64)
    token_metrics(x, x, kind="rmsnorm", eps=1e-6, gain=g, bias=None)
    assert metrics._LOCAL.work == {}
    with metrics.workspace():
        token_metrics(x, x, kind="rmsnorm", eps=1e-6, gain=g, bias=None)
        assert metrics._LOCAL.work  # conversion and refinement buffers kept
        with metrics.workspace():  # nested: the outer block still owns them
            pass
        assert metrics._LOCAL.work
    assert metrics._LOCAL.work == {}
