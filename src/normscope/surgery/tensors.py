"""Streaming safetensors IO: read one tensor at a time, write shards header-first.

The safetensors format (https://huggingface.co/docs/safetensors) is an 8-byte little-endian
header length, a JSON header ``{name: {"dtype", "shape", "data_offsets": [start, end]}}`` padded
to 8 bytes, then the raw bytes. Reading a tensor with ``seek`` + ``readinto`` (not ``mmap``)
keeps only that tensor resident; writing a shard's header first (all shapes are known before
any data) lets each tensor go to disk as soon as it is produced. Hence peak memory is about
one tensor (or one row chunk of it, see :func:`read_rows`), whatever the checkpoint size. Sharded folders use
Hugging Face's ``model.safetensors.index.json`` (``weight_map``: tensor name → file).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

__all__ = [
    "TensorInfo", "Spec", "WEIGHTS", "INDEX", "parse_size", "read_infos", "read_tensor", "read_rows", "write_shards",
]  # fmt: skip

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
_NAMES = {v: k for k, v in _DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lives: ``file``, absolute byte range ``[start, end)``, dtype, shape."""

    key: str
    file: Path
    start: int
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Spec:
    """A tensor to be written: name, dtype, shape (its bytes come later from a producer)."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def parse_size(size: str | int | None) -> int | None:
    """``"2GB"`` → 2·10⁹ bytes (``GiB``: 2³⁰; plain integers are bytes; None → no limit)."""
    if size is None or isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(I?)B?\s*", size.upper())
    if not m:
        raise ValueError(f"cannot read size {size!r}; write it like 2GB, 500MB or 1.5GiB")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2) or " "))


def _header(file: Path) -> tuple[dict, int]:
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def read_infos(folder: str | os.PathLike) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint folder (single ``model.safetensors`` or sharded with an index).

    Raises ``FileNotFoundError`` naming what is missing.
    """
    folder = Path(folder)
    if (folder / INDEX).is_file():
        files = sorted({folder / f for f in json.loads((folder / INDEX).read_text())["weight_map"].values()})
    elif (folder / WEIGHTS).is_file():
        files = [folder / WEIGHTS]
    else:
        raise FileNotFoundError(f"{folder} has neither {WEIGHTS} nor {INDEX}; pass a safetensors checkpoint folder")
    out: dict[str, TensorInfo] = {}
    for file in files:
        head, base = _header(file)
        for key, v in head.items():
            if key == "__metadata__":
                continue
            if v["dtype"] not in _DTYPES:
                raise ValueError(f"{file.name}: tensor {key} has dtype {v['dtype']}, which normscope cannot fold")
            s, e = v["data_offsets"]
            out[key] = TensorInfo(key, file, base + s, base + e, _DTYPES[v["dtype"]], tuple(v["shape"]))
    return out


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Read one tensor from disk (a fresh CPU tensor; nothing else of the file stays in memory)."""
    t = torch.empty(info.shape, dtype=info.dtype)
    buf = t.view(-1).view(torch.uint8).numpy() if t.numel() else bytearray()
    with open(info.file, "rb") as f:
        f.seek(info.start)
        if f.readinto(buf) != info.nbytes:
            raise ValueError(f"{info.file}: tensor {info.key} is truncated; the checkpoint is damaged")
    return t


def read_rows(info: TensorInfo, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` (first axis) of a stored tensor, read alone from disk."""
    stop = min(stop, info.shape[0])
    row = info.nbytes // info.shape[0]
    t = torch.empty((stop - start, *info.shape[1:]), dtype=info.dtype)
    with open(info.file, "rb") as f:
        f.seek(info.start + start * row)
        if t.numel() and f.readinto(t.view(-1).view(torch.uint8).numpy()) != (stop - start) * row:
            raise ValueError(f"{info.file}: tensor {info.key} is truncated; the checkpoint is damaged")
    return t


def _plan_shards(specs: list[Spec], max_bytes: int | None) -> list[list[Spec]]:
    shards: list[list[Spec]] = [[]]
    size = 0
    for s in specs:
        if max_bytes is not None and shards[-1] and size + s.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def write_shards(
    folder: str | os.PathLike,
    specs: Iterable[Spec],
    produce: Callable[[str], torch.Tensor],
    *,
    max_shard_size: str | int | None = None,
    metadata: dict[str, str] | None = None,
) -> list[str]:
    """Write tensors into ``folder`` as ``model.safetensors`` or shards plus ``model.safetensors.index.json``.

    **Arguments:** ``specs`` — names, dtypes and shapes in output order; ``produce(key)`` — the
    tensor, or an iterable of its first-axis chunks in order (called once per key, in that order;
    it must match its spec); ``max_shard_size`` —
    e.g. ``"2GB"`` (a tensor larger than it gets a shard of its own); ``metadata`` — stored in
    every header (``{"format": "pt"}`` is added).

    **Returns:** the file names written.
    """
    folder = Path(folder)
    specs = list(specs)
    shards = _plan_shards(specs, parse_size(max_shard_size))
    n = len(shards)
    names = [WEIGHTS] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    meta = {"format": "pt", **(metadata or {})}
    weight_map: dict[str, str] = {}
    for name, shard in zip(names, shards):
        head: dict = {"__metadata__": meta}
        off = 0
        for s in shard:
            head[s.key] = {"dtype": _NAMES[s.dtype], "shape": list(s.shape), "data_offsets": [off, off + s.nbytes]}
            off += s.nbytes
            weight_map[s.key] = name
        raw = json.dumps(head, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / name, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for s in shard:
                out = produce(s.key)
                if isinstance(out, torch.Tensor) and (out.dtype != s.dtype or tuple(out.shape) != s.shape):
                    raise ValueError(f"{s.key}: produced {out.dtype} {tuple(out.shape)}, planned {s.dtype} {s.shape}")
                written = 0
                for t in [out] if isinstance(out, torch.Tensor) else out:  # a tensor, or its row chunks in order
                    if t.dtype != s.dtype:
                        raise ValueError(f"{s.key}: produced a {t.dtype} chunk, planned {s.dtype}")
                    if t.numel():
                        f.write(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
                    written += t.numel() * t.element_size()
                    del t
                if written != s.nbytes:
                    raise ValueError(f"{s.key}: produced {written} bytes, planned {s.nbytes}")
                del out
    if n > 1:
        total = sum(s.nbytes for s in specs)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return names
