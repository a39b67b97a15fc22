"""Output folders that never lose a user's files, shared by every command.

Guarantees (the README's "Guarantees" section; tested in ``tests/test_bad_inputs.py``):

- **Nothing half-written.** :func:`output_dir` builds the result in a hidden sibling
  ``.NAME.tmp-PID-XXXX`` and moves it into place only when everything succeeded. Any exception,
  Ctrl-C (SIGINT) or SIGTERM (the command line turns it into :class:`normscope.errors.Terminated`)
  removes the temporary folder. Temporaries of processes that died without cleaning up (SIGKILL,
  power loss) are removed by the next run that writes next to them (:func:`clean_stale`): only
  folders whose name carries a PID that is no longer alive on this host and that hold
  normscope's marker (or nothing).
- **Nothing replaced by accident.** The final move claims the name atomically
  (``renameat2(RENAME_NOREPLACE)`` on Linux; elsewhere ``rename``, which cannot replace our
  never-empty folder), so of two runs started with the same ``--out`` one wins and the other
  fails with a message, touching nothing of the winner.
- **``--force`` replaces only normscope's own output.** Every output folder holds a marker
  ``.normscope.json`` (command, version, time, the files written). ``--force`` replaces a folder
  only if it holds that marker and no file the marker does not list. It never replaces the
  current folder, one of its ancestors, the home folder, or an input (model folder, text file)
  or a folder containing one (:func:`check_out`). The replacement itself is an atomic exchange
  (``RENAME_EXCHANGE``) where the kernel supports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import json
import os
import re
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from normscope.errors import OutputRefusedError, UserError

MARKER = ".normscope.json"
_STALE_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_command = "normscope (Python API)"


def set_command(name: str) -> None:
    """Record the running command (e.g. ``"normscope report"``) in the markers written from now on."""
    global _command
    _command = name


class OutputExistsError(UserError, FileExistsError):
    """The output folder already exists and ``force`` was not given (or another run claimed it first)."""


def check_out(path: str | os.PathLike, *, force: bool = False, inputs: Iterable[Any] = ()) -> Path:
    """Refuse an output path normscope must not write to; return it resolved.

    Commands call this before any slow work; :func:`output_dir` calls it again.

    **Arguments:**

    - ``path``: the requested output folder.
    - ``force``: allow replacing an existing folder — only one normscope wrote (marker present,
      nothing unlisted in it).
    - ``inputs``: paths the command reads (model folders, text files; other values are
      ignored); the output may be neither one of them nor a folder containing one.

    **Returns:** the resolved path. Raises :class:`OutputRefusedError` (empty path, the current
    folder or an ancestor, the home folder, an input, a file, a folder normscope did not write)
    or :class:`OutputExistsError` (exists, no ``force``).
    """
    if not str(path).strip():
        raise OutputRefusedError("the output folder name is empty; name a new folder, e.g. --out results/run1")
    final = Path(path).expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if final == cwd or final in cwd.parents:
        raise OutputRefusedError(
            f"{final} is the current folder or one of its parents; normscope never writes over it - name a new folder"
        )
    if final == home or final in home.parents:
        raise OutputRefusedError(f"{final} is your home folder or above it; name a new folder")
    for inp in inputs:
        if not isinstance(inp, (str, os.PathLike)) or not str(inp).strip() or not Path(inp).expanduser().exists():
            continue
        ip = Path(inp).expanduser().resolve()
        if final == ip or final in ip.parents:
            raise OutputRefusedError(
                f"{final} is (or contains) the input {ip}; normscope never writes over its inputs - name a new folder"
            )
    if final.exists() or final.is_symlink():
        if not force:
            raise OutputExistsError(
                f"output folder {final} already exists; choose another --out or pass --force to replace it"
            )
        if final.is_symlink() or not final.is_dir():
            raise OutputRefusedError(f"{final} is not a folder normscope wrote; --force replaces only those")
        _check_ours(final)
    return final


def _check_ours(folder: Path) -> None:
    """Raise unless ``folder`` is a complete normscope output holding only the files it lists."""
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputRefusedError(
            f"{folder} was not written by normscope (no {MARKER}); --force replaces only normscope's own output "
            "folders - remove it yourself or choose another --out"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict) or info.get("state") != "complete" or not isinstance(info.get("files"), list):
        raise OutputRefusedError(f"{folder}/{MARKER} is unreadable or incomplete; --force refuses to replace {folder}")
    extra = sorted(p.name for p in folder.iterdir() if p.name != MARKER and p.name not in set(info["files"]))
    if extra:
        raise OutputRefusedError(
            f"{folder} holds files normscope did not write ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}); "
            "--force will not delete them - move them away or choose another --out"
        )


def _marker(folder: Path, state: str) -> None:
    from normscope import __version__

    files = sorted(p.name for p in folder.iterdir() if p.name != MARKER) if state == "complete" else []
    info = {"tool": "normscope", "version": __version__, "command": _command, "state": state,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "pid": os.getpid(), "host": socket.gethostname(), "files": files}
    atomic_write_json(folder / MARKER, info)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(parent: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` folders left in ``parent`` by dead processes.

    A folder is removed only if its PID is not alive, it was written on this host (per its
    marker) and it holds normscope's marker or nothing at all. **Returns:** the removed paths.
    """
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _STALE_RE.match(p.name)
        if not m or p.is_symlink() or not p.is_dir():
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if os.listdir(p) and json.loads((p / MARKER).read_text(encoding="utf-8")).get("host") != socket.gethostname():
                continue
        except (OSError, ValueError, AttributeError):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def temp_dir(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """A hidden ``parent/.name.tmp-PID-XXXX`` folder holding normscope's marker, removed on any exit.

    Whatever happens in the block (success, exception, Ctrl-C, SIGTERM via the command line),
    the folder is gone afterwards unless the block moved it away.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    # SIGTERM/SIGINT are held back while the folder is created, so that the exception their handler
    # raises can only surface inside the try below, whose finally removes the folder.
    held = _hold_signals()
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent))
    except OSError as e:  # name the folder the user chose, not our hidden temporary
        _release_signals(held)
        raise type(e)(e.errno, e.strerror, str(parent)) from None
    try:
        _release_signals(held)
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual permissions
        _marker(tmp, "incomplete")
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _hold_signals() -> Any:
    """Block SIGTERM and SIGINT at the OS level (delivered later, on release); None where unsupported."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def _release_signals(held: Any) -> None:
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


# renameat2(2) flags (Linux >= 3.15; glibc >= 2.28 exports the wrapper)
_NOREPLACE, _EXCHANGE, _AT_FDCWD = 1, 2, -100
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
    _renameat2 = None


def _rename2(src: Path, dst: Path, flag: int) -> bool:
    """renameat2(src, dst, flag); False if the platform or file system does not support ``flag``."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flag) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(e, os.strerror(e), str(src), None, str(dst))


def claim(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst`` only if ``dst`` does not exist (atomically); else FileExistsError."""
    try:
        if _rename2(src, dst, _NOREPLACE):
            return
        if dst.exists() or dst.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists", str(dst))
        os.rename(src, dst)  # fails (ENOTEMPTY/EEXIST) if dst appeared meanwhile: ours is never empty
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Make folder ``src`` become ``dst``, replacing an existing ``dst`` (atomic exchange where supported)."""
    if not dst.exists():
        claim(src, dst)
        return
    if _rename2(src, dst, _EXCHANGE):
        shutil.rmtree(src, ignore_errors=True)  # src now holds the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-{os.getpid()}-", dir=dst.parent))
    _marker(old, "incomplete")  # so that clean_stale recognises it if we die before removing it
    os.rename(dst, old / "x")
    try:
        claim(src, dst)
    except BaseException:
        os.rename(old / "x", dst)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, *, force: bool = False, inputs: Iterable[Any] = ()) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``path`` atomically when the block succeeds.

    **Arguments:** ``path`` (the output folder), ``force`` (replace an existing folder that
    normscope wrote), ``inputs`` (paths the command reads; never written over; see
    :func:`check_out`).

    Raises :class:`OutputExistsError` if ``path`` exists without ``force`` — checked before the
    block and again, atomically, when the result is moved into place (a run that started at the
    same time and finished first keeps its folder; this one fails and leaves nothing behind) —
    and :class:`normscope.errors.OutputRefusedError` for a path ``--force`` must not replace.
    The finished folder holds the marker ``.normscope.json`` listing its files.
    """
    final = check_out(path, force=force, inputs=inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final.parent)
    with temp_dir(final.parent, final.name) as tmp:
        yield tmp
        _marker(tmp, "complete")
        if final.exists() or final.is_symlink():
            if not force:
                raise _lost_race(final)
            _check_ours(final)  # a user may have added files while we ran
            replace_dir(tmp, final)
        else:
            try:
                claim(tmp, final)
            except FileExistsError:
                raise _lost_race(final) from None


def _lost_race(final: Path) -> OutputExistsError:
    return OutputExistsError(
        f"output folder {final} was created by another run while this one was working; this run's results were "
        "discarded and the other run's folder left untouched - choose another --out"
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    held = _hold_signals()  # see temp_dir: the temporary file exists only inside the try
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except BaseException:
        _release_signals(held)
        raise
    try:
        _release_signals(held)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")
