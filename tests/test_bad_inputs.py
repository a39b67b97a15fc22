"""The bad-input matrix (issue 9 §2-§4): every case asserts message, exit code, untouched files and no leftovers.

Commands run in-process through ``normscope.cli.main`` (one-line message on stderr, exit code) or,
for signals and concurrency, as subprocesses. Models are tiny random-init GPT-2s saved with
``save_pretrained``; the few runs that do real work use a few dozen tokens.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers as T

from normscope import _io
from normscope.cli import main
from normscope.models.tiny import byte_tokenizer

T.logging.set_verbosity_error()
PROGRESS = re.compile(r"\d+%\|.*\| \d+/\d+ \[|: \d+\w* \[\d+:\d+")  # a tqdm bar (transformers' "Loading weights", the probe)
# The verification text (pydoc "assert" topic, byte tokens, 2 windows of 16) has '*' (byte 42) only in
# window 1 ('tement\n*********'): a NaN embedding row for it makes row 1 non-finite and leaves row 0 finite.
NAN_TOKEN = 42
SRC = str(Path(__file__).resolve().parents[1] / "src")


# ---------------------------------------------------------------- helpers
def tree_hash(root: Path) -> str:
    """sha256 over every path and file content under ``root`` (the folder itself included)."""
    h = hashlib.sha256()
    root = Path(root)
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries normscope might leave in ``folder``."""
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(err: str, command: str) -> str:
    """Apart from progress bars, stderr must be one line ``normscope COMMAND: error: ...``; return it."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not PROGRESS.search(ln)]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"normscope {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _gpt2(folder: Path, *, nan_token: int | None = None, tokenizer: bool = True) -> Path:
    torch.manual_seed(0)
    m = T.GPT2LMHeadModel(T.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=257,
                                       bos_token_id=256, eos_token_id=256, tie_word_embeddings=False))
    if nan_token is not None:
        with torch.no_grad():
            m.transformer.wte.weight[nan_token] = float("nan")
    m.save_pretrained(folder)
    if tokenizer:
        byte_tokenizer(64).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    ok = _gpt2(root / "ok")
    out = {"ok": ok, "nan": _gpt2(root / "nan", nan_token=NAN_TOKEN), "notok": _gpt2(root / "notok", tokenizer=False)}
    out["badcfg"] = Path(shutil.copytree(ok, root / "badcfg"))
    (out["badcfg"] / "config.json").write_text("{ this is not json")
    out["noweights"] = Path(shutil.copytree(ok, root / "noweights"))
    (out["noweights"] / "model.safetensors").unlink()
    out["trunc"] = Path(shutil.copytree(ok, root / "trunc"))
    data = (out["trunc"] / "model.safetensors").read_bytes()
    (out["trunc"] / "model.safetensors").write_bytes(data[: len(data) // 2])
    return out


@pytest.fixture()
def work(tmp_path, monkeypatch) -> Path:
    """A current folder holding a user's files (they must survive every case)."""
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.txt").write_text("the of and to a in is that for it\n" * 20)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _shatter_output(folder: Path, m: int = 3) -> None:
    """A genuine normscope output folder (shatter m=3 takes milliseconds)."""
    assert main(["shatter", "--m", str(m), "--out", str(folder)]) == 0


# ---------------------------------------------------------------- §2 never certify a broken model
def test_convert_nan_logits_is_refused(models, work, capsys):
    before = tree_hash(models["nan"])
    rc, out, err = run(capsys, "convert", str(models["nan"]), "conv", "--seq-len", "16", "--max-tokens", "32")
    msg = one_line(err, "convert")
    assert rc == 1 and "max |Δlogits|" not in out  # no number printed for a failed verification
    assert "original model's logits are not finite" in msg and re.search(r"batch 0, row 1, position (0|7),", msg)
    assert not (work / "conv").exists() and leftovers(work) == []
    assert tree_hash(models["nan"]) == before


def test_compare_names_the_converted_side():
    from normscope._verify import finite_max_abs_diff
    from normscope.errors import NonFiniteError

    a = torch.zeros(2, 3, 4)
    b = a.clone()
    b[1, 2, 3] = float("inf")
    with pytest.raises(NonFiniteError, match=r"converted model's logits .* batch 7, row 1, position 2, output 3"):
        finite_max_abs_diff(a, b, batch=7)
    b[1, 2, 3] = 0.5
    assert finite_max_abs_diff(a, b) == 0.5
    assert max(0.0, float("nan")) == 0.0  # the pitfall the helper exists for


def test_swap_test_counts_nan_tokens_and_fails_on_nan_original(models, work, capsys):
    rc, out, err = run(capsys, "swap-test", str(models["nan"]), "--seq-len", "16", "--max-tokens", "32",
                       "--per", "layer", "--out", "sw")
    msg = one_line(err, "swap-test")
    res = json.loads((work / "sw" / "swap_test.json").read_text())
    n = res["baseline"]["nonfinite_tokens"]
    assert rc == 1 and n in (8, 15)  # scored positions of row 1 from its first "*" (or all 15, if attention spreads NaN)
    assert re.search(rf"not finite at {n} token position\(s\), the first at batch 0, row 1, position (0|7);", msg)
    assert f"NaN/Inf outputs (left out of the loss): original: {n}" in out
    assert all(r["nonfinite_tokens"] == n and math.isfinite(r["loss"]) for r in res["rows"])


def test_swap_test_survives_sites_whose_every_input_is_nan():
    """Position 0 NaN spreads through attention: every input of ln_2/ln_f is NaN, so their angle is None."""
    from normscope.convert import swap_markdown, swap_test

    torch.manual_seed(0)
    m = T.GPT2LMHeadModel(T.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=50)).eval()
    with torch.no_grad():
        m.transformer.wpe.weight[0] = float("nan")
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    res = swap_test(m, [ids], per="layer", progress=False)
    # every scored position (2 rows x 7 next-token predictions) is NaN
    assert res["baseline"]["nonfinite_tokens"] == 14 and math.isnan(res["baseline"]["loss"])
    assert all(r["nonfinite_tokens"] == 14 for r in res["rows"])
    assert "original: 14" in swap_markdown(res)


# ---------------------------------------------------------------- §3 never lose a user's files
COMMANDS = {  # every command that writes, with OUT where its output folder goes
    "report": ["report", "--model", "M", "--out", "OUT"], "convert": ["convert", "M", "OUT"],
    "swap-test": ["swap-test", "M", "--out", "OUT"], "shatter": ["shatter", "--out", "OUT"],
    "train-tiny": ["train-tiny", "--out", "OUT"], "riechers": ["reproduce", "riechers", "--out", "OUT"],
    "brody": ["reproduce", "brody", "--out", "OUT"], "ni": ["reproduce", "ni", "--out", "OUT"],
}


@pytest.mark.parametrize("out", [".", "", "..", "data/.."])
@pytest.mark.parametrize("command", COMMANDS)
def test_force_never_replaces_current_folder_or_ancestors(models, work, capsys, out, command):
    before = tree_hash(work)
    argv = [{"M": str(models["ok"]), "OUT": out}.get(a, a) for a in COMMANDS[command]]
    rc, _, err = run(capsys, *argv, "--force")
    msg = one_line(err, argv[0])
    assert rc == 1 and ("current folder or one of its parents" in msg or "name is empty" in msg)
    assert tree_hash(work) == before and leftovers(work) == []


def test_force_never_replaces_home(work, capsys, monkeypatch):
    home = work / "home"
    home.mkdir()
    (home / "keep").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    rc, _, err = run(capsys, "shatter", "--m", "3", "--out", "~", "--force")
    assert rc == 1 and "home folder" in one_line(err, "shatter")
    assert (home / "keep").read_text() == "x"


@pytest.mark.parametrize("argv", [("convert", "m", "m"), ("convert", "m", "."), ("fold", "m", "m"),
                                  ("fold", "m", "m", "--streaming"), ("report", "--text", "data/corpus.txt",
                                                                                 "--model", "m", "--out", "data")])
def test_inputs_are_never_written_over(models, work, capsys, argv):
    shutil.copytree(models["ok"], work / "m")
    before = tree_hash(work)
    rc, _, err = run(capsys, *argv, "--force")
    assert rc == 1 and re.search("is \\(or contains\\) the input|is the current folder", one_line(err, argv[0]))
    assert tree_hash(work) == before and leftovers(work) == []


@pytest.mark.parametrize("extra,expect", [(None, "was not written by normscope"),
                                          ("my_analysis.ipynb", "holds files normscope did not write (my_analysis.ipynb)")])
def test_force_refuses_folders_holding_a_users_files(work, capsys, extra, expect):
    if extra:  # a normscope output the user added a file to
        _shatter_output(work / "run")
        (work / "run" / extra).write_text("{}")
    else:  # the user's own folder
        (work / "run").mkdir()
        (work / "run" / "thesis.tex").write_text("years of work")
    before = tree_hash(work)
    capsys.readouterr()
    rc, _, err = run(capsys, "shatter", "--m", "3", "--out", "run", "--force")
    assert rc == 1 and expect in one_line(err, "shatter") and tree_hash(work) == before


def test_force_replaces_normscope_output(work, capsys):
    _shatter_output(work / "run", m=3)
    rc, _, _ = run(capsys, "shatter", "--m", "4", "--out", "run", "--force")
    assert rc == 0 and json.loads((work / "run" / "result.json").read_text())["m"] == 4
    marker = json.loads((work / "run" / _io.MARKER).read_text())
    assert marker["command"] == "normscope shatter" and marker["files"] == ["result.json"]
    assert leftovers(work) == []


def test_shatter_refuses_existing_out_before_running(work, capsys, monkeypatch):
    import normscope.lnnet as lnnet

    (work / "res").mkdir()
    monkeypatch.setattr(lnnet, "shatter", lambda *a, **k: pytest.fail("shatter ran before the refusal"))
    rc, out, err = run(capsys, "shatter", "--m", "12", "--out", "res")
    assert rc == 1 and "already exists" in one_line(err, "shatter") and out == ""


def _cli(*argv: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "normscope.cli", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_two_runs_with_the_same_out(tmp_path):
    procs = [_cli("shatter", "--m", str(m), "--out", str(tmp_path / "same"), cwd=tmp_path) for m in (4, 5)]
    res = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in res)
    assert codes == [0, 1], res
    winner = next(m for m, (rc, _) in zip((4, 5), res) if rc == 0)
    loser_err = next(err for rc, err in res if rc == 1)
    assert "already exists" in loser_err or "created by another run" in loser_err
    assert json.loads((tmp_path / "same" / "result.json").read_text())["m"] == winner
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted"),
                                            (signal.SIGKILL, -9, None)])
def test_signal_mid_run_cleans_up(models, tmp_path, sig, code, word):
    p = _cli("report", "--model", str(models["ok"]), "--out", "rep", "--seq-len", "16", "--max-tokens", "4096", "--batch-size", "1",
             "--swap-test", "off", "--quiet", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not any(n.startswith(".rep.tmp-") for n in os.listdir(tmp_path)):  # the run is under way
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else "slow"
        time.sleep(0.02)
    time.sleep(0.5)  # well inside the run (its imports done), which lasts seconds longer
    assert p.poll() is None, "the run ended before the signal could be sent"
    p.send_signal(sig)
    rc, err = p.wait(timeout=60), p.stderr.read()
    assert rc == code and "Traceback" not in err
    if word:  # SIGTERM / SIGINT: cleaned up at once
        assert f"normscope report: error: {word}" in err and os.listdir(tmp_path) == []
    else:  # SIGKILL cannot be caught: the next run next to it removes the dead process's folder
        assert len(leftovers(tmp_path)) == 1
        _shatter_output(tmp_path / "next")
        assert os.listdir(tmp_path) == ["next"]


def test_stale_temporaries_of_dead_processes_are_removed(work, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = work / f".out.tmp-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (stale / _io.MARKER).write_text(json.dumps({"host": __import__("socket").gethostname()}))
    empty = work / f".other.old-{dead.pid}-x1"
    empty.mkdir()
    alive = work / ".out.tmp-1-keepme"  # pid 1 is alive: a running job's folder is never touched
    alive.mkdir()
    (alive / _io.MARKER).write_text("{}")
    users = work / f".mine.tmp-{dead.pid}-zz"  # not ours: no marker
    users.mkdir()
    (users / "x").write_text("x")
    _shatter_output(work / "out")
    assert not stale.exists() and not empty.exists() and alive.exists() and (users / "x").exists()


def test_corrupted_model_cache_is_detected(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from normscope.models import loading

    monkeypatch.setenv("NORMSCOPE_CACHE", str(tmp_path / "cache"))
    folder, gguf = loading.cache_dir() / "smollm2", tmp_path / "fake.gguf"
    gguf.write_bytes(b"0" * 100)
    folder.mkdir(parents=True)
    save_file({"w": torch.ones(64, 64)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    (folder / "normscope_cache.json").write_text(json.dumps({"version": loading._CACHE_VERSION, "gguf_size": 100}))
    assert loading._smollm2_cache_ok(folder, gguf)
    data = (folder / "model.safetensors").read_bytes()
    for cut in (data[:-100], data[:4], data[:50]):  # truncated data, truncated length, truncated header
        (folder / "model.safetensors").write_bytes(cut)
        assert not loading._smollm2_cache_ok(folder, gguf) and loading.safetensors_problem(folder / "model.safetensors")


@pytest.mark.slow
def test_corrupted_smollm2_cache_is_rebuilt(tmp_path, monkeypatch):
    from normscope.models import load, loading

    monkeypatch.setenv("NORMSCOPE_CACHE", str(tmp_path))
    load("smollm2")
    st = tmp_path / "smollm2" / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 3])
    lm = load("smollm2")
    assert loading.safetensors_problem(st) is None and lm.model.config.model_type == "llama"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- §4 every failure is one line
@pytest.mark.parametrize("case,expect", [
    ("badcfg", "config.json is not valid JSON (Expecting property name enclosed in double quotes, line 1 column 3)"),
    ("noweights", "has no weights (no model.safetensors or pytorch_model.bin)"),
    ("trunc", "is corrupt: "),
    ("notok", "has no tokenizer"),
])
def test_bad_model_folders(models, work, capsys, case, expect):
    before = tree_hash(models[case])
    for cmd in (["report", "--quiet", "--model", str(models[case]), "--out", "r"], ["convert", str(models[case]), "c"],
                ["swap-test", str(models[case])]):
        rc, _, err = run(capsys, *cmd)
        assert rc == 1 and expect in one_line(err, cmd[0])
    assert tree_hash(models[case]) == before
    assert not (work / "r").exists() and not (work / "c").exists() and leftovers(work) == []


@pytest.mark.parametrize("text,content,expect", [
    ("bad.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is binary (a NUL byte at offset 8)"),
    ("latin1.txt", "caf\u00e9 cr\u00e8me".encode("latin-1"), "is not UTF-8 (byte 0xe9 at offset 3)"),
    ("data", None, "is a folder, not a file"),
    ("nope.txt", None, "does not exist"),
])
def test_bad_text_files(models, work, capsys, text, content, expect):
    if content is not None:
        (work / text).write_bytes(content)
    rc, _, err = run(capsys, "report", "--quiet", "--model", str(models["ok"]), "--text", text, "--out", "r")
    msg = one_line(err, "report")
    assert rc == 1 and expect in msg and text in msg
    assert not (work / "r").exists() and leftovers(work) == []


@pytest.mark.parametrize("code,expect", [
    (errno.ENOSPC, "no space left on device: "),
    (errno.EACCES, "permission denied: "),
    (errno.EROFS, "read-only file system: "),
])
def test_os_errors_writing_out(work, capsys, monkeypatch, code, expect):
    write = _io.atomic_write_bytes

    def failing(path, data):  # the disk fills up (or turns read-only) when the result is written
        if Path(path).name == "result.json":
            raise OSError(code, os.strerror(code), str(path))
        return write(path, data)

    monkeypatch.setattr(_io, "atomic_write_bytes", failing)
    rc, _, err = run(capsys, "shatter", "--m", "3", "--out", "o")
    msg = one_line(err, "shatter")
    assert rc == 1 and expect in msg and "result.json" in msg
    assert not (work / "o").exists() and leftovers(work) == []


def test_permission_denied_creating_out(work, capsys, monkeypatch):
    import tempfile

    def denied(*a, dir=None, **k):  # the tests may run as root, where chmod 555 does not stop writes
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, ".o.tmp-1-x"))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    rc, _, err = run(capsys, "shatter", "--m", "3", "--out", "locked/o")
    assert rc == 1 and one_line(err, "shatter") == (f"normscope shatter: error: permission denied: {work / 'locked'}; "
                                                    "choose a location you can write to or fix its permissions")


def test_interrupt_and_unexpected_errors(work, capsys, monkeypatch):
    import normscope.cli.shatter as cmd

    monkeypatch.setattr(cmd, "run", lambda args: (_ for _ in ()).throw(KeyboardInterrupt()))
    parser_run = main(["shatter", "--m", "3"])
    assert parser_run == 130 and "interrupted" in one_line(capsys.readouterr().err, "shatter")

    monkeypatch.setattr(cmd, "run", lambda args: 1 / 0)
    assert main(["shatter"]) == 1
    assert one_line(capsys.readouterr().err, "shatter").endswith(
        "ZeroDivisionError: division by zero (rerun with --debug for the traceback)")
    assert main(["--debug", "shatter"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["shatter", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("NORMSCOPE_DEBUG", "1")
    assert main(["shatter"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--out", "x", "--max-tokens", "many"])
    assert e.value.code == 2
    assert one_line(capsys.readouterr().err, "report").endswith(
        "argument --max-tokens: invalid int value: 'many' (see normscope report --help)")


def test_one_line_mapping():
    from safetensors import SafetensorError

    from normscope.errors import one_line as ol

    try:
        json.loads("{x")
    except json.JSONDecodeError as e:
        assert ol(e) == "invalid JSON: Expecting property name enclosed in double quotes at line 1, column 2; fix or restore the file"
    assert ol(SafetensorError("Error while deserializing header: incomplete metadata")).startswith(
        "corrupt or truncated safetensors file")
    assert ol(SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')).startswith("no space left on device while writing")
    assert ol(MemoryError()).startswith("out of memory")
    assert "\n" not in ol(ValueError("two\nlines"))


def test_ctrl_c_inside_exec_still_exits_130(tmp_path):
    """A Ctrl-C that lands inside ``exec`` of a string (dataclasses build ``__init__`` that way
    during imports) made CPython 3.11 kill the process with SIGINT at exit (status −2) although
    the command line had handled it; now it ends with 130 and one line. Negative control: the
    same run without the reset ends with −2, so the test can fail."""
    script = (
        "import sys\n"
        "import normscope.cli as cli\n"
        "from normscope import lnnet\n"
        "def shatter(*a, **k):\n"
        "    exec('raise KeyboardInterrupt')\n"
        "lnnet.shatter = shatter\n"
        "if sys.argv[1] == 'no-reset':\n"
        "    cli._forget_interrupt = lambda: None\n"
        "sys.exit(cli.main(['shatter', '--m', '3', '--out', 'res']))\n"
    )
    (tmp_path / "interrupted_cli.py").write_text(script)  # run with -m, as `python -m normscope.cli` is:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(tmp_path)]), OMP_NUM_THREADS="1")
    codes = {}  # CPython checks the mark only on the -m path (python -c / a script file exit at once)
    for mode in ("reset", "no-reset"):
        p = subprocess.run([sys.executable, "-m", "interrupted_cli", mode], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        codes[mode] = p.returncode
        assert "normscope shatter: error: interrupted (Ctrl-C)" in p.stderr and "Traceback" not in p.stderr
    assert codes == {"reset": 130, "no-reset": -signal.SIGINT}
    assert leftovers(tmp_path) == []
