"""normscope's exceptions and the one-line messages the command line prints for any failure.

Every ``normscope COMMAND`` failure is reported as one line, ``normscope COMMAND: error: ...``,
naming the problem and the fix (a traceback only with ``--debug`` or ``NORMSCOPE_DEBUG=1``).
Code that detects a problem the user can fix raises :class:`UserError` (a ``ValueError``, so
callers that catch ``ValueError`` keep working) with such a message. Errors raised by Python,
safetensors, JSON or the operating system are turned into one line by :func:`one_line`.
"""

from __future__ import annotations

import errno
import json

__all__ = ["UserError", "NonFiniteError", "OutputRefusedError", "Terminated", "one_line"]


class UserError(ValueError):
    """A problem with the user's inputs or environment; ``str(err)`` is one line naming problem and fix."""


class NonFiniteError(UserError):
    """A verification met a NaN or infinite value (the message says which model, batch, position, output)."""


class OutputRefusedError(UserError):
    """``--out`` names a folder normscope must never write over (the current folder, an input, a user's folder)."""


class Terminated(BaseException):
    """Raised by the command line's SIGTERM handler so that temporary folders are removed as on Ctrl-C."""


_OS_FIX = {
    errno.EACCES: ("permission denied", "choose a location you can write to or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a location you can write to or fix its permissions"),
    errno.EROFS: ("read-only file system", "choose an output folder on a writable file system"),
    errno.ENOSPC: ("no space left on device", "free some disk space or choose an output folder on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose an output folder on another disk"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EISDIR: ("is a folder, not a file", "pass a file"),
    errno.ENOTDIR: ("not a folder", "check the path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and rerun"),
}


def _flat(text: str) -> str:
    return " ".join(str(text).split())


def one_line(err: BaseException) -> str:
    """A one-line description of ``err`` naming the problem and, where known, the fix.

    **Arguments:** ``err`` — any exception.

    **Returns:** the message (no traceback, no newline). :class:`UserError` messages are used as
    they are; ``OSError`` (EACCES, EROFS, ENOSPC, ...), ``json.JSONDecodeError``, safetensors
    errors and ``MemoryError`` get a fixed wording with the fix; anything else is
    ``TypeName: message`` with a hint to rerun with ``--debug``.
    """
    if isinstance(err, UserError):
        return _flat(err)
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON: {err.msg} at line {err.lineno}, column {err.colno}; fix or restore the file"
    if isinstance(err, OSError) and err.errno in _OS_FIX:
        what, fix = _OS_FIX[err.errno]
        where = err.filename if err.filename is not None else ""
        if getattr(err, "filename2", None):
            where = f"{where} -> {err.filename2}"
        return f"{what}: {where}; {fix}" if where else f"{what}; {fix}"
    if isinstance(err, (FileExistsError, FileNotFoundError, ValueError)) or type(err).__name__ == "OSError":
        return _flat(err) or type(err).__name__
    if type(err).__name__ == "SafetensorError":
        msg = _flat(err)
        for needle, code in (("StorageFull", errno.ENOSPC), ("code: 28", errno.ENOSPC), ("PermissionDenied", errno.EACCES),
                             ("ReadOnlyFilesystem", errno.EROFS), ("code: 30", errno.EROFS)):
            if needle in msg:  # an I/O error while *writing* weights, not a corrupt file
                what, fix = _OS_FIX[code]
                return f"{what} while writing a safetensors file; {fix}"
        return f"corrupt or truncated safetensors file ({msg}); re-download the model or re-save it"
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return "out of memory; use a smaller --batch-size, --seq-len or --max-tokens"
    return f"{type(err).__name__}: {_flat(err)} (rerun with --debug for the traceback)"
