"""Exact LayerNorm → RMSNorm conversion (normscope.convert): every family, negative controls,
refusals, save/load. Tolerances: float64 max |Δlogits| ≤ 1e-10, float32 ≤ 1e-4 (TransformerLens
treats ≥ 1e-4 as suspicious, docs/convert.md)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import transformers as T
from torch import nn

from normscope.convert import NotConvertibleError, compare, load, plan, residual_mean, to_rmsnorm, write
from normscope.convert import families
from normscope.nn import RMSNorm

from conftest import LM_D, LM_SMALL, LM_VOCAB, layernorm_lm_configs, lm_ids, perturbed_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T.logging.set_verbosity_error()

V, D, SMALL = LM_VOCAB, LM_D, LM_SMALL


def _configs() -> dict[str, T.PretrainedConfig]:
    return {
        **layernorm_lm_configs(),
        "gpt_neox_sequential": T.GPTNeoXConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                               intermediate_size=64, max_position_embeddings=64,
                                               use_parallel_residual=False, **SMALL),
        "falcon": T.FalconConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, bias=True, **SMALL),
        "falcon_new_arch": T.FalconConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, num_kv_heads=2,
                                          new_decoder_architecture=True, **SMALL),
        "falcon_sequential": T.FalconConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                            parallel_attn=False, alibi=True, **SMALL),
        "stablelm_parallel_qk": T.StableLmConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                                 num_key_value_heads=4, intermediate_size=64, use_parallel_residual=True,
                                                 qk_layernorm=True, **SMALL),
    }


CONFIGS = _configs()


def make(name: str, seed: int = 0) -> nn.Module:
    """A random-init model whose stream is far from centred and whose LN affines are not trivial."""
    return perturbed_lm(CONFIGS[name], seed)


ids = lm_ids


def naive_swap(model: nn.Module) -> nn.Module:
    """LN → RMSNorm without centring the writers (must NOT be exact: a negative control)."""
    new = copy.deepcopy(model)
    for name in plan(model).norms:
        parent, _, leaf = name.rpartition(".")
        setattr(new.get_submodule(parent), leaf, families_rms(new.get_submodule(name)))
    return new


def families_rms(ln: nn.LayerNorm) -> nn.Module:
    from normscope.convert.exact import rmsnorm_like

    return rmsnorm_like(ln)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exact_float64(name):
    m = make(name).double()
    c = to_rmsnorm(m)
    x = [ids(1), ids(2)]
    r = compare(m, c, x)
    assert r["max_abs_dlogits"] <= 1e-10 * max(1.0, r["max_abs_logit"]), r
    assert r["kl_max"] <= 1e-12
    worst = residual_mean(c, x)
    assert max(worst.values()) < 1e-12, worst
    # every residual-reading LayerNorm is now normscope's RMSNorm with the same ε
    for n in c.config.normscope_conversion["norms"]:
        new, old = c.get_submodule(n), m.get_submodule(n)
        assert type(new) is RMSNorm and new.eps == old.eps
        torch.testing.assert_close(new.weight, old.weight, rtol=0, atol=0)
    # the naive swap on the same model is far off, so the tolerance above can fail
    assert compare(m, naive_swap(m), x)["max_abs_dlogits"] > 1e-3


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exact_float32(name):
    m = make(name)
    c = to_rmsnorm(m)
    x = [ids(3)]
    r = compare(m, c, x)
    assert r["max_abs_dlogits"] <= 1e-4, r
    assert r["kl_mean"] < 1e-9
    assert max(residual_mean(c, x).values()) < 1e-5
    assert all(p.dtype == torch.float32 for p in c.parameters())


def test_input_not_modified_and_untied():
    m = make("gpt2")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    types = {n: type(mod) for n, mod in m.named_modules()}
    c = to_rmsnorm(m)
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert types == {n: type(mod) for n, mod in m.named_modules()}
    assert m.lm_head.weight is m.transformer.wte.weight  # the original stays tied
    assert m.config.tie_word_embeddings and not hasattr(m.config, "normscope_conversion")
    # the copy is untied: unembedding = original embedding, input embedding centred
    assert c.lm_head.weight is not c.transformer.wte.weight
    assert torch.equal(c.lm_head.weight, before["transformer.wte.weight"])
    assert c.transformer.wte.weight.double().mean(-1).abs().max() < 1e-6
    assert c.transformer.wpe.weight.double().mean(-1).abs().max() < 1e-6
    assert c.config.normscope_conversion["untied_unembedding"] is True


def test_conv1d_layout_and_untie_matter(monkeypatch):
    """Centring the wrong Conv1D axis, or not untying, breaks GPT-2 (the pitfalls of §6.3)."""
    m = make("gpt2").double()
    x = [ids(4)]
    assert compare(m, to_rmsnorm(m), x)["max_abs_dlogits"] < 1e-10
    real_axis = families.writer_axis
    monkeypatch.setattr(families, "writer_axis", lambda mod: 0 if type(mod).__name__ == "Conv1D" else real_axis(mod))
    assert compare(m, to_rmsnorm(m), x)["max_abs_dlogits"] > 1e-3
    monkeypatch.setattr(families, "writer_axis", real_axis)
    from normscope.convert import exact

    monkeypatch.setattr(exact, "untie_embedding", lambda model, reader: 0)
    assert compare(m, to_rmsnorm(m), x)["max_abs_dlogits"] > 1e-3


def test_bloom_embedding_norm_kept_centred(tmp_path):
    """BLOOM's embedding LN stays (same keys, output centred), so the stock class reloads it with no MISSING key."""
    from normscope.convert.exact import CentredLayerNorm

    m = make("bloom").double()
    c = to_rmsnorm(m)
    assert type(c.transformer.word_embeddings_layernorm) is CentredLayerNorm
    assert c.config.normscope_conversion["embedding_norm_centred"] == "transformer.word_embeddings_layernorm"
    assert torch.equal(c.lm_head.weight, m.lm_head.weight)
    assert c.config.normscope_conversion["untied_unembedding"] is False  # the table is untouched
    c32 = to_rmsnorm(make("bloom"))
    write(c32, tmp_path)
    stock, info = T.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert compare(make("bloom"), stock.eval(), [ids(6)])["max_abs_dlogits"] <= 1e-4


def test_inner_qk_norms_untouched():
    m = make("phi_qk_layernorm")
    c = to_rmsnorm(m)
    q = c.model.layers[0].self_attn.q_layernorm
    assert isinstance(q, nn.LayerNorm)
    assert torch.equal(q.weight, m.model.layers[0].self_attn.q_layernorm.weight)


def test_bf16_arithmetic_in_float64():
    m = make("gpt2").to(torch.bfloat16)
    c = to_rmsnorm(m)
    assert all(p.dtype == torch.bfloat16 for p in c.parameters())
    # centring computed in float64 then rounded once: the mean left is at bf16 rounding scale
    w = c.transformer.h[0].mlp.c_proj.weight.double()
    assert w.mean(-1).abs().max() < 1e-2 * w.abs().max()
    r = compare(m, c, [ids(5)])
    assert r["kl_mean"] < 1e-2


@pytest.mark.parametrize(
    "model,match",
    [
        (lambda: T.BertModel(T.BertConfig(num_hidden_layers=1, hidden_size=D, num_attention_heads=4,
                                          intermediate_size=64, vocab_size=V)), "post-LN"),
        (lambda: T.LlamaForCausalLM(T.LlamaConfig(num_hidden_layers=1, hidden_size=D, num_attention_heads=4,
                                                  intermediate_size=64, vocab_size=V)), "already uses RMSNorm"),
        (lambda: T.OPTForCausalLM(T.OPTConfig(num_hidden_layers=1, hidden_size=D, num_attention_heads=4, ffn_dim=64,
                                              do_layer_norm_before=False, vocab_size=V)), "post-LN"),
        (lambda: T.BloomForCausalLM(T.BloomConfig(n_layer=1, hidden_size=D, n_head=4, vocab_size=V,
                                                  apply_residual_connection_post_layernorm=True)), "post-LN"),
        (lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "not supported"),
    ],
    ids=["bert", "llama", "opt350m-style", "bloom-post-ln", "plain-module"],
)
def test_refusals(model, match):
    with pytest.raises(NotConvertibleError, match=match):
        to_rmsnorm(model())
    assert issubclass(NotConvertibleError, ValueError)


def test_unknown_layernorm_refused():
    m = make("gpt2")
    m.transformer.h[0].extra = nn.LayerNorm(D)  # a LayerNorm we cannot account for
    with pytest.raises(NotConvertibleError, match="unrecognised LayerNorm"):
        to_rmsnorm(m)


def test_base_model_without_head():
    torch.manual_seed(0)
    m = T.GPT2Model(copy.deepcopy(CONFIGS["gpt2"])).eval().double()
    c = to_rmsnorm(m)
    x = ids(6)
    torch.testing.assert_close(c(input_ids=x).last_hidden_state, m(input_ids=x).last_hidden_state, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["gpt2", "bloom", "gpt_neox", "opt_project_in_out", "falcon_new_arch"])
def test_write_load_roundtrip(name, tmp_path):
    m = make(name)
    c = to_rmsnorm(m)
    write(c, tmp_path)
    r = load(tmp_path)
    assert not r.training
    x = ids(7)
    assert torch.equal(r(input_ids=x).logits, c(input_ids=x).logits)
    assert compare(m, r, [x])["max_abs_dlogits"] <= 1e-4
    for n in c.config.normscope_conversion["norms"]:
        assert type(r.get_submodule(n)) is RMSNorm
    assert r.config.tie_word_embeddings is False or not c.config.normscope_conversion["untied_unembedding"]


def test_load_rejects_plain_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path)
    m = make("gpt2")
    m.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="normscope_conversion"):
        load(tmp_path)
