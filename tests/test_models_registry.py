"""find_norms on tiny random-init models of every supported family (no weights downloaded).

Each site's recorded kind, eps, gain and bias are checked against the module's actual forward:
z must equal the formula of its kind on the hooked input x.
"""

import warnings

import pytest
import torch
import transformers as tf
from torch import nn

from normscope.models import NormSite, find_norms
from normscope.probe import norm_hooks

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=97)


def _tiny(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64)
        return tf.GPT2LMHeadModel(cfg)
    if family == "gpt_neo":
        cfg = tf.GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, vocab_size=97, max_position_embeddings=64,
                              attention_types=[[["global", "local"], 1]])
        return tf.GPTNeoForCausalLM(cfg)
    if family == "gptj":
        cfg = tf.GPTJConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64, rotary_dim=4)
        return tf.GPTJForCausalLM(cfg)
    if family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(**TINY, max_position_embeddings=64, use_parallel_residual=True)
        return tf.GPTNeoXForCausalLM(cfg)
    if family == "opt":
        cfg = tf.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, vocab_size=97,
                           max_position_embeddings=64, word_embed_proj_dim=32)
        return tf.OPTForCausalLM(cfg)
    if family == "opt_post":
        cfg = tf.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, vocab_size=97,
                           max_position_embeddings=64, word_embed_proj_dim=32, do_layer_norm_before=False)
        return tf.OPTForCausalLM(cfg)
    if family == "bert":
        return tf.BertModel(tf.BertConfig(**TINY, max_position_embeddings=64))
    if family == "roberta":
        return tf.RobertaModel(tf.RobertaConfig(**TINY, max_position_embeddings=66))
    if family in ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3"):
        cls = {
            "llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
            "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM), "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
            "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM), "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
            "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM), "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
        }[family]
        extra = {"head_dim": 8} if family in ("gemma", "gemma2", "gemma3", "qwen3") else {}
        cfg = cls[0](**TINY, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                     eos_token_id=2, **extra)
        model = cls[1](cfg)
        if family.startswith("gemma"):  # Gemma inits w = 0 (gain 1); randomise to test the 1 + w path
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "norm" in n:
                        p.normal_(0, 0.3)
        return model
    if family == "phi":
        cfg = tf.PhiConfig(**TINY, max_position_embeddings=64, qk_layernorm=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        return tf.PhiForCausalLM(cfg)
    raise KeyError(family)


FAMILIES = ["gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "opt_post", "bert", "roberta", "llama", "mistral",
            "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "phi"]

# expected (label, role) per block, and final-norm count
EXPECTED_BLOCK = {
    "gpt2": [("ln_1", "pre_attention"), ("ln_2", "pre_mlp")],
    "gpt_neo": [("ln_1", "pre_attention"), ("ln_2", "pre_mlp")],
    "gptj": [("ln_1", "pre_attention")],
    "gpt_neox": [("input_layernorm", "pre_attention"), ("post_attention_layernorm", "pre_mlp")],
    "opt": [("self_attn_layer_norm", "pre_attention"), ("final_layer_norm", "pre_mlp")],
    "opt_post": [("self_attn_layer_norm", "post_attention"), ("final_layer_norm", "post_mlp")],
    "bert": [("LayerNorm", "post_attention"), ("LayerNorm", "post_mlp")],
    "roberta": [("LayerNorm", "post_attention"), ("LayerNorm", "post_mlp")],
    "llama": [("input_layernorm", "pre_attention"), ("post_attention_layernorm", "pre_mlp")],
    "mistral": [("input_layernorm", "pre_attention"), ("post_attention_layernorm", "pre_mlp")],
    "qwen2": [("input_layernorm", "pre_attention"), ("post_attention_layernorm", "pre_mlp")],
    "qwen3": [("q_norm", "query"), ("k_norm", "key"), ("input_layernorm", "pre_attention"),
              ("post_attention_layernorm", "pre_mlp")],
    "phi3": [("input_layernorm", "pre_attention"), ("post_attention_layernorm", "pre_mlp")],
    "gemma": [("input_layernorm", "pre_attention"), ("post_attention_layernorm", "pre_mlp")],
    "gemma2": [("input_layernorm", "pre_attention"), ("post_attention_layernorm", "attention_output"),
               ("pre_feedforward_layernorm", "pre_mlp"), ("post_feedforward_layernorm", "mlp_output")],
    "gemma3": [("q_norm", "query"), ("k_norm", "key"), ("input_layernorm", "pre_attention"),
               ("post_attention_layernorm", "attention_output"), ("pre_feedforward_layernorm", "pre_mlp"),
               ("post_feedforward_layernorm", "mlp_output")],
    "phi": [("q_layernorm", "query"), ("k_layernorm", "key"), ("input_layernorm", "pre_attention")],
}
KIND = {"llama": "rmsnorm", "mistral": "rmsnorm", "qwen2": "rmsnorm", "qwen3": "rmsnorm", "phi3": "rmsnorm",
        "gemma": "rmsnorm_offset", "gemma2": "rmsnorm_offset", "gemma3": "rmsnorm_offset"}


def _formula(site: NormSite, x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    if site.kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    z = x / torch.sqrt((x * x).mean(-1, keepdim=True) + site.eps) * site.gain().double()
    b = site.bias()
    return z + b.double() if b is not None else z


@pytest.mark.parametrize("family", FAMILIES)
def test_find_norms_family(family):
    model = _tiny(family).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known families must not warn
        sites = find_norms(model)
    per_block = [(s.label, s.role) for s in sites if s.layer == 0]
    assert per_block == EXPECTED_BLOCK[family]
    assert all(s.kind == KIND.get(family, "layernorm") for s in sites)
    finals = [s for s in sites if s.role == "final"]
    assert len(finals) == (0 if family in ("bert", "roberta", "opt_post") else 1)
    if family in ("bert", "roberta"):
        assert [s.role for s in sites if s.layer is None] == ["embedding"]
    n_blocks = len({s.layer for s in sites if s.layer is not None})
    assert n_blocks == 2

    # every site fires, and its output equals the formula of its recorded kind/eps/gain/bias
    seen = {}

    def cb(site, x, z):
        seen[site.name] = float((z.double() - _formula(site, x)).abs().max() / (z.double().abs().max() + 1e-30))

    with torch.no_grad(), norm_hooks(model, sites, cb):
        model(input_ids=torch.randint(0, 97, (2, 7)))
    assert set(seen) == {s.name for s in sites}
    assert max(seen.values()) < 1e-5, seen


def test_gemma_gain_is_one_plus_w():
    model = _tiny("gemma3")
    site = next(s for s in find_norms(model) if s.role == "final")
    assert torch.equal(site.gain(), 1.0 + site.module.weight.detach())
    assert site.bias() is None


def test_per_head_norm_seq_dim():
    g3 = {s.label: s.seq_dim for s in find_norms(_tiny("gemma3")) if s.layer == 0}
    q3 = {s.label: s.seq_dim for s in find_norms(_tiny("qwen3")) if s.layer == 0}
    assert g3["q_norm"] == 2 and q3["q_norm"] == 1  # (b, h, s, hd) vs (b, s, h, hd)
    assert g3["input_layernorm"] == 1


def test_parallel_residual_recorded():
    sites = find_norms(_tiny("gpt_neox"))
    ln2 = [s for s in sites if s.label == "post_attention_layernorm"]
    assert all(s.reads_same_as == f"gpt_neox.layers.{s.layer}.input_layernorm" for s in ln2)
    gptj = find_norms(_tiny("gptj"))
    assert "parallel" in gptj[0].note


def test_parallel_residual_inputs_identical():
    model = _tiny("gpt_neox").eval()
    sites = find_norms(model)
    got = {}
    with torch.no_grad(), norm_hooks(model, sites, lambda s, x, z: got.__setitem__(s.name, x.clone())):
        model(input_ids=torch.randint(0, 97, (1, 5)))
    for s in sites:
        if s.reads_same_as:
            assert torch.equal(got[s.name], got[s.reads_same_as])


def test_unknown_architecture_falls_back_with_warning():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(8)
            self.lin = nn.Linear(8, 8)
            self.norm2 = nn.RMSNorm(8, eps=1e-6)

        def forward(self, x):
            return self.norm2(self.lin(self.norm1(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block(), Block()])
            self.final_norm = nn.LayerNorm(8, bias=False)

    with pytest.warns(UserWarning, match="not in normscope's registry"):
        sites = find_norms(Net())
    assert [(s.layer, s.kind) for s in sites] == [(0, "layernorm"), (0, "rmsnorm"), (1, "layernorm"),
                                                  (1, "rmsnorm"), (None, "layernorm")]
    assert sites[-1].role == "final" and sites[-1].bias() is None
    assert sites[1].eps == 1e-6


def test_custom_norm_class_classified_numerically():
    class MyRMSNorm(nn.Module):  # name says RMS, formula is 1 + w
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(d) * 0.1)
            self.eps = 1e-6

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)

    net = nn.Sequential(MyRMSNorm(16))
    with pytest.warns(UserWarning):
        (site,) = find_norms(net)
    assert site.kind == "rmsnorm_offset"


def test_no_norm_raises():
    with pytest.warns(UserWarning, match="registry"), pytest.raises(ValueError, match="no normalisation layer"):
        find_norms(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


def test_layernorm_without_affine():
    net = nn.Sequential(nn.LayerNorm(6, elementwise_affine=False))
    with pytest.warns(UserWarning):
        (site,) = find_norms(net)
    assert not site.affine and torch.equal(site.gain(), torch.ones(6)) and site.bias() is None


def test_one_table_for_probe_and_conversion():
    """Probe roles and the conversion read the same description: post-LN and convertible families agree."""
    from normscope.convert import families
    from normscope.models.architectures import ARCHITECTURES, ROLE_GROUPS, architecture

    assert set(families.POST_LN) == {t for t, a in ARCHITECTURES.items() if a.post_ln}
    assert set(families.SUPPORTED) == {t for t, a in ARCHITECTURES.items() if a.convertible}
    assert not set(families.POST_LN) & set(families.SUPPORTED)
    opt_post = architecture(_tiny("opt_post").config)
    assert opt_post.post_ln and {ROLE_GROUPS[n.role] for n in opt_post.norms} == {"post"}
    with pytest.raises(families.NotConvertibleError, match="post-LN"):
        families.plan(_tiny("opt_post"))
    with pytest.raises(families.NotConvertibleError, match="post-LN encoder"):
        families.plan(_tiny("bert"))
    with pytest.raises(families.NotConvertibleError, match="already uses RMSNorm"):
        families.plan(_tiny("llama"))


def test_falcon_variants_resolve_from_config():
    from normscope.models.architectures import architecture

    def norms(**kw):
        cfg = tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=97, **kw)
        a = architecture(cfg)
        return [(n.path, n.role) for n in a.norms], a.parallel

    assert norms(new_decoder_architecture=True) == ([("ln_attn", "pre_attention"), ("ln_mlp", "pre_mlp")], True)
    assert norms(parallel_attn=True) == ([("input_layernorm", "pre_attention")], True)
    assert norms(parallel_attn=False) == ([("input_layernorm", "pre_attention"),
                                           ("post_attention_layernorm", "pre_mlp")], False)


def test_norm_site_keywords_and_reference():
    ln = nn.LayerNorm(6, eps=1e-3)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    site = NormSite(name="ln", module=ln, layer=None, role="final", kind="layernorm", affine=True, eps=1e-3, d=6)
    x = torch.randn(4, 6, dtype=torch.float64)
    ref = torch.nn.functional.layer_norm(x, (6,), ln.weight.double(), ln.bias.double(), 1e-3)
    torch.testing.assert_close(site.reference(x), ref, rtol=0, atol=0)  # same float64 kernel, same inputs
    assert site.group == "final" and site.seq_dim == 1


def test_full_path_is_the_one_base_model_prefix_lookup():
    """The table's base-model-relative paths, as names in the LM wrapper, the bare base model and a non-HF module
    (surgery's foldability, streamed fold, verify and convert's plan all go through this one lookup)."""
    from normscope.models.registry import full_path

    lm = _tiny("gpt2")
    assert isinstance(lm, tf.GPT2LMHeadModel)
    assert full_path(lm, "h") == "transformer.h" and full_path(lm.transformer, "h") == "h"
    assert lm.get_submodule(full_path(lm, "h.1.ln_2")) is lm.transformer.h[1].ln_2
    assert full_path(nn.Sequential(nn.Linear(2, 2)), "0") == "0"
