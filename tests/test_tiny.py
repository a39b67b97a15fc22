"""The tiny pre-LN GPT trainer (normscope.models.tiny) and exact conversion of the trained model."""

from __future__ import annotations

import json

import pytest
import torch

from normscope.models.tiny import byte_tokenizer, heldout_loss, load_heldout, split_texts, train_tiny

TINY = dict(steps=40, batch_size=4, seq_len=64, n_layer=2, n_embd=64, n_head=4, lr=3e-3, warmup=5, threads=1,
            progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    return out, train_tiny(out, **TINY)


def test_byte_tokenizer_roundtrip():
    tok = byte_tokenizer()
    text = "def f(x):\n\treturn x ** 2  # größer — ∑ 🙂"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert len(tok) == 257 and tok.eos_token_id == 256


def test_split_is_disjoint_tail():
    texts = ["line one\nline two\n" * 20, "x" * 50]
    train, held = split_texts(texts)
    for t in texts:
        assert any(t.startswith(a) for a in train)
    assert "".join(train[0] + held[0]) == texts[0]
    assert 0 < len(held[0]) <= 0.2 * len(texts[0])


def test_train_tiny_learns_and_saves(trained, tmp_path):
    out, s = trained
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= {p.name for p in out.iterdir()}
    assert s["steps"] == TINY["steps"]
    # random init is ~ln(257) = 5.55 nats/byte; 40 tiny steps must reach well below
    assert s["heldout_loss_initial"] > 5.0
    assert s["heldout_loss"] < s["heldout_loss_initial"] - 1.5
    # the saved folder reloads with plain transformers and reproduces the recorded held-out loss
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert isinstance(model.transformer.h[0].ln_1, torch.nn.LayerNorm)
    again = heldout_loss(model, load_heldout(tok), TINY["seq_len"])
    assert abs(again - s["heldout_loss"]) < 1e-5
    assert json.loads((out / "training.json").read_text())["heldout_loss"] == s["heldout_loss"]
    with pytest.raises(FileExistsError):
        train_tiny(out, **TINY)


def test_time_budget_stops_early(tmp_path):
    s = train_tiny(tmp_path / "m", **(TINY | {"steps": 10_000}), max_seconds=2.0)
    assert 1 <= s["steps"] < 10_000


def test_trained_model_converts_exactly(trained):
    from transformers import AutoModelForCausalLM

    from normscope.convert import compare, residual_mean, to_rmsnorm

    out, _ = trained
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = byte_tokenizer()
    x = tok("The for statement iterates over a sequence.", return_tensors="pt")["input_ids"]
    assert x.shape[1] <= TINY["seq_len"]
    c = to_rmsnorm(model)
    r = compare(model, c, [x])
    assert r["max_abs_dlogits"] <= 1e-4
    assert max(residual_mean(c, [x]).values()) < 1e-5
    m64 = model.double()
    assert compare(m64, to_rmsnorm(m64), [x])["max_abs_dlogits"] < 1e-10


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        train_tiny(tmp_path / "a", **(TINY | {"n_embd": 30}))
    with pytest.raises(ValueError):
        train_tiny(tmp_path / "b", **(TINY | {"steps": 0}))
