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
