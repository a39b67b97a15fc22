"""Report: tables, aggregation, HTML assembly (synthetic stats; no model needed)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from normscope.report import Section, aggregate, build, gupta_tables, model_verdict, paper_tables
from normscope.report import markup
from normscope.report.build import sanitize
from normscope.probe.schema import ln_sites
from normscope.report.tables import mean_abs_deviation


def summarize(x: np.ndarray, lo: float | None = None, hi: float | None = None, bins: int = 60) -> dict:
    x = np.asarray(x, dtype=np.float64)
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    return {
        "count": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
        "p01": float(np.percentile(x, 1)),
        "p50": float(np.percentile(x, 50)),
        "p99": float(np.percentile(x, 99)),
        "hist": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def _vectors_summary(v: np.ndarray) -> dict:
    d = v.shape[-1]
    mu = v.mean(-1)
    rms = np.sqrt((v**2).mean(-1))
    cos = mu / rms
    return {
        "angle_deg": summarize(np.degrees(np.arccos(np.clip(cos, -1, 1))), 0.0, 180.0, 720),
        "norm": summarize(np.linalg.norm(v, axis=-1)),
        "mean": summarize(mu),
        "std": summarize(v.std(-1)),
        "rms": summarize(rms),
        "cos2": summarize(cos**2),
        "_d": d,
    }


def fake_model(name: str, *, d: int, n_layers: int, tokens: int, post_ln: bool, offset: float, seed: int) -> dict:
    """Stats from real synthetic vectors: hidden states with a mean component `offset` * growing norm."""
    rng = np.random.default_rng(seed)
    roles = ("post_attention", "post_mlp") if post_ln else ("pre_attention", "pre_mlp")
    kind = "layernorm" if post_ln else "rmsnorm"
    layers = []
    if post_ln:
        layers.append({"name": "embeddings.LayerNorm", "role": "embedding", "kind": kind})
    gain = 1 + 0.3 * rng.standard_normal(d)
    for i in range(n_layers):
        for role in roles:
            x = rng.standard_normal((tokens, d)) * (1 + i) + offset * (1 + i) * rng.standard_normal((tokens, 1))
            xc = x - x.mean(-1, keepdims=True) if post_ln else x
            y = xc / np.sqrt((xc**2).mean(-1, keepdims=True) + 1e-6) * gain
            cos_io = (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
            gap = np.abs(90 - np.degrees(np.arccos(x.mean(-1) / np.sqrt((x**2).mean(-1)))))
            site = f"{'encoder.layer' if post_ln else 'model.layers'}.{i}.{role}"
            layers.append(
                {
                    "name": site,
                    "layer": i,
                    "role": role,
                    "kind": kind,
                    "eps": 1e-6,
                    "input": _vectors_summary(x),
                    "output": _vectors_summary(y),
                    "rotation_deg": summarize(np.degrees(np.arccos(np.clip(cos_io, -1, 1)))),
                    "rms_gap": summarize(gap),
                    "radial_fraction": summarize(np.ones(tokens) - 1e-7 * rng.random(tokens)),
                }
            )
    layers.append({"name": "model.norm", "role": "final", "kind": kind, "layer": None,
                   "input": layers[-1]["input"], "output": layers[-1]["output"]})
    return {"name": name, "hidden_size": d, "tokens": tokens, "layers": layers}


@pytest.fixture(scope="module")
def stats():
    return {
        "models": [
            fake_model("tiny-post", d=32, n_layers=3, tokens=400, post_ln=True, offset=0.0, seed=0),
            fake_model("tiny-pre", d=48, n_layers=4, tokens=300, post_ln=False, offset=2.0, seed=1),
        ],
        "run": {"seq_len": 64, "max_tokens": 400, "seconds": 1.5, "texts": "synthetic vectors"},
    }


def test_aggregate_pooled_sd_matches_raw_tokens():
    rng = np.random.default_rng(3)
    xs = [rng.normal(loc=90 + i, scale=1 + 0.5 * i, size=n) for i, n in enumerate((100, 250, 40))]
    a = aggregate([summarize(x) for x in xs])
    allx = np.concatenate(xs)
    assert a.mean == pytest.approx(allx.mean(), rel=1e-12)
    assert a.sd == pytest.approx(allx.std(), rel=1e-12)
    assert a.max == pytest.approx(allx.max())
    assert a.pm == pytest.approx(np.mean([x.std() for x in xs]) / math.sqrt(3), rel=1e-12)
    assert a.n_layers == 3


def test_aggregate_skips_nonfinite_layers():
    a = aggregate([{"mean": None, "std": None}, {"mean": 2.0, "std": 1.0, "max": 5.0}])
    assert a.n_layers == 1 and a.mean == 2.0 and a.pm == 1.0
    assert aggregate([]).n_layers == 0 and aggregate([]).fmt() == "–"


def test_paper_numbers_and_pm_relation():
    p = paper_tables()
    assert p["table2_angle_with_ones_deg"]["rows"]["GPT-2 XL"][0] == [101.48, 3.20]
    assert p["table3_l2_norm"]["rows"]["Llama-3-8B"][1] == 549.19
    assert p["table4_rotation_deg"]["rows"]["GPT-J 6B"][1] is None
    # the "±" of Table 2 = legend SD / sqrt(L) (docs/probe.md): a check on the transcription
    for m in ("GPT-J 6B", "Pythia-6.9B", "Pythia-1.4B", "Llama-3-8B", "Llama-2-7B"):
        sd = p["histogram_legends_angle_deg"]["rows"][m][0][1]
        pm = p["table2_angle_with_ones_deg"]["rows"][m][0][1]
        assert sd / math.sqrt(p["models"][m]["layers"]) == pytest.approx(pm, abs=0.006), m


def test_ln_sites_roles(stats):
    post, pre = stats["models"]
    ln1, ln2, r1, r2 = ln_sites(post)
    assert (r1, r2) == ("post_attention", "post_mlp") and len(ln1) == len(ln2) == 3
    ln1, ln2, r1, r2 = ln_sites(pre)
    assert (r1, r2) == ("pre_attention", "pre_mlp") and [e["layer"] for e in ln1] == [0, 1, 2, 3]


def test_tables_have_ours_and_papers(stats):
    t2, t3, t4, leg = gupta_tables(stats)
    md = t2.to_markdown()
    assert "tiny-pre" in md and "GPT-2 XL *(paper)*" in md and "101.48 ± 3.20" in md
    # our Hidden cell is the pooled aggregate of the LN1 inputs
    _, pre = stats["models"]
    ln1, _, _, _ = ln_sites(pre)
    a = aggregate([e["input"]["angle_deg"] for e in ln1])
    row = next(r for r in t2.rows if r[0] == "tiny-pre")
    assert row[1] == f"{a.mean:.2f} ± {a.pm:.2f} (σ {a.sd:.2f})"
    assert any("[post-LN]" in r[0] for r in t3.rows)
    assert "7186.44" in t3.to_markdown() and "30.46 ± 1.68" in t4.to_markdown()
    assert "110.56 ± 32.51" in leg.to_markdown()


def test_verdict_reflects_mean_component(stats):
    post, pre = stats["models"]
    v0, v1 = model_verdict(post), model_verdict(pre)
    # random isotropic inputs: E[cos^2] = 1/d; a shared offset puts a large share along 1
    assert v0.cos2.mean == pytest.approx(1 / 32, rel=0.2)
    assert v0.answer.startswith("No") or v0.answer.startswith("Mostly") or v0.answer.startswith("Yes")
    assert v1.cos2.mean > 0.3 and v1.answer.startswith("No")


@pytest.fixture(scope="module")
def built(stats, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    extra = [("Swap test", "Some **markdown** with a [link](https://example.com).\n\n| a | b |\n|---|---|\n| 1 | 2 |\n", ())]
    return build(stats, out, extra_sections=extra)


def test_build_writes_self_contained_report(built):
    page = built.read_text()
    out = built.parent
    assert built.name == "report.html"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page), "external resource in report"
    assert "<link" not in page and "<script" not in page and "url(" not in page
    assert page.count("data:image/png;base64,") >= 5
    for needle in ("Table 2", "Table 3", "Table 4", "tiny-pre", "GPT-2 XL", "√L",
                   "Is mean removal redundant", "Swap test", "<strong>markdown</strong>"):
        assert needle in page, needle
    assert (out / "tables.md").read_text().count("| GPT-2 XL *(paper)*") == 3
    assert len(list((out / "figures").glob("*.png"))) >= 5


def test_stats_json_round_trip(stats, built):
    back = json.loads((built.parent / "stats.json").read_text())
    assert back == json.loads(json.dumps(stats))


def test_nonfinite_numbers_become_null():
    s = {"a": [float("nan"), 1.5, float("-inf")], "b": {"c": np.float32(2.5), "d": (1, 2)}}
    clean = sanitize(s)
    assert clean == {"a": [None, 1.5, None], "b": {"c": 2.5, "d": [1, 2]}}
    json.dumps(clean, allow_nan=False)


def test_build_rejects_empty_stats(tmp_path):
    with pytest.raises(ValueError, match="models"):
        build({"models": []}, tmp_path)
    with pytest.raises(ValueError, match="extra section"):
        build({"models": [fake_model("m", d=8, n_layers=1, tokens=20, post_ln=False, offset=0, seed=0)]}, tmp_path,
              extra_sections=["just a string"])


def test_extra_section_images_and_html(stats, tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    png = tmp_path / "x.png"
    fig.savefig(png)
    fig2, ax2 = plt.subplots()
    ax2.plot([1, 0])
    sec = Section("Attention", "<p id='att'>raw html</p>", images=[("from a file", png), fig2])
    one = {"models": [fake_model("one", d=16, n_layers=2, tokens=50, post_ln=False, offset=0.0, seed=5)]}
    page = build(one, tmp_path / "r", extra_sections=[sec]).read_text()
    assert "<p id='att'>raw html</p>" in page and "from a file" in page
    assert page.count("data:image/png;base64,") >= 7


def test_all_nonfinite_model_still_renders(tmp_path):
    """A model whose every token was NaN (probe counts 0): the report says 'not measured', no crash."""
    m = fake_model("dead", d=16, n_layers=2, tokens=20, post_ln=False, offset=0.0, seed=2)
    empty = {"count": 0, **{k: None for k in ("mean", "std", "min", "max", "p01", "p50", "p99")}}
    for e in m["layers"]:
        for side in ("input", "output"):
            if side in e:
                e[side] = {k: dict(empty) for k in e[side] if k != "_d"}
        for k in ("rotation_deg", "rms_gap", "radial_fraction"):
            if k in e:
                e[k] = dict(empty)
        e["nonfinite"] = {"input_tokens": 20, "output_tokens": 20, "input_values": 320, "output_values": 320}
    page = build({"models": [m]}, tmp_path).read_text()
    assert "not measured" in page and "NaN/Inf (skipped)" in page
    assert model_verdict(m).cos2.n_layers == 0


def test_mean_removal_rotation_from_histogram():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(90.3, 1.2, 5000), rng.normal(60, 5, 50)])
    s = summarize(x, 0.0, 180.0, 2000)  # the probe's binning: 0.09° bins
    assert mean_abs_deviation(s) == pytest.approx(np.abs(x - 90).mean(), abs=0.045)
    assert math.isnan(mean_abs_deviation({"mean": 1.0}))


def test_markdown_subset():
    h = markup.to_html("# T\n\npara *em* `c` [x](http://a.b)\n\n- one\n- two\n\n```\n<x>\n```\n")
    assert "<h3>T</h3>" in h and "<em>em</em>" in h and "<code>c</code>" in h
    assert "href" not in h and "x (http://a.b)" in h
    assert "<ul><li>one</li><li>two</li></ul>" in h and "&lt;x&gt;" in h
