"""README's Python example runs as written."""

import re
from pathlib import Path

import pytest


@pytest.mark.real_weights
def test_readme_python_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102
    stats, rho, lengths = scope["stats"], scope["rho"], scope["lengths"]
    assert stats["models"][0]["layers"] and stats["models"][0]["tokens"] > 0
    assert lengths.shape == (767,)
    assert float(rho.max()) <= 1.0
    folded, check = scope["folded"], scope["report"]
    assert all(float(s.module.weight.detach().float().sub(1).abs().max()) == 0
               for s in __import__("normscope").models.find_norms(folded.model)
               if s.role in ("pre_attention", "pre_mlp", "final") and getattr(s.module, "weight", None) is not None)
    assert check.first_divergence is None and check.max_abs_dlogits < 1e-3 * max(1.0, check.max_abs_logit)


def test_readme_numbers_are_generated():
    """Every generated block of README.md (headline, speed, reproductions) equals what
    scripts/readme_numbers.py makes from the committed JSON results: no typed or stale number."""
    assert _readme_numbers().main(["--check"]) == 0


def _readme_numbers():
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("readme_numbers", root / "scripts" / "readme_numbers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("bad", [{}, {"experiments": {"lm": {"d": 8}}}, {"experiments": {"random-points": None}},
                                 {"experiments": {"unknown-experiment": {}}}, {"experiments": {}}])
def test_brody_row_builder_fails_loudly_on_missing_keys(tmp_path, bad):
    """A brody summary.json without the expected keys stops the script with one line naming the file."""
    import json

    (tmp_path / "summary.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit) as err:
        _readme_numbers().REPRO["brody"].rows(tmp_path / "summary.json")
    msg = str(err.value.code)
    assert str(tmp_path / "summary.json") in msg and "\n" not in msg and "reproduce brody" in msg
