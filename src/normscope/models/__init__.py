"""Models: loading (HF names/paths, packaged ``minilm`` / ``smollm2``), the norm-site registry,
and text/token helpers."""

from . import text
from .loading import LoadedModel, available_models, cache_dir, load
from .registry import NormSite, find_norms

__all__ = ["text", "LoadedModel", "NormSite", "available_models", "cache_dir", "find_norms", "load"]
