"""Builders of the report's own sections (summary, run, tables, per site) as :class:`Section` data.

Each function takes the (sanitised) stats dict or one model of it and returns sections; the
renderers turn them into HTML and Markdown. Swap-test and attention sections live in
:mod:`normscope.report.extras`.
"""

from __future__ import annotations

from typing import Callable

from normscope.probe.schema import BLOCK_ROLES, GROUP_LABELS, RunInfo, get_path, layer_index, num
from normscope.report import prose
from normscope.report.document import Card, Section, not_measured_section
from normscope.report.extras import attention_report_section, swap_report_section
from normscope.report.format import fixed, mean_sd, pct, secs, sig
from normscope.report.plots import null_sd_deg
from normscope.report.tables import Table, gupta_tables
from normscope.report.verdict import Verdict, model_verdict

STAGES = (("load", "load"), ("probe", "probe"), ("swap", "swap test"), ("attention", "attention"),
          ("figures", "figures"), ("write", "write files"))


def nonfinite_counts(model: dict) -> dict[str, int]:
    """Tokens dropped for NaN/Inf, summed over the model's norm sites (the probe's ``nonfinite`` dicts)."""
    tot = {"input_tokens": 0, "output_tokens": 0, "input_values": 0, "output_values": 0}
    for e in model.get("layers", []):
        nf = e.get("nonfinite")
        if isinstance(nf, dict):
            for k in tot:
                v = num(nf, k)
                if v == v:
                    tot[k] += int(v)
    return tot


def _card(v: Verdict, model: dict) -> Card:
    sd = null_sd_deg(v.d) if v.d else float("nan")
    rows = [
        ("angle with 𝟙 (block-norm inputs)", f"{fixed(v.angle.mean)}° ± {fixed(v.angle.sd)}° (mean ± pooled token SD)"),
        ("random-vector baseline", f"90° ± {fixed(sd)}° (d = {v.d})"),
        ("fraction of ‖x‖² along 𝟙", f"{pct(v.cos2.mean)} mean; worst block {pct(v.worst_cos2)}"),
        ("worst block", f"`{v.worst_site}`"),
        ("widest p01/p99 from 90°", f"{fixed(v.tail_dev)}° at `{v.tail_site}`"),
    ]
    if v.gap.n_layers and "layernorm" in v.kinds:
        rows.append(("naive LN→RMSNorm swap error", f"{100 * v.gap.mean:.3g}% of ‖z‖ (mean RMSNorm gap)"))
    for g in v.groups:
        rows.append((g.label.split(" (")[0], g.answer.split(";")[0].split(": ")[0] if g.swap else
                     g.answer.split(":")[0]))
    if v.swap_all is not None:
        rows.append(("naive swap, all norms", v.swap_all.effect()))
    elif v.swap_status:
        rows.append(("naive swap", v.swap_status))
    if model.get("tokens") is not None:
        rows.append(("tokens probed", f"{int(model['tokens']):,}"))
    nf = nonfinite_counts(model)
    if nf["input_tokens"] or nf["output_tokens"]:
        rows.append(("NaN/Inf (skipped)", f"**{nf['input_tokens']:,} input and {nf['output_tokens']:,} output "
                     "token-vectors summed over all norm sites**"))
    return Card(v.model, v.answer, rows, tags=list(v.kinds), warn_tags=["post-LN"] if v.post_ln else [])


def group_table(v: Verdict) -> Table:
    """One row per role group: share along 𝟙 against 4/d, worst site, tail, naive swap, verdict."""
    rows = []
    for g in v.groups:
        tail = (pct(g.tail_frac, 2) if g.tail_frac == g.tail_frac else "–") + f" (max {pct(g.tail_max, 2)})"
        swap = g.swap.effect() if g.swap is not None else "–"
        verdict = {True: "can go", False: "must stay", None: "–"}[g.removable]
        if g.swap is None and g.removable is not None:
            verdict += " (angle statistics only)"
        if g.contradiction:
            verdict += " (swap contradicts the average)"
        rows.append([g.label.split(" (")[0], str(g.n_sites), pct(g.share), pct(g.threshold),
                     f"{g.multiple:.2g}×" if g.multiple == g.multiple else "–",
                     f"{pct(g.worst_share)} `{g.worst_site}`", tail, swap, verdict])
    return Table(f"groups-{v.model}", f"{v.model}: per role group", [
        "role group", "sites", "share of ‖x‖² along 𝟙", "threshold 4/d", "share × d", "worst site",
        "tokens above 100/d", "naive swap", "mean removal"], rows, css="meta")


def summary_section(stats: dict) -> Section:
    """The verdict per model: the headline, the per-role-group verdicts and the key numbers."""
    verdicts = [(model_verdict(m), m) for m in stats["models"]]
    return Section("Is mean removal redundant in these models?", prose.SUMMARY_INTRO_MD,
                   cards=[_card(v, m) for v, m in verdicts], tables=[group_table(v) for v, _ in verdicts],
                   css="summary")


def run_section(stats: dict) -> Section:
    """Models, settings and the seconds of every stage (``run.stages`` and each model's ``run``)."""
    run = RunInfo.from_dict(stats.get("run"))
    rows = []
    for m in stats["models"]:
        mr = m.get("run") or {}
        sites = m.get("layers", [])
        kinds = sorted({str(e.get("kind")) for e in sites})
        eps = sorted({e.get("eps") for e in sites if isinstance(e.get("eps"), (int, float))})
        toks = m.get("tokens")
        rows.append([
            str(m.get("name")), str(mr.get("family", m.get("family", "")) or ""), str(m.get("hidden_size")),
            str(len({layer_index(e) for e in sites if e.get("role") in BLOCK_ROLES})), str(len(sites)),
            ", ".join(kinds) + (f" (ε {', '.join(f'{x:g}' for x in eps)})" if eps else ""),
            f"{int(toks):,}" if isinstance(toks, (int, float)) else "?", str(mr.get("input", "text")),
        ] + [secs(mr.get(f"{k}_seconds")) for k, _ in STAGES[:4]])
    models = Table("run-models", "", ["model", "family", "d", "blocks", "norm sites", "norm kind", "tokens", "input"]
                   + [label for _, label in STAGES[:4]], rows, css="meta")
    settings = [["text", prose.texts_label(run.raw)]]
    for k, label in (("seq_len", "sequence length"), ("batch_size", "batch size"), ("max_tokens", "token budget per model"),
                     ("skip_first", "skip first position"), ("dtype", "dtype"), ("torch", "torch"),
                     ("transformers", "transformers"), ("started", "started (UTC)")):
        if k in run.raw:
            settings.append([label, str(run.raw[k])])
    for k, label in STAGES:
        if k in run.stages:
            settings.append([f"time: {label}", secs(run.stages[k])])
    if "seconds" in run.raw:
        settings.append(["time: total before writing", secs(run.seconds)])
    for f in run.failures:
        settings.append(["failed", f])
    return Section("Run", tables=[models, Table("run-settings", "", ["setting", "value"], settings, css="meta")])


def gupta_section(stats: dict) -> Section:
    return Section("Gupta-style tables", callout=prose.PM_MD, tables=gupta_tables(stats))


def per_site_table(model: dict) -> Table:
    """One row per norm site: role group, angle in/out, cos², norm in/out, rotation, ρ, gap."""
    from normscope.probe.schema import is_post_ln, role_group

    post = is_post_ln(model)
    rows = []
    for e in model.get("layers", []):
        rows.append([
            f"`{e.get('name')}`", str(e.get("role")),
            role_group(e.get("role"), e.get("label"), post_ln=post), str(e.get("kind")),
            mean_sd(get_path(e, "input.angle_deg")), mean_sd(get_path(e, "output.angle_deg")),
            sig(num(get_path(e, "input.cos2"), "mean")), mean_sd(get_path(e, "input.norm"), 1),
            mean_sd(get_path(e, "output.norm"), 1), mean_sd(e.get("rotation_deg")),
            sig(num(e.get("radial_fraction"), "mean"), ".6f"), sig(num(e.get("rms_gap"), "mean")),
        ])
    n = len(model.get("layers", []))
    return Table(f"sites-{model.get('name')}", str(model.get("name")),
                 ["site", "role", "group", "kind", "θ in (mean ± SD)", "θ out", "cos² in", "‖x‖ in", "‖z‖ out",
                  "rotation", "ρ", "gap"], rows, css="sites", collapsed=f"{model.get('name')}: {n} norm sites")


def per_site_section(stats: dict) -> Section:
    groups = ", ".join(f"{k} = {v}" for k, v in GROUP_LABELS.items())
    return Section("Per norm site", f"Role groups: {groups}.", tables=[per_site_table(m) for m in stats["models"]])


def _measured_sections(res: dict | None, title: str, section: Callable[[dict], Section]) -> list[Section]:
    """No section when ``res`` is None, a "not measured" note when it says so, else ``section(res)``."""
    if res is None:
        return []
    if res.get("status") == "not measured":
        return [not_measured_section(title, res.get("reason", "?"))]
    return [section(res)]


def swap_sections(model: dict) -> list[Section]:
    return _measured_sections(model.get("swap"), f"Naive norm swap: {model.get('name')}", swap_report_section)


def attention_sections(model: dict) -> list[Section]:
    return _measured_sections(model.get("attention"),
                              f"Attention: unselectable keys and query angles ({model.get('name')})",
                              attention_report_section)
