"""Measured backend choice for the norm modules' ``backend="auto"``.

The first time a module sees a (device type, dtype, width, rows, threads) bucket it times each
candidate backend on the real input (one warm-up call each, then 3 interleaved timed calls, a
few ms) and caches the fastest (median) for the process. Measuring beats a fixed table: the
winner depends on device, dtype, width, rows and thread count, and a table written on one
machine goes stale on the next.
"""

from __future__ import annotations

import time

import torch
from torch import nn


def bucket(x: torch.Tensor, width: int, *extra: object) -> tuple:
    """(device type, dtype, log2 width, log4 rows, torch threads, *extra)."""
    rows = max(1, x.numel() // max(width, 1))
    return (x.device.type, x.dtype, width.bit_length(), rows.bit_length() // 2, torch.get_num_threads(), *extra)


def measure(module: nn.Module, x: torch.Tensor, candidates: list[str]) -> str:
    """The candidate backend with the lowest median of 3 interleaved timed calls on ``x``."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    saved = module.backend
    times: dict[str, list[float]] = {c: [] for c in candidates}
    try:
        with torch.no_grad():
            for rnd in range(4):
                for c in candidates:
                    module.backend = c
                    sync()
                    t0 = time.perf_counter()
                    module(x)
                    sync()
                    if rnd:  # round 0 is the warm-up
                        times[c].append(time.perf_counter() - t0)
    finally:
        module.backend = saved
    return min(candidates, key=lambda c: sorted(times[c])[1])
