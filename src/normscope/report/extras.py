"""Report sections for the naive swap test and the attention measurement, from their result dicts.

:func:`normscope.convert.swap_test` and :func:`normscope.attention.measure_attention` return
data; this module turns it into :class:`~normscope.report.document.Section`\\ s (and, for callers of
the older API, into ``(title, markdown)`` pairs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normscope.report.document import Section
from normscope.report.format import DASH, fixed, md_table, sig
from normscope.report.tables import Table

_VARIANTS = {"site": "one site at a time and all at once", "layer": "one block at a time and all at once",
             "role": "one role group at a time (pre-sublayer, sandwich, post-LN, QK, final, embedding) and all "
                     "at once", "all": "all at once"}


# ----------------------------------------------------------------------------- swap test


def _swap_table(result: dict) -> Table:
    emb = result["loss_kind"] == "embedding"
    if emb:
        header = ["swapped", "role", "mean angle of input with 𝟙 (°)", "Δloss (1−cos)", "mean cos", "min cos"]
    else:
        header = ["swapped", "role", "mean angle of input with 𝟙 (°)", "loss", "Δloss", "perplexity", "ppl ratio"]
    rows = []
    for r in result["rows"]:
        ang = r.get("angle_in_mean")
        ang_s = DASH if ang is None else (f"{ang:.2f} ± {sig(r.get('angle_in_std'), '.2f')}" if "angle_in_std" in r
                                          else f"{ang:.2f} (avg)")
        if emb:
            rows.append([r["variant"], r["role"], ang_s, f"{r['delta_loss']:.3e}", f"{r['cos_mean']:.6f}",
                         f"{r['cos_min']:.6f}"])
        else:
            rows.append([r["variant"], r["role"], ang_s, f"{r['loss']:.4f}", f"{r['delta_loss']:+.2e}",
                         sig(r.get("ppl"), ".3f"), sig(r.get("ppl_ratio"), ".5f")])
    return Table("swap", "", header, rows, css="data")


def _swap_lead(result: dict) -> str:
    emb = result["loss_kind"] == "embedding"
    lead = (f"Model `{result['model']}`; swap: {result['swap']}; {result['tokens']} tokens; "
            f"loss: {result['loss_note']}.\n\n"
            f"Baseline loss {result['baseline']['loss']:.4f}"
            + ("" if emb else f", perplexity {result['baseline']['ppl']:.3f}") + ".\n")
    bad = [(r["variant"], r["nonfinite_tokens"]) for r in result["rows"] if r.get("nonfinite_tokens")]
    if result["baseline"].get("nonfinite_tokens"):
        bad.insert(0, ("original", result["baseline"]["nonfinite_tokens"]))
    if bad:
        lead += ("\nToken positions with NaN/Inf outputs (left out of the loss): "
                 + "; ".join(f"{v}: {k}" for v, k in bad) + ".\n")
    return lead


def swap_markdown(result: dict) -> str:
    """The swap-test result as Markdown: one lead paragraph and a table with one row per variant."""
    t = _swap_table(result)
    return _swap_lead(result) + "\n" + md_table(t.header, t.rows)


def _swap_intro(result: dict) -> str:
    intro = (
        "Each norm is replaced by the other kind **without centring the residual writers** "
        f"({result['swap']}), {_VARIANTS.get(result.get('per'), 'one at a time and all at once')}, "
        "and the loss is measured on the same text. "
        "The mean angle between the norm's input and the all-ones vector 𝟙 (from the probe) is shown beside it: "
        "LayerNorm removes exactly the component along 𝟙, so the closer the input is to 90°, the smaller the change. "
        "Gupta et al. (arXiv:2409.12951) did not run this experiment; these are our measurements."
    )
    if any(r["variant"].startswith("exact") for r in result["rows"]):
        intro += " The *exact* row is the writer-centred conversion (`normscope convert`), which must not change the loss."
    return intro


def swap_report_section(result: dict) -> Section:
    """The naive-swap section: explanation, baseline, one table row per variant."""
    return Section(f"Naive norm swap: {result['model']}", _swap_intro(result) + "\n\n" + _swap_lead(result),
                   tables=[_swap_table(result)])


def swap_test_section(result: dict) -> tuple[str, str]:
    """(title, markdown) of :func:`swap_report_section`, for callers that assemble their own page."""
    return f"Naive norm swap: {result['model']}", _swap_intro(result) + "\n\n" + swap_markdown(result)


# ----------------------------------------------------------------------------- attention


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _attention_table(result: dict[str, Any]) -> Table:
    rows = []
    for L in result["layers"]:
        keys = L["keys"]
        if keys:
            means = [k["mean"] for k in keys]
            kcell = f"{fixed(_mean(means), 1)} [{fixed(min(means), 1)}, {fixed(max(means), 1)}]"
        else:
            kcell = DASH
        ang, an = L["angle_ones"], L["angle_normalized"]
        rows.append([
            str(L["layer"]), f"`{L['site']}`", L["kind"], fixed(L["before"]["mean"], 1), fixed(L["after"]["mean"], 1),
            kcell, fixed(_mean([a["mean"] for a in ang]), 1) if ang else DASH,
            fixed(_mean([a["mean"] for a in an]), 1) if an else DASH,
            fixed((L.get("duplicates") or {}).get("mean"), 1),
        ])
    return Table("attention", "", ["layer", "norm site", "kind", "% unselectable before norm", "% after norm",
                                   "% of W_K·y per key head (mean [min, max])", "query angle to 𝟙 (°)",
                                   "angle of γ⊙q̃ to 𝟙 (°)", "% duplicate inputs"], rows, css="data")


def _attention_lead(result: dict[str, Any]) -> str:
    return (f"{result['sequences']} sequences of {result['seq_len']} tokens, d = {result['hidden_size']}. "
            "Unselectable = inside the convex hull of the other vectors of the same sequence "
            "(can never get the strictly highest score; Brody et al. 2023). Percentages are means over sequences.")


def _attention_notes(result: dict[str, Any]) -> str:
    return "\n".join(f"- {n}" for n in result.get("notes") or ())


def attention_report_section(result: dict[str, Any]) -> Section:
    """The attention section of a :func:`normscope.attention.measure_attention` result."""
    return Section(f"Attention: unselectable keys and query angles ({result['model']})", _attention_lead(result),
                   tables=[_attention_table(result)], after=_attention_notes(result))


def attention_section(result: dict[str, Any]) -> tuple[str, str]:
    """(title, markdown) of :func:`attention_report_section`."""
    t = _attention_table(result)
    body = _attention_lead(result) + "\n\n" + md_table(t.header, t.rows)
    notes = _attention_notes(result)
    return (f"Attention: unselectable keys and query angles ({result['model']})",
            body + ("\n" + notes + "\n" if notes else ""))
