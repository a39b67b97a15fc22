"""scripts/readme_numbers.py: README tables generated from benchmark JSON; --check fails on drift."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("readme_numbers", Path(__file__).parents[1] / "scripts" / "readme_numbers.py")
rn = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(rn)


def _results(tmp: Path, ratio: float) -> Path:
    d = tmp / "results"
    d.mkdir(exist_ok=True)
    (d / "bench_x.json").write_text(json.dumps({
        "name": "bench_x", "env": {"processor": "CPU", "date": "2026-11-29 12:00 UTC"},
        "ratios": {"k": {"ours": "ours", "reference": "ref", "ratio": ratio, "ours_s": 0.5 * ratio, "reference_s": 0.5,
                         "threads": 1, "target": "<= 1.05", "what": "thing vs ref", "label": "N = 8"}},
        "values": {"peak": {"value": 1234.5, "target": "<= 1536"}, "quick": False},
    }))
    return d


def _readme(tmp: Path) -> Path:
    r = tmp / "README.md"
    r.write_text("# t\n\nbefore\n<!-- normscope:speed:start -->\nold\n<!-- normscope:speed:end -->\nafter\n")
    return r


def test_generate_then_check_passes_and_drift_fails(tmp_path, capsys):
    res, readme = _results(tmp_path, 1.021), _readme(tmp_path)
    assert rn.main(["--readme", str(readme), "--results", str(res)]) == 0
    text = readme.read_text()
    assert "| `bench_x.py`: thing vs ref; N = 8; 1 thread | ours 510.50 ms | ref 500.00 ms | 1.021× (target <= 1.05) |" in text
    assert "value 1234" in text and "target <= 1536" in text
    assert text.startswith("# t\n\nbefore\n") and text.endswith("<!-- normscope:speed:end -->\nafter\n")
    assert rn.main(["--readme", str(readme), "--results", str(res), "--check"]) == 0
    _results(tmp_path, 1.5)  # a new measurement: the README is now stale
    capsys.readouterr()
    assert rn.main(["--readme", str(readme), "--results", str(res), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert readme.read_text() == text  # --check never writes


def test_missing_markers_and_results_are_one_line_errors(tmp_path):
    res = _results(tmp_path, 1.0)
    bare = tmp_path / "R.md"
    bare.write_text("no markers\n")
    with pytest.raises(SystemExit, match="marker"):
        rn.main(["--readme", str(bare), "--results", str(res)])
    with pytest.raises(SystemExit, match="no benchmark results"):
        rn.main(["--readme", str(bare), "--results", str(tmp_path / "empty")])


def test_repro_block_from_ni_json(tmp_path):
    ni = tmp_path / "ni"
    ni.mkdir()
    rows = [{"data": f"random binary {i}", "m": 1000, "classes": 2, "depth": d, "acc64": 1.0} for i, d in enumerate((506, 523))]
    (ni / "results.json").write_text(json.dumps({"results": {
        "construct": {"rows": rows},
        "capacity": {"gaussian": {"linear": {"mean": 0.21}, "LN-G g=16 (size 2)": {"mean": 0.244}}}}}))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- normscope:speed:start -->\n<!-- normscope:speed:end -->\n"
                      "<!-- normscope:repro:start -->\n<!-- normscope:repro:end -->\n")
    args = ["--readme", str(readme), "--results", str(_results(tmp_path, 1.0)), "--repro", f"ni={ni}"]
    assert rn.main(args) == 0
    text = readme.read_text()
    assert "506–523 LN layers" in text and "LN-G g=16 (size 2) 0.24" in text
    assert rn.main(args + ["--check"]) == 0


def test_repro_brody_from_the_commands_summary_json(tmp_path, monkeypatch):
    """`reproduce brody` (micro random-points grid) -> summary.json -> README row; a folder without
    summary.json is a one-line error naming the file."""
    from normscope.cli import main as cli
    from normscope.experiments.brody import random_points

    real_settings = random_points.settings
    monkeypatch.setattr(random_points, "settings",
                        lambda paper_scale, runs=None: {**real_settings(paper_scale, runs), "d": [3, 8], "n": [6, 30], "runs": 3})
    out = tmp_path / "brody"
    assert cli(["reproduce", "brody", "--only", "random-points", "--out", str(out), "--jobs", "1"]) == 0
    readme = tmp_path / "README.md"
    readme.write_text("<!-- normscope:speed:start -->\n<!-- normscope:speed:end -->\n"
                      "<!-- normscope:repro:start -->\n<!-- normscope:repro:end -->\n")
    results = _results(tmp_path, 1.0)
    args = ["--readme", str(readme), "--results", str(results), "--repro", f"brody={out}"]
    assert rn.main(args) == 0
    assert (results / "repro" / "brody" / "summary.json").read_bytes() == (out / "summary.json").read_bytes()
    text = readme.read_text()
    assert "| `reproduce brody` (random-points) | Gaussian points, d = 3–8, n = 6–30 (2 values), 3 draws per cell" in text
    assert "with LN, max over the grid 0.00 (paper 0, Fig. 1d: 0 everywhere)" in text
    assert "d = 3 P ≥ 0.95 from n = 30 (paper ≈ 1 from n ≈ 5)" in text
    # experiments the run left out get a row saying so, not a silent gap
    assert "| `reproduce brody` (majority) | not part of the run this table comes from" in text
    assert rn.main(args + ["--check"]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match=r"no .*empty/summary\.json; run `normscope reproduce brody"):
        rn.main(["--readme", str(readme), "--results", str(results), "--repro", f"brody={empty}"])


def test_brody_majority_row_from_the_summary_of_a_majority_result():
    """summary.majority (the command's condensing of majority.json) -> README row: the paper's
    step-1000 readings beside ours for its two variants, final angles for all four."""
    from normscope.experiments.brody import majority, summary

    def var(loss: float, acc: float) -> dict:
        return {"train_loss_at": {"300": [2.0, 2.2], "1000": [loss, loss + 0.1]},
                "test_acc_at": {"300": [0.1, 0.1], "1000": [acc, acc]},
                "final": {"train_loss": [loss, loss], "test_acc": [acc, acc], "test_seq_acc": [0.0, 0.0],
                          "angle_mean": [40.0, 50.0]}, "initial_angle": [80.0, 82.0]}

    res = {"config": {"d": 8, "steps": 1200, "batch_size": 250}, "seeds": [0, 1],
           "summary": {v: var(0.5 + i / 10, 0.9 - i / 10) for i, v in enumerate(majority.VARIANTS)}}
    head = summary.majority(res)
    assert [a["step"] for a in head["at_step"]] == [1000]
    row = rn._brody_majority(head)
    assert row.startswith("majority task, d = 8, 1,200 steps of batch 250 (paper 14,000 of 6,000), 2 seeds")
    assert "projection + scaling 0.55 / 0.90 (paper ≈ 0.75 / 0.74)" in row
    assert "scaling to 1/√d 0.75 / 0.70 (paper ≈ 1.45 / 0.52)" in row and "no norm 0.85 / 0.60;" in row
    assert "projection + scaling 81° → 45°" in row
