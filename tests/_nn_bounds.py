"""Rounding bounds, inputs and the rescaled float64 oracle shared by the norm-module tests.

u = torch.finfo(dtype).eps is the spacing of the output dtype at 1; a fused kernel rounds its
output once (≤ u·|z|/2) and its float32/float64 statistics (mean, mean square over N terms) carry
at most N·u_c relative error (u_c: the compute dtype's eps, the worst-case bound of recursive
summation; reassociated or pairwise sums are within it), which moves x̂ by at most ~2·N·u_c·|x̂|.
Hence tol(z) = (2·u + 4·N·u_c)·(max|g|·max|x̂| + max|b|).
"""

import math

import torch

from normscope.nn.functional import reference

N = 64


def _u(dtype):
    return torch.finfo(dtype).eps


def _tol(dtype, n, ref, weight=None, bias=None):
    """(2u + 4·N·u_c)·(max|z| + max|b|): output rounding plus worst-case summation error (see module doc)."""
    uc = _u(torch.float64 if dtype == torch.float64 else torch.float32)
    mag = ref.abs().max().item() + (bias.abs().max().item() if bias is not None else 0.0)
    return (2 * _u(dtype) + 4 * n * uc) * max(mag, 1.0)


def _oracle(kind, x, weight, bias, eps):
    """float64 reference on each row divided by a power of two near its max (exact), with ε/s²."""
    rows = x.double().reshape(-1, x.shape[-1])
    out = []
    for r in rows:
        m = r.abs().max().item()
        k = math.frexp(m)[1] if m > 0 else 0
        rs = torch.ldexp(r, torch.tensor(-k, dtype=torch.float64))
        rho = math.ldexp(eps, -2 * k) if eps == 0 or -2 * k < 1000 else math.inf
        if rho > 1e300:  # mean(rs²) ≤ 4 vanishes against ε/s²: the exact result is x/√ε
            p = r - r.mean() if kind == "layernorm" else r
            z = p / math.sqrt(eps)
            out.append((z * weight if weight is not None else z) + (bias if bias is not None else 0.0))
        else:
            out.append(reference(kind, rs, weight, bias, eps=rho))
    return torch.stack(out).reshape(x.shape)


def _magnitudes(dtype):
    """Scales near the ends of the dtype's normal range (|x|² over- or underflows there)."""
    fi = torch.finfo(dtype)
    big = 2.0 ** math.floor(0.9 * math.log2(fi.max))
    small = 2.0 ** math.ceil(0.9 * math.log2(fi.tiny))
    return {"huge": big, "tiny": small, "one": 1.0, "1e30": 1e30 if fi.max > 1e31 else big,
            "1e-30": 1e-30 if fi.tiny < 1e-31 else small}


def _input(dtype, scale, mixed=False, rows=6, seed=0):
    """Entries ±scale·[1, 2) (never subnormal); ``mixed``: each row has its own scale, one row mixes scales."""
    g = torch.Generator().manual_seed(seed)
    mag = 1.0 + torch.rand(rows, N, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(rows, N, generator=g) < 0.5, -1.0, 1.0).double()
    x = mag * sign * scale
    if mixed:
        scales = _magnitudes(dtype)
        x[0] *= scales["huge"] / scale
        x[1] *= scales["tiny"] / scale
        x[2, : N // 2] *= scales["huge"] ** 0.5 / scale  # one row with two scales
    return x.to(dtype)
