"""Shared helpers for the Brody et al. reproductions: tables, plots, seeding, process pools."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import numpy as np

PAPER = "Brody, Alon & Yahav, On the Expressivity Role of LayerNorm in Transformers' Attention, Findings of ACL 2023"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats are printed as given (format them before)."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, (float, np.floating)):
        return "–" if np.isnan(x) else f"{x:.{nd}f}"
    return str(x)


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def parallel_map(fn: Callable, tasks: Sequence[Any], jobs: int, progress: str | None = None) -> list[Any]:
    """``[fn(t) for t in tasks]`` over ``jobs`` worker processes (in-process when jobs <= 1), in order."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc=progress, unit="task", leave=False)
    out: list[Any] = []
    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            out.append(fn(t))
            if bar:
                bar.update()
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker) as ex:
            futures = [ex.submit(fn, t) for t in tasks]
            for f in futures:
                out.append(f.result())
                if bar:
                    bar.update()
    if bar:
        bar.close()
    return out


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))
