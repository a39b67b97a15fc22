"""``LayerNormGeometry.contains`` on genuine LayerNorm outputs in every dtype, and off-image controls.

The tolerance of ``contains`` is derived from the data's dtype (its docstring states the bound);
here every genuine output of ``torch.nn.LayerNorm`` must pass (issue 9 §5: bf16 outputs were 77%
rejected) and points clearly off the image must fail in every dtype.
"""

import numpy as np
import pytest
import torch

from normscope.geometry import LayerNormGeometry

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _layer(n, dtype, zeros=()):
    torch.manual_seed(n)
    ln = torch.nn.LayerNorm(n, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(1 + torch.rand(n))  # gains in [1, 2): the case that used to crash
        ln.weight[list(zeros)] = 0.0
        ln.bias.copy_(0.1 * torch.randn(n))
    return ln.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, zeros", [(64, ()), (768, ()), (96, (3,)), (96, (3, 50))])
def test_genuine_outputs_accepted_and_off_image_rejected(dtype, n, zeros):
    ln = _layer(n, dtype, zeros)
    geo = LayerNormGeometry.from_module(ln)
    x = (torch.randn(1000, n) * torch.empty(1000, 1).uniform_(0.1, 5) + torch.randn(1000, 1)).to(dtype)
    with torch.no_grad():
        y = ln(x)
    assert y.dtype == dtype
    ok = geo.contains(y)
    assert ok.dtype == torch.bool and ok.shape == (1000,)
    assert bool(ok.all()), f"{int((~ok).sum())} of 1000 genuine {dtype} outputs rejected"
    b = torch.from_numpy(geo.bias.copy())
    r = y.double() - b
    radius = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
    # off the plane by a quarter of the radius: far beyond any dtype's rounding (bf16: 2⁻⁹ relative)
    off = b + r + 0.25 * radius * torch.from_numpy(geo.orthogonal_subspace[:, 0].copy())
    assert not bool(geo.contains(off.to(dtype)).any())
    # outside the ellipsoid by 5% (ρ = 1.05; bf16 resolution 0.4%, plus the LN arithmetic allowed on top)
    rho = torch.as_tensor(geo.radial_fraction(y.double()))[:, None]
    assert not bool(geo.contains((b + 1.05 / rho * r).to(dtype)).any())


@pytest.mark.parametrize("np_dtype", [np.float16, np.float32, np.float64])
def test_numpy_outputs_use_their_dtype(np_dtype):
    compute = torch.float64 if np_dtype == np.float64 else torch.float32  # half: float32 opmath, rounded
    ln = _layer(128, compute)
    geo = LayerNormGeometry.from_module(ln)
    with torch.no_grad():
        y = ln(torch.randn(200, 128, dtype=compute)).numpy().astype(np_dtype)
    ok = geo.contains(y)
    assert isinstance(ok, np.ndarray) and bool(ok.all())
    # the same values as float64 but declared float16 precision: accepted through unit_roundoff
    y16 = y.astype(np.float16).astype(np.float64)
    assert bool(geo.contains(y16, unit_roundoff=2.0**-11).all())


def test_unit_roundoff_is_checked():
    geo = LayerNormGeometry([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unit_roundoff must be"):
        geo.contains(np.zeros((1, 3)), unit_roundoff=2.0)
