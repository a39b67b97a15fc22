"""The convert / swap-test / train-tiny commands, end to end on tiny local folders."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers as T

from normscope.models.tiny import byte_tokenizer

from conftest import make_bert, make_gpt2, run_command as cli, save_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src") / "gpt2"
    m = make_gpt2(d=32, vocab=257, bos_token_id=256, eos_token_id=256)
    with torch.no_grad():
        m.transformer.wte.weight.add_(0.3)
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.2)
    return save_model(m, folder)  # with the byte-level tokenizer (context 64)


def test_convert_writes_verified_model(gpt2_folder, tmp_path, capsys):
    from normscope.convert import compare, load, to_rmsnorm

    out = tmp_path / "conv"
    assert cli("convert", str(gpt2_folder), str(out), "--seq-len", "32", "--max-tokens", "128") == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "manifest.json", "tokenizer.json", "README.md"} <= names
    man = json.loads((out / "manifest.json").read_text())
    v = man["verification"]
    assert v["float32"]["max_abs_dlogits"] <= 1e-4 and v["float32"]["tokens"] == 128
    assert v["float64"]["max_abs_dlogits"] < 1e-10
    assert v["reload_max_abs_dlogits"] == 0.0
    assert man["conversion"]["family"] == "gpt2" and len(man["conversion"]["norms"]) == 5
    assert "transformer.h.0.attn.c_proj" in man["conversion"]["writers_centred"]
    assert "wrote" in capsys.readouterr().out
    # load(OUT) reproduces the conversion's logits
    original = T.AutoModelForCausalLM.from_pretrained(gpt2_folder).eval()
    loaded = load(out)
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded(input_ids=x).logits, to_rmsnorm(original)(input_ids=x).logits)
    assert compare(original, loaded, [x])["max_abs_dlogits"] <= 1e-4
    # an existing OUT is refused without --force, replaced with it
    with pytest.raises(FileExistsError):
        cli("convert", str(gpt2_folder), str(out), "--seq-len", "32", "--max-tokens", "64")
    assert cli("convert", str(gpt2_folder), str(out), "--seq-len", "32", "--max-tokens", "64", "--force") == 0
    assert json.loads((out / "manifest.json").read_text())["verification"]["float32"]["tokens"] == 64


def test_convert_refuses_over_tolerance(gpt2_folder, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="refusing to write"):
        cli("convert", str(gpt2_folder), str(out), "--seq-len", "32", "--max-tokens", "64", "--tol", "1e-12",
            "--no-fp64")
    assert not out.exists()
    assert not any(p.name.startswith(".never") for p in tmp_path.iterdir())


def test_convert_refuses_post_ln(tmp_path):
    folder = tmp_path / "bert"
    save_model(make_bert(d=32, layers=1, vocab=257), folder, byte_tokenizer(64))
    with pytest.raises(ValueError, match="post-LN"):
        cli("convert", str(folder), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_swap_test_cli(gpt2_folder, tmp_path, capsys):
    out = tmp_path / "swap"
    assert cli("swap-test", str(gpt2_folder), "--out", str(out), "--seq-len", "32", "--max-tokens", "128",
               "--per", "layer") == 0
    res = json.loads((out / "swap_test.json").read_text())
    assert res["loss_kind"] == "lm" and res["tokens"] == 128 and res["seq_len"] == 32
    assert [r["variant"] for r in res["rows"]] == ["layer 0", "layer 1", "transformer.ln_f", "all",
                                                    "exact (centred writers)"]
    assert (out / "swap_test.md").read_text().startswith("# Naive norm swap")
    assert "| swapped |" in capsys.readouterr().out
    with pytest.raises(FileExistsError):
        cli("swap-test", str(gpt2_folder), "--out", str(out))


def test_swap_test_threads_restored(gpt2_folder):
    """``--threads`` applies to the command only: torch's thread count is restored when main() returns."""
    from normscope._threads import threads

    with threads(2):
        assert cli("swap-test", str(gpt2_folder), "--seq-len", "16", "--max-tokens", "32", "--per", "all",
                   "--no-angles", "--threads", "1") == 0
        assert torch.get_num_threads() == 2


def test_train_tiny_cli(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert cli("train-tiny", "--out", str(out), "--steps", "2", "--batch-size", "2", "--seq-len", "32",
               "--threads", "1", "--n-layer", "1", "--n-embd", "32", "--n-head", "2") == 0
    s = json.loads((out / "training.json").read_text())
    assert s["steps"] == 2 and s["config"] == {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 32,
                                               "vocab_size": 257}
    assert "held-out loss" in capsys.readouterr().out
