"""Atomic outputs: nothing half-written, nothing overwritten without --force."""

import json

import pytest

from normscope._io import OutputExistsError, atomic_write_json, atomic_write_text, output_dir


def test_output_dir_is_atomic_and_refuses_existing(tmp_path):
    out = tmp_path / "run"
    with output_dir(out) as d:
        atomic_write_text(d / "a.txt", "first")
        assert not out.exists()  # nothing visible until the block succeeds
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(OutputExistsError, match="--force"):
        with output_dir(out):
            pass
    assert (out / "a.txt").read_text() == "first"


def test_failure_leaves_old_output_untouched(tmp_path):
    out = tmp_path / "run"
    with output_dir(out) as d:
        atomic_write_text(d / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with output_dir(out, force=True) as d:
            atomic_write_text(d / "a.txt", "new")
            raise RuntimeError("crash mid-run")
    assert (out / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp folders left behind


def test_force_replaces(tmp_path):
    out = tmp_path / "run"
    with output_dir(out) as d:
        atomic_write_text(d / "a.txt", "old")
    with output_dir(out, force=True) as d:
        atomic_write_json(d / "b.json", {"x": 1})
    assert not (out / "a.txt").exists()
    assert json.loads((out / "b.json").read_text()) == {"x": 1}
    assert (out.stat().st_mode & 0o777) != 0o700
