"""Checks of a local model folder before any weights load: config, weights, safetensors layout, tokenizer.

Each problem is refused in one line naming the file and the fix (``normscope.errors.UserError``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["check_model_folder", "reads_text", "safetensors_problem"]

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


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds a saved tokenizer (any of the files transformers writes)."""
    return any((folder / t).is_file() for t in _TOKENIZER_FILES)


def check_model_folder(folder: Path, *, tokenizer: bool = True) -> None:
    """Refuse a local model folder with a bad config, no weights, corrupt safetensors or (when
    ``tokenizer``, and the model reads text) no tokenizer.

    Runs before any weights are loaded, so the user hears about it at once, in one line.
    """
    from normscope.errors import UserError

    cfg = folder / "config.json"
    if not cfg.is_file():
        raise UserError(f"model folder {folder} has no config.json; save the model with model.save_pretrained(folder)")
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
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
    if tokenizer and reads_text(config) and not has_tokenizer(folder):
        raise UserError(
            f"model folder {folder} has no tokenizer (no tokenizer.json, tokenizer_config.json or vocab file); "
            "save the model's tokenizer into it with tokenizer.save_pretrained(folder)"
        )


def reads_text(config: dict) -> bool:
    """Whether a model with this ``config.json`` reads token ids (and so needs a tokenizer).

    Image models (ViT-style: ``image_size`` without a text tower) and audio encoders-decoders
    (Whisper-style: ``num_mel_bins``) are probed on normscope's offline images and synthetic audio
    (``normscope.models.inputs``), which need no tokenizer.
    """
    if "num_mel_bins" in config:
        return False
    return not ("image_size" in config and "text_config" not in config)
