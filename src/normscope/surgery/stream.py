"""Fold a safetensors checkpoint shard by shard, one tensor in memory at a time.

The model is built on the ``meta`` device (shapes only) to get the foldability map; the norm
gains (one vector per site) are read first; then every stored tensor is read, transformed if
it is a reader (``W ← W diag g``, float64 in row chunks, cast back) or a folded norm (set to
the identity gain), and written straight into its output shard (:mod:`normscope.surgery.tensors`).
Peak memory is about the largest tensor plus a float64 chunk, instead of the two model copies
an in-memory fold holds. RMSNorm families only: LayerNorm folding needs writer centring and
bias folding across tensors, which the in-memory :func:`normscope.surgery.fold` does.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from normscope.surgery.sites import FoldMap, NotFoldableError, foldability
from normscope.surgery.tensors import INDEX, WEIGHTS, Spec, read_infos, read_tensor, write_shards

__all__ = ["StreamReport", "fold_checkpoint"]

_CHUNK_BYTES = 64 * 2**20


@dataclass
class StreamReport:
    """What :func:`fold_checkpoint` did: the map, files written, bytes added by untying, the record."""

    map: FoldMap
    files: list[str]
    untied_bytes: int
    record: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"fold": self.record, "files": self.files, "foldability": self.map.to_json()}


def _fold_rows_(t: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``t ← t · gain`` over the input (last) axis of a Linear weight, float64 in row chunks, in place."""
    rows = max(1, _CHUNK_BYTES // (8 * max(1, t.shape[-1])))
    for i in range(0, t.shape[0], rows):
        t[i : i + rows] = (t[i : i + rows].to(torch.float64) * gain).to(t.dtype)
    return t


def fold_checkpoint(src: str | Path, dst: str | Path, *, max_shard_size: str | int | None = None) -> StreamReport:
    """Fold the checkpoint folder ``src`` into the existing empty folder ``dst``, tensor by tensor.

    **Arguments:** ``src`` — an HF folder with ``config.json`` and safetensors weights (single or
    sharded); ``dst`` — output folder (written in place; wrap it in ``normscope._io.output_dir``);
    ``max_shard_size`` — e.g. ``"2GB"``.

    **Returns:** :class:`StreamReport`. Raises :class:`NotFoldableError` for LayerNorm families
    or when nothing can be folded.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    src, dst = Path(src), Path(dst)
    config = AutoConfig.from_pretrained(src)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    fmap = foldability(meta)
    if fmap.kind == "layernorm":
        raise NotFoldableError(f"{fmap.family}: streaming folds RMSNorm families only; LayerNorm models need writer "
                               "centring across tensors — run `normscope fold` without --streaming")
    if not fmap.folded:
        raise NotFoldableError(f"{fmap.family}: no norm can be folded ({'; '.join(sorted({s.reason for s in fmap.kept}))})")
    infos = read_infos(src)
    offset = fmap.kind == "rmsnorm_offset"
    gains: dict[str, torch.Tensor] = {}  # reader weight key -> gain
    norms: set[str] = set()
    for s in fmap.folded:
        key = f"{s.name}.weight"
        if key not in infos:
            raise ValueError(f"{src}: tensor {key} is missing; the checkpoint does not match its config.json")
        w = read_tensor(infos[key]).to(torch.float64)
        g = 1.0 + w if offset else w
        norms.add(key)
        for r in s.readers:
            gains[f"{r}.weight"] = g
    emb_key = next((f"{n}.weight" for n, m in meta.named_modules() if m is meta.get_input_embeddings()), None)
    synth: dict[str, str] = {}  # output key -> input key it is copied from (untying)
    for k in gains:
        if k not in infos:
            if emb_key in infos and getattr(config, "tie_word_embeddings", False):
                synth[k] = emb_key
            else:
                raise ValueError(f"{src}: reader tensor {k} is missing; the checkpoint does not match its config.json")
    order = sorted(infos.values(), key=lambda i: (str(i.file), i.start))
    specs = [Spec(i.key, i.dtype, i.shape) for i in order]
    specs += [Spec(k, infos[v].dtype, infos[v].shape) for k, v in synth.items()]
    untied = sum(s.nbytes for s in specs if s.key in synth)

    def produce(key: str) -> torch.Tensor:
        t = read_tensor(infos[synth.get(key, key)])
        if key in norms:
            return t.fill_(0.0 if offset else 1.0)
        if key in gains:
            return _fold_rows_(t, gains[key])
        return t

    files = write_shards(dst, specs, produce, max_shard_size=max_shard_size, metadata={"normscope": "fold"})
    record = {
        "format": 1, "family": fmap.family, "kind": fmap.kind, "folded": [s.name for s in fmap.folded],
        "kept": {s.name: s.reason for s in fmap.kept}, "untied_unembedding_bytes": untied, "created_biases": [],
        "norm_module": "normscope.nn.RMSNorm" if not offset else "stock", "centred": False, "streamed": True,
        "dtype": str(order[0].dtype).removeprefix("torch."),
        "architecture": (getattr(config, "architectures", None) or [type(meta).__name__])[0],
    }  # fmt: skip
    config.normscope_fold = record
    if synth:
        config.tie_word_embeddings = False
        if hasattr(config, "get_text_config"):
            config.get_text_config().tie_word_embeddings = False
    config.save_pretrained(dst)
    _copy_side_files(src, dst)
    return StreamReport(fmap, files, untied, record)


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer and generation config: every small file except weights, index and config."""
    skip = {WEIGHTS, INDEX, "config.json", "manifest.json", "foldability.json"}
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and not f.name.endswith((".safetensors", ".bin", ".pt", ".gguf")):
            if f.stat().st_size < 64 * 2**20:
                shutil.copy2(f, dst / f.name)


def index_files(folder: str | Path) -> list[str]:
    """The weight files of a checkpoint folder (from its index, or the single file)."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        return sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
    return [WEIGHTS]
