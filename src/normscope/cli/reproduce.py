"""``normscope reproduce PAPER``: one command per paper's experiments.

Each experiment module in ``normscope.experiments`` defines ``register(subparsers)``
for its own sub-command (``riechers``, ``brody``, ``ni``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
from typing import Any, Callable

PAPERS = ["riechers", "brody", "ni"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce a paper's figures and tables, with the paper's numbers beside ours",
        description="Reproduce one paper's results. Each writes PNG plots and Markdown/JSON tables to --out.",
    )
    papers = parser.add_subparsers(dest="paper", metavar="PAPER")
    for name in PAPERS:
        importlib.import_module(f"normscope.experiments.{name}").register(papers)
    for sub in papers.choices.values():  # refuse a bad --out before any experiment runs
        func = sub.get_default("func")
        if func is not None:
            sub.set_defaults(func=functools.partial(_checked, func))
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _checked(func: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    """Run ``func`` after :func:`normscope._io.check_out` accepted ``args.out`` (if the paper has one)."""
    from normscope._io import check_out

    if getattr(args, "out", None) is not None:
        check_out(args.out, force=getattr(args, "force", False))
    return func(args)
