"""Sharded safetensors IO, streaming fold, and the fold / verify commands end to end on tiny folders."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import transformers as T

from conftest import run_command as cli
from test_fold import compare, ids, make


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_parse_size():
    from normscope.surgery.tensors import parse_size

    assert parse_size("2GB") == 2 * 10**9 and parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size("500kb") == 500_000
    assert parse_size(None) is None and parse_size(123) == 123
    with pytest.raises(ValueError, match="write it like 2GB"):
        parse_size("two gigs")


def test_shards_round_trip(tmp_path):
    from safetensors.torch import load_file

    from normscope.surgery.tensors import Spec, read_infos, read_tensor, write_shards

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(7, 5, generator=g), "b": torch.randn(300, generator=g).to(torch.bfloat16),
               "c": torch.arange(6).reshape(2, 3), "d": torch.randn(3, 3, generator=g).double(), "e": torch.zeros(0)}
    files = write_shards(tmp_path, [Spec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], tensors.__getitem__,
                         max_shard_size=600)
    assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    infos = read_infos(tmp_path)
    for k, v in tensors.items():
        assert torch.equal(read_tensor(infos[k]), v)
    back = {k: v for f in files for k, v in load_file(tmp_path / f).items()}  # the reference reader agrees
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_sharded_fold_stock_reload(tmp_path):
    from normscope.surgery import fold, load, write

    m = make("llama_tied")
    r = fold(m)
    files = write(r.model, tmp_path, max_shard_size="20KB")
    assert len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    stock, info = T.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = [ids(9)]
    assert compare(r.model, stock.eval(), x)["max_abs_dlogits"] == 0.0
    ours = load(tmp_path)
    from normscope.nn import RMSNorm

    assert isinstance(ours.model.layers[0].input_layernorm, RMSNorm)  # the manifest's fast norm is swapped in
    assert compare(r.model, ours, x)["max_abs_dlogits"] <= 1e-5


@pytest.fixture(params=["whole", "chunked"])
def chunking(request, monkeypatch):
    """Run streaming tests twice: tensors whole, and big ones in row chunks (chunk shrunk to 2 KB)."""
    from normscope.surgery import stream

    if request.param == "chunked":
        monkeypatch.setattr(stream, "_CHUNK_BYTES", 2048)
    return request.param


@pytest.mark.parametrize("name", ["llama_tied", "gemma2", "phi3"])
def test_streaming_matches_in_memory(name, tmp_path, chunking):
    from normscope.surgery import fold, fold_checkpoint

    src, dst = tmp_path / "src", tmp_path / "dst"
    m = make(name)
    m.save_pretrained(src, max_shard_size="30KB")
    before = digest(src)
    dst.mkdir()
    rep = fold_checkpoint(src, dst, max_shard_size="25KB")
    assert digest(src) == before  # the input folder is never modified
    assert len(rep.files) > 1
    stock, info = T.AutoModelForCausalLM.from_pretrained(dst, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    mem = fold(m).model
    x = [ids(10)]
    assert compare(mem, stock.eval(), x)["max_abs_dlogits"] == 0.0  # same float64 arithmetic, same rounding
    assert rep.untied_bytes == fold(m).untied_bytes


@pytest.mark.parametrize("name", ["gpt2", "bloom", "falcon", "phi", "opt", "stablelm"])
def test_streaming_layernorm_families(name, tmp_path, chunking):
    """Writer centring + gain/bias folding tensor by tensor equals the in-memory fold, and loads in the stock class."""
    from normscope.surgery import fold, fold_checkpoint, load

    src, dst = tmp_path / "src", tmp_path / "dst"
    m = make(name)
    m.save_pretrained(src, max_shard_size="40KB")
    dst.mkdir()
    rep = fold_checkpoint(src, dst)
    mem = fold(m)
    assert rep.record["folded"] == mem.record["folded"] and rep.record["kept"] == mem.record["kept"]
    stock, info = T.AutoModelForCausalLM.from_pretrained(dst, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = [ids(11)]
    # same float64 formulas; the column means of Linear writers are summed in another order: ≤ 1 ulp apart
    assert compare(mem.model, stock.eval(), x)["max_abs_dlogits"] <= 1e-5
    assert compare(m, load(dst), x)["max_abs_dlogits"] <= 1e-4


def test_fold_and_verify_commands(tmp_path, capsys):
    src = tmp_path / "src"
    make("gpt2").save_pretrained(src)
    before = digest(src)
    out = tmp_path / "out"
    assert cli("fold", str(src), str(out), "--seq-len", "16", "--max-tokens", "32", "--max-shard-size", "40KB") == 0
    assert digest(src) == before
    text = capsys.readouterr().out
    assert "foldability map" in text and "kept: final-norm bias" in text and "stock AutoModelForCausalLM reload" in text
    man = json.loads((out / "manifest.json").read_text())
    assert man["verification"]["float32"]["max_abs_dlogits"] <= 1e-4
    assert man["verification"]["float64"]["max_abs_dlogits"] <= 1e-10
    assert (out / "model.safetensors.index.json").is_file()
    fmap = json.loads((out / "foldability.json").read_text())
    assert {s["name"] for s in fmap["sites"] if not s["foldable"]} == {"transformer.ln_f"}
    with pytest.raises(FileExistsError):
        cli("fold", str(src), str(out))
    res = tmp_path / "verify.json"
    assert cli("verify", str(src), str(out), "--seq-len", "16", "--max-tokens", "32", "--out", str(res)) == 0
    rows = json.loads(res.read_text())["results"]
    assert [r["dtype"] for r in rows] == ["float64", "float32", "bfloat16"]
    assert rows[1]["first_divergence"] is None and rows[1]["top1_agreement"] == 1.0
    assert "first divergence" in capsys.readouterr().out
    with pytest.raises(ValueError, match="exceeds --tol"):
        cli("verify", str(src), str(out), "--dtypes", "float32", "--tol", "0", "--seq-len", "16", "--max-tokens", "32")
    # the fold output (no tokenizer) as A: loaded with its norms rebuilt, the same pair the other way round
    assert cli("verify", str(out), str(src), "--dtypes", "float32", "--tol", "1e-4", "--seq-len", "16",
               "--max-tokens", "32") == 0


def test_fold_streaming_command(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make("gpt2").save_pretrained(src, max_shard_size="40KB")
    before = digest(src)
    assert cli("fold", str(src), str(out), "--streaming", "--max-shard-size", "30KB", "--seq-len", "16",
               "--max-tokens", "32") == 0
    assert digest(src) == before
    man = json.loads((out / "manifest.json").read_text())
    assert man["verification"]["float32"]["max_abs_dlogits"] <= 1e-4 and man["fold"]["streamed"]
    assert len(man["files"]) > 1 and "float32 (stock reload)" in capsys.readouterr().out
    # the streamed check is the shared logit_agreement: the same fields as the in-memory fold's check
    assert set(man["verification"]["float32"]) == {"tokens", "max_abs_dlogits", "mean_abs_dlogits", "max_abs_logit",
                                                   "kl_mean", "kl_max"}


def test_fold_streaming_refuses_non_finite_logits(tmp_path):
    """A NaN weight: the streamed check names the model and position (shared comparison) and writes nothing."""
    from normscope.errors import NonFiniteError

    src, out = tmp_path / "src", tmp_path / "out"
    m = make("llama")
    with torch.no_grad():
        m.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")  # NaN in every position's residual
    m.save_pretrained(src)
    with pytest.raises(NonFiniteError, match=r"original model's logits are not finite: .* batch 0, row 0, position 0"):
        cli("fold", str(src), str(out), "--streaming", "--seq-len", "16", "--max-tokens", "32")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


def test_fold_of_a_tokenizerless_convert_output_keeps_its_norms(tmp_path):
    """A convert output without a tokenizer is loaded for folding with its RMSNorm sites rebuilt
    (normscope.convert.saving.load), not as the stock class with LayerNorm: the folded model still
    computes the original's logits."""
    from normscope.convert import to_rmsnorm
    from normscope.convert.saving import write

    src, conv, folded = tmp_path / "src", tmp_path / "conv", tmp_path / "folded"
    m = make("gpt2")
    m.save_pretrained(src)
    conv.mkdir()
    write(to_rmsnorm(m), conv)  # the Python API writes no tokenizer
    streamed = tmp_path / "streamed"
    assert cli("fold", str(conv), str(folded), "--seq-len", "16", "--max-tokens", "32") == 0
    assert cli("fold", str(conv), str(streamed), "--streaming", "--seq-len", "16", "--max-tokens", "32") == 0
    for out in (folded, streamed):
        res = tmp_path / f"verify-{out.name}.json"
        assert cli("verify", str(src), str(out), "--dtypes", "float32", "--seq-len", "16", "--max-tokens", "32",
                   "--out", str(res)) == 0
        assert json.loads(res.read_text())["results"][0]["max_abs_dlogits"] <= 1e-4
