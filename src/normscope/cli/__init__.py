"""The ``normscope`` command line: one file per command in this package.

Each command module defines ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed namespace; returns an exit code or None).

Every failure prints one line, ``normscope COMMAND: error: ...`` (see
:func:`normscope.errors.one_line`), and exits non-zero: 1 for errors, 130 for Ctrl-C, 143 for
SIGTERM. ``--debug`` (or ``NORMSCOPE_DEBUG=1``) adds the traceback. SIGTERM is turned into
:class:`normscope.errors.Terminated` so temporary folders are removed as on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import traceback

from normscope import __version__

# Module names under normscope.cli, in the order shown by --help.
COMMANDS = ["report", "convert", "swap_test", "train_tiny", "reproduce", "shatter", "fold", "verify"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (``normscope COMMAND: error: ... (see ... --help)``, exit 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="normscope",
        description="Measure and use the geometry of normalization layers in real networks.",
    )
    parser.add_argument("--version", action="version", version=f"normscope {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a failure (also NORMSCOPE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"normscope.cli.{name}").register(sub)
    return parser


def _on_sigterm(signum, frame):  # noqa: ARG001
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    from normscope.errors import Terminated

    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug_anywhere = "--debug" in argv  # accepted after the command name too
    args = parser.parse_args([a for a in argv if a != "--debug"])
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from normscope import _io
    from normscope.errors import Terminated, one_line

    debug = debug_anywhere or os.environ.get("NORMSCOPE_DEBUG", "") not in ("", "0")
    name = f"normscope {args.command}"
    _io.set_command(name)
    previous = _set_sigterm(_on_sigterm)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        _fail(name, "interrupted (Ctrl-C); temporary files were removed", debug)
        _forget_interrupt()
        return 130
    except Terminated:
        _fail(name, "terminated (SIGTERM); temporary files were removed", debug)
        return 143
    except Exception as err:
        _fail(name, one_line(err), debug)
        return 1
    finally:
        _set_sigterm(previous)
    return int(code or 0)


def _forget_interrupt() -> None:
    """Let the handled Ctrl-C end the process with our exit status 130.

    CPython 3.11 marks a KeyboardInterrupt as unhandled for the whole process when it is raised
    inside ``exec`` of a string (``dataclasses`` builds ``__init__`` that way, so a Ctrl-C during
    an import can land there), and then kills itself with SIGINT at exit even though the
    interrupt was caught: exit status −2 instead of 130. Executing a string again resets that
    mark (``run_eval_code_obj`` clears it on entry)."""
    exec("None")  # noqa: S102 - a constant; see the docstring


def _set_sigterm(handler):
    """Install a SIGTERM handler (only possible in the main thread); return the previous one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _fail(name: str, message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"{name}: error: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
