"""Probe: hooks on norm layers and streaming per-token statistics (stats.json schema: probe/SCHEMA.md).

``run(model, batches, *, skip_first=False, progress=True) -> dict`` is the entry point;
``hooks.norm_hooks`` is the hook context manager other areas reuse.
"""

from .hooks import norm_hooks
from .runner import SCHEMA_VERSION, layer_geometry, random_baseline, run, shard

__all__ = ["SCHEMA_VERSION", "layer_geometry", "norm_hooks", "random_baseline", "run", "shard"]
