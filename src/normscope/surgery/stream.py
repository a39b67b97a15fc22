"""Fold a safetensors checkpoint shard by shard, one tensor (or row chunk) in memory at a time.

The model is built on the ``meta`` device (shapes only) to get the foldability map; the norm
gains (one vector per site) are read first; then every stored tensor is read, transformed if
it is a reader (``W ← W diag g``, float64 in row chunks, cast back) or a folded norm (set to
the identity gain), and written straight into its output shard (:mod:`normscope.surgery.tensors`).
LayerNorm families are centred on the way (each residual writer's weight and bias made
zero-mean over d_model, as :func:`normscope.convert.to_rmsnorm` does) and their biases folded as
``b ← b + W β`` (the reader's weight is read again for it). Matrices larger than the 64 MB
working chunk are read, transformed and written in row chunks, so peak memory is a few chunks
whatever the checkpoint size, instead of the two model copies an in-memory fold holds.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from normscope.models.tying import untie_config
from normscope.surgery.folding import effective_gain
from normscope.surgery.sites import FoldMap, NotFoldableError, foldability
from normscope.surgery.tensors import INDEX, WEIGHTS, Spec, read_infos, read_tensor, write_shards

__all__ = ["StreamReport", "fold_checkpoint"]

_CHUNK_BYTES = 64 * 2**20  # float64 working chunk; tests shrink it to exercise the chunked path


@dataclass
class StreamReport:
    """What :func:`fold_checkpoint` did: the map, files written, bytes added by untying, the record."""

    map: FoldMap
    files: list[str]
    untied_bytes: int
    record: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"fold": self.record, "files": self.files, "foldability": self.map.to_json()}


def _rows(t: torch.Tensor) -> int:
    return max(1, _CHUNK_BYTES // (8 * max(1, t[0].numel() if t.dim() > 1 else 1)))


def _scale_(t: torch.Tensor, gain: torch.Tensor, axis: int) -> torch.Tensor:
    """``t ← t · gain`` along ``axis`` (1: Linear input columns; 0: HF Conv1D input rows), float64 row chunks."""
    step = _rows(t)
    for i in range(0, t.shape[0], step):
        g = gain if axis == 1 else gain[i : i + step, None]
        t[i : i + step] = (t[i : i + step].to(torch.float64) * g).to(t.dtype)
    return t


def _centre_(t: torch.Tensor, axis: int) -> torch.Tensor:
    """Subtract the mean over ``axis`` (-1: per row, in chunks; 0: per column) in float64, in place."""
    if t.dim() == 1 or axis == 0:
        w = t.to(torch.float64)
        t.copy_((w - w.mean(dim=0 if t.dim() > 1 else -1, keepdim=True)).to(t.dtype))
        return t
    step = _rows(t)
    for i in range(0, t.shape[0], step):
        w = t[i : i + step].to(torch.float64)
        t[i : i + step] = (w - w.mean(-1, keepdim=True)).to(t.dtype)
    return t


def _apply(t: torch.Tensor, ops) -> torch.Tensor:
    """Apply the operations to a whole tensor: centre, scale (fold a gain), fill, add W β."""
    for op in ops:
        if op[0] == "centre":
            t = _centre_(t, op[1])
        elif op[0] == "scale":
            t = _scale_(t, op[1], op[2])
        elif op[0] == "fill":
            t = t.fill_(op[1])
        elif op[0] == "add_wb":
            t = _add_wb_(t, *op[1:])
    return t


def _row_chunks(info, ops):
    """Yield a big matrix in row chunks with its row-wise operations applied (column means precomputed)."""
    from normscope.surgery.tensors import read_rows

    n = info.shape[0]
    step = max(1, _CHUNK_BYTES // (8 * max(1, info.nbytes // n // info.dtype.itemsize)))
    col_mean = None
    if any(op[0] == "centre" and op[1] == 0 for op in ops):  # Linear writer: mean over the output axis
        acc = torch.zeros(info.shape[1:], dtype=torch.float64)
        for i in range(0, n, step):
            acc += read_rows(info, i, i + step).to(torch.float64).sum(0)
        col_mean = acc / n
    for i in range(0, n, step):
        t = read_rows(info, i, i + step)
        for op in ops:
            w = t.to(torch.float64)
            if op[0] == "centre":
                w = w - (col_mean if op[1] == 0 else w.mean(-1, keepdim=True))
            elif op[0] == "scale":
                w = w * (op[1] if op[2] == 1 else op[1][i : i + step, None])
            else:
                raise ValueError(f"{info.key}: operation {op[0]} cannot run on row chunks")
            t = w.to(t.dtype)
        yield t


def _materialise_norms(meta: torch.nn.Module, infos: dict) -> None:
    """Give every norm module of the meta model its stored weight/bias (small), so biases can be judged."""
    for name, m in meta.named_modules():
        if "norm" not in type(m).__name__.lower():
            continue
        for attr in ("weight", "bias"):
            key = f"{name}.{attr}" if name else attr
            if isinstance(getattr(m, attr, None), torch.Tensor) and key in infos:
                setattr(m, attr, torch.nn.Parameter(read_tensor(infos[key]), requires_grad=False))


def fold_checkpoint(src: str | Path, dst: str | Path, *, max_shard_size: str | int | None = None) -> StreamReport:
    """Fold the checkpoint folder ``src`` into the existing empty folder ``dst``, tensor by tensor.

    **Arguments:** ``src`` — an HF folder with ``config.json`` and safetensors weights (single or
    sharded); ``dst`` — output folder (written in place; wrap it in ``normscope._io.output_dir``);
    ``max_shard_size`` — e.g. ``"2GB"``.

    **Returns:** :class:`StreamReport`. Raises :class:`NotFoldableError` when nothing can be folded.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    src, dst = Path(src), Path(dst)
    config = AutoConfig.from_pretrained(src)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    infos = read_infos(src)
    _materialise_norms(meta, infos)
    fmap = foldability(meta)
    if not fmap.folded:
        raise NotFoldableError(f"{fmap.family}: no norm can be folded ({'; '.join(sorted({s.reason for s in fmap.kept}))})")
    modules = dict(meta.named_modules())
    emb = meta.get_input_embeddings()
    emb_name = next(n for n, m in modules.items() if m is emb)
    tied = getattr(config, "tie_word_embeddings", False)
    source: dict[str, str] = {}  # output key -> stored key it starts from (untying copies the table)
    steps: dict[str, list[tuple]] = {}  # output key -> operations, in order (see _apply)

    def step(key: str, op: tuple) -> None:
        steps.setdefault(key, []).append(op)

    offset = fmap.kind == "rmsnorm_offset"
    conversion = None
    if fmap.kind == "layernorm":
        from normscope.convert.families import plan, writer_axis

        p = plan(meta)
        writers = [w for w in p.writers if not (p.embedding_norm and modules[w] is emb)]
        for w in writers:
            m = modules[w]
            step(f"{w}.weight", ("centre", writer_axis(m)))
            if isinstance(getattr(m, "bias", None), torch.Tensor) and not isinstance(m, torch.nn.Embedding):
                step(f"{w}.bias", ("centre", -1))
        head = f"{p.unembedding}.weight" if p.unembedding else None
        if tied and head and head not in infos and any(modules[w] is emb for w in writers):
            source[head] = f"{emb_name}.weight"  # the unembedding keeps the uncentred table
        conversion = {"format": 1, "family": p.family, "norms": p.norms, "embedding_norm_centred": p.embedding_norm,
                      "untied_unembedding": False, "norm_module": "normscope.nn.RMSNorm(bias=True)"}
    created = _plan_created_biases(fmap, meta, infos)
    for s in fmap.folded:
        norm = modules[s.name]
        gain = effective_gain(norm, fmap.kind)
        beta = norm.bias.detach().to(torch.float64) if isinstance(getattr(norm, "bias", None), torch.Tensor) else None
        step(f"{s.name}.weight", ("fill", 0.0 if offset else 1.0))
        if beta is not None:
            step(f"{s.name}.bias", ("fill", 0.0))
        for r in s.readers:
            wkey, axis = f"{r}.weight", 0 if type(modules[r]).__name__ == "Conv1D" else 1
            if wkey not in infos:
                if not (tied and f"{emb_name}.weight" in infos):
                    raise ValueError(f"{src}: reader tensor {wkey} is missing; the checkpoint does not match its config")
                source[wkey] = f"{emb_name}.weight"
            if beta is not None and beta.ne(0).any():
                step(f"{r}.bias", ("add_wb", infos[source.get(wkey, wkey)], beta, axis))
            step(wkey, ("scale", gain, axis))
    if conversion is not None and source:
        conversion["untied_unembedding"] = True
    order = sorted(infos.values(), key=lambda i: (str(i.file), i.start))
    specs = [Spec(i.key, i.dtype, i.shape) for i in order]
    specs += [Spec(k, infos[v].dtype, infos[v].shape) for k, v in source.items()]
    specs += [Spec(k, dt, (n,)) for k, (dt, n) in created.items()]
    untied = sum(s.nbytes for s in specs if s.key in source)

    def produce(key: str):
        ops = steps.get(key, ())
        if key in created:
            dt, n = created[key]
            return _apply(torch.zeros(n, dtype=dt), ops)
        info = infos[source.get(key, key)]
        if len(info.shape) < 2 or info.nbytes <= _CHUNK_BYTES:
            return _apply(read_tensor(info), ops)
        return _row_chunks(info, ops)  # big matrices never sit in memory whole

    files = write_shards(dst, specs, produce, max_shard_size=max_shard_size, metadata={"normscope": "fold"})
    arch_name = (getattr(config, "architectures", None) or [type(meta).__name__])[0]
    dtype = str(next(i.dtype for i in order if i.dtype.is_floating_point)).removeprefix("torch.")
    record = {
        "format": 1, "family": fmap.family, "kind": fmap.kind, "folded": [s.name for s in fmap.folded],
        "kept": {s.name: s.reason for s in fmap.kept}, "untied_unembedding_bytes": untied,
        "created_biases": sorted({s.create_bias for s in fmap.folded if s.create_bias}),
        "norm_module": "normscope.nn.RMSNorm" if not offset else "stock", "centred": conversion is not None,
        "streamed": True, "dtype": dtype, "architecture": arch_name,
    }  # fmt: skip
    config.normscope_fold = record
    if conversion is not None:
        config.normscope_conversion = dict(conversion, dtype=dtype, architecture=arch_name)
    for flag in record["created_biases"]:
        setattr(config, flag, True)
    if source:
        untie_config(config)
    config.save_pretrained(dst)
    _copy_side_files(src, dst)
    return StreamReport(fmap, files, untied, record)


def _add_wb_(bias: torch.Tensor, w_info, beta: torch.Tensor, axis: int) -> torch.Tensor:
    """``bias ← bias + W β`` in float64 (W read again from disk; Conv1D: ``β W``)."""
    w = read_tensor(w_info)
    acc = torch.zeros(bias.shape, dtype=torch.float64)
    step = _rows(w)
    for i in range(0, w.shape[0], step):
        chunk = w[i : i + step].to(torch.float64)
        if axis == 1:
            acc[i : i + step] = chunk @ beta
        else:
            acc += beta[i : i + step] @ chunk
    bias.copy_((bias.to(torch.float64) + acc).to(bias.dtype))
    return bias


def _plan_created_biases(fmap: FoldMap, meta: torch.nn.Module, infos: dict) -> dict[str, tuple[torch.dtype, int]]:
    """Bias tensors the stock class gains from a config flag (Falcon ``bias``): key -> (dtype, length)."""
    from normscope.models.architectures import architecture
    from normscope.models.registry import full_path
    from normscope.surgery.sites import BIAS_FLAGS

    if not any(s.create_bias for s in fmap.folded):
        return {}
    which = BIAS_FLAGS[fmap.family][1]
    layers = full_path(meta, architecture(meta).layers)
    out = {}
    for i, block in enumerate(meta.get_submodule(layers)):
        names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)] if which is None else which
        for n in names:
            key = f"{layers}.{i}.{n}.bias"
            w = infos.get(f"{layers}.{i}.{n}.weight")
            if key not in infos and w is not None:
                out[key] = (w.dtype, w.shape[0])
    return out


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer and generation config: every small file except weights, index and config."""
    skip = {WEIGHTS, INDEX, "config.json", "manifest.json", "foldability.json"}
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and not f.name.endswith((".safetensors", ".bin", ".pt", ".gguf")):
            if f.stat().st_size < 64 * 2**20:
                shutil.copy2(f, dst / f.name)
