"""The measured answer to Gupta et al.'s question — is LayerNorm's mean removal redundant? — per model.

Analysis only (numbers and sentences, no markup). The evidence, per role group of norms
(:func:`normscope.probe.schema.role_group`):

1. **Share of ‖x‖² along 𝟙**, cos²θ = μ²/RMS² of each norm input, averaged over tokens: exactly
   what removing the mean discards. It is judged against the random-vector baseline, not an
   absolute number: an isotropic x ∈ ℝᵈ has cos θ ≈ N(0, 1/d), E[cos²θ] = 1/d. A group passes when
   its mean share is at most :data:`C_BASELINE`/d = 4/d, i.e. the RMS of cos θ is within 2/√d — the
   same ±2 SD band around 90° that the angle plots draw for a random vector.
2. **The tail**: the few tokens whose mean carries the model (the first position, "massive
   activations", arXiv:2402.17762) vanish in a token average. A token whose share exceeds
   :data:`C_TAIL`/d = 100/d (capped at ½) is a tail token; the probe's ``input.tail`` block says how
   many there are and at which positions. Without it, the largest single-token share (``cos2.max``)
   is used.
3. **The naive swap** (``stats["models"][i]["swap"]``, :func:`normscope.convert.swap_test`): the loss
   change when the norms of one role group lose their mean removal. A group is removable when
   Δloss ≤ :data:`SWAP_TOL_NATS` (perplexity ×1.01) for LM losses, or 1 − cos ≤
   :data:`SWAP_TOL_COS` for embedding similarity. **The swap test decides** whether mean removal
   can go; when it contradicts the angle statistics the headline says so.

The sentences (per-group answers, the headline) are worded in :mod:`normscope.report.verdict_text`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from normscope.probe.schema import (
    GROUP_LABELS,
    GROUP_VARIANTS,
    ModelStats,
    SiteStats,
    get_path,
    is_not_measured,
    ln_sites,
    num,
)
from normscope.report.format import factor, finite, pct
from normscope.report.tables import Agg, aggregate
from normscope.report.verdict_text import headline, with_answer

C_BASELINE = 4.0  # share ≤ 4/d ⇔ |cos θ| ≤ 2/√d: within ±2 SD of a random vector's angle with 𝟙
C_TAIL = 100.0  # a token with share > 100/d has a mean 10× the random amplitude
SWAP_TOL_NATS = 0.01  # Δ cross-entropy (nats/token) below which the swap is harmless: perplexity ×1.01
SWAP_TOL_COS = 1e-3  # 1 − cos of the embeddings below which the swap is harmless (≈ 2.6° apart)
_VARIANT_GROUP = {v: g for g, v in GROUP_VARIANTS.items()}


@dataclass(frozen=True)
class SwapEvidence:
    """The naive-swap row that speaks for a group (or for all norms)."""

    variant: str
    delta_loss: float
    ppl_ratio: float | None
    harmless: bool

    @property
    def severe(self) -> bool:
        """Δloss ≥ 1 nat/token (perplexity ×e) or 1 − cos ≥ 0.1 (embeddings ≥ 26° apart)."""
        return self.delta_loss >= (1.0 if self.ppl_ratio is not None else 0.1)

    def effect(self) -> str:
        if self.ppl_ratio is not None and finite(self.ppl_ratio):
            return f"perplexity {factor(self.ppl_ratio)}"
        return f"1 − cos = {self.delta_loss:.2g}"


@dataclass(frozen=True)
class GroupVerdict:
    """The verdict for one role group. ``stats`` is "yes", "mostly", "tail", "no" or None (no data)."""

    group: str
    label: str
    n_sites: int
    share: float  # token-weighted mean share of ‖x‖² along 𝟙
    multiple: float  # share × d: 1 = a random vector
    worst_share: float
    worst_multiple: float
    worst_site: str
    threshold: float  # C_BASELINE / d
    tail_frac: float  # fraction of tokens above C_TAIL/d (NaN without tail data)
    tail_max: float  # largest single-token share
    tail_where: str  # e.g. "at window position 0 (...); worst tokens: ..."
    heavy_tail: bool  # some token's share exceeds 100/d
    stats: str | None
    swap: SwapEvidence | None
    removable: bool | None  # the swap decides when it exists
    contradiction: bool
    answer: str


@dataclass
class Verdict:
    """Per-model verdict: the paper-style numbers over the block norms plus the per-group verdicts."""

    model: str
    d: int
    post_ln: bool
    kinds: list[str]
    angle: Agg
    cos2: Agg
    worst_cos2: float
    worst_site: str
    tail_dev: float
    tail_site: str
    gap: Agg
    answer: str
    groups: list[GroupVerdict] = field(default_factory=list)
    swap_all: SwapEvidence | None = None
    swap_status: str = ""  # "", or "not measured: <reason>"


# ----------------------------------------------------------------------------- evidence


def _swap_rows(model: ModelStats) -> tuple[dict[str, SwapEvidence], SwapEvidence | None]:
    """Role-group rows and the "all" row of the model's swap result (empty when not run)."""
    res = model.swap
    if not res or is_not_measured(res):
        return {}, None
    emb = res.get("loss_kind") == "embedding"
    by_group: dict[str, SwapEvidence] = {}
    all_row = None
    for r in res.get("rows") or ():
        variant = str(r.get("variant"))
        if variant.startswith("exact"):
            continue
        dl = num(r, "delta_loss")
        if not finite(dl):
            continue
        ppl = None if emb else num(r, "ppl_ratio")
        harmless = dl <= (SWAP_TOL_COS if emb else SWAP_TOL_NATS)
        ev = SwapEvidence(variant, dl, ppl, harmless)
        if variant == "all":
            all_row = ev
        elif variant in _VARIANT_GROUP:
            by_group[_VARIANT_GROUP[variant]] = ev
    return by_group, all_row


def _tail(sites: list[SiteStats], thresholds: list[float]) -> tuple[float, float, str]:
    """(fraction of tokens above C_TAIL/d, largest token share, where the tail sits)."""
    fracs, ws, worst = [], [], math.nan
    pos_share: dict[str, list[float]] = {}
    for s in sites:
        if finite(s.cos2_in.max):
            worst = s.cos2_in.max if not finite(worst) else max(worst, s.cos2_in.max)
        if s.tail is None:
            continue
        w = s.cos2_in.count if finite(s.cos2_in.count) else 1.0
        if finite(s.tail.frac_above_100_over_d):
            fracs.append(s.tail.frac_above_100_over_d)
            ws.append(w)
        for t in s.tail.top:
            if finite(t.share):
                worst = t.share if not finite(worst) else max(worst, t.share)
        for k, v in s.tail.by_position.items():
            if finite(v):
                pos_share.setdefault(k, []).append(v)
    frac = sum(f * w for f, w in zip(fracs, ws)) / sum(ws) if ws and sum(ws) > 0 else math.nan
    tops = sorted((t for s in sites if s.tail is not None for t in s.tail.top if finite(t.share)),
                  key=lambda t: -t.share)
    where = ""
    if pos_share:
        means = {k: sum(v) / len(v) for k, v in pos_share.items()}
        bulk = means.get(">=4", math.nan)
        thr = min(thresholds) if thresholds else math.nan
        hot = [k for k in ("0", "1", "2", "3") if finite(means.get(k)) and means[k] > thr
               and (not finite(bulk) or means[k] > 2 * bulk)]
        if hot:
            where = "at window position" + ("s " if len(hot) > 1 else " ") + ", ".join(hot)
            where += f" (mean share {pct(max(means[k] for k in hot), 2)} there, {pct(bulk, 2)} from position 4 on)"
    if tops:
        seen, worst_tokens = set(), []
        for t in tops:
            key = (t.token, t.position)
            if key not in seen:
                seen.add(key)
                worst_tokens.append(f"{t.describe()} ({pct(t.share, 2)})")
            if len(worst_tokens) == 3:
                break
        where += ("; " if where else "") + "worst tokens: " + ", ".join(worst_tokens)
    return frac, worst, where


def group_verdict(model: ModelStats, group: str, sites: list[SiteStats],
                  swap: SwapEvidence | None = None) -> GroupVerdict:
    """The stats verdict of one role group, reconciled with its swap row when there is one."""
    rows = [(s, s.d or model.d) for s in sites if s.cos2_in.finite and (s.d or model.d)]
    label = GROUP_LABELS.get(group, group)
    if not rows:
        stats, share, mult, worst, wmult, wsite, thr = None, math.nan, math.nan, math.nan, math.nan, "–", math.nan
        frac, tmax, where, heavy = math.nan, math.nan, "", False
    else:
        ws = [s.cos2_in.count if finite(s.cos2_in.count) and s.cos2_in.count > 0 else 1.0 for s, _ in rows]
        share = sum(w * s.cos2_in.mean for w, (s, _) in zip(ws, rows)) / sum(ws)
        mult = sum(w * s.cos2_in.mean * d for w, (s, d) in zip(ws, rows)) / sum(ws)
        ws_site, wd = max(rows, key=lambda r: r[0].cos2_in.mean * r[1])
        worst, wmult, wsite = ws_site.cos2_in.mean, ws_site.cos2_in.mean * wd, ws_site.name
        ds = sorted({d for _, d in rows})
        thr = C_BASELINE / ds[0]
        frac, tmax, where = _tail([s for s, _ in rows], [C_BASELINE / d for d in ds])
        # Without the probe's tail block only the largest share is known; a random vector's largest
        # share over n tokens is about 2 ln(n)/d (a χ²₁/d tail), so the cut never falls below twice that.
        n = max(2.0, max((s.cos2_in.count for s, _ in rows if finite(s.cos2_in.count)), default=2.0))
        tail_cut = min(C_TAIL / ds[0], max(0.5, 4 * math.log(n) / ds[0]))
        heavy = (finite(frac) and frac > 0) or (not finite(frac) and finite(tmax) and tmax > tail_cut)
        if mult > C_BASELINE:
            stats = "no"
        elif wmult > C_BASELINE:
            stats = "mostly"
        elif heavy:
            stats = "tail"
        else:
            stats = "yes"
    removable = swap.harmless if swap is not None else (None if stats is None else stats == "yes")
    # the token average says one thing, the swap the other (a harmful swap despite a passing average is
    # what a tail of a few heavy tokens does)
    contradiction = swap is not None and stats is not None and (stats != "no") != swap.harmless
    gv = GroupVerdict(group, label, len(sites), share, mult, worst, wmult, wsite, thr, frac, tmax, where, heavy,
                      stats, swap, removable, contradiction, "")
    return with_answer(gv)


# ----------------------------------------------------------------------------- model verdict


def _blocks(model: dict) -> list[dict]:
    ln1, ln2, _, _ = ln_sites(model)
    return ln1 + ln2


def model_verdict(model: dict) -> Verdict:
    """Measured answer to "is mean removal redundant?" for one model of the stats schema.

    The paper-style numbers (angle, share, worst block, widest p01/p99, RMSNorm gap) pool the
    block norms (Gupta et al.'s LN1/LN2); the per-group verdicts cover every norm site; the
    headline (``answer``) reconciles both with the swap test (see the module docstring).
    """
    ms = ModelStats.from_dict(model)
    entries = _blocks(model)
    angle = aggregate([get_path(e, "input.angle_deg") for e in entries])
    cos2 = aggregate([get_path(e, "input.cos2") for e in entries])
    worst, worst_site, tail, tail_site = -math.inf, "–", -math.inf, "–"
    for e in entries:
        c = num(get_path(e, "input.cos2"), "mean")
        if finite(c) and c > worst:
            worst, worst_site = c, str(e.get("name"))
        a = get_path(e, "input.angle_deg")
        dev = max(abs(90 - num(a, "p01")), abs(num(a, "p99") - 90))
        if finite(dev) and dev > tail:
            tail, tail_site = dev, str(e.get("name"))
    swaps, swap_all = _swap_rows(ms)
    groups = [group_verdict(ms, g, sites, swaps.get(g)) for g, sites in ms.groups().items()]
    v = Verdict(
        model=ms.name, d=ms.d, post_ln=ms.post_ln, kinds=sorted({str(e.get("kind")) for e in entries}),
        angle=angle, cos2=cos2, worst_cos2=worst, worst_site=worst_site, tail_dev=tail, tail_site=tail_site,
        gap=aggregate([e.get("rms_gap") for e in entries]), answer="", groups=groups, swap_all=swap_all,
        swap_status=f"not measured: {ms.swap.get('reason')}" if is_not_measured(ms.swap) else "",
    )
    v.answer = headline(v)
    return v


def verdict_record(v: Verdict) -> dict[str, Any]:
    """The verdict as a JSON-able record for ``stats.json`` (``MODEL["verdict"]`` in SCHEMA.md)."""
    groups = []
    for g in v.groups:
        rec = {k: getattr(g, k) for k in ("group", "label", "n_sites", "share", "multiple", "worst_share",
                                           "worst_multiple", "worst_site", "threshold", "tail_frac", "tail_max",
                                           "tail_where", "heavy_tail", "stats", "removable", "contradiction", "answer")}
        rec["swap"] = None if g.swap is None else {"variant": g.swap.variant, "delta_loss": g.swap.delta_loss,
                                                   "ppl_ratio": g.swap.ppl_ratio, "harmless": g.swap.harmless}
        groups.append(rec)
    return {"headline": v.answer, "c_baseline": C_BASELINE, "c_tail": C_TAIL, "swap_tol_nats": SWAP_TOL_NATS,
            "swap_tol_cos": SWAP_TOL_COS, "groups": groups}
