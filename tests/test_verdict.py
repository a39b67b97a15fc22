"""The report's verdict (normscope.report.verdict) on synthetic stats dicts: benign, tail-dominated,
contradicted by the swap test, and with sections missing or not measured."""

from __future__ import annotations

import json
import math

import pytest

from normscope.probe.schema import ModelStats, Tail, role_group
from normscope.report import build, model_verdict
from normscope.report.verdict import C_BASELINE


def site(name: str, role: str, layer: int | None, d: int, share: float, *, max_share: float | None = None,
         tail: dict | None = None, label: str | None = None, count: int = 1000) -> dict:
    """A norm-site entry with the summaries the verdict reads (share = mean cos²θ of the input)."""
    ang = math.degrees(math.acos(math.sqrt(share)))
    inp = {"cos2": {"count": count, "mean": share, "std": share, "min": 0.0,
                    "max": share * 3 if max_share is None else max_share},
           "angle_deg": {"count": count, "mean": ang, "std": 1.0, "p01": ang - 2, "p99": ang + 2}}
    if tail is not None:
        inp["tail"] = tail
    return {"name": name, "role": role, "kind": "rmsnorm", "label": label or name.rpartition(".")[2],
            "layer": layer, "d": d, "input": inp, "rms_gap": {"mean": 1e-7}}


def gemma_like(d: int = 64, *, share: float = 0.2 / 64, tail: dict | None = None, swap: dict | None = None) -> dict:
    """A pre-LN model with sandwich norms and per-head QK norms, as the current registry labels Gemma-3."""
    layers = []
    for i in range(3):
        layers += [
            site(f"model.layers.{i}.input_layernorm", "pre_attention", i, d, share, tail=tail),
            site(f"model.layers.{i}.post_attention_layernorm", "post_attention", i, d, share, tail=tail),
            site(f"model.layers.{i}.pre_feedforward_layernorm", "pre_mlp", i, d, share, tail=tail),
            site(f"model.layers.{i}.post_feedforward_layernorm", "post_mlp", i, d, share, tail=tail),
            site(f"model.layers.{i}.self_attn.q_norm", "other", i, 16, 1.0 / 16),
        ]
    layers.append(site("model.norm", "final", None, d, share))
    m = {"name": "gemma-like", "hidden_size": d, "tokens": 1000, "layers": layers}
    if swap is not None:
        m["swap"] = swap
    return m


def swap_result(ratios: dict[str, float], all_ratio: float) -> dict:
    """A role-grouped swap result with the given perplexity ratio per group variant."""
    rows = [{"variant": v, "sites": [], "layer": None, "role": "x", "loss": 3.0 + math.log(r),
             "delta_loss": math.log(r), "ppl": 20.0 * r, "ppl_ratio": r} for v, r in ratios.items()]
    rows.append({"variant": "all", "sites": [], "layer": None, "role": "all", "loss": 3 + math.log(all_ratio),
                 "delta_loss": math.log(all_ratio), "ppl": 20.0 * all_ratio, "ppl_ratio": all_ratio})
    return {"model": "gemma-like", "loss_kind": "lm", "per": "role", "swap": "RMSNorm → LayerNorm", "tokens": 512,
            "loss_note": "next-token cross-entropy", "baseline": {"loss": 3.0, "ppl": 20.0}, "rows": rows}


BENIGN = {"pre-sublayer norms": 1.001, "sandwich norms": 1.002, "final norm": 1.0005}


def test_all_benign_says_yes_and_the_swap_agrees():
    v = model_verdict(gemma_like(swap=swap_result(BENIGN, 1.003)))
    assert v.answer.startswith("Yes, at inference"), v.answer
    assert "swap of all norms agrees" in v.answer
    groups = {g.group: g for g in v.groups}
    assert set(groups) == {"pre", "sandwich", "qk", "final"}  # post_* in a pre-LN model = sandwich
    assert all(g.removable and not g.contradiction for g in groups.values() if g.group != "qk")
    assert groups["pre"].swap.ppl_ratio == pytest.approx(1.001)
    assert groups["qk"].swap is None and groups["qk"].stats == "yes"  # share 1/d_head: random, judged by its own d


def test_threshold_is_the_random_baseline_not_one_percent():
    """d = 32: a random vector has 1/32 = 3.1% of ‖x‖² along 𝟙 — above the old absolute 1%, below 4/d."""
    d = 32
    m = {"name": "small", "hidden_size": d, "layers": [site(f"h.{i}.ln_1", "pre_attention", i, d, 1 / d)
                                                        for i in range(4)]}
    g = model_verdict(m).groups[0]
    assert g.stats == "yes" and g.multiple == pytest.approx(1.0) and g.threshold == pytest.approx(C_BASELINE / d)
    m["layers"][2] = site("h.2.ln_1", "pre_attention", 2, d, 5 / d)  # one block at 5× the baseline
    g = model_verdict(m).groups[0]
    assert g.stats == "mostly" and g.worst_site == "h.2.ln_1"
    m["layers"] = [site(f"h.{i}.ln_1", "pre_attention", i, d, 0.5) for i in range(4)]
    assert model_verdict(m).answer.startswith("No:")


# the probe's tail block (SCHEMA.md TAIL): token = global index in the token stream
TAIL = {"k": 8, "top": [{"share": 0.97, "position": 0, "window": 0, "batch": 0, "token": 0},
                        {"share": 0.9, "position": 0, "window": 1, "batch": 0, "token": 256}],
        "mean_share_by_position": {"0": 0.95, "1": 0.004, "2": 0.003, "3": 0.003, ">=4": 0.002},
        "count_by_position": {"0": 4, "1": 4, "2": 4, "3": 4, ">=4": 984},
        "frac_above_10_over_d": 0.004, "frac_above_100_over_d": 0.002}


def test_tail_dominated_model_contradicted_by_the_swap():
    """The Gemma-3 situation: 0.3% along 𝟙 on average, but the first position carries the mean and the
    naive swap of the sandwich norms multiplies perplexity by 10⁷. The headline must say so."""
    swap = swap_result({"pre-sublayer norms": 1.004, "sandwich norms": 1.2e7, "final norm": 1.001}, 3e7)
    v = model_verdict(gemma_like(tail=TAIL, swap=swap))
    groups = {g.group: g for g in v.groups}
    assert groups["sandwich"].stats == "tail" and groups["sandwich"].removable is False
    assert groups["sandwich"].contradiction and groups["sandwich"].tail_frac == pytest.approx(0.002)
    assert "position 0" in groups["sandwich"].tail_where and "worst tokens: token #0 at position 0 (97%), token #256 at position 0 (90%)" in groups["sandwich"].tail_where
    assert groups["pre"].removable is True  # its swap is harmless despite the same tail
    assert v.answer.startswith("No — the swap test contradicts"), v.answer
    assert "sandwich" in v.answer and "×1.2e+07" in v.answer and "position 0" in v.answer
    assert "Removable by the swap test: pre-sublayer norms and final norm" in v.answer
    assert "Not removable: sandwich norms" in v.answer and "Not swapped: QK norms" in v.answer


def test_tail_without_swap_is_not_called_redundant():
    v = model_verdict(gemma_like(tail=TAIL))
    g = {g.group: g for g in v.groups}["pre"]
    assert g.stats == "tail" and g.removable is False and "not for the tail tokens" in g.answer
    assert not v.answer.startswith("Yes")


def test_tail_from_max_share_when_the_probe_has_no_tail_block():
    m = gemma_like()
    m["layers"][0] = site("model.layers.0.input_layernorm", "pre_attention", 0, 64, 0.2 / 64, max_share=0.9)
    g = {g.group: g for g in model_verdict(m).groups}["pre"]
    assert g.stats == "tail" and math.isnan(g.tail_frac) and g.tail_max == pytest.approx(0.9)


def test_contradicting_swap_without_tail():
    """Angle statistics all benign, yet one group's swap is ruinous: the swap test wins."""
    swap = swap_result({"pre-sublayer norms": 50.0, "sandwich norms": 1.0, "final norm": 1.0}, 60.0)
    v = model_verdict(gemma_like(swap=swap))
    assert v.answer.startswith("No — the swap test contradicts") and "pre-sublayer" in v.answer
    pre = {g.group: g for g in v.groups}["pre"]
    assert pre.stats == "yes" and pre.contradiction and "cannot lose" in pre.answer


def test_missing_and_not_measured_sections(tmp_path):
    m = gemma_like()
    m["swap"] = {"status": "not measured", "reason": "the model has no residual-stream norm sites to swap"}
    m["attention"] = {"status": "not measured", "reason": "no supported attention module"}
    m["layers"][0]["geometry"] = {"status": "not measured", "reason": "gain has a zero entry"}
    v = model_verdict(m)
    assert v.swap_all is None and v.swap_status.startswith("not measured: the model has no")
    assert v.answer.startswith("Yes, at inference")  # the statistics alone, no swap, and it says so
    assert "swap test, which decides whether the mean removal can actually go, was not measured: the model" in v.answer
    page = build({"models": [m]}, tmp_path).read_text()
    assert "not measured: the model has no residual-stream norm sites to swap" in page
    assert "not measured: no supported attention module" in page
    back = json.loads((tmp_path / "stats.json").read_text())
    assert back["models"][0]["swap"]["status"] == "not measured"
    assert "not measured" in (tmp_path / "tables.md").read_text()


def test_model_with_only_other_norms_gets_a_verdict(tmp_path):
    """MPT/Mamba under the name registry: every site 'other'. No paper-style block numbers, still a verdict."""
    m = {"name": "mpt-like", "hidden_size": 64, "family": "mpt",
         "layers": [site(f"transformer.blocks.{i}.norm_{j}", "other", i, 64, 1 / 64) for i in range(2) for j in (1, 2)]}
    v = model_verdict(m)
    assert v.cos2.n_layers == 0 and [g.group for g in v.groups] == ["other"]
    assert "not measured" not in v.answer and "other norms" in v.answer
    page = build({"models": [m]}, tmp_path).read_text()
    assert "mpt-like" in page


def test_role_groups_and_readers():
    assert role_group("pre_mlp", post_ln=False) == "pre"
    assert role_group("post_attention", post_ln=True) == "post"
    assert role_group("post_attention", post_ln=False) == "sandwich"
    assert role_group("attention_output", post_ln=False) == "sandwich"
    assert role_group("other", "k_norm", post_ln=False) == "qk" and role_group("query", post_ln=False) == "qk"
    assert role_group("other", "norm_1", post_ln=False) == "other"
    ms = ModelStats.from_dict(gemma_like(tail=TAIL))
    assert ms.d == 64 and not ms.post_ln and ms.sites[0].layer == 0 and ms.sites[-1].layer is None
    assert ms.sites[0].tail.top[0].position == 0 and ms.sites[0].tail.by_position["0"] == 0.95
    assert Tail.from_dict(None) is None and ms.sites[-1].tail is None


def test_light_tail_block_is_not_called_a_tail():
    """The probe's tail block is always there; worst tokens below 100/d are no tail."""
    light = {"top": [{"share": 0.02, "position": 7, "token": "the"}],  # a writer that stores the token text
             "by_position": {"0": 0.003, "1": 0.003, "2": 0.003, "3": 0.003, ">=4": 0.003},
             "frac_above_10_over_d": 0.01, "frac_above_100_over_d": 0.0}
    v = model_verdict(gemma_like(tail=light, swap=swap_result(BENIGN, 1.003)))
    assert v.answer.startswith("Yes, at inference") and "tail" not in v.answer
    assert not any(g.heavy_tail for g in v.groups)
    swap = swap_result({"pre-sublayer norms": 1.3, "sandwich norms": 1.0, "final norm": 1.0}, 1.3)
    v = model_verdict(gemma_like(tail=light, swap=swap))
    assert "so no tail explains it" in v.answer and "hides a tail" not in v.answer
