"""Smoke and property tests for `normscope reproduce brody` (micro budgets)."""

import json
import math

import numpy as np
import pytest
import torch

from normscope.experiments.brody import lm, majority, random_points, summary


def test_random_points_micro(tmp_path):
    res = random_points.run(tmp_path, runs=4, jobs=1, progress=False, grid={"d": [3, 8], "n": [6, 30]})
    assert res["max_p_any_with_layer_norm"] == 0.0  # Fig. 1d: no unselectable points after LN
    p = np.array(res["p_any_unselectable"]["none"])
    assert p.shape == (2, 2) and p[1, 0] == 1.0  # 30 Gaussian points in 3-D: always some inside
    for f in ("random_points.json", "random_points.md", "fig1cd_heatmaps.png", "fraction.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "paper" in (tmp_path / "random_points.md").read_text()
    head = summary.random_points(json.loads((tmp_path / "random_points.json").read_text()))
    assert head["with_ln_max_p"] == 0.0 and head["paper_with_ln_max_p"] == 0.0
    assert [r["d"] for r in head["without_ln"]] == [3, 8]
    assert head["without_ln"][0]["first_n_p95"] == 30 and head["without_ln"][0]["p_at_n_max"] == 1.0


def test_majority_data_properties():
    cfg = majority.MajorityConfig(num_samples=400, seq_len=30, num_classes=10)
    data = majority.make_data(cfg, seed=0)
    x = torch.cat([data["x_train"], data["x_test"]])
    y = torch.cat([data["y_train"], data["y_test"]])
    assert x.shape[1] == 30 and len(x) > 400 and len(data["y_test"]) == pytest.approx(0.2 * len(y), abs=2)
    for seq, label in zip(x, y):
        counts = torch.bincount(seq, minlength=10).sort(descending=True).values
        assert counts[0] - counts[1] >= cfg.min_delta and counts[1] > 0
        assert int(torch.bincount(seq).argmax()) == int(label)
    again = majority.make_data(cfg, seed=0)
    assert torch.equal(again["x_train"], data["x_train"])  # seeded (the original was not)


def test_majority_norm_variants_and_effective_query():
    x = torch.randn(5, 7, 8, dtype=torch.float64)
    for v, norm in (("proj_scale", math.sqrt(8)), ("scale_sqrt_d", math.sqrt(8)), ("scale_inv_sqrt_d", 1 / math.sqrt(8))):
        y = majority.make_norm1(v, 8).double()(x)
        torch.testing.assert_close(y.norm(dim=-1), torch.full((5, 7), norm, dtype=torch.float64))
        if v == "proj_scale":
            torch.testing.assert_close(y.sum(-1), torch.zeros(5, 7, dtype=torch.float64))
    torch.testing.assert_close(majority.make_norm1("none", 8)(x), x)
    with pytest.raises(ValueError):
        majority.make_norm1("rms", 8)
    torch.manual_seed(0)
    model = majority.MajorityModel(20, 8, "scale_inv_sqrt_d")
    tokens = torch.randint(0, 20, (2, 11))
    loss = model(tokens).sum()
    loss.backward()  # every variant must train
    assert model.emb.weight.grad is not None
    with torch.no_grad():
        h = model.norm1(model.emb(tokens))
        scores = model.wq(h) @ model.wk(h).transpose(1, 2) / math.sqrt(8)
        torch.testing.assert_close(model.effective_queries(tokens) @ h.transpose(1, 2), scores)
    ones = torch.ones(3, 8)
    assert majority.line_angle_deg(ones).max() < 1e-3 and majority.line_angle_deg(-ones).max() < 1e-3


def test_majority_micro_run(tmp_path):
    cfg = majority.MajorityConfig(num_samples=300, batch_size=60, steps=12, eval_every=6, eval_sequences=40)
    cfg3d = majority.config_3d()
    cfg3d.num_samples, cfg3d.batch_size, cfg3d.steps, cfg3d.eval_every = 200, 100, 4, 2
    res = majority.run(tmp_path, seeds=1, jobs=1, progress=False, cfg=cfg, cfg3d=cfg3d)
    assert set(res["summary"]) == set(majority.VARIANTS)
    run0 = res["runs"][0]
    assert run0["log"]["step"] == [0, 6, 12] and len(run0["log"]["epoch"]) == 3
    assert all(np.isfinite(run0["log"]["train_loss"][1:]))
    assert len(res["runs_3d"]) == 2 and np.array(res["runs_3d"][0]["keys"]).shape == (10, 3)
    # d = 3 keys after projection + scaling: on the circle of radius √3 in 𝟙^⊥
    k = np.array(res["runs_3d"][0]["keys"])
    np.testing.assert_allclose(np.linalg.norm(k, axis=1), math.sqrt(3), rtol=1e-5)
    np.testing.assert_allclose(k.sum(1), 0, atol=1e-5)
    for f in ("majority.json", "majority.md", "fig2a_loss.png", "fig3_accuracy.png", "fig2b_angle.png", "fig1ab_keys_queries_3d.png"):
        assert (tmp_path / f).stat().st_size > 0
    head = summary.majority(json.loads((tmp_path / "majority.json").read_text()))
    assert head["at_step"] == []  # 12 steps: none of the paper's figure steps (1000, ...) is reached
    assert set(head["final"]) == set(majority.VARIANTS) and head["steps"] == 12 and head["seeds"] == 1
    assert head["final"]["proj_scale"]["test_acc"] == res["summary"]["proj_scale"]["final"]["test_acc"][0]


def test_lm_model_and_measure():
    cfg = lm.LMConfig(vocab_size=50, block=40)
    torch.manual_seed(0)
    for scaling in (True, False):
        model = lm.TinyLM(cfg, scaling).eval()
        ids = torch.randint(0, 50, (2, 40))
        res = lm.measure(model, ids, scaling)
        assert len(res["before"]) == 4 and len(res["keys_per_head"][0]) == 4
        if scaling:
            assert all(v == 0.0 for row in res["after"] for v in row)  # Table 1/2: 0 after LN
        assert all(0 <= v <= 100 for row in res["before"] for v in row)
    # causal: the logits at position t do not depend on later tokens
    model = lm.TinyLM(cfg, True).eval()
    a = torch.randint(0, 50, (1, 20))
    b = a.clone()
    b[0, 15:] = (b[0, 15:] + 1) % 50
    with torch.no_grad():
        torch.testing.assert_close(model(a)[0, :15], model(b)[0, :15])


def test_lm_micro_run(tmp_path):
    cfg = lm.LMConfig(vocab_size=300, block=32, batch_size=2, steps=4, eval_every=2, eval_windows=2, measure_windows=2, measure_len=32)
    res = lm.run(tmp_path, jobs=1, progress=False, cfg=cfg)
    assert res["table1"]["with_scaling"] == [0.0] * 4
    assert len(res["table2"]["before"]) == 4
    for f in ("lm.json", "lm.md", "fig4_loss.png"):
        assert (tmp_path / f).stat().st_size > 0
    head = summary.lm(json.loads((tmp_path / "lm.json").read_text()))
    assert head["table1"]["ours"]["with_scaling"] == [0.0] * 4 and head["table1"]["paper"] == lm.PAPER_TABLE1
    assert head["final_loss"]["ours"]["with_scaling"]["heldout"] == res["runs"]["with_scaling"]["log"]["val_loss"][-1]


def test_cli_random_points_and_errors(tmp_path, monkeypatch, capsys):
    from normscope.cli import main

    real_settings = random_points.settings
    monkeypatch.setattr(random_points, "settings", lambda paper_scale, runs=None: {**real_settings(paper_scale, runs), "d": [3], "n": [5, 10], "runs": 2})
    out = tmp_path / "brody"
    assert main(["reproduce", "brody", "--only", "random-points", "--out", str(out), "--jobs", "1"]) == 0
    assert (out / "random_points" / "random_points.md").exists() and (out / "README.md").exists()
    assert str(out) in capsys.readouterr().out
    head = json.loads((out / "summary.json").read_text())
    assert head["arxiv"] == "2305.02582" and list(head["experiments"]) == ["random-points"]
    assert head["experiments"]["random-points"]["with_ln_max_p"] == 0.0
    assert main(["reproduce", "brody", "--only", "random-points", "--out", str(out)]) == 1  # exists, no --force
    assert main(["reproduce", "brody", "--seeds", "0", "--out", str(tmp_path / "x")]) == 1


@pytest.mark.real_weights
def test_real_minilm_micro(tmp_path):
    from normscope.experiments.brody import real

    res = real.run(tmp_path, models=("minilm",), sequences=1, seq_len=64, progress=False)
    layers = res["models"][0]["layers"]
    assert len(layers) == 6 and layers[0]["site"].endswith("embeddings.LayerNorm")
    assert (tmp_path / "real.md").exists()
    head = summary.real(json.loads((tmp_path / "real.json").read_text()))["models"]["minilm"]
    assert head["layers"] == 6 and head["d"] == 384 and head["after_max"] == max(L["after"]["mean"] for L in layers)
    worst = max(L["after"]["mean"] - L["duplicates"]["mean"] for L in layers)
    assert head["after_beyond_duplicates_max"] == worst and 0 <= worst <= head["after_max"]
