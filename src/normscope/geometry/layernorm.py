"""The geometry of one LayerNorm layer: output hyperplane, hyperellipsoids, ρ and the Jacobian.

See ``docs/geometry.md`` for the derivations and the zero-gain correction.

Riechers, "Geometry and Dynamics of LayerNorm", arXiv:2405.04134, writes LayerNorm as

    LN(a) = √N · G · Πa / √(‖Πa‖² + Nε) + b,      G = diag(g), Π = I − 𝟙𝟙ᵀ/N      (Eq. 6)

so every output lies in the hyperplane αᵀ(y − b) = 0 (αₙ = 1/gₙ) and inside the N-dimensional
ellipsoid (y − b)ᵀG⁻²(y − b) ≤ N; their intersection is an (N−1)-dimensional ellipsoid whose
principal axes are the eigenvectors of M = GΠG = diag(g²) − ggᵀ/N with lengths √(Nζ).

**Deviation from the paper (zero gains).** The paper's recipe for gₙ = 0 (Drazin inverse of G
with Π₂ = I or I − |n⟩⟨n|) gives wrong semi-axes: for g = (0, 1, 1) it gives √3, √3, while the
true image is an ellipse with semi-axes 1 and √3. We always use M, which never inverts g:
with k zero gains the image lies in {y : y_Z = b_Z} (Z the zero-gain coordinates), M has rank
N − k, and for k ≥ 2 the image is a *solid* (N − k)-dimensional ellipsoid, filled even at ε = 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from normscope.geometry._arrays import ArrayLike, _as_batch, _as_vector, _back, _data_dtype, _roundoffs
from normscope.geometry._rho import rho_cdf, rho_quantile
from normscope.geometry._secular import principal_axes
from normscope.nn._checks import check_eps
from normscope.nn.functional import reference

class LayerNormGeometry:
    r"""Where a LayerNorm with gain g, bias b and ε puts its outputs (Riechers, arXiv:2405.04134).

    With p = Πa, s = ‖p‖² + Nε, LN(a) = √(N/s)·G p + b (Eq. 6). The outputs satisfy

    - the hyperplane αᵀ(y − b) = 0, αₙ = 1/gₙ (:attr:`normal` = α/‖α‖, :attr:`offset` = αᵀb);
      with k zero gains the orthogonal space is span{eₙ : gₙ = 0} (:attr:`orthogonal_subspace`);
    - (y − b)ᵀG⁻²(y − b) = Nρ² ≤ N, the N-ellipsoid with semi-axes √N|gₙ| (:attr:`outer_axes`);
    - the (N−1)-ellipsoid with semi-axes √(Nζ), (ζ, v) the eigenpairs ζ > 0 of
      M = GΠG = diag(g²) − ggᵀ/N (:meth:`axes`), solved in O(N²) from the secular equation;
    - ρ = (1 + ε/σ²)^(−1/2) ∈ [0, 1): how far out along the ray from b the output lands.

    Zero gains: the paper's Drazin-inverse recipe is wrong (g = (0, 1, 1): recipe √3, √3; true
    1, √3); M is used instead. With k ≥ 2 zero gains the image is a solid (N − k)-ellipsoid
    (:attr:`solid_image`), so outputs fill its interior even at ε = 0.

    **Arguments:**

    - ``gain``: g, shape (N,) (numpy, torch or sequence; a multi-dim normalized shape is flattened).
    - ``bias``: b, shape (N,), or None for zero.
    - ``eps``: ε ≥ 0, added to the variance (torch's placement).
    """

    def __init__(self, gain: ArrayLike, bias: ArrayLike | None = None, eps: float = 0.0) -> None:
        g = _as_vector(gain, "gain")
        if g.size < 2:
            raise ValueError(f"LayerNorm geometry needs N >= 2 features, got N = {g.size}")
        b = np.zeros_like(g) if bias is None else _as_vector(bias, "bias")
        if b.shape != g.shape:
            raise ValueError(f"bias has {b.size} entries but gain has {g.size}")
        eps = float(eps)
        check_eps(eps)
        self._g, self._b, self.eps = g, b, eps
        self._gt, self._bt = torch.tensor(g), torch.tensor(b)
        self._axes: dict[tuple[bool, str], tuple[np.ndarray, np.ndarray | None]] = {}

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> "LayerNormGeometry":
        """Geometry of a ``torch.nn.LayerNorm``, ``normscope.nn.LayerNorm`` or any LayerNorm-like module.

        Reads ``weight`` (None: gain ones), ``bias`` (None: zero) and ``eps``; N comes from
        ``normalized_shape`` or the parameters. RMSNorm-like modules (no projection) are
        refused: their image is not in a hyperplane.
        """
        name = type(module).__name__
        if "rms" in name.lower() or getattr(module, "project", True) is False:
            raise ValueError(f"{name} does not project onto 1-perp (RMSNorm-like); LayerNormGeometry does not apply")
        if getattr(module, "scale", True) is False or getattr(module, "radius", "sqrt_d") != "sqrt_d":
            raise ValueError(f"{name} is not a standard LayerNorm (scale off or radius != 'sqrt_d')")
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        shape = getattr(module, "normalized_shape", None)
        if weight is not None:
            n = weight.numel()
        elif bias is not None:
            n = bias.numel()
        elif shape is not None:
            n = math.prod((shape,) if isinstance(shape, int) else tuple(shape))
        else:
            raise ValueError(f"cannot tell N for {name}: no weight, bias or normalized_shape")
        gain = np.ones(n) if weight is None else weight
        return cls(gain, bias, float(getattr(module, "eps", 0.0) or 0.0))

    # -- sizes and flags -------------------------------------------------------------------
    @property
    def gain(self) -> np.ndarray:
        """g as a float64 array (N,) (a read-only view)."""
        v = self._g.view()
        v.setflags(write=False)
        return v

    @property
    def bias(self) -> np.ndarray:
        """b as a float64 array (N,) (a read-only view; zeros when built without bias)."""
        v = self._b.view()
        v.setflags(write=False)
        return v

    @property
    def dim(self) -> int:
        """N, the number of features."""
        return self.gain.size

    @property
    def zero_gains(self) -> np.ndarray:
        """Indices n with gₙ = 0 exactly."""
        return np.flatnonzero(self.gain == 0.0)

    @property
    def solid_image(self) -> bool:
        """True when k ≥ 2 gains are zero: the image is a solid (N − k)-ellipsoid (``docs/geometry.md``)."""
        return self.zero_gains.size >= 2

    # -- the hyperplane --------------------------------------------------------------------
    @property
    def orthogonal_subspace(self) -> np.ndarray:
        """(N, k) orthonormal columns spanning the directions every y − b is orthogonal to.

        α̂ (k = 1) when all gₙ ≠ 0; otherwise eₙ for each zero gain (Riechers' left null space
        of diag(g) − g𝟙ᵀ/N = GΠ).
        """
        z = self.zero_gains
        if z.size == 0:
            return self._alpha_hat()[:, None]
        e = np.zeros((self.dim, z.size))
        e[z, np.arange(z.size)] = 1.0
        return e

    @property
    def normal(self) -> np.ndarray:
        """Unit normal α̂ = α/‖α‖, αₙ = 1/gₙ, of the output hyperplane αᵀ(y − b) = 0.

        With exactly one zero gain gₙ the normal is eₙ. With k ≥ 2 zero gains there is no
        single normal (the orthogonal space has dimension k): a ValueError points to
        :attr:`orthogonal_subspace`.
        """
        z = self.zero_gains
        if z.size >= 2:
            raise ValueError(
                f"{z.size} gains are zero (indices {z[:8].tolist()}...), so the outputs are orthogonal to a "
                f"{z.size}-dimensional subspace, not one normal; use .orthogonal_subspace"
            )
        return self.orthogonal_subspace[:, 0]

    @property
    def offset(self) -> float:
        """αᵀb with αₙ = 1/gₙ: every output satisfies αᵀy = αᵀb (Σₙ yₙ/gₙ = Σₙ bₙ/gₙ).

        With one zero gain gₙ, α is taken as eₙ (the plane yₙ = bₙ); k ≥ 2 raises like :attr:`normal`.
        """
        z = self.zero_gains
        if z.size == 0:
            return float(np.sum(self.bias / self.gain))
        self.normal  # raises for k >= 2
        return float(self.bias[z[0]])

    @property
    def plane_distance(self) -> float:
        """Signed distance α̂ᵀb of the output hyperplane from the origin (k ≤ 1)."""
        return float(self.normal @ self.bias)

    def _alpha_hat(self) -> np.ndarray:
        # 1/g overflows for tiny gains; scaling by min|g| first keeps α̂ exact in direction.
        a = np.min(np.abs(self.gain)) / self.gain
        return a / np.linalg.norm(a)

    def plane_residual(self, y: ArrayLike):
        """Components of y − b along :attr:`orthogonal_subspace`, shape (..., k); zero for outputs."""
        t, is_torch, dtype = _as_batch(y, self.dim, "y")
        r = (t - self._bt) @ torch.from_numpy(self.orthogonal_subspace)
        return _back(r, is_torch, dtype, y)

    # -- ellipsoids ------------------------------------------------------------------------
    @property
    def outer_axes(self) -> np.ndarray:
        """Semi-axes √N·|gₙ| of the N-dimensional ellipsoid (y − b)ᵀG⁻²(y − b) < N, in neuron order.

        Its principal axes are the neuron basis vectors eₙ (Riechers §3).
        """
        return math.sqrt(self.dim) * np.abs(self.gain)

    def axes(self, directions: bool = False, *, method: str = "auto", k: int | None = None, which: str = "longest"):
        r"""Semi-axes of the (N−1)-dimensional output ellipsoid, longest first.

        ℓᵢ = √(N ζᵢ) for the eigenvalues ζᵢ > 0 of M = GΠG = diag(g²) − ggᵀ/N, with the
        unit eigenvectors as directions (equal to the eigenvectors of Riechers' Π₂G⁻²Π₂ with
        ℓ = √(N/λ) when all gₙ ≠ 0, arXiv:2405.04134 §3; correct for zero gains, where the
        paper's recipe is not; ``docs/geometry.md``). There are N − 1 axes when no gain is zero
        and N − k₀ with k₀ zero gains. Tied |g| give repeated lengths √N|g| whose directions are
        any orthonormal basis of the eigenspace. Any finite gains work at any scale; an all-zero
        gain raises ValueError (the image is the single point b).

        **Arguments:**

        - ``directions``: also return the (N, m) matrix of unit directions (columns, signs arbitrary).
        - ``method``: ``"secular"`` (O(N²): deflation, dlaed4's root iteration, Gu–Eisenstat
          vectors), ``"dense"`` (``numpy.linalg.eigh`` of M, O(N³)), or ``"auto"`` (dense for N < 64).
        - ``k``: only the k longest (``which="longest"``) or shortest (``"shortest"``) axes, in
          O(N·k) without forming an N×N array (secular); None: all.
        - ``which``: ``"longest"`` or ``"shortest"``, with ``k``.

        **Returns:** ``lengths`` (m,), or ``(lengths, directions)``.
        """
        if method == "auto":
            method = "dense" if self.dim < 64 else "secular"
        if k is not None:  # subsets are not cached
            lengths, vectors = principal_axes(self._g, directions=directions, method=method, k=k, which=which)
            return (lengths, vectors) if directions else lengths
        key = (directions, method)
        if not directions and (True, method) in self._axes:
            return self._axes[(True, method)][0]
        if key not in self._axes:
            lengths, vectors = principal_axes(self._g, directions=directions, method=method)
            lengths.setflags(write=False)
            if vectors is not None:
                vectors.setflags(write=False)
            self._axes[key] = (lengths, vectors)
        lengths, vectors = self._axes[key]
        return (lengths, vectors) if directions else lengths

    # -- radial fraction -------------------------------------------------------------------
    def radial_fraction(self, y: ArrayLike):
        r"""Ellipsoidal radius ρ of outputs y: (y − b)ᵀ M⁺ (y − b) = Nρ², shape (...,).

        For an output of this layer ρ = (1 + ε/σ²)^(−1/2) (σ² the input's variance): 1 on the
        surface (ε = 0), < 1 inside. M⁺ = Π₂G⁻²Π₂ when all gₙ ≠ 0 (the plane component of y − b
        is dropped first); with zero gains the restriction to the nonzero coordinates S is
        G_S⁻² + α_Sα_Sᵀ/k (Sherman–Morrison; ``docs/geometry.md``).
        """
        t, is_torch, dtype = _as_batch(y, self.dim, "y")
        r = t - self._bt
        z = self.zero_gains
        n = self.dim
        if z.size == 0:
            ah = torch.from_numpy(self._alpha_hat())
            r = r - (r @ ah)[..., None] * ah
            q = ((r / self._gt) ** 2).sum(-1)
        else:
            s = torch.from_numpy(np.flatnonzero(self.gain != 0.0))
            u = r.index_select(-1, s) / self._gt.index_select(0, s)
            q = (u * u).sum(-1) + u.sum(-1) ** 2 / z.size
        return _back(torch.sqrt(q / n), is_torch, dtype, y)

    def input_radial_fraction(self, x: ArrayLike):
        r"""ρ = ‖x̂‖/√N = (1 + ε/σ²)^(−1/2) = √(‖Πx‖²/(‖Πx‖² + Nε)) for inputs x, shape (...,).

        NaN for x ∝ 𝟙 when ε = 0 (LayerNorm itself is 0/0 there), 0 for x ∝ 𝟙 when ε > 0.
        """
        t, is_torch, dtype = _as_batch(x, self.dim, "x")
        p = t - t.mean(-1, keepdim=True)
        pp = (p * p).sum(-1)
        rho = torch.sqrt(pp / (pp + self.dim * self.eps))
        return _back(rho, is_torch, dtype, x)

    def contains(self, y: ArrayLike, *, unit_roundoff: float | None = None):
        r"""Whether each y lies in the closed image (on the hyperplane(s), ρ ≤ 1) up to y's rounding.

        y is taken as a *computed* LayerNorm output in its dtype (torch or numpy; bfloat16,
        float16, float32, float64), so the test allows exactly the error such an output can carry.
        Per component (u = the dtype's unit roundoff, u_op that of the precision LayerNorm computes
        in: float32 for the half types and float32, float64 for float64; x̂ = (y − b)/g):

            |δₙ| ≤ eₙ = u·|yₙ| + (N + 6)·u_op·|gₙ|·(|x̂ₙ| + 1)

        (the rounding of the output, plus the mean/variance reductions, γ_N = N·u_op, and six
        elementwise operations, for inputs whose mean is at most of the order of their spread).
        Then, with S the orthonormal :attr:`orthogonal_subspace` and ρ a seminorm of y − b,

        - plane: |Sₖᵀ(y − b)| ≤ |Sₖ|ᵀe + 8N·ε₆₄·|Sₖ|ᵀ|y − b|   (the last term: this float64 test);
        - ρ ≤ 1 + (‖e/g‖ + (|α̂|ᵀe)·‖α̂/g‖)/√N + 8N·ε₆₄ (all gₙ ≠ 0; M⁺ = Π₂G⁻²Π₂), or
          ρ ≤ 1 + ‖e_S/g_S‖·√(1 + |S|/k)/√N + 8N·ε₆₄ with k zero gains (S the others).

        **Arguments:**

        - ``y``: outputs, shape (..., N).
        - ``unit_roundoff``: u to assume instead of the dtype's (e.g. for float64 copies of
          bfloat16 outputs: 2⁻⁹); u_op is then at least u.

        **Returns:** a bool array/tensor of shape (...,).
        """
        t, is_torch, dtype = _as_batch(y, self.dim, "y")
        u_out, u_op = _roundoffs(_data_dtype(y, dtype))
        if unit_roundoff is not None:
            if not (math.isfinite(unit_roundoff) and 0 <= unit_roundoff < 1):
                raise ValueError(f"unit_roundoff must be a number in [0, 1), got {unit_roundoff!r}")
            u_out, u_op = float(unit_roundoff), max(u_op, float(unit_roundoff))
        n, g = self.dim, self._gt
        r = t - self._bt
        nz = g != 0
        xhat = torch.where(nz, r / torch.where(nz, g, 1.0), 0.0)
        e = u_out * t.abs() + (n + 6) * u_op * g.abs() * (xhat.abs() + 1.0)
        u64 = 8.0 * n * float(np.finfo(np.float64).eps)
        S = torch.from_numpy(np.abs(self.orthogonal_subspace))
        res = torch.as_tensor(self.plane_residual(t)).abs()
        plane_ok = (res <= e @ S + u64 * (r.abs() @ S)).all(-1)
        z = self.zero_gains
        if z.size == 0:
            ah = torch.from_numpy(self._alpha_hat())
            drho = torch.linalg.vector_norm(e / g, dim=-1) + (e @ ah.abs()) * float(torch.linalg.vector_norm(ah / g))
        else:
            s = torch.from_numpy(np.flatnonzero(self.gain != 0.0))
            es = e.index_select(-1, s) / g.index_select(0, s)
            drho = torch.linalg.vector_norm(es, dim=-1) * math.sqrt(1.0 + s.numel() / z.size)
        rho = torch.as_tensor(self.radial_fraction(t))
        ok = plane_ok & (rho <= 1.0 + drho / math.sqrt(n) + u64)
        return ok if is_torch else ok.numpy()

    def rho_cdf(self, r0: ArrayLike, *, scale: float = 1.0) -> np.ndarray:
        """P(ρ < r₀) for inputs 𝒩(m𝟙, scale²I) at this N and ε; see :func:`rho_cdf`."""
        return rho_cdf(r0, self.dim, self.eps, scale)

    def rho_quantile(self, p: ArrayLike, *, scale: float = 1.0) -> np.ndarray:
        """Quantile of ρ for inputs 𝒩(m𝟙, scale²I); see :func:`rho_quantile`."""
        return rho_quantile(p, self.dim, self.eps, scale)

    # -- the map and its Jacobian ------------------------------------------------------------
    def forward(self, x: ArrayLike):
        """LN(x) = √N·G Πx/√(‖Πx‖² + Nε) + b (Riechers Eq. 6), computed in float64 by
        :func:`normscope.nn.functional.reference`."""
        t, is_torch, dtype = _as_batch(x, self.dim, "x")
        y = reference("layernorm", t, self._gt, self._bt, self.eps)
        return _back(y, is_torch, dtype, x)

    def jacobian(self, x: ArrayLike):
        r"""Closed-form Jacobian ∂LN(x)/∂x, shape (..., N, N) (``docs/geometry.md``; verified against autograd).

            J = √(N/s) · G · (Π − p pᵀ/s),    p = Πx,  s = ‖p‖² + Nε.

        Properties: J𝟙 = 0; αᵀJ = 0 (outputs never move along α); rank N − 2 at ε = 0
        (kernel span{𝟙, x}), N − 1 at ε > 0. Computed in float64; returned in x's dtype
        (torch in, torch out). Not in Riechers v1, which has no derivatives.
        """
        t, is_torch, dtype = _as_batch(x, self.dim, "x")
        n = self.dim
        p = t - t.mean(-1, keepdim=True)
        s = (p * p).sum(-1, keepdim=True)[..., None] + n * self.eps
        if bool((s == 0).any()):
            raise ValueError("jacobian is undefined for x proportional to the ones vector when eps = 0")
        proj = torch.eye(n, dtype=torch.float64) - 1.0 / n
        core = proj - p[..., :, None] * p[..., None, :] / s
        J = torch.sqrt(n / s) * self._gt[:, None] * core
        return _back(J, is_torch, dtype, x)

    # -- summary -----------------------------------------------------------------------------
    def summary(self, *, directions: bool = False) -> dict:
        """JSON-ready facts: N, ε, zero gains, solid flag, plane, outer and inner semi-axes."""
        lengths = self.axes()
        z = self.zero_gains
        out = {
            "dim": self.dim,
            "eps": self.eps,
            "zero_gains": z.tolist(),
            "solid_image": self.solid_image,
            "offset": None if z.size >= 2 else self.offset,
            "plane_distance": None if z.size >= 2 else self.plane_distance,
            "outer_axes": {"min": float(self.outer_axes.min()), "max": float(self.outer_axes.max())},
            "axes": {
                "count": int(lengths.size),
                "min": float(lengths.min()) if lengths.size else None,
                "max": float(lengths.max()) if lengths.size else None,
                "median": float(np.median(lengths)) if lengths.size else None,
            },
        }
        if directions:
            out["axes"]["lengths"] = lengths.tolist()
        return out

    def __repr__(self) -> str:
        k = self.zero_gains.size
        return f"LayerNormGeometry(N={self.dim}, eps={self.eps:g}, zero_gains={k}{', solid image' if k >= 2 else ''})"
