r"""Interior roots of the secular equation, all at once: LAPACK ``dlaed4``'s iteration, vectorised.

For D ascending (strictly), ‖z‖ = 1 and ρ > 0 the eigenvalues of diag(D) + ρzzᵀ are the roots of

    f(λ) = 1/ρ + Σⱼ zⱼ²/(Dⱼ − λ),

one in each interval (Dᵢ, Dᵢ₊₁) (root i, 0-based, i < n − 1) and one above D_{n−1}. For every
interior root this follows ``dlaed4`` (Ren-Cang Li, "Solving secular equations stably and
efficiently", LAPACK Working Note 89, 1994):

- **origin**: the sign of f at the midpoint picks the nearer pole D_o (o = i or i + 1); the root
  is λ = D_o + τ and every difference is formed as δⱼ = (Dⱼ − D_o) − τ, so δ = D − λ is accurate
  relative to itself, even next to the pole (what the eigenvectors need);
- **steps**: each pass over the n poles gives f(λ) and f′(λ) at the current τ; the next τ is the
  root of a *local model* of f: the 2·``_WINDOW`` = 16 poles nearest the interval exact, the rest
  of f linear in λ with the value and slope the pass gave. The model's root is found, inside the
  bracket the signs of f have established, by ``dlaed4``'s own step: Li's "middle way" (a
  rational model on the interval's two poles), Newton when that points the wrong way, half the
  bracket when it leaves it. Where the model step stalls or is not finite, that step is taken on
  f itself. The start is the model's root at the interval midpoint (the pass that also picks the
  origin, as ``dlaed4``'s does), from ``dlaed4``'s two-pole start;
- **stop**: |f| ≤ ε·E with ε = 2⁻⁵³ and E ``dlaed4``'s bound on the rounding error of f(λ), with
  its term 8(φ − ψ) replaced by 8|φ + ψ| ≤ 8(φ − ψ): a test at least as strict as LAPACK's.

Deviations from ``dlaed4``: the local model (dlaed4 models the rest of f by the interval's two
poles alone; measured at N = 16384, g = 1 + 0.3·randn: 3.3 passes per root instead of 4.9),
no "fixed weight" switch and no three-pole (``dlaed6``) steps. A root not converged after
``MAXIT`` = 30 passes is handed to ``dlaed4``. The roots still moving are evaluated together, in
blocks of rows of the (roots × n) matrix zⱼ/δⱼ: per pass one subtraction, one division, two
matrix–vector products and a row norm, vectorised and threaded by torch, where ``dlaed4`` runs a
scalar loop with one division per term.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

EPS = float(np.finfo(np.float64).eps) / 2  # LAPACK dlamch('Epsilon'): relative precision 2⁻⁵³
MAXIT = 30  # dlaed4's MAXIT
_BLOCK_ELEMS = 1 << 20  # rows × n per block: 8 MiB of float64 scratch, allocated once per call


class Roots(NamedTuple):
    """Root i is λᵢ = ``origin[i]`` + ``tau[i]``; ``unconverged`` lists positions (into the
    requested roots) still failing the stopping test after ``MAXIT`` steps."""

    origin: torch.Tensor
    tau: torch.Tensor
    unconverged: torch.Tensor


class _Problem(NamedTuple):
    D: torch.Tensor  # poles, ascending
    z: torch.Tensor  # unit coupling (only zⱼ² enters f)
    jz: torch.Tensor  # j·zⱼ, for the error bound
    rhoinv: float
    scratch: torch.Tensor  # (rows, n) reused by every pass


def differences(D, origin, tau, out):
    """Rows δ = (D − D_o) − τ = D − λ for each root, into ``out`` (roots × n); relative-accurate.

    torch tensors, or numpy arrays (same arithmetic, no intra-op threads: for callers that run
    in a thread pool of their own)."""
    subtract = np.subtract if isinstance(out, np.ndarray) else torch.sub
    subtract(D[None, :], origin[:, None], out=out)
    out -= tau[:, None]
    return out


def _evaluate(p: _Problem, origin, tau, cols=None, *, exclude=None):
    """Per root row, with u = z/δ: Σ uⱼzⱼ, Σ uⱼ·j·zⱼ, Σ uⱼ² and u at the columns ``cols`` (m, k).

    With ``exclude`` (m, K) columns instead, those terms are left out of Σ uⱼzⱼ and Σ uⱼ², and
    neither Σ uⱼ·j·zⱼ nor u at columns is formed (the start's rest of f and its slope)."""
    m, buf = origin.numel(), p.scratch
    rows = buf.shape[0]
    s0, s1, s2 = (torch.empty(m, dtype=torch.float64) for _ in range(3))
    at = torch.empty(cols.shape, dtype=torch.float64) if cols is not None else None
    for s in range(0, m, rows):
        e = min(s + rows, m)
        u = differences(p.D, origin[s:e], tau[s:e], buf[: e - s])
        torch.div(p.z, u, out=u)  # u = z/δ
        if exclude is not None:
            u.scatter_(1, exclude[s:e], 0.0)
        else:
            at[s:e] = torch.gather(u, 1, cols[s:e])
            torch.mv(u, p.jz, out=s1[s:e])
        torch.mv(u, p.z, out=s0[s:e])
        torch.linalg.vector_norm(u, dim=1, out=s2[s:e])
    return s0, s1, s2.square_(), at


def _step(at_lo, win: "_Window", tau, w, dw, u_lo, u_hi, lb, ub):
    """dlaed4's step for the interior case without the switches: Li's middle way on the two poles
    of the interval (the window's middle columns; ``at_lo``: the origin is Dᵢ, else Dᵢ₊₁), Newton
    if it points the wrong way, half the bracket if it leaves it."""
    gap_lo, gap_hi = win.gap[:, _WINDOW - 1], win.gap[:, _WINDOW]  # Dᵢ − D_o, Dᵢ₊₁ − D_o (one is 0)
    z_lo2, z_hi2 = win.z[:, _WINDOW - 1] ** 2, win.z[:, _WINDOW] ** 2
    d_i, d_p = gap_lo - tau, gap_hi - tau  # δ at Dᵢ and Dᵢ₊₁
    span = gap_hi - gap_lo
    c = w - torch.where(at_lo, d_p * dw - span * u_lo * u_lo, d_i * dw + span * u_hi * u_hi)
    a = (d_i + d_p) * w - d_i * d_p * dw
    b = d_i * d_p * w
    r = torch.sqrt((a * a - 4 * b * c).abs())
    eta = torch.where(a <= 0, (a - r) / (2 * c), 2 * b / (a + r))
    a0 = torch.where(at_lo, z_lo2 + d_p * d_p * (dw - u_lo * u_lo), z_hi2 + d_i * d_i * (dw - u_hi * u_hi))
    eta = torch.where(c == 0, b / torch.where(a == 0, a0, a), eta)
    eta = torch.where(w * eta >= 0, -w / dw, eta)
    nxt = tau + eta
    return torch.where((nxt > ub) | (nxt < lb), torch.where(w < 0, (ub - tau) / 2, (lb - tau) / 2), eta)


def _narrow(lb, ub, w, tau):
    """The bracket after evaluating f(τ) = w: the root lies above τ where w ≤ 0, below it where w > 0."""
    return torch.where(w <= 0, torch.maximum(lb, tau), lb), torch.where(w > 0, torch.minimum(ub, tau), ub)


_WINDOW = 8  # poles on each side of the interval kept exact in the local model
_MODEL_STEPS = 6


class _Window(NamedTuple):
    """The 2·``_WINDOW`` poles around each root's interval (columns i − W + 1 … i + W)."""

    cols: torch.Tensor  # (m, 2W), clamped into 0..n−1; clamped repeats are masked by ``valid``
    valid: torch.Tensor
    z: torch.Tensor  # zⱼ, 0 where not valid
    gap: torch.Tensor  # Dⱼ − D_o


def _model_root(at_lo, win: _Window, r0, r1, tb, tau, lb, ub):
    """Root in [lb, ub] of the local model  r0 + r1·(τ − tb) + Σ_window zⱼ²/(Dⱼ − D_o − τ):
    the window's poles exact, the rest of f linear around τ = tb (its value r0 and slope r1
    there), by ``_MODEL_STEPS`` of dlaed4's steps on the model."""
    lo, hi = _WINDOW - 1, _WINDOW
    for _ in range(_MODEL_STEPS):
        dlt = torch.where(win.valid, win.gap - tau[:, None], 1.0)
        u = win.z / dlt
        w = r0 + r1 * (tau - tb) + (u * win.z).sum(1)
        dw = r1 + (u * u).sum(1)
        lb, ub = _narrow(lb, ub, w, tau)
        tau = tau + torch.where(w == 0, 0.0, _step(at_lo, win, tau, w, dw, u[:, lo], u[:, hi], lb, ub))
    return tau


def _window(p: _Problem, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = p.D.numel()
    cols = i[:, None] + torch.arange(-_WINDOW + 1, _WINDOW + 1)[None, :]
    valid = (cols >= 0) & (cols < n)
    return cols.clamp_(0, n - 1), valid


def _start(p: _Problem, i: torch.Tensor):
    """Origin side, starting τ, bracket and window for roots i.

    One pass at the interval midpoints m gives f(m), whose sign picks the origin as in dlaed4,
    and the rest of f beyond the window with its slope; the start is the local model's root,
    from dlaed4's two-pole start (the other terms frozen at m)."""
    D, z = p.D, p.z
    d_lo, d_hi = D[i], D[i + 1]
    span = d_hi - d_lo
    mid = span / 2
    cols, valid = _window(p, i)
    zw = torch.where(valid, z[cols], 0.0)
    rest, _, slope, _ = _evaluate(p, d_lo, mid, exclude=cols)
    rest += p.rhoinv
    near = zw * zw / torch.where(valid, (D[cols] - d_lo[:, None]) - mid[:, None], 1.0)
    f_mid = rest + near.sum(1)
    at_lo = f_mid > 0  # root in (Dᵢ, m]: origin Dᵢ
    zi2, zp2 = z[i] ** 2, z[i + 1] ** 2
    c = f_mid - near[:, _WINDOW - 1] - near[:, _WINDOW]  # f(m) without the interval's two poles
    a1, b1 = c * span + zi2 + zp2, zi2 * span
    r1 = torch.sqrt((a1 * a1 - 4 * b1 * c).abs())
    t_lo = torch.where(a1 > 0, 2 * b1 / (a1 + r1), (a1 - r1) / (2 * c))
    a2, b2 = c * span - zi2 - zp2, zp2 * span
    r2 = torch.sqrt((a2 * a2 + 4 * b2 * c).abs())
    t_hi = torch.where(a2 < 0, 2 * b2 / (a2 - r2), -(a2 + r2) / (2 * c))
    zero = torch.zeros_like(mid)
    lb, ub = torch.where(at_lo, zero, -mid), torch.where(at_lo, mid, zero)
    origin = torch.where(at_lo, d_lo, d_hi)
    win = _Window(cols, valid, zw, D[cols] - origin[:, None])
    tau = _model_root(at_lo, win, rest, slope, torch.where(at_lo, mid, -mid), torch.where(at_lo, t_lo, t_hi), lb, ub)
    return at_lo, win, origin, tau, lb, ub


def interior_roots(D: np.ndarray, z: np.ndarray, rho: float, i: np.ndarray) -> Roots:
    """Roots i (each i < n − 1) of 1/ρ + Σ zⱼ²/(Dⱼ − λ) = 0, D strictly ascending, ‖z‖ = 1, ρ > 0.

    **Arguments:** ``D`` (n,), ``z`` (n,), ``rho``, ``i`` (m,) root indices, 0 ≤ i < n − 1.

    **Returns:** :class:`Roots` (origin, τ) per requested root; λ = origin + τ and the
    relative-accurate D − λ is :func:`differences`.
    """
    Dt = torch.from_numpy(np.ascontiguousarray(D, dtype=np.float64))
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64))
    n = Dt.numel()
    it = torch.as_tensor(np.asarray(i, dtype=np.int64))
    if it.numel() and (int(it.min()) < 0 or int(it.max()) >= n - 1):
        raise ValueError(f"interior roots are 0..{n - 2}; got indices {int(it.min())}..{int(it.max())}")
    rows = max(1, min(it.numel(), _BLOCK_ELEMS // n))
    p = _Problem(Dt, zt, torch.arange(n, dtype=torch.float64) * zt, 1.0 / rho, torch.empty(rows, n, dtype=torch.float64))
    at_lo, win, origin, tau, lb, ub = _start(p, it)
    ii = torch.where(at_lo, it, it + 1)
    active = torch.arange(it.numel())
    for step in range(MAXIT + 1):
        if active.numel() == 0:
            break
        a = active
        ta = tau[a]
        s0, s1, dw, uw = _evaluate(p, origin[a], ta, win.cols[a])
        uw = torch.where(win.valid[a], uw, 0.0)  # z/δ on the window, from the same δ as the sums
        u_lo, u_hi = uw[:, _WINDOW - 1], uw[:, _WINDOW]
        temp = zt[ii[a]] * torch.where(at_lo[a], u_lo, u_hi)  # the origin pole's term
        w = p.rhoinv + s0
        erretm = (8 * (s0 - temp).abs() + (s1 - ii[a].double() * s0) + 2 * p.rhoinv + 3 * temp.abs()
                  + ta.abs() * dw)
        keep = w.abs() > EPS * erretm
        a, w, dw, ta, u_lo, u_hi, uw = (x[keep] for x in (a, w, dw, ta, u_lo, u_hi, uw))
        active = a
        if a.numel() == 0 or step == MAXIT:
            break
        lba, uba = _narrow(lb[a], ub[a], w, ta)
        lb[a], ub[a] = lba, uba
        la, wa = at_lo[a], _Window(*(x[a] for x in win))
        # the rest of f beyond the window at τ, by difference (its rounding is f's own)
        r0 = w - (uw * wa.z).sum(1)
        r1 = dw - (uw * uw).sum(1)
        nxt = _model_root(la, wa, r0, r1, ta, ta, lba, uba)
        fallback = ta + _step(la, wa, ta, w, dw, u_lo, u_hi, lba, uba)
        tau[a] = torch.where(torch.isfinite(nxt) & (nxt != ta), nxt, fallback)
    return Roots(origin, tau, active)
