"""Saving and loading converted and folded models as stock Hugging Face checkpoints.

A written folder holds ``model.safetensors`` (or shards ``model-0000k-of-0000n.safetensors`` with
``model.safetensors.index.json``, when ``max_shard_size`` is given), ``config.json`` (the original
architecture's config, with ``tie_word_embeddings=False`` where the unembedding was untied and the
``normscope_conversion`` / ``normscope_fold`` records), the tokenizer if given, and
``manifest.json`` (written by the command). Every state-dict key is that of the stock class, so
``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads it with no missing or
unexpected keys: a converted LayerNorm holds (γ, β) and, fed a zero-mean stream, computes RMSNorm;
a folded one holds (1, 0). :func:`load` rebuilds the same class and swaps in ``normscope.nn.RMSNorm``
where the records say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normscope.convert.exact import apply_structure

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def _records(config: Any) -> tuple[dict | None, dict | None]:
    conv = getattr(config, "normscope_conversion", None)
    fold = getattr(config, "normscope_fold", None)
    return (conv if isinstance(conv, dict) else None), (fold if isinstance(fold, dict) else None)


def stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each storage once (a tied unembedding is re-tied by the stock loader)."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), v.numel())
        if v.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def write(model: nn.Module, folder: str | Path, *, tokenizer: Any = None, max_shard_size: str | int | None = None) -> list[str]:
    """Write a converted or folded model (and tokenizer) into an existing ``folder``.

    **Arguments:** ``max_shard_size`` — e.g. ``"2GB"``: split the weights into shards with a
    ``model.safetensors.index.json`` (None: one file).

    **Returns:** the weight file names.
    """
    from normscope.surgery.tensors import Spec, write_shards

    conv, fold = _records(model.config)
    if not conv and not fold:
        raise ValueError(
            "model has no normscope record; convert it with normscope.convert.to_rmsnorm or fold it with "
            "normscope.surgery.fold first"
        )
    folder = Path(folder)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    extra = {"dtype": str(dtype).removeprefix("torch."), "architecture": type(model).__name__}
    if conv:
        model.config.normscope_conversion = dict(conv, **extra)
    if fold:
        model.config.normscope_fold = dict(fold, **extra)
    model.config.architectures = [type(model).__name__]
    sd = stored_state(model)
    specs = [Spec(k, v.dtype, tuple(v.shape)) for k, v in sd.items()]
    names = write_shards(folder, specs, sd.__getitem__, max_shard_size=max_shard_size,
                         metadata={"normscope": "fold" if fold else "to_rmsnorm"})
    model.config.save_pretrained(folder)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return names


def swap_fast_norms(model: nn.Module, fold: dict) -> None:
    """Replace the folded RMSNorm-family norms recorded in ``fold`` by ``normscope.nn.RMSNorm`` (gain 1)."""
    from normscope.convert.exact import _set
    from normscope.nn import RMSNorm

    if fold.get("norm_module") != "normscope.nn.RMSNorm" or fold.get("kind") != "rmsnorm":
        return
    for name in fold["folded"]:
        old = model.get_submodule(name)
        if isinstance(old, RMSNorm):
            continue
        eps = getattr(old, "variance_epsilon", getattr(old, "eps", None))
        w = old.weight
        _set(model, name, RMSNorm(tuple(w.shape), eps=float(eps), device=w.device, dtype=w.dtype))


def load(folder: str | Path) -> nn.Module:
    """Load a model written by ``normscope convert`` / ``normscope fold`` (:func:`write`), in eval mode.

    **Returns:** the model (original HF class; converted LayerNorms and folded RMSNorms replaced
    by ``normscope.nn.RMSNorm``) with the saved weights and dtype. Raises ``ValueError`` on any
    state-dict mismatch.
    """
    import transformers
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    from normscope.surgery.tensors import read_infos, read_tensor

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a converted model folder (needs config.json and {WEIGHTS})")
    infos = read_infos(folder)
    config = AutoConfig.from_pretrained(folder)
    conv, fold = _records(config)
    record = fold or conv
    if record is None:
        raise ValueError(f"{folder}/config.json has no normscope record (normscope_conversion or normscope_fold); write it with normscope convert or fold")
    cls = getattr(transformers, record["architecture"], None)
    if cls is None:
        raise ValueError(f"transformers has no class {record['architecture']!r} (saved by a different version?)")
    with no_init_weights():
        model = cls(config)
    model.to(getattr(torch, record["dtype"]))
    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()  # untouched tied tables (e.g. OPT with project_in) are stored once
    if conv:
        apply_structure(model, conv)
    if fold:
        swap_fast_norms(model, fold)
    sd = model.state_dict(keep_vars=True)
    unexpected = sorted(set(infos) - set(sd))
    with torch.no_grad():
        for k, info in infos.items():
            if k in sd:
                sd[k].copy_(read_tensor(info))
    # a key stored once for two tied parameters is fine
    stored = {sd[k].data_ptr() for k in infos if k in sd}
    missing = sorted(k for k in sd.keys() - set(infos) if sd[k].data_ptr() not in stored)
    if missing or unexpected:
        raise ValueError(f"{folder}: state dict mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())
