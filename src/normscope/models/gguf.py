"""GGUF files: dequantise once through transformers and cache a plain safetensors folder.

``build_cache`` writes ``model.safetensors`` + config + tokenizer + ``normscope_cache.json``
atomically; ``cache_ok`` says whether such a folder is complete and belongs to the GGUF (a truncated
or corrupted cache is rebuilt, not loaded). While dequantising, the GGUF's metadata is parsed once
(transformers would parse it four times), see ``parsed_once``.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from normscope.models.folder_checks import safetensors_problem

if TYPE_CHECKING:
    from normscope.models.loading import LoadedModel

CACHE_VERSION = 1


def cache_ok(folder: Path, gguf: Path) -> bool:
    """Whether the cache folder is complete and sound: metadata matches the GGUF, config.json parses
    and model.safetensors is exactly as long as its header says (a truncated or corrupted cache is
    rebuilt, not loaded)."""
    meta = folder / "normscope_cache.json"
    if not (meta.is_file() and (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()):
        return False
    try:
        info = json.loads(meta.read_text())
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(info, dict) or safetensors_problem(folder / "model.safetensors") is not None:
        return False
    return info.get("version") == CACHE_VERSION and info.get("gguf_size") == gguf.stat().st_size


def build_cache(gguf: Path, folder: Path) -> None:
    """Dequantise the GGUF once (float32) and save a plain HF folder atomically.

    ``save_pretrained`` refuses GGUF-loaded models, so the state dict is written with
    safetensors directly: the tied ``lm_head.weight`` is dropped (re-tied on load) and
    ``config.quantization_config`` is deleted (a GGUF-loaded model keeps it, and transformers would try to re-quantize on load).
    """
    from safetensors.torch import save_file

    lm = dequantise(gguf)
    model, tok = lm.model, lm.tokenizer
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    from normscope import _io

    folder.parent.mkdir(parents=True, exist_ok=True)
    _io.clean_stale(folder.parent)  # temporaries of builds that were killed
    with _io.temp_dir(folder.parent, folder.name) as tmp:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "normscope_cache.json").write_text(
            json.dumps({"version": CACHE_VERSION, "gguf": str(gguf), "gguf_size": gguf.stat().st_size})
        )
        if cache_ok(folder, gguf):  # another process finished first: keep theirs
            return
        try:  # a stale or corrupt cache (other version / GGUF, truncated file) is replaced atomically
            _io.replace_dir(tmp, folder)
        except OSError:
            if not cache_ok(folder, gguf):  # another process did not win either
                raise


def dequantise(gguf: Path) -> LoadedModel:
    """Load a GGUF file through transformers (float32), its metadata parsed once (see below)."""
    from normscope.models.loading import _load_hf

    import gguf as _gguf

    check_header(gguf)
    with parsed_once():
        try:  # parsed here once (cached by parsed_once): any failure means the file itself is bad
            _gguf.GGUFReader(gguf)
        except (ValueError, struct.error, EOFError, IndexError) as e:
            raise ValueError(f"{gguf}: corrupt or truncated GGUF file ({e}); download it again") from e
        return _load_hf(gguf.parent, name=gguf.stem, dtype=torch.float32, device_map=None, gguf_file=gguf.name)


def check_header(gguf: Path) -> None:
    """One-line ValueError unless ``gguf`` starts with a complete GGUF header (magic ``GGUF``,
    version, tensor and metadata counts: 24 bytes), checked before any slow parsing."""
    with open(gguf, "rb") as f:
        head = f.read(24)
    if head[:4] != b"GGUF":
        raise ValueError(f"{gguf}: not a GGUF file (it does not start with the bytes 'GGUF'); "
                         "pass a .gguf model file, an HF model folder or a packaged name")
    if len(head) < 24:
        raise ValueError(f"{gguf}: truncated GGUF file ({len(head)} bytes, shorter than its 24-byte header); "
                         "download it again")


@contextlib.contextmanager
def parsed_once():
    """Within the block, each GGUF file is parsed once.

    transformers reads a GGUF's metadata separately for the config, the model's config, the
    tokenizer and the tensors (four ``GGUFReader`` parses of every field, ~3.5 s each for
    smollm2's 49k-token vocabulary) and rebuilds gguf's tensor-name map once per module. Here the
    reader is shared per path, metadata-only ``load_gguf_checkpoint`` results are memoised (a deep
    copy is returned, callers mutate them) and the name map is memoised per (arch, blocks).
    Everything is restored on exit.
    """
    import copy
    import functools

    import gguf as _gguf
    import transformers.modeling_gguf_pytorch_utils as _tgu

    readers: dict[str, Any] = {}
    metas: dict[str, Any] = {}
    reader_cls, load_ckpt, name_map = _gguf.GGUFReader, _tgu.load_gguf_checkpoint, _gguf.get_tensor_name_map

    def reader(path, *args, **kwargs):
        key = str(Path(path).resolve())
        if args or kwargs:
            return reader_cls(path, *args, **kwargs)
        if key not in readers:
            readers[key] = reader_cls(path)
        return readers[key]

    def load_checkpoint(path, return_tensors=False, *args, **kwargs):
        if return_tensors or args or kwargs:
            return load_ckpt(path, return_tensors, *args, **kwargs)
        key = str(Path(path).resolve())
        if key not in metas:
            metas[key] = load_ckpt(path, False)
        return copy.deepcopy(metas[key])

    _gguf.GGUFReader = reader
    _tgu.load_gguf_checkpoint = load_checkpoint
    _gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        _gguf.GGUFReader, _tgu.load_gguf_checkpoint, _gguf.get_tensor_name_map = reader_cls, load_ckpt, name_map
