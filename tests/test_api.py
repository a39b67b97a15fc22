"""The public API resolves, and the CLI lists every command."""

import subprocess
import sys

import normscope
from normscope.cli import build_parser


def test_public_names_resolve():
    for name in normscope.__all__:
        assert getattr(normscope, name) is not None, name
    for sub in ("models", "probe", "report", "convert", "attention", "lnnet", "experiments"):
        assert getattr(normscope, sub).__name__ == f"normscope.{sub}"


def test_cli_has_every_command():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"report", "convert", "swap-test", "train-tiny", "reproduce", "shatter"} <= set(sub.choices)
    rep = sub.choices["reproduce"]
    papers = next(a for a in rep._actions if a.dest == "paper")
    assert {"riechers", "brody", "ni"} <= set(papers.choices)


def test_cli_clean_error_for_existing_output(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "normscope.cli", "reproduce", "riechers", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "already exists" in proc.stderr and "Traceback" not in proc.stderr
