"""normscope.nn against torch's reference modules, with explicit tolerances per dtype."""

import math

import pytest
import torch
import torch.nn.functional as F

import normscope.nn as nsn

EPSILONS = [0.0, 1e-12, 1e-5, 0.1]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


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
    assert (out - ref(x)).abs().max().item() <= TOL[dtype]


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
        assert (out - ref(x)).abs().max().item() <= TOL[dtype]


@pytest.mark.parametrize("backend", ["auto", "eager", "torch"])
@pytest.mark.parametrize("eps", [None, *EPSILONS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rmsnorm_equals_torch(backend, eps, dtype):
    d = 64
    x = _inputs(dtype)
    ours = _params(nsn.RMSNorm(d, eps=eps, backend=backend, dtype=dtype), d)
    ref = torch.nn.RMSNorm(d, eps=eps, dtype=dtype)
    ref.load_state_dict(ours.state_dict())
    for out in (ours(x), ours.trace(x).output):
        assert out.dtype == dtype
        assert (out - ref(x)).abs().max().item() <= TOL[dtype]


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
    assert torch.allclose(out.norm(dim=-1), torch.full(out.shape[:-1], norm, dtype=torch.float64), rtol=1e-12)
    if project:
        assert out.sum(-1).abs().max() < 1e-12
    assert torch.allclose(out, ln.trace(x).normalized)


def test_trace_intermediates():
    x = _inputs(torch.float64)
    ln = _params(nsn.LayerNorm(64, eps=1e-3).double(), 64)
    t = ln.trace(x)
    assert torch.allclose(t.projected, x - x.mean(-1, keepdim=True), atol=1e-14)
    assert torch.allclose(t.denom.squeeze(-1), torch.sqrt(x.var(-1, unbiased=False) + 1e-3), atol=1e-14)
    assert torch.allclose(t.normalized, t.projected / t.denom, atol=1e-14)
    assert torch.allclose(t.output, ln.weight * t.normalized + ln.bias, atol=1e-14)
    assert t.input is x


def test_steps_switched_off():
    x = _inputs(torch.float64)
    only_project = nsn.LayerNorm(64, scale=False, affine=False).double()
    assert torch.allclose(only_project(x), x - x.mean(-1, keepdim=True), atol=1e-14)
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
    assert (ours(x) - ref(x)).abs().max() <= 1e-6
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
    assert torch.allclose(eq5(mixed)[1:], ref_row, atol=1e-14)
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
    assert (g1 - g2).abs().max() < 1e-12


def test_multi_dim_normalized_shape():
    x = _inputs(torch.float64, shape=(3, 4, 5))
    ours = _params(nsn.LayerNorm((4, 5)).double(), 20)
    ref = F.layer_norm(x, (4, 5), ours.weight, ours.bias, 1e-5)
    assert (ours.trace(x).output - ref).abs().max() < 1e-12
    rms = _params(nsn.LayerNorm((4, 5), project=False).double(), 20)
    assert (rms(x) - F.rms_norm(x, (4, 5), rms.weight, 1e-5) - rms.bias).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_group_layernorm(dtype):
    x = _inputs(dtype, shape=(6, 24))
    one = _params(nsn.GroupLayerNorm(24, 1, eps=1e-5, dtype=dtype), 24)
    ln = torch.nn.LayerNorm(24, dtype=dtype)
    ln.load_state_dict(one.state_dict())
    assert (one(x) - ln(x)).abs().max() <= TOL[dtype]
    gln = _params(nsn.GroupLayerNorm(24, 4, eps=0.1, dtype=dtype), 24)
    per_group = torch.cat([F.layer_norm(x[:, 6 * k : 6 * k + 6], (6,), eps=0.1) for k in range(4)], -1)
    expected = per_group * gln.weight + gln.bias
    for out in (gln(x), gln.trace(x).output):
        assert (out - expected).abs().max() <= TOL[dtype]
    assert gln.trace(x).denom.shape == (6, 4)


def test_group_size_two_is_a_sign_function():
    x = torch.randn(100, 8, dtype=torch.float64)
    out = nsn.GroupLayerNorm(8, 4, eps=0.0, affine=False)(x)
    pairs = x.unflatten(-1, (4, 2))
    expected = torch.sign(pairs[..., 0] - pairs[..., 1]).unsqueeze(-1) * torch.tensor([1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(out, expected.flatten(-2), atol=1e-12)


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
    assert (ln(x) - ln.trace(x).output).abs().max() < 1e-12


@pytest.mark.parametrize("backend", ["eager", "torch", "compile"])
def test_rmsnorm_bias_and_gradients(backend):
    d = 32
    x = _inputs(torch.float64, shape=(5, d)).requires_grad_()
    ours = _params(nsn.RMSNorm(d, eps=1e-5, bias=True, backend=backend, dtype=torch.float64), d)
    ref = lambda t: F.rms_norm(t, (d,), ours.weight, 1e-5) + ours.bias  # noqa: E731
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() < 1e-12
    g1 = torch.autograd.grad(ours(x).square().sum(), [x, ours.weight, ours.bias])
    g2 = torch.autograd.grad(ref(x).square().sum(), [x, ours.weight, ours.bias])
    for a, b in zip(g1, g2):
        assert (a - b).abs().max() < 1e-10


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
        assert torch.allclose(m(x), m.trace(x).output, atol=1e-14)
