"""normscope.nn against torch's reference modules, with tolerances derived from rounding.

``_bound(ref, dtype, n)`` = passes·(2u + 4·n·u_c)·max(max|ref|, 1): u = eps of the output dtype
(the output is rounded once, ≤ u/2 relative, doubled for the reference's own rounding), u_c =
eps of the compute dtype (float32, or float64 for float64) and 4·n·u_c the worst-case relative
error of the n-term sums behind mean and mean square (recursive summation, n·u_c each, and the
division by their root doubles it). ``passes`` = 2 for gradients (the backward sums again).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import normscope.nn as nsn

EPSILONS = [0.0, 1e-12, 1e-5, 0.1]


def _bound(ref, dtype, n, passes=1):
    u = torch.finfo(dtype).eps
    uc = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    mag = ref.abs().max().item() if isinstance(ref, torch.Tensor) else float(ref)
    return passes * (2 * u + 4 * n * uc) * max(mag, 1.0)


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _inputs(dtype, shape=(3, 5, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 + 0.7
    return x.to(dtype)


def _params(module, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if module.weight is not None:
            module.weight.copy_(torch.randn(module.weight.shape, generator=g, dtype=torch.float64))
        if getattr(module, "bias", None) is not None:
            module.bias.copy_(torch.randn(module.bias.shape, generator=g, dtype=torch.float64))
    return module


def _bf16_bound(ours, theirs, ref):
    """ours within torch's own bf16 error: max error at most torch's max error plus one bf16 ulp."""
    err_ours = (ours.double() - ref).abs().max().item()
    err_torch = (theirs.double() - ref).abs().max().item()
    ulp = 2.0**-7 * ref.abs().max().item()
    assert err_ours <= err_torch + ulp, (err_ours, err_torch, ulp)


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", ["forward", "trace"])
def test_layernorm_equals_torch(eps, dtype, path):
    d = 64
    x = _inputs(dtype)
    ours = _params(nsn.LayerNorm(d, eps=eps, dtype=dtype), d)
    ref = torch.nn.LayerNorm(d, eps=eps, dtype=dtype)
    ref.load_state_dict(ours.state_dict())
    out = ours(x) if path == "forward" else ours.trace(x).output
    assert out.dtype == dtype
    assert _err(out, ref(x)) <= _bound(ref(x), dtype, d)


@pytest.mark.parametrize("eps", EPSILONS)
def test_layernorm_bf16_within_torch_error(eps):
    d = 64
    x = _inputs(torch.bfloat16)
    ours = _params(nsn.LayerNorm(d, eps=eps), d).to(torch.bfloat16)
    ref64 = F.layer_norm(x.double(), (d,), ours.weight.double(), ours.bias.double(), eps)
    torch_out = F.layer_norm(x, (d,), ours.weight, ours.bias, eps)
    for out in (ours(x), ours.trace(x).output):
        assert out.dtype == torch.bfloat16
        _bf16_bound(out, torch_out, ref64)


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_no_projection_equals_torch_rmsnorm(eps, dtype):
    d = 64
    x = _inputs(dtype)
    ours = _params(nsn.LayerNorm(d, eps=eps, project=False, bias=False, dtype=dtype), d)
    ref = torch.nn.RMSNorm(d, eps=eps, dtype=dtype)
    ref.load_state_dict(ours.state_dict())
    for out in (ours(x), ours.trace(x).output):
        assert _err(out, ref(x)) <= _bound(ref(x), dtype, d)


def _grad_unless_fused(backend):
    """no_grad for the backends with CPU kernels that only run without autograd (eager's blocked
    kernel, numba); "auto" and "torch" keep autograd on, so the differentiable paths are checked too."""
    return torch.no_grad() if backend in ("eager", "numba") else torch.enable_grad()


@pytest.mark.parametrize("backend", ["auto", "eager", "torch"])
@pytest.mark.parametrize("eps", [None, *EPSILONS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rmsnorm_equals_torch(backend, eps, dtype):
    d = 64
    x = _inputs(dtype)
    ours = _params(nsn.RMSNorm(d, eps=eps, backend=backend, dtype=dtype), d)
    ref = torch.nn.RMSNorm(d, eps=eps, dtype=dtype)
    ref.load_state_dict(ours.state_dict())
    with _grad_unless_fused(backend):  # the fused kernels run where nothing is differentiated
        out = ours(x)
    for out in (out, ours.trace(x).output):
        assert out.dtype == dtype
        assert _err(out, ref(x)) <= _bound(ref(x), dtype, d)


def test_rmsnorm_bf16_and_bias():
    d = 64
    x = _inputs(torch.bfloat16)
    ours = _params(nsn.RMSNorm(d, eps=1e-5, bias=True), d).to(torch.bfloat16)
    ref64 = F.rms_norm(x.double(), (d,), ours.weight.double(), 1e-5) + ours.bias.double()
    torch_out = F.rms_norm(x, (d,), ours.weight, 1e-5) + ours.bias
    _bf16_bound(ours(x), torch_out, ref64)


@pytest.mark.parametrize("radius, norm", [("sqrt_d", math.sqrt(64)), ("unit", 1.0), ("inv_sqrt_d", 1 / math.sqrt(64))])
@pytest.mark.parametrize("project", [True, False])
def test_radius_sets_the_norm(radius, norm, project):
    x = _inputs(torch.float64)
    ln = nsn.LayerNorm(64, eps=0.0, project=project, affine=False, radius=radius).double()
    out = ln(x)
    assert _err(out.norm(dim=-1), torch.full(out.shape[:-1], norm, dtype=torch.float64)) <= _bound(norm, torch.float64, 64)
    if project:  # Σ of 64 entries of size ≤ √64: 64·u·√64
        assert out.sum(-1).abs().max() <= 64 * torch.finfo(torch.float64).eps * 8
    assert torch.allclose(out, ln.trace(x).normalized)


def test_trace_intermediates():
    x = _inputs(torch.float64)
    ln = _params(nsn.LayerNorm(64, eps=1e-3).double(), 64)
    t = ln.trace(x)
    dt = torch.float64
    assert _err(t.projected, x - x.mean(-1, keepdim=True)) <= _bound(x, dt, 64)
    ref_denom = torch.sqrt(x.var(-1, unbiased=False) + 1e-3)
    assert _err(t.denom.squeeze(-1), ref_denom) <= _bound(ref_denom, dt, 64)
    assert _err(t.normalized, t.projected / t.denom) <= _bound(t.normalized, dt, 1)
    ref_out = ln.weight * t.normalized + ln.bias
    assert _err(t.output, ref_out) <= _bound(ref_out, dt, 1)
    assert t.input is x


def test_steps_switched_off():
    x = _inputs(torch.float64)
    only_project = nsn.LayerNorm(64, scale=False, affine=False).double()
    assert _err(only_project(x), x - x.mean(-1, keepdim=True)) <= _bound(x, torch.float64, 64)
    nothing = nsn.LayerNorm(64, project=False, scale=False, affine=False)
    assert torch.equal(nothing(x), x)
    no_bias = nsn.LayerNorm(64, bias=False)
    assert no_bias.bias is None and set(no_bias.state_dict()) == {"weight"}


def test_loads_torch_layernorm_state_dict():
    ref = torch.nn.LayerNorm(32)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours = nsn.LayerNorm(32)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(10, 32)
    assert _err(ours(x), ref(x)) <= _bound(ref(x), torch.float32, 32)
    with pytest.raises(RuntimeError):
        nsn.LayerNorm(32, affine=False).load_state_dict(ref.state_dict())


def test_constant_input_eps_zero():
    x = torch.full((2, 8), 0.3, dtype=torch.float64)
    torch_ln = torch.nn.LayerNorm(8, eps=0.0).double()
    assert torch.isnan(torch_ln(x)).all()
    assert torch.isnan(nsn.LayerNorm(8, eps=0.0).double()(x)).all()  # torch's behaviour by default
    eq5 = _params(nsn.LayerNorm(8, eps=0.0, eq5=True).double(), 8)
    out = eq5(x)
    assert torch.equal(out, eq5.bias.expand_as(out).detach())  # Riechers Eq. 5: a ∝ 1 ↦ 0, so z = b
    assert torch.equal(eq5.trace(x).normalized, torch.zeros_like(x))
    mixed = torch.stack([x[0], torch.arange(8.0, dtype=torch.float64)])
    ref_row = F.layer_norm(mixed[1:], (8,), eq5.weight, eq5.bias, 0.0)
    assert _err(eq5(mixed)[1:], ref_row) <= _bound(ref_row, torch.float64, 8)
    rms = nsn.LayerNorm(8, eps=0.0, project=False, eq5=True, affine=False).double()
    assert torch.equal(rms(torch.zeros(1, 8, dtype=torch.float64)), torch.zeros(1, 8, dtype=torch.float64))


def test_gradients_match_torch():
    x = _inputs(torch.float64, shape=(4, 16)).requires_grad_()
    ours = _params(nsn.LayerNorm(16, eps=1e-5, radius="unit").double(), 16)
    assert torch.autograd.gradcheck(lambda t: ours(t), (x,))
    ref = torch.nn.LayerNorm(16).double()
    full = _params(nsn.LayerNorm(16).double(), 16)
    ref.load_state_dict(full.state_dict())
    g1 = torch.autograd.grad(full.trace(x).output.square().sum(), x)[0]
    g2 = torch.autograd.grad(ref(x).square().sum(), x)[0]
    assert _err(g1, g2) <= _bound(g2, torch.float64, 16, passes=2)


def test_multi_dim_normalized_shape():
    x = _inputs(torch.float64, shape=(3, 4, 5))
    ours = _params(nsn.LayerNorm((4, 5)).double(), 20)
    ref = F.layer_norm(x, (4, 5), ours.weight, ours.bias, 1e-5)
    assert _err(ours.trace(x).output, ref) <= _bound(ref, torch.float64, 20)
    rms = _params(nsn.LayerNorm((4, 5), project=False).double(), 20)
    ref_rms = F.rms_norm(x, (4, 5), rms.weight, 1e-5) + rms.bias
    assert _err(rms(x), ref_rms) <= _bound(ref_rms, torch.float64, 20)


@pytest.mark.parametrize("backend", ["auto", "eager", "numba"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_group_layernorm(dtype, backend):
    x = _inputs(dtype, shape=(6, 24))
    one = _params(nsn.GroupLayerNorm(24, 1, eps=1e-5, dtype=dtype, backend=backend), 24)
    ln = torch.nn.LayerNorm(24, dtype=dtype)
    ln.load_state_dict(one.state_dict())
    with _grad_unless_fused(backend):
        out1 = one(x)
    assert _err(out1, ln(x)) <= _bound(ln(x), dtype, 24)
    gln = _params(nsn.GroupLayerNorm(24, 4, eps=0.1, dtype=dtype, backend=backend), 24)
    per_group = torch.cat([F.layer_norm(x[:, 6 * k : 6 * k + 6], (6,), eps=0.1) for k in range(4)], -1)
    expected = per_group * gln.weight + gln.bias
    with _grad_unless_fused(backend):
        out4 = gln(x)
    for out in (out4, gln.trace(x).output):
        assert _err(out, expected) <= _bound(expected, dtype, 6, passes=2)  # x̂ rounded, then the affine
    assert gln.trace(x).denom.shape == (6, 4)


def test_group_size_two_is_a_sign_function():
    x = torch.randn(100, 8, dtype=torch.float64)
    out = nsn.GroupLayerNorm(8, 4, eps=0.0, affine=False)(x)
    pairs = x.unflatten(-1, (4, 2))
    expected = torch.sign(pairs[..., 0] - pairs[..., 1]).unsqueeze(-1) * torch.tensor([1.0, -1.0], dtype=torch.float64)
    # The rounded pair mean shifts both entries by ≤ u·|x|, so x̂ = ±1 to ≤ 4u·|x|/|a − b| relative.
    gap = (pairs[..., 0] - pairs[..., 1]).abs().min().item()
    assert _err(out, expected.flatten(-2)) <= 4 * torch.finfo(torch.float64).eps * x.abs().max().item() / gap


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nsn.LayerNorm(8, eps=-1e-5), "eps"),
        (lambda: nsn.LayerNorm(8, eps=float("nan")), "eps"),
        (lambda: nsn.LayerNorm(0), "normalized_shape"),
        (lambda: nsn.LayerNorm(8, radius="huge"), "radius"),
        (lambda: nsn.RMSNorm(8, backend="cuda-magic"), "backend"),
        (lambda: nsn.RMSNorm(8, affine=False, bias=True), "bias"),
        (lambda: nsn.GroupLayerNorm(10, 3), "num_groups"),
        (lambda: nsn.GroupLayerNorm((2, 5), 1), "one feature dim"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_input_shape_message():
    for mod in (nsn.LayerNorm(8), nsn.RMSNorm(8), nsn.GroupLayerNorm(8, 2)):
        with pytest.raises(ValueError, match=r"trailing dims \[8\].*\[4, 7\]"):
            mod(torch.randn(4, 7))


@pytest.mark.parametrize("project", [True, False])
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("radius", ["sqrt_d", "unit", "inv_sqrt_d"])
def test_forward_equals_trace_for_every_configuration(project, scale, affine, bias, radius):
    x = _inputs(torch.float64)
    ln = _params(nsn.LayerNorm(64, eps=1e-3, project=project, scale=scale, affine=affine, bias=bias, radius=radius).double(), 64)
    ref = ln.trace(x).output
    assert _err(ln(x), ref) <= _bound(ref, torch.float64, 64, passes=2)  # two routes, each within one bound


@pytest.mark.parametrize("backend", ["eager", "torch", "compile"])
def test_rmsnorm_bias_and_gradients(backend):
    d = 32
    x = _inputs(torch.float64, shape=(5, d)).requires_grad_()
    ours = _params(nsn.RMSNorm(d, eps=1e-5, bias=True, backend=backend, dtype=torch.float64), d)
    ref = lambda t: F.rms_norm(t, (d,), ours.weight, 1e-5) + ours.bias  # noqa: E731
    with torch.no_grad():
        assert _err(ours(x), ref(x)) <= _bound(ref(x), torch.float64, d)
    g1 = torch.autograd.grad(ours(x).square().sum(), [x, ours.weight, ours.bias])
    g2 = torch.autograd.grad(ref(x).square().sum(), [x, ours.weight, ours.bias])
    for a, b in zip(g1, g2):
        assert _err(a, b) <= _bound(b, torch.float64, 5 * d, passes=2)  # weight/bias grads sum over 5 rows too


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_gradcheck(affine, bias):
    if bias and not affine:
        return
    x = _inputs(torch.float64, shape=(3, 8)).requires_grad_()
    m = _params(nsn.RMSNorm(8, eps=1e-3, affine=affine, bias=bias, backend="eager", dtype=torch.float64), 8)
    params = [p for p in m.parameters()]
    assert torch.autograd.gradcheck(lambda t, *ps: m(t), (x, *params))


def test_group_layernorm_gradcheck():
    x = _inputs(torch.float64, shape=(3, 12)).requires_grad_()
    m = _params(nsn.GroupLayerNorm(12, 3, eps=1e-3, dtype=torch.float64), 12)
    assert torch.autograd.gradcheck(lambda t, w, b: m(t), (x, m.weight, m.bias))
    with torch.no_grad():
        assert _err(m(x), m.trace(x).output) <= _bound(m(x), torch.float64, 4, passes=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "bias", "none"])
@pytest.mark.parametrize("scale", [1.0, 1e30])
@pytest.mark.parametrize("threads", [1, 2])
def test_rms_norm_row_blocks_give_the_same_bits(monkeypatch, dtype, affine, scale, threads):
    """The blocked RMSNorm runs the unblocked kernel's operations row block by row block, so its
    output is bit-identical (ragged last block included), with one thread and with two (each its
    block size); rows whose mean square overflows (1e30² in float32) fall back to the same exact
    path."""
    from normscope.nn import functional as fn

    monkeypatch.setattr(fn, "BLOCK_ELEMS", 96 * 7)  # blocks of 7 rows of 96: a ragged last block
    monkeypatch.setattr(fn, "BLOCK_ELEMS_THREADED", 96 * 11)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _same_bits_blocked(fn, monkeypatch, dtype, affine, scale)
    finally:
        torch.set_num_threads(prev)


def _same_bits_blocked(fn, monkeypatch, dtype, affine, scale):
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 41, 96, generator=gen, dtype=torch.float64) * scale).to(dtype)
    w = torch.rand(96, generator=gen, dtype=torch.float64).to(dtype) + 0.5 if "weight" in affine else None
    b = torch.randn(96, generator=gen, dtype=torch.float64).to(dtype) if "bias" in affine else None
    assert fn.blocks_apply(x, w, b) and x.numel() > fn.block_elems()
    got = fn.rms_norm(x, (96,), w, b, 1e-5)
    monkeypatch.setattr(fn, "blocks_apply", lambda *a: False)
    want = fn.rms_norm(x, (96,), w, b, 1e-5)
    assert got.shape == x.shape and got.dtype == dtype
    assert torch.equal(got, want)
