"""Norm folding (normscope.surgery.fold) on tiny random-init models of every family.

Tolerances: float64 max |Δlogits| ≤ 1e-10 (folding reorders one product per weight, so the error is
a few ulps of float64 times the depth); float32 ≤ 1e-4 (the same bound convert uses: ~d·u32·|logit|
with d = 32 and |logit| ≲ 10 gives ~4e-5). Gains and biases are perturbed (|g − 1| ~ 0.3, |β| ~ 0.3)
so a missed fold moves the logits by ≫ 1e-3 (checked by the negative control)."""

from __future__ import annotations

import os

import pytest
import torch
import transformers as T
from torch import nn

from normscope.convert import compare

from conftest import LM_D, LM_SMALL, LM_VOCAB, layernorm_lm_configs, lm_ids, perturbed_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T.logging.set_verbosity_error()

V, D, SMALL = LM_VOCAB, LM_D, LM_SMALL
LLAMA = dict(hidden_size=D, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, num_hidden_layers=2,
             max_position_embeddings=64, **SMALL)


def _configs() -> dict[str, T.PretrainedConfig]:
    return {
        **layernorm_lm_configs(),
        "falcon": T.FalconConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, **SMALL),
        "stablelm_parallel": T.StableLmConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                              num_key_value_heads=4, intermediate_size=64, use_parallel_residual=True,
                                              **SMALL),
        "falcon_new_arch": T.FalconConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, num_kv_heads=2,
                                          new_decoder_architecture=True, bias=True, **SMALL),
        "llama": T.LlamaConfig(**LLAMA),
        "llama_tied": T.LlamaConfig(**LLAMA, tie_word_embeddings=True),
        "mistral": T.MistralConfig(**LLAMA),
        "qwen2": T.Qwen2Config(**LLAMA),
        "qwen3": T.Qwen3Config(**LLAMA, head_dim=8),
        "phi3": T.Phi3Config(**LLAMA),
        "gemma": T.GemmaConfig(**LLAMA, head_dim=8),
        "gemma2": T.Gemma2Config(**LLAMA, head_dim=8),
        "gemma3": T.Gemma3TextConfig(**LLAMA, head_dim=8),
        "olmo2": T.Olmo2Config(**LLAMA),
    }


CONFIGS = _configs()


def make(name: str, seed: int = 0) -> nn.Module:
    """Random-init model with every norm gain and bias perturbed and an offset along 𝟙 in the embeddings."""
    return perturbed_lm(CONFIGS[name], seed, all_norms=True)


def ids(seed: int = 1, batch: int = 2, seq: int = 12) -> torch.Tensor:
    return lm_ids(seed, batch, seq)


def _float64_norms(monkeypatch) -> None:
    """HF's Gemma norms compute in float32 even in a float64 model; give them a float64 forward for the exact test."""
    import transformers.models.gemma.modeling_gemma as g1
    import transformers.models.gemma2.modeling_gemma2 as g2
    import transformers.models.gemma3.modeling_gemma3 as g3

    def forward(self, x):
        x64 = x.double()
        y = x64 * torch.rsqrt(x64.square().mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight.double())
        return y.to(x.dtype)

    for mod, cls in ((g1, "GemmaRMSNorm"), (g2, "Gemma2RMSNorm"), (g3, "Gemma3RMSNorm")):
        monkeypatch.setattr(getattr(mod, cls), "forward", forward)


FOLDABLE = sorted(n for n in CONFIGS if n != "stablelm_parallel")


@pytest.mark.parametrize("name", FOLDABLE)
def test_fold_exact(name, monkeypatch):
    from normscope.surgery import fold

    _float64_norms(monkeypatch)
    m64 = make(name).double()
    r = fold(m64)
    c64 = compare(m64, r.model, [ids(1)])
    assert c64["max_abs_dlogits"] <= 1e-10 * max(1.0, c64["max_abs_logit"]), c64
    m32 = make(name)
    r32 = fold(m32)
    c32 = compare(m32, r32.model, [ids(2)])
    assert c32["max_abs_dlogits"] <= 1e-4, c32
    assert all(p.dtype == torch.float32 for p in r32.model.parameters())
    # every folded site is weightless (gain 1, Gemma w = 0; bias 0); every kept site has a reason
    for s in r32.map.folded:
        norm = r32.model.get_submodule(s.name)
        assert torch.all(norm.weight == (0.0 if s.kind == "rmsnorm_offset" else 1.0)), s.name
        if getattr(norm, "bias", None) is not None:
            assert torch.all(norm.bias == 0), s.name
    assert all(s.reason for s in r32.map.kept)
    # negative control: un-fold one gain (restore the original) and the same check fails
    s = r32.map.folded[0]
    with torch.no_grad():
        r32.model.get_submodule(s.name).weight.copy_(m32.get_submodule(s.name).weight)
    assert compare(m32, r32.model, [ids(2)])["max_abs_dlogits"] > 1e-3


def test_input_untouched_and_tied_cost():
    from normscope.surgery import fold

    m = make("llama_tied")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = fold(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.lm_head.weight is m.model.embed_tokens.weight and m.config.tie_word_embeddings
    assert r.untied_bytes == V * D * 4 and r.record["untied_unembedding_bytes"] == V * D * 4
    assert r.model.lm_head.weight is not r.model.model.embed_tokens.weight
    assert torch.equal(r.model.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    assert fold(make("llama")).untied_bytes == 0  # untied model: nothing to pay



def test_untie_embedding_shared_by_convert_and_fold(tmp_path):
    """The one untying used by convert (which changes the embedding) and fold (which changes the unembedding):
    a separate copy, the flag cleared on the config and its text config (fold did this, convert did not), so
    neither transformers' tie_weights nor a save + stock reload ties them again; 0 bytes for an untied reader."""
    from normscope.models.tying import tied_to_input, untie_embedding

    m = make("llama_tied")
    assert tied_to_input(m, m.lm_head) and not tied_to_input(m, m.model.layers[0].mlp.down_proj)
    assert untie_embedding(m, m.model.layers[0].mlp.down_proj) == 0  # not tied: nothing changes
    assert m.config.tie_word_embeddings
    assert untie_embedding(m, m.lm_head) == V * D * 4
    assert not m.config.tie_word_embeddings and not m.config.get_text_config().tie_word_embeddings
    assert torch.equal(m.lm_head.weight, m.model.embed_tokens.weight) and not tied_to_input(m, m.lm_head)
    m.tie_weights()
    assert m.lm_head.weight is not m.model.embed_tokens.weight
    assert untie_embedding(m, m.lm_head) == 0  # already untied
    with torch.no_grad():
        m.model.embed_tokens.weight.add_(1.0)  # what writer centring does to the embedding only
    m.save_pretrained(tmp_path)
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(back.model.embed_tokens.weight, m.model.embed_tokens.weight)
    assert torch.equal(back.lm_head.weight, m.lm_head.weight)
    assert not torch.equal(back.lm_head.weight, back.model.embed_tokens.weight)

def test_foldability_reasons():
    from normscope.surgery import NotFoldableError, fold, foldability

    kept = {s.name: s.reason for s in foldability(make("gemma3")).kept}
    assert "QK-norm" in kept["model.layers.0.self_attn.q_norm"]
    assert "sandwich" in kept["model.layers.1.post_feedforward_layernorm"]
    assert "final-norm bias" in {s.name: s.reason for s in foldability(make("gpt2")).kept}["transformer.ln_f"]
    assert "has no bias" in foldability(make("gptj")).kept[0].reason
    with pytest.raises(NotFoldableError, match="no norm can be folded"):
        fold(make("stablelm_parallel"))  # its one LN feeds gate/up too, which have no bias and no flag for one
    r = fold(make("stablelm"))  # sequential: input LN folds into q/k/v with use_qkv_bias=True
    assert r.record["created_biases"] == ["use_qkv_bias"] and r.model.config.use_qkv_bias
    assert [s.role for s in r.map.folded] == ["pre_attention", "pre_attention"]
    bert = T.BertModel(T.BertConfig(num_hidden_layers=1, hidden_size=D, num_attention_heads=4, intermediate_size=64,
                                    vocab_size=V))
    with pytest.raises(NotFoldableError, match="post-LN"):
        fold(bert)


@pytest.mark.parametrize("name", FOLDABLE)
def test_stock_reload(name, tmp_path):
    """The written folder loads in the stock class with no missing/unexpected keys and the same logits."""
    from normscope.surgery import fold, load, write

    m = make(name)
    r = fold(m)
    write(r.model, tmp_path)
    stock, info = T.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = [ids(3)]
    # stock LayerNorm(1, 0) on a centred stream = weightless RMSNorm up to rounding: same float32 bound
    assert compare(r.model, stock.eval(), x)["max_abs_dlogits"] <= 1e-4
    assert compare(m, stock, x)["max_abs_dlogits"] <= 1e-4
    ours = load(tmp_path)
    assert compare(r.model, ours, x)["max_abs_dlogits"] <= 1e-5


@pytest.mark.real_weights
def test_smollm2_fold_cli(tmp_path, capsys):
    """`normscope fold smollm2 OUT`: a stock Llama with all norm weights 1, verified, same greedy text."""
    pytest.importorskip("gguf")
    from normscope.cli import main
    from normscope.models import load as load_model
    from normscope.surgery import verify

    try:
        lm = load_model("smollm2")
    except ValueError as e:
        pytest.skip(str(e))
    out = tmp_path / "smol"
    assert main(["fold", "smollm2", str(out), "--no-fp64", "--seq-len", "32", "--max-tokens", "64"]) == 0
    stock, info = T.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(stock).__name__ == "LlamaForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    norms = [m for m in stock.modules() if type(m).__name__ == "LlamaRMSNorm"]
    assert len(norms) == 61 and all(bool((m.weight == 1).all()) for m in norms)
    x = lm.tokenizer("The residual stream of a transformer", return_tensors="pt")["input_ids"]
    r = verify(lm.model, stock.eval(), x)
    print(f"smollm2 float32: {r.summary()}")
    # float32, d = 576, 30 blocks: rounding ~ u·√d·L ≈ 1e-7·24·30 ≈ 1e-4 relative worst case; seen ~3e-6
    assert r.max_abs_dlogits <= 1e-4 * r.max_abs_logit and r.kl_max < 1e-8 and r.first_divergence is None
    with torch.no_grad():
        a = lm.model.generate(x, max_new_tokens=20, do_sample=False)
        b = stock.generate(x, max_new_tokens=20, do_sample=False)
    assert torch.equal(a, b), (lm.tokenizer.decode(a[0]), lm.tokenizer.decode(b[0]))


def test_gemma_gain_formed_in_float64():
    """bfloat16 Gemma with small w: 1 + w is formed in float64 (in bfloat16 it would round to 1)."""
    from normscope.surgery import fold

    m = make("gemma").to(torch.bfloat16)
    norm = m.model.layers[0].input_layernorm
    with torch.no_grad():
        norm.weight.fill_(3e-3)  # bf16(1 + 3e-3) == 1 (half an ulp of 1 is 2^-8): the bf16 sum drops the gain
    assert torch.all((1 + norm.weight) == 1)
    r = fold(m)
    q0, q1 = m.model.layers[0].self_attn.q_proj.weight, r.model.model.layers[0].self_attn.q_proj.weight
    expect = (q0.double() * (1.0 + norm.weight.double())).to(torch.bfloat16)
    assert torch.equal(q1, expect) and not torch.equal(q1, q0)
    assert torch.all(r.model.model.layers[0].input_layernorm.weight == 0)
    assert all(p.dtype == torch.bfloat16 for p in r.model.parameters())
