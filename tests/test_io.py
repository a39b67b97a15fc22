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


def test_marker_lists_the_files_written(tmp_path):
    from normscope._io import MARKER

    out = tmp_path / "run"
    with output_dir(out) as d:
        atomic_write_text(d / "a.txt", "x")
        (d / "sub").mkdir()
        info = json.loads((d / MARKER).read_text())
        assert info["state"] == "incomplete"
    info = json.loads((out / MARKER).read_text())
    assert info["state"] == "complete" and info["files"] == ["a.txt", "sub"] and info["tool"] == "normscope"


@pytest.mark.parametrize("where", ["", ".", "..", "~"])
def test_check_out_refuses_protected_folders(tmp_path, monkeypatch, where):
    from normscope._io import check_out
    from normscope.errors import OutputRefusedError

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputRefusedError):
        check_out(where, force=True)


def test_check_out_refuses_inputs_and_their_parents(tmp_path):
    from normscope._io import check_out
    from normscope.errors import OutputRefusedError

    (tmp_path / "models" / "m").mkdir(parents=True)
    for out in (tmp_path / "models" / "m", tmp_path / "models"):
        with pytest.raises(OutputRefusedError, match="is \\(or contains\\) the input"):
            check_out(out, force=True, inputs=[tmp_path / "models" / "m", "minilm", None])
    assert check_out(tmp_path / "models" / "m" / "out", inputs=[tmp_path / "models" / "m"]).name == "out"


@pytest.mark.parametrize("renameat2", [True, False])
def test_race_and_force_with_and_without_renameat2(tmp_path, monkeypatch, renameat2):
    """Linux renameat2 (NOREPLACE / EXCHANGE) and the portable rename fallback behave the same."""
    import normscope._io as io

    if not renameat2:
        monkeypatch.setattr(io, "_renameat2", None)
    out = tmp_path / "run"
    with pytest.raises(OutputExistsError, match="created by another run"):
        with output_dir(out) as slow:
            atomic_write_text(slow / "a.txt", "loser")
            with output_dir(out) as fast:
                atomic_write_text(fast / "a.txt", "winner")
    assert (out / "a.txt").read_text() == "winner"
    with output_dir(out, force=True) as d:
        atomic_write_text(d / "a.txt", "forced")
    assert (out / "a.txt").read_text() == "forced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_temp_dir_is_removed_on_interrupt(tmp_path):
    from normscope._io import temp_dir

    with pytest.raises(KeyboardInterrupt):
        with temp_dir(tmp_path, "x") as t:
            (t / "half.bin").write_bytes(b"0" * 10)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
