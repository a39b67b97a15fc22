"""Saving and loading converted models.

A converted folder holds ``model.safetensors`` (the full state dict, untied), ``config.json``
(the original architecture's config, with ``tie_word_embeddings=False`` where the unembedding
was untied and a ``normscope_conversion`` record), the tokenizer if given, and
``manifest.json``. Loading rebuilds the original HF class from the config without random
initialisation, replaces the recorded norms by RMSNorm (and BLOOM's folded embedding LN by
Identity), then loads the state dict strictly — every key must match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normscope.convert.exact import apply_structure

WEIGHTS = "model.safetensors"


def write(model: nn.Module, folder: str | Path, *, tokenizer: Any = None) -> None:
    """Write a converted model (and tokenizer) into an existing ``folder``."""
    from safetensors.torch import save_model

    record = getattr(model.config, "normscope_conversion", None)
    if not record:
        raise ValueError("model has no normscope_conversion record; convert it with normscope.convert.to_rmsnorm first")
    folder = Path(folder)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    record = dict(record, dtype=str(dtype).removeprefix("torch."), architecture=type(model).__name__)
    model.config.normscope_conversion = record
    model.config.architectures = [type(model).__name__]
    save_model(model, str(folder / WEIGHTS), metadata={"format": "pt", "normscope": "to_rmsnorm"})
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def load(folder: str | Path) -> nn.Module:
    """Load a model written by ``normscope convert`` / :func:`write`, in eval mode.

    **Returns:** the converted model (original HF class, norms replaced by
    ``normscope.nn.RMSNorm``), with the saved weights and dtype.
    """
    import transformers
    from safetensors.torch import load_model
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} is not a converted model folder (needs config.json and {WEIGHTS})")
    config = AutoConfig.from_pretrained(folder)
    record = getattr(config, "normscope_conversion", None)
    if not isinstance(record, dict):
        raise ValueError(f"{folder}/config.json has no normscope_conversion record; not written by normscope convert")
    cls = getattr(transformers, record["architecture"], None)
    if cls is None:
        raise ValueError(f"transformers has no class {record['architecture']!r} (saved by a different version?)")
    dtype = getattr(torch, record["dtype"])
    with no_init_weights():
        model = cls(config)
    model.to(dtype)
    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()  # untouched tied tables (e.g. OPT with project_in) are stored once
    apply_structure(model, record)
    missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=False)
    # safetensors stores a tied tensor once; a key missing only because it shares storage is fine
    sd = model.state_dict(keep_vars=True)
    stored = {sd[k].data_ptr() for k in sd.keys() - set(missing)}
    missing = [k for k in missing if sd[k].data_ptr() not in stored]
    if missing or unexpected:
        raise ValueError(f"{folder}: state dict mismatch (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return model.eval()


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())
