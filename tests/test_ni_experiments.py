"""Smoke tests of `normscope reproduce ni` (micro budgets; the full run is marked slow)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from normscope.experiments import ni
from normscope.experiments.ni import runs
from normscope.experiments.ni.training import BatchedMLP, accuracy, train


def _parse(argv):
    p = argparse.ArgumentParser()
    ni.register(p.add_subparsers())
    return p.parse_args(["ni", *argv])


def test_reproduce_ni_theory_part_writes_tables_and_plots(tmp_path):
    out = tmp_path / "ni"
    args = _parse(["--out", str(out), "--quick", "--seeds", "1", "--only", "theory"])
    assert args.func(args) == 0
    for f in ("README.md", "results.json", "theory.md", "lng_nonlinearity.png"):
        assert (out / f).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())["results"]["theory"]
    assert res["shatter"]["realised"] == res["shatter"]["labelings"]
    assert res["xor"]["lssr_after_ln"] <= 1e-12
    readme = (out / "README.md").read_text()
    assert "Reconstructed by us" in readme and "ε = 0" in readme
    with pytest.raises(FileExistsError):
        args.func(args)


def test_capacity_and_activation_micro_budget(tmp_path, one_thread):
    cap = runs.capacity(tmp_path, quick=True, seeds=1, steps=5)
    assert set(cap) == {"gaussian (N(0,I32), 10 random classes)", "digits, shuffled labels"}
    for r in cap.values():
        assert {"linear", "relu"} <= set(r) and len(r) == 7
        assert all(0.0 <= v["mean"] <= 1.0 for v in r.values())
    act = runs.activation(tmp_path, quick=True, seeds=1, steps=5)
    assert len(act) == 5
    for f in ("capacity.md", "capacity.png", "activation.md", "activation.png"):
        assert (tmp_path / f).stat().st_size > 0


def test_batched_seeds_match_separate_training():
    # S seeds trained together == each seed trained alone (Adam is elementwise; losses are summed)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    both = BatchedMLP(2, 6, 8, 2, 3, "lng", 2, seed=4)
    single = BatchedMLP(2, 6, 8, 2, 3, "lng", 2, seed=4)
    with torch.no_grad():  # keep only seed 1's weights in a 1-seed model
        one = BatchedMLP(1, 6, 8, 2, 3, "lng", 2, seed=0)
        for p1, p2 in zip(one.parameters(), single.parameters()):
            p1.copy_(p2[1:2])
    train(both, X, y, steps=30, lr=1e-2)
    train(one, X, y, steps=30, lr=1e-2)
    for p1, p2 in zip(one.parameters(), both.parameters()):
        torch.testing.assert_close(p1, p2[1:2], rtol=1e-4, atol=1e-5)
    assert accuracy(one, X, y)[0] == pytest.approx(accuracy(both, X, y)[1])


def test_bad_arguments(tmp_path):
    args = _parse(["--out", str(tmp_path / "x"), "--seeds", "0"])
    with pytest.raises(ValueError):
        args.func(args)
    with pytest.raises(ValueError):
        BatchedMLP(1, 4, 4, 1, 2, "tanh")


@pytest.mark.slow
def test_reproduce_ni_quick_full(tmp_path):
    args = _parse(["--out", str(tmp_path / "ni"), "--quick", "--seeds", "2"])
    assert args.func(args) == 0
    cap = json.loads((tmp_path / "ni" / "results.json").read_text())["results"]["capacity"]
    for r in cap.values():
        assert r["linear"]["mean"] < r["LN-G g=4 (size 8)"]["mean"]
