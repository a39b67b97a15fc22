"""The verdict's sentences: one answer per role group and the model's headline paragraph.

The numbers and the rules that decide them are in :mod:`normscope.report.verdict`; this module only
words them (the headline never contradicts the per-group answers or the swap test).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from normscope.report.format import finite, pct

if TYPE_CHECKING:
    from normscope.report.verdict import GroupVerdict, Verdict

__all__ = ["headline", "with_answer"]


def _stats_sentence(g: GroupVerdict) -> str:
    if g.stats is None:
        return "not measured (no finite statistics)"
    base = f"{pct(g.share)} of ‖x‖² along 𝟙 on average ({g.multiple:.2g}× the random 1/d; threshold 4/d = {pct(g.threshold)})"
    if g.stats == "no":
        return base + f", worst {pct(g.worst_share)} at {g.worst_site}"
    if g.stats == "mostly":
        return base + f", but {pct(g.worst_share)} at {g.worst_site}"
    if g.stats == "tail":
        t = (f"{pct(g.tail_frac, 2)} of tokens above 100/d" if finite(g.tail_frac)
             else "the worst token") + f", up to {pct(g.tail_max)}"
        return base + f"; tail: {t}" + (f", {g.tail_where}" if g.tail_where else "")
    return base


def with_answer(g: GroupVerdict) -> GroupVerdict:
    s = _stats_sentence(g)
    if g.swap is not None:
        verb = "can lose" if g.swap.harmless else "cannot lose"
        head = f"{verb} the mean removal: naive swap {g.swap.effect()}"
        if g.contradiction:
            head += " although the token-averaged share " + ("passes" if g.stats != "no" else "fails")
        ans = f"{head}; {s}."
    elif g.stats is None:
        ans = s + "."
    else:
        ans = {"yes": "redundant by the angle statistics", "mostly": "mostly redundant",
               "tail": "redundant on average, not for the tail tokens",
               "no": "not redundant"}[g.stats] + f": {s}. (No role-grouped swap test.)"
    return replace(g, answer=ans)


def _names(gs: list[GroupVerdict]) -> str:
    names = [g.label.split(" (")[0] for g in gs]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _tail_sentence(gs: list[GroupVerdict]) -> str:
    """The tail of the first group that has one, in one sentence (empty when none has)."""
    g = next((g for g in gs if g.heavy_tail), None)
    if g is None:
        return ""
    what = (f"{pct(g.tail_frac, 2)} of the tokens carry more than 100/d of ‖x‖² along 𝟙 (up to {pct(g.tail_max)})"
            if finite(g.tail_frac) else f"the worst token carries {pct(g.tail_max)} of ‖x‖² along 𝟙")
    return (f"The token average hides a tail: at the {g.label.split(' (')[0]}, {what}"
            + (f", {g.tail_where}" if g.tail_where else "") + ".")


def headline(v: Verdict) -> str:
    """One paragraph that answers the question and never contradicts the rest of the page.

    The swap test decides for the groups it covers; the angle statistics (mean share against 4/d,
    and the tail) speak for the others, and the headline says which is which.
    """
    measured = [g for g in v.groups if g.stats is not None]
    if not measured:
        return "not measured (no norm sites with finite statistics)"
    d = v.d or 0
    base = f"random-vector baseline 1/d = {pct(1 / d)}, threshold 4/d = {pct(4 / d)}" if d else "d unknown"
    if v.cos2.n_layers and finite(v.cos2.mean):
        avg = (f"removing the mean would discard {pct(v.cos2.mean)} of the squared norm on average and at most "
               f"{pct(v.worst_cos2)} in any block ({base})")
    else:
        g0 = measured[0]
        avg = f"removing the mean would discard {pct(g0.share)} of the squared norm of the {g0.label} ({base})"
    can = [g for g in measured if g.swap is not None and g.swap.harmless]
    cannot = [g for g in measured if g.swap is not None and not g.swap.harmless]
    unswapped = [g for g in measured if g.swap is None]
    all_harm = v.swap_all is not None and not v.swap_all.harmless
    tail = _tail_sentence(cannot or measured)
    if cannot or all_harm:
        eff = cannot[0].swap.effect() if cannot else v.swap_all.effect()
        who = _names(cannot) if cannot else "all norms together"
        if all(g.stats != "no" for g in measured):
            hurt = "breaks the model" if (cannot[0].swap if cannot else v.swap_all).severe else "changes the model"
            out = (f"No — the swap test contradicts the token-averaged angle statistics: {avg}, yet removing the "
                   f"mean of the {who} ({eff}) {hurt}; the swap test decides.")
        else:
            bad = [g for g in measured if g.stats == "no"]
            out = (f"No: mean removal removes a real component at the {_names(bad)} ({pct(bad[0].share)} of ‖x‖² "
                   f"along 𝟙; {base}), and removing the mean of the {who} changes the model ({eff}).")
        if tail:
            out += " " + tail
        elif cannot and finite(cannot[0].share) and finite(cannot[0].tail_max):
            n = sum(g.n_sites for g in cannot)
            out += (" No token carries more than 100/d of ‖x‖² along 𝟙, so no tail explains it; but mean removal "
                    f"still moves each input by √(share) ≈ {pct(math.sqrt(cannot[0].share), 2)} of its length (RMS "
                    f"over tokens), and the swap compounds that over {n} norm{'s' if n > 1 else ''}.")
        out += f" Removable by the swap test: {_names(can) if can else 'none'}. Not removable: {who}."
        if unswapped:
            out += f" Not swapped: {_names(unswapped)} (angle statistics only)."
        return out
    if all(g.stats == "yes" for g in measured):
        out = f"Yes, at inference: {avg}."
        if v.swap_all is not None:
            out += f" The naive swap of all norms agrees: {v.swap_all.effect()}."
        elif not can:
            out += (" This is the angle statistics' answer only: the naive swap test, which decides whether the "
                    "mean removal can actually go, " + (f"was {v.swap_status}." if v.swap_status else "did not run."))
        return out
    if can and all(g.stats == "yes" for g in unswapped):
        out = f"Yes by the swap test: {avg}; swapping every role group leaves the loss unchanged. " + tail
        return out.strip()
    if all(g.stats == "no" for g in measured):
        g = max(measured, key=lambda x: x.worst_multiple if finite(x.worst_multiple) else -1)
        return (f"No: on average {pct(g.share)} of the squared norm of the {g.label} lies along 𝟙 (worst "
                f"{pct(g.worst_share)} at {g.worst_site}; {base}); mean removal removes a real component here.")
    parts = [f"Mostly: {avg}."]
    for key, text in (("yes", "Redundant by the angle statistics: the {}."),
                      ("tail", "Redundant on average but not for the tail tokens: the {}."),
                      ("mostly", "Redundant on average but not in every block: the {}."),
                      ("no", "Not redundant: the {}.")):
        gs = [g for g in measured if g.stats == key and g.swap is None]
        if gs:
            parts.append(text.format(_names(gs)))
    if can:
        parts.append(f"Removable by the swap test: the {_names(can)}.")
    if tail:
        parts.append(tail)
    if unswapped:
        parts.append(f"No swap test decides for the {_names(unswapped)}"
                     + ("" if can else " (run the report with --swap-test role)") + ".")
    return " ".join(parts)
