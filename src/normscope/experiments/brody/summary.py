"""``summary.json`` of ``normscope reproduce brody``: the headline numbers of each experiment, ours
beside the paper's (Brody, Alon & Yahav, arXiv:2305.02582) where the paper gives one.

Each experiment's full JSON (``random_points/random_points.json``, ``majority/majority.json``,
``lm/lm.json``, ``real/real.json``) stays as it is; this file condenses them into a few numbers
per experiment so that a README table can be generated from it (``scripts/readme_numbers.py``).
Paper values are our readings of its figures (approximate) or its tables (exact), as labelled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from normscope._io import atomic_write_json
from normscope.experiments.brody.common import PAPER


def _nanmean(values: list[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def random_points(result: dict[str, Any]) -> dict[str, Any]:
    """Fig. 1c/1d: P(at least one unselectable point) with LN (paper: 0) and without LN per d."""
    from normscope.experiments.brody.random_points import PAPER_READING, first_n

    s = result["settings"]
    ds, ns = s["d"], s["n"]
    none = np.array(result["p_any_unselectable"]["none"])
    rows = []
    for d, reading in PAPER_READING.items():
        if d not in ds:
            continue
        col = none[:, ds.index(d)]
        rows.append({"d": d, "first_n_p95": first_n(col, ns),
                     "p_at_n_max": float(col[-1]), "paper": reading})
    return {"d": [ds[0], ds[-1]], "n": [ns[0], ns[-1]], "n_values": len(ns), "runs": s["runs"],
            "with_ln_max_p": float(result["max_p_any_with_layer_norm"]), "paper_with_ln_max_p": 0.0,
            "paper_with_ln_source": "Fig. 1d: 0 everywhere", "without_ln": rows}


def majority(result: dict[str, Any]) -> dict[str, Any]:
    """Majority task: train loss and test accuracy at the paper's figure steps within the budget
    (paper: Figs. 2a/3 readings), final metrics and query angle per ``norm1`` variant."""
    from normscope.experiments.brody.majority import PAPER_ACC, PAPER_ANGLE, PAPER_LOSS, budget_config

    cfg, per_var = result["config"], result["summary"]
    paper_cfg = budget_config(paper_scale=True)
    paper_vars = ("proj_scale", "scale_inv_sqrt_d")  # the paper's "with" / "without projection"
    acc = {s: (w, wo) for s, w, wo in PAPER_ACC}
    at = []
    for step, w, wo in PAPER_LOSS:
        key = str(step)
        if not all(key in v["train_loss_at"] for v in per_var.values()):
            continue
        paper = {pv: {"train_loss": lo, "test_acc": (acc.get(step) or (None, None))[i]}
                 for i, (pv, lo) in enumerate(zip(paper_vars, (w, wo)))}
        ours = {v: {"train_loss": _nanmean(s["train_loss_at"][key]), "test_acc": _nanmean(s["test_acc_at"][key])}
                for v, s in per_var.items()}
        at.append({"step": step, "ours": ours, "paper": paper})
    final = {v: {"train_loss": _nanmean(s["final"]["train_loss"]), "test_acc": _nanmean(s["final"]["test_acc"]),
                 "test_seq_acc": _nanmean(s["final"]["test_seq_acc"]),
                 "angle_start": _nanmean(s["initial_angle"]), "angle_end": _nanmean(s["final"]["angle_mean"])}
             for v, s in per_var.items()}
    return {"d": cfg["d"], "steps": cfg["steps"], "batch_size": cfg["batch_size"], "seeds": len(result["seeds"]),
            "paper_steps": paper_cfg.steps, "paper_batch_size": paper_cfg.batch_size, "paper_variants": list(paper_vars),
            "at_step": at, "final": final, "paper_angle": PAPER_ANGLE}


def lm(result: dict[str, Any]) -> dict[str, Any]:
    """d = 8 LM: Table 1 (% unselectable after ln_1), Table 2 (before / after LN) and the final
    losses of Fig. 4, per layer, ours beside the paper's tables."""
    from normscope.experiments.brody.lm import PAPER_FIG4, PAPER_TABLE1, PAPER_TABLE2

    cfg, runs = result["config"], result["runs"]
    loss = {n: {"train": r["log"]["train_loss"][-1], "heldout": r["log"]["val_loss"][-1]} for n, r in runs.items()}
    return {"d": cfg["d"], "layers": cfg["layers"], "steps": cfg["steps"], "vocab_size": cfg["vocab_size"],
            "measure_windows": cfg["measure_windows"], "measure_len": cfg["measure_len"],
            "table1": {"ours": result["table1"], "paper": PAPER_TABLE1},
            "table2": {"ours": result["table2"], "paper": PAPER_TABLE2},
            "final_loss": {"ours": loss, "paper": PAPER_FIG4}}


def real(result: dict[str, Any]) -> dict[str, Any]:
    """Packaged real models (extension, no paper numbers): worst layer's % unselectable hidden
    states before / after the norm, worst key head's % unselectable W_K·y, and the same beyond
    exact duplicates (repeated inputs, e.g. repeated tokens at layer 0 without absolute positions:
    every copy counts as unselectable, so "after − duplicates" is the % of the other positions)."""
    models = {}
    for m in result["models"]:
        layers = m["layers"]
        dup = [(L.get("duplicates") or {}).get("mean") or 0.0 for L in layers]
        keys = [max((k["mean"] for k in L.get("keys") or []), default=None) for L in layers]
        has_keys = any(k is not None for k in keys)
        models[m["model"]] = {
            "d": m["hidden_size"], "sequences": m["sequences"], "seq_len": m["seq_len"], "layers": len(layers),
            "before_max": max(L["before"]["mean"] for L in layers), "after_max": max(L["after"]["mean"] for L in layers),
            "keys_max": max(k for k in keys if k is not None) if has_keys else None,
            "duplicates_max": max(dup),
            "after_beyond_duplicates_max": max(L["after"]["mean"] - u for L, u in zip(layers, dup)),
            "keys_beyond_duplicates_max": max(k - u for k, u in zip(keys, dup) if k is not None) if has_keys else None,
        }
    return {"models": models, "paper_claim": "0% after LayerNorm (projection + scaling), except exact duplicates"}


SUMMARIES = {"random-points": random_points, "majority": majority, "lm": lm, "real": real}


def write(path: Path, done: list[tuple[str, dict[str, Any], float]], *, paper_scale: bool, seeds: int,
          jobs: int) -> dict[str, Any]:
    """Write ``summary.json`` (atomically) beside the experiments' folders.

    **Arguments:** ``path`` (the file to write); ``done``: one ``(name, result, seconds)`` per
    experiment run, ``name`` a key of :data:`SUMMARIES` and ``result`` what that experiment's
    ``run`` returned (the content of its JSON); ``paper_scale``, ``seeds``, ``jobs``: the command's
    settings.

    **Returns:** the written dict ``{"paper", "arxiv", "paper_scale", "seeds", "jobs",
    "experiments": {name: {"seconds", **SUMMARIES[name](result)}}}``.
    """
    data = {"paper": PAPER, "arxiv": "2305.02582", "paper_scale": paper_scale, "seeds": seeds, "jobs": jobs,
            "experiments": {name: {"seconds": round(secs, 1), **SUMMARIES[name](res)} for name, res, secs in done}}
    atomic_write_json(path, data)
    return data
