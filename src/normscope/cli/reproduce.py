"""``normscope reproduce PAPER``: one command per paper's experiments.

Each experiment module in ``normscope.experiments`` defines ``register(subparsers)``
for its own sub-command (``riechers``, ``brody``, ``ni``).
"""

from __future__ import annotations

import argparse
import importlib

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
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
