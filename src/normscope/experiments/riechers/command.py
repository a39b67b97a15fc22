"""``normscope reproduce riechers``: write Figures 1–2 and the claims table of arXiv:2405.04134."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from normscope._io import atomic_write_json, atomic_write_text, output_dir
from normscope.experiments.riechers.claims import Claim, check_claims
from normscope.experiments.riechers.data import (
    BIAS,
    FIG1_EPS,
    FIG2_EPS,
    GAIN,
    REFERENCE_VALUES,
    _inputs,
    figure_values,
    stages,
)
from normscope.experiments.riechers.figures import draw_fig1, draw_fig2




def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "riechers",
        help="Riechers (arXiv:2405.04134): Figures 1-2 and claims C1-C13",
        description=(
            "Redraw Figures 1 and 2 of Riechers, 'Geometry and Dynamics of LayerNorm' (N = 3), and check "
            "each numerically checkable claim, writing fig1.png, fig2.png, claims.md and claims.json to --out. "
            "States the correction of the paper's zero-gain (Drazin inverse) recipe."
        ),
    )
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--points", type=int, default=500, help="number of input points (default 500)")
    p.add_argument("--seed", type=int, default=0, help="numpy seed for the inputs (default 0)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    result = run(args.out, force=args.force, n_points=args.points, seed=args.seed)
    failed = [c["id"] for c in result["claims"] if not c["pass"]]
    print(f"wrote {', '.join(result['files'])} to {result['out']}")
    print(f"claims: {len(result['claims']) - len(failed)}/{len(result['claims'])} checks reproduce the expected status"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _markdown(claims: list[Claim], correction: dict, values: dict, seconds: float) -> str:
    lines = [
        "# Riechers, \"Geometry and Dynamics of LayerNorm\" (arXiv:2405.04134): claims C1-C13",
        "",
        "Each row recomputes the check; `pass` means the measured value reproduces the status "
        "we expect (derived in normscope's `docs/geometry.md`), including C11, which the paper gets wrong.",
        "",
        "| id | paper claim | check | measured | tolerance | expected status | pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        cells = [c.id, c.claim, c.check, _fmt(c.measured), c.tolerance, c.reference_status,
                 "yes" if c.passed else "**NO**"]
        lines.append("| " + " | ".join(s.replace("|", "\\|") for s in cells) + " |")
    lines += [
        "",
        "## Correction: zero gains (claim C11)",
        "",
        "The paper prescribes, for gₙ = 0, the eigenvalues λ of Π₂G⁻²Π₂ with G⁻² the square of G's Drazin "
        "inverse and Π₂ = I or I − |n⟩⟨n|, and semi-axes √(N/λ). This is wrong. The correct semi-axes are "
        "√(Nζ) for the eigenvalues ζ > 0 of M = GΠG = diag(g²) − ggᵀ/N (what normscope uses), confirmed by "
        "a brute-force sweep of the image boundary y = b + Gu, u ⟂ 𝟙, |u| = √3:",
        "",
        "| g | brute force (max, min) | M = GΠG (normscope) | paper recipe, Π₂ = I | paper recipe, Π₂ = I − \\|n⟩⟨n\\| |",
        "|---|---|---|---|---|",
    ]
    for g, row in correction.items():
        lines.append(f"| {g} | " + " | ".join(_fmt(row[k]) for k in (
            "brute force (max, min)", "M = G Pi G (normscope)", "paper recipe, Pi2 = I", "paper recipe, Pi2 = I - |n><n|")) + " |")
    lines += [
        "",
        "With k ≥ 2 zero gains the image is a solid (N − k)-dimensional ellipsoid, filled even at ε = 0.",
        "",
        "## Figure data (our choices, not stated in the paper; see `docs/geometry.md`)",
        "",
        f"Inputs: uniform on [−1.5, 1.5]³; g = {GAIN}, b = {BIAS}.",
        "",
        "| quantity | measured | expected |",
        "|---|---|---|",
        f"| semi-axes | {_fmt(values['semi_axes'])} | {_fmt(REFERENCE_VALUES['semi_axes'])} |",
        f"| normal α̂ | {_fmt(values['normal'])} | {_fmt(REFERENCE_VALUES['normal'])} |",
        f"| offset αᵀb | {_fmt(values['offset'])} | {_fmt(REFERENCE_VALUES['offset'])} |",
    ]
    for eps, ref in REFERENCE_VALUES["rho"].items():
        lines.append(f"| ρ (median, p05, min, frac > 0.99), ε = {eps} | {_fmt(values['rho'][eps])} | {_fmt(ref)} |")
    lines += ["", f"Run time: {seconds:.1f} s.", ""]
    return "\n".join(lines)


def run(out_dir: str | Path, *, force: bool = False, n_points: int = 500, seed: int = 0) -> dict:
    """Draw Figures 1-2 and check claims C1-C13 into a fresh ``out_dir``; returns the results.

    **Arguments:** ``out_dir`` (refused if it exists unless ``force``), ``n_points`` inputs
    uniform on [−1.5, 1.5]³ drawn with ``numpy.random.default_rng(seed)``.

    **Returns:** dict with ``out``, ``files``, ``claims``, ``zero_gain_correction``, ``figure_values``.
    """
    t0 = time.perf_counter()
    a = _inputs(n_points, seed)
    colors = (a - a.min(0)) / (a.max(0) - a.min(0))
    st = stages(a)
    claims, correction = check_claims(a, st)
    values = figure_values(a)
    files = ["fig1.png", "fig2.png", "claims.md", "claims.json"]
    with output_dir(out_dir, force=force) as tmp:
        draw_fig1(st, colors, tmp / "fig1.png")
        draw_fig2(a, colors, tmp / "fig2.png")
        seconds = time.perf_counter() - t0
        result = {
            "paper": "P. M. Riechers, Geometry and Dynamics of LayerNorm, arXiv:2405.04134 (v1)",
            "settings": {"n_points": n_points, "seed": seed, "gain": GAIN, "bias": BIAS, "fig1_eps": FIG1_EPS,
                         "fig2_eps": FIG2_EPS, "inputs": "uniform on [-1.5, 1.5]^3", "choices": "normscope docs/geometry.md"},
            "claims": [c.as_dict() for c in claims],
            "zero_gain_correction": {
                "statement": "The paper's Drazin-inverse recipe for zero gains is wrong; use the eigenvalues zeta > 0 "
                             "of M = G Pi G = diag(g^2) - g g^T / N, semi-axes sqrt(N zeta).",
                "cases": correction,
            },
            "figure_values": values,
            "reference_values": REFERENCE_VALUES,
            "seconds": seconds,
        }
        atomic_write_json(tmp / "claims.json", result)
        atomic_write_text(tmp / "claims.md", _markdown(claims, correction, values, seconds))
    out = Path(out_dir).resolve()
    return {**result, "out": str(out), "files": files}
