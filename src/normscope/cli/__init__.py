"""The ``normscope`` command line: one file per command in this package.

Each command module defines ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed namespace; returns an exit code or None).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from normscope import __version__

# Module names under normscope.cli, in the order shown by --help.
COMMANDS = ["report", "convert", "swap_test", "train_tiny", "reproduce", "shatter", "fold", "verify"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normscope",
        description="Measure and use the geometry of normalization layers in real networks.",
    )
    parser.add_argument("--version", action="version", version=f"normscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"normscope.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"normscope {args.command}: error: {err}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
