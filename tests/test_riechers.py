"""`normscope reproduce riechers`: files, claims C1-C13 and the reference's asserted §10.3 values."""

import json
import math

import numpy as np
import pytest

from normscope.cli import main
from normscope.experiments import riechers


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("riechers") / "run"
    assert main(["reproduce", "riechers", "--out", str(out)]) == 0
    return out


def test_files_and_claims(outdir, capsys):
    for name in ("fig1.png", "fig2.png"):
        data = (outdir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    result = json.loads((outdir / "claims.json").read_text())
    ids = [c["id"] for c in result["claims"]]
    assert ids == [f"C{i}" for i in range(1, 14)]
    failed = [c["id"] for c in result["claims"] if not c["pass"]]
    assert failed == []
    md = (outdir / "claims.md").read_text()
    assert md.count("| yes |") == 13 and "Correction: zero gains" in md


def test_asserted_reference_values(outdir):
    v = json.loads((outdir / "claims.json").read_text())["figure_values"]
    np.testing.assert_allclose(v["semi_axes"], [1.484444, 1.190137], atol=5e-7)
    np.testing.assert_allclose(v["normal"], [0.470588, -0.705882, 0.529412], atol=5e-7)
    assert v["offset"] == pytest.approx(0.583333, abs=5e-7)
    np.testing.assert_allclose(v["outer_axes"], [1.558846, 1.039230, 1.385641], atol=5e-7)
    expected = {
        "0.1": [0.903199, 0.575343, 0.120430, 0.000],
        "0.001": [0.998873, 0.990046, 0.771633, 0.950],
        "1e-05": [0.999989, 0.999899, 0.996620, 1.000],
    }
    for eps, row in expected.items():
        np.testing.assert_allclose(v["rho"][eps], row, atol=5e-7)


def test_zero_gain_correction_in_output(outdir):
    cases = json.loads((outdir / "claims.json").read_text())["zero_gain_correction"]["cases"]
    c = cases["(0.0, 1.0, 1.0)"]
    np.testing.assert_allclose(c["M = G Pi G (normscope)"], [math.sqrt(3), 1.0], atol=1e-12)
    np.testing.assert_allclose(c["brute force (max, min)"], [math.sqrt(3), 1.0], atol=1e-8)
    np.testing.assert_allclose(c["paper recipe, Pi2 = I"], [math.sqrt(3), math.sqrt(3)], atol=1e-12)
    c = cases["(0.0, 1.0, 2.0)"]
    np.testing.assert_allclose(c["M = G Pi G (normscope)"], [2.93352199, 1.18086778], atol=5e-9)
    np.testing.assert_allclose(c["paper recipe, Pi2 = I"], [2 * math.sqrt(3), math.sqrt(3)], atol=1e-12)


def test_existing_folder_refused_then_forced(outdir, capsys):
    assert main(["reproduce", "riechers", "--out", str(outdir)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_drazin_recipe_and_stages():
    np.testing.assert_allclose(riechers.drazin_recipe_axes([0.0, 1.0, 1.0], "drop_zero"), [math.sqrt(3)] * 2)
    a = np.random.default_rng(0).uniform(-1.5, 1.5, (20, 3))
    st = riechers.stages(a, eps=0.0)
    np.testing.assert_allclose(st["projected"].sum(1), 0.0, atol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(st["normalized"], axis=1), math.sqrt(3), rtol=1e-14)
    np.testing.assert_allclose(st["output"], st["linear"] + np.array(riechers.BIAS), atol=1e-15)


def test_run_function_force(tmp_path):
    out = tmp_path / "small"
    first = riechers.run(out, n_points=40, seed=3)
    assert sorted(p.name for p in out.iterdir() if p.name != ".normscope.json") == sorted(first["files"])
    with pytest.raises(FileExistsError):
        riechers.run(out, n_points=40, seed=3)
    second = riechers.run(out, force=True, n_points=40, seed=4)
    assert second["settings"]["seed"] == 4
    assert json.loads((out / "claims.json").read_text())["settings"]["seed"] == 4
