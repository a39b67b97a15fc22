"""Norm roles inferred from a traced forward (normscope.models.roles) on tiny random-init models.

EXPECTED states, for every norm site of every model, the role a person reading the modeling code
would give it (block index written ``*``; StableLM's per-head norms ``norms.*``). The architecture
table must agree with the graph on every family it lists (a disagreement warns; warnings are
errors here). Models are built once per module (functools.cache).
"""

from __future__ import annotations

import functools
import re
import warnings

import pytest
import torch
import transformers as tf
from torch import nn

from normscope import probe
from normscope.models import find_norms
from normscope.models.architectures import ARCHITECTURES, architecture
from normscope.models.inputs import audio_batches, example_inputs, image_batches
from normscope.probe import norm_hooks

tf.logging.set_verbosity_error()
T = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=97)
R = dict(num_key_value_heads=2, max_position_embeddings=64)
S = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4)


def _clm(cfg):
    return tf.AutoModelForCausalLM.from_config(cfg)


_FACTORIES = {
    "gpt2": lambda: _clm(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64)),
    "gpt_neox": lambda: _clm(tf.GPTNeoXConfig(**T, max_position_embeddings=64, use_parallel_residual=False)),
    "gpt_neox_par": lambda: _clm(tf.GPTNeoXConfig(**T, max_position_embeddings=64, use_parallel_residual=True)),
    "gptj": lambda: _clm(tf.GPTJConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64, rotary_dim=4)),
    "opt": lambda: _clm(tf.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                     vocab_size=97, max_position_embeddings=64, word_embed_proj_dim=32)),
    "opt_post": lambda: _clm(tf.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                          vocab_size=97, max_position_embeddings=64, word_embed_proj_dim=32,
                                          do_layer_norm_before=False)),
    "bloom": lambda: _clm(tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=97)),
    "falcon_new": lambda: _clm(tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                                               vocab_size=97, new_decoder_architecture=True)),
    "falcon_par": lambda: _clm(tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=97,
                                               parallel_attn=True)),
    "falcon_seq": lambda: _clm(tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=97,
                                               parallel_attn=False)),
    "stablelm": lambda: _clm(tf.StableLmConfig(**T, num_key_value_heads=2, max_position_embeddings=64, qk_layernorm=True,
                                               use_parallel_residual=True)),
    "gpt_bigcode": lambda: _clm(tf.GPTBigCodeConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64)),
    "mpt": lambda: _clm(tf.MptConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=97, max_seq_len=64)),
    "phi": lambda: _clm(tf.PhiConfig(**T, max_position_embeddings=64, qk_layernorm=True, **S)),
    "phi3": lambda: _clm(tf.Phi3Config(**T, **R, **S)),
    "llama": lambda: _clm(tf.LlamaConfig(**T, **R, **S)),
    "mistral": lambda: _clm(tf.MistralConfig(**T, **R, **S)),
    "qwen2": lambda: _clm(tf.Qwen2Config(**T, **R, **S)),
    "qwen3": lambda: _clm(tf.Qwen3Config(**T, **R, **S, head_dim=8)),
    "gemma": lambda: _clm(tf.GemmaConfig(**T, **R, **S, head_dim=8)),
    "gemma2": lambda: _clm(tf.Gemma2Config(**T, **R, **S, head_dim=8)),
    "gemma3": lambda: _clm(tf.Gemma3TextConfig(**T, **R, **S, head_dim=8)),
    "olmo": lambda: _clm(tf.OlmoConfig(**T, **R, **S)),
    "olmo2": lambda: _clm(tf.Olmo2Config(**T, **R, **S)),
    "mamba": lambda: _clm(tf.MambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=97, state_size=4, conv_kernel=3)),
    "bert": lambda: tf.BertModel(tf.BertConfig(**T, max_position_embeddings=64)),
    "roberta": lambda: tf.RobertaModel(tf.RobertaConfig(**T, max_position_embeddings=66)),
    "t5": lambda: tf.T5ForConditionalGeneration(tf.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                                            vocab_size=97, decoder_start_token_id=0)),
    "vit": lambda: tf.ViTModel(tf.ViTConfig(**_VIT)),
    "clip": lambda: tf.CLIPModel(tf.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=97,
                         max_position_embeddings=64), vision_config=_VIT, projection_dim=16)),
    "whisper": lambda: tf.WhisperForConditionalGeneration(tf.WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=97, num_mel_bins=16, max_source_positions=16,
        max_target_positions=32, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "torch_pre": lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                                                          norm_first=True), 2, enable_nested_tensor=False),
    "torch_post": lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, norm_first=False), 2,
                                                enable_nested_tensor=False),
}

PRE_POST = {"*.input_layernorm": "pre_attention", "*.post_attention_layernorm": "pre_mlp"}
EXPECTED = {
    "gpt2": {"transformer.h.*.ln_1": "pre_attention", "transformer.h.*.ln_2": "pre_mlp", "transformer.ln_f": "final"},
    "gpt_neox": {"gpt_neox.layers.*.input_layernorm": "pre_attention", "gpt_neox.layers.*.post_attention_layernorm": "pre_mlp",
                 "gpt_neox.final_layer_norm": "final"},
    "gpt_neox_par": {"gpt_neox.layers.*.input_layernorm": "pre_attention",
                     "gpt_neox.layers.*.post_attention_layernorm": "pre_mlp", "gpt_neox.final_layer_norm": "final"},
    "gptj": {"transformer.h.*.ln_1": "pre_attention", "transformer.ln_f": "final"},
    "opt": {"model.decoder.final_layer_norm": "final", "model.decoder.layers.*.self_attn_layer_norm": "pre_attention",
            "model.decoder.layers.*.final_layer_norm": "pre_mlp"},
    "opt_post": {"model.decoder.layers.*.self_attn_layer_norm": "post_attention",
                 "model.decoder.layers.*.final_layer_norm": "post_mlp"},
    "bloom": {"transformer.word_embeddings_layernorm": "embedding", "transformer.h.*.input_layernorm": "pre_attention",
              "transformer.h.*.post_attention_layernorm": "pre_mlp", "transformer.ln_f": "final"},
    "falcon_new": {"transformer.h.*.ln_attn": "pre_attention", "transformer.h.*.ln_mlp": "pre_mlp", "transformer.ln_f": "final"},
    "falcon_par": {"transformer.h.*.input_layernorm": "pre_attention", "transformer.ln_f": "final"},
    "falcon_seq": {"transformer.h.*.post_attention_layernorm": "pre_mlp", "transformer.h.*.input_layernorm": "pre_attention",
                   "transformer.ln_f": "final"},
    "stablelm": {"model.layers.*.self_attn.q_layernorm.norms.*": "query", "model.layers.*.self_attn.k_layernorm.norms.*": "key",
                 "model.layers.*.input_layernorm": "pre_attention", "model.norm": "final"},
    "gpt_bigcode": {"transformer.h.*.ln_1": "pre_attention", "transformer.h.*.ln_2": "pre_mlp", "transformer.ln_f": "final"},
    "mpt": {"transformer.blocks.*.norm_1": "pre_attention", "transformer.blocks.*.norm_2": "pre_mlp",
            "transformer.norm_f": "final"},
    "phi": {"model.layers.*.self_attn.q_layernorm": "query", "model.layers.*.self_attn.k_layernorm": "key",
            "model.layers.*.input_layernorm": "pre_attention", "model.final_layernorm": "final"},
    **{k: {"model.layers.*.input_layernorm": "pre_attention", "model.layers.*.post_attention_layernorm": "pre_mlp",
           "model.norm": "final"} for k in ("phi3", "llama", "mistral", "qwen2", "gemma", "olmo")},
    "qwen3": {"model.layers.*.self_attn.q_norm": "query", "model.layers.*.self_attn.k_norm": "key",
              "model.layers.*.input_layernorm": "pre_attention", "model.layers.*.post_attention_layernorm": "pre_mlp",
              "model.norm": "final"},
    "gemma2": {"model.layers.*.input_layernorm": "pre_attention", "model.layers.*.post_attention_layernorm": "attention_output",
               "model.layers.*.pre_feedforward_layernorm": "pre_mlp",
               "model.layers.*.post_feedforward_layernorm": "mlp_output", "model.norm": "final"},
    "gemma3": {"model.layers.*.self_attn.q_norm": "query", "model.layers.*.self_attn.k_norm": "key",
               "model.layers.*.input_layernorm": "pre_attention", "model.layers.*.post_attention_layernorm": "attention_output",
               "model.layers.*.pre_feedforward_layernorm": "pre_mlp",
               "model.layers.*.post_feedforward_layernorm": "mlp_output", "model.norm": "final"},
    "olmo2": {"model.layers.*.self_attn.q_norm": "query", "model.layers.*.self_attn.k_norm": "key",
              "model.layers.*.post_attention_layernorm": "attention_output",
              "model.layers.*.post_feedforward_layernorm": "mlp_output", "model.norm": "final"},
    "mamba": {"backbone.layers.*.norm": "pre_attention", "backbone.norm_f": "final"},
    **{k: {"embeddings.LayerNorm": "embedding", "encoder.layer.*.attention.output.LayerNorm": "post_attention",
           "encoder.layer.*.output.LayerNorm": "post_mlp"} for k in ("bert", "roberta")},
    "t5": {"encoder.block.*.layer.0.layer_norm": "pre_attention", "encoder.block.*.layer.1.layer_norm": "pre_mlp",
           "encoder.final_layer_norm": "final", "decoder.block.*.layer.0.layer_norm": "pre_attention",
           "decoder.block.*.layer.1.layer_norm": "pre_cross_attention", "decoder.block.*.layer.2.layer_norm": "pre_mlp",
           "decoder.final_layer_norm": "final"},
    "vit": {"layers.*.layernorm_before": "pre_attention", "layers.*.layernorm_after": "pre_mlp", "layernorm": "final"},
    "clip": {"text_model.encoder.layers.*.layer_norm1": "pre_attention", "text_model.encoder.layers.*.layer_norm2": "pre_mlp",
             "text_model.final_layer_norm": "final", "vision_model.pre_layrnorm": "embedding",
             "vision_model.encoder.layers.*.layer_norm1": "pre_attention",
             "vision_model.encoder.layers.*.layer_norm2": "pre_mlp", "vision_model.post_layernorm": "final"},
    "whisper": {"model.encoder.layers.*.self_attn_layer_norm": "pre_attention", "model.encoder.layers.*.final_layer_norm": "pre_mlp",
                "model.encoder.layer_norm": "final", "model.decoder.layers.*.self_attn_layer_norm": "pre_attention",
                "model.decoder.layers.*.encoder_attn_layer_norm": "pre_cross_attention",
                "model.decoder.layers.*.final_layer_norm": "pre_mlp", "model.decoder.layer_norm": "final"},
    "torch_pre": {"layers.*.norm1": "pre_attention", "layers.*.norm2": "pre_mlp"},
    "torch_post": {"layers.*.norm1": "post_attention", "layers.*.norm2": "post_mlp"},
}
del PRE_POST


@functools.cache
def built(key: str):
    """(model, sites) built once; known families must not warn, unknown ones only about the registry."""
    torch.manual_seed(0)
    model = _FACTORIES[key]().eval()
    if key.startswith("gemma"):  # Gemma inits w = 0 (gain 1); randomise to tell 1 + w from w
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.normal_(0, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if architecture(model) is None:
            warnings.filterwarnings("ignore", message=".*not in normscope's registry")
        sites = find_norms(model)
    return model, sites


_TRACE_ONLY_NOTE = "role of the same norm in the other blocks"


@pytest.mark.parametrize("key", list(_FACTORIES))
def test_table_fast_path_agrees_with_the_full_trace(key):
    """find_norms' fast path (table + a forward hooked on the norms only, stopped after block 0)
    gives the full trace's sites: same roles, kinds, eps, token axes, parallel links, layers,
    stacks and notes (the trace alone can tell that a post-LN model's last norm is ambiguous).
    Families in the table must not run the full trace at all."""
    from unittest import mock

    model, fast = built(key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*not in normscope's registry")
        traced = find_norms(model, trace=True)
    if architecture(model) is not None:
        with mock.patch("normscope.models.roles.infer_roles", side_effect=AssertionError("full trace ran")):
            find_norms(model)

    def row(s, trace):
        note = s.note if not (trace and s.note.startswith(_TRACE_ONLY_NOTE)) else None
        return s.name, s.role, s.kind, s.eps, s.seq_dim, s.reads_same_as, s.layer, s.stack, s.d, s.affine, note

    fast_rows = [row(s, False) for s in fast]
    trace_rows = [row(s, True) for s in traced]
    assert [r[:-1] for r in fast_rows] == [r[:-1] for r in trace_rows]
    assert [f[-1] for f, t in zip(fast_rows, trace_rows) if t[-1] is not None] == [t[-1] for t in trace_rows
                                                                                      if t[-1] is not None]


def _pattern(name: str) -> str:
    return re.sub(r"\.(\d+)\.", ".*.", re.sub(r"\.norms\.\d+$", ".norms.*", name), count=1)


@pytest.mark.parametrize("key", list(_FACTORIES))
def test_roles_as_a_person_reads_the_code(key):
    _, sites = built(key)
    got = {}
    for s in sites:
        got.setdefault(_pattern(s.name), set()).add(s.role)
    assert got == {k: {v} for k, v in EXPECTED[key].items()}


@pytest.mark.parametrize("key", list(_FACTORIES))
def test_reference_forward_matches_every_site(key):
    """site.reference(x) (float64, from the recorded kind/eps/gain/bias) equals the module's output z.

    Tolerance: the module computes in float32 (u = 6e-8) with reductions over d ≤ 64 elements, so
    |z − ref| ≤ ~d·u·max|z| ≈ 4e-6·max|z|; we allow 1e-5·max|z|.
    """
    model, sites = built(key)
    err = {}

    def cb(site, x, z):
        err[site.name] = float((z.double() - site.reference(x)).abs().max() / z.double().abs().max().clamp_min(1e-30))

    with torch.no_grad(), norm_hooks(model, sites, cb):
        ex = example_inputs(model)
        model(**ex) if isinstance(ex, dict) else model(ex)
    assert set(err) == {s.name for s in sites}
    assert max(err.values()) < 1e-5, err


def test_readers_agree_with_the_architecture_table():
    """The linear maps reading each pre-norm's output, found in the graph, are the table's ``readers``."""
    from normscope.models.roles import infer_roles

    checked = 0
    for key in ("gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon_new", "falcon_par", "falcon_seq", "stablelm",
                "gpt_bigcode", "mpt", "phi", "phi3", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
                "gemma3", "olmo", "olmo2", "mamba"):
        model, sites = built(key)
        arch = architecture(model)
        traced = infer_roles(model, [s.module for s in sites])
        base = next(n for n, m in model.named_modules() if m is model.base_model)
        for s in sites:
            if s.layer is None or s.group not in ("pre", "sandwich"):
                continue
            block = f"{base}.{arch.layers}.{s.layer}."
            spec = next(n for n in arch.norms if block + n.path == s.name)
            rel = tuple(r.removeprefix(block) for r in traced[s.module].readers)
            assert sorted(rel) == sorted(spec.readers), (key, s.name, rel, spec.readers)
            checked += 1
        final = next(s for s in sites if s.role == "final")
        assert traced[final.module].readers == arch.final_readers, key
    assert checked > 40


def test_notes_parallel_and_qk_width():
    by = {k: {s.name.split(".", 1)[1] if k == "falcon_new" else s.name: s for s in built(k)[1]}
          for k in ("falcon_new", "falcon_par", "gptj", "phi", "stablelm", "gpt_neox_par", "olmo2", "qwen3")}
    assert by["falcon_new"]["h.0.ln_mlp"].reads_same_as == "transformer.h.0.ln_attn"
    for k, name in (("falcon_par", "transformer.h.0.input_layernorm"), ("gptj", "transformer.h.0.ln_1"),
                    ("phi", "model.layers.0.input_layernorm"), ("stablelm", "model.layers.0.input_layernorm")):
        assert "parallel block" in by[k][name].note, k
    assert "parallel block" not in by["gpt_neox_par"]["gpt_neox.layers.0.input_layernorm"].note
    assert by["gpt_neox_par"]["gpt_neox.layers.0.post_attention_layernorm"].reads_same_as.endswith("0.input_layernorm")
    assert by["olmo2"]["model.layers.0.self_attn.q_norm"].note.startswith("full-width")
    assert by["qwen3"]["model.layers.0.self_attn.k_norm"].note.startswith("per-head")
    assert not any(s.reads_same_as for s in built("falcon_seq")[1])


def test_eps_seq_dim_and_stacks():
    olmo = built("olmo")[1]
    assert all(s.eps == 1e-5 and not hasattr(s.module, "eps") for s in olmo)  # read from its F.layer_norm call
    seq = {k: {_pattern(s.name): s.seq_dim for s in built(k)[1]} for k in ("stablelm", "gemma3", "qwen3", "opt", "clip",
                                                                              "torch_post")}
    assert seq["stablelm"]["model.layers.*.self_attn.q_layernorm.norms.*"] == 2  # (b, 1, s, head_dim) per head
    assert seq["gemma3"]["model.layers.*.self_attn.q_norm"] == 2 and seq["qwen3"]["model.layers.*.self_attn.q_norm"] == 1
    assert seq["opt"]["model.decoder.layers.*.final_layer_norm"] is None  # (tokens, d): flattened batch × seq
    assert seq["clip"]["vision_model.post_layernorm"] is None  # pooled (batch, d)
    assert set(seq["torch_post"].values()) == {0}  # batch_first=False: (seq, batch, d)
    t5 = {(s.stack, s.layer, s.role) for s in built("t5")[1]}
    assert ("encoder", 1, "pre_mlp") in t5 and ("decoder", 1, "pre_cross_attention") in t5 and ("decoder", None, "final") in t5
    assert {s.stack for s in built("whisper")[1]} == {"encoder", "decoder"}
    assert {s.stack for s in built("clip")[1]} == {"text_model", "vision_model"}


def test_table_covers_every_convert_and_probe_family():
    for t in ("gpt2", "gpt_neo", "gpt_bigcode", "gpt_neox", "gptj", "codegen", "opt", "phi", "bloom", "falcon", "stablelm",
              "llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo",
              "olmo2", "mpt", "mamba", "bert", "roberta"):
        assert t in ARCHITECTURES, t


# --------------------------------------------------------------------------- probe.run on any input


def _layers(stats):
    return {la["name"]: la for la in stats["models"][0]["layers"]}


def test_skip_first_counts_per_head_and_flattened_tokens():
    ids = torch.randint(3, 97, (2, 9))
    for key, name in (("stablelm", "model.layers.0.self_attn.q_layernorm.norms.0"),
                      ("opt", "model.decoder.layers.0.final_layer_norm")):
        model, sites = built(key)
        full = probe.run(model, [ids], progress=False, sites=sites)
        skip = probe.run(model, [ids], progress=False, sites=sites, skip_first=True)
        assert _layers(full)[name]["count"] == 2 * 9 and _layers(skip)[name]["count"] == 2 * 8, key
        assert full["models"][0]["tokens"] == 18 and skip["models"][0]["tokens"] == 16


def test_run_on_images_audio_dicts_callables_and_plain_modules():
    vit, vsites = built("vit")
    st = probe.run(vit, image_batches(vit.config, n_images=6, batch_size=3), progress=False, sites=vsites)
    assert st["models"][0]["tokens"] == 6 * 17  # 16 patches + [CLS]
    whisper, wsites = built("whisper")
    st = probe.run(whisper, audio_batches(whisper.config, n_clips=2, batch_size=2), progress=False, sites=wsites)
    layers = _layers(st)
    assert layers["model.encoder.layers.1.final_layer_norm"]["count"] == 2 * 16
    assert layers["model.decoder.layers.1.final_layer_norm"]["count"] == 2 * 7
    assert layers["model.decoder.layers.1.final_layer_norm"]["stack"] == "decoder"
    t5, _ = built("t5")
    batch = {"input_ids": torch.randint(3, 97, (2, 5)), "decoder_input_ids": torch.randint(3, 97, (2, 4))}
    with pytest.warns(UserWarning, match="registry"):  # T5 has no table entry: roles come from the graph alone
        a = probe.run(t5, [batch], progress=False)
    b = probe.run(t5, [lambda m: m(**batch)], progress=False, sites=built("t5")[1])
    assert a["models"][0]["tokens"] == 10 and _layers(a).keys() == _layers(b).keys()
    assert _layers(a)["decoder.final_layer_norm"]["count"] == 8
    for key in ("torch_pre", "torch_post"):
        net = _FACTORIES[key]().eval()
        x = torch.randn(3, 5, 32) if key == "torch_pre" else torch.randn(5, 3, 32)
        with pytest.warns(UserWarning, match="registry"):
            st = probe.run(net, [x], progress=False)
        roles = {la["role"] for la in st["models"][0]["layers"]}
        assert roles == ({"pre_attention", "pre_mlp"} if key == "torch_pre" else {"post_attention", "post_mlp"})
        assert all(la["count"] == 15 for la in st["models"][0]["layers"])


@pytest.mark.parametrize("key", ["mpt", "olmo2", "falcon_new"])
def test_saved_folder_loads_and_probes(key, tmp_path):
    """A save_pretrained folder goes through normscope.models.load and probe.run with the same roles."""
    from normscope.models import load, text
    from normscope.models.tiny import byte_tokenizer

    model, sites = built(key)
    model.resize_token_embeddings(257)
    model.save_pretrained(tmp_path)
    byte_tokenizer(64).save_pretrained(tmp_path)
    lm = load(str(tmp_path))
    st = probe.run(lm, text.token_batches(lm.tokenizer, "hello norm world " * 20, seq_len=16, max_tokens=64),
                   progress=False)
    assert {la["name"]: la["role"] for la in st["models"][0]["layers"]} == {s.name: s.role for s in sites}
    assert st["models"][0]["tokens"] == 64


def test_converted_folder_reports_rmsnorm(tmp_path):
    """A `normscope convert` output folder loads with normscope's RMSNorm: its stream norms are rmsnorm sites."""
    import json

    from normscope.convert import to_rmsnorm
    from normscope.convert.saving import write
    from normscope.models import load
    from normscope.models.tiny import byte_tokenizer

    torch.manual_seed(0)
    m = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=257)).eval()
    write(to_rmsnorm(m), tmp_path, tokenizer=byte_tokenizer(64))
    (tmp_path / "manifest.json").write_text(json.dumps({"tool": "normscope convert"}))
    sites = find_norms(load(str(tmp_path)).model)
    assert [s.kind for s in sites] == ["rmsnorm"] * 5 and all(s.bias() is not None for s in sites)
    assert [s.role for s in sites] == ["pre_attention", "pre_mlp"] * 2 + ["final"]


def test_probe_batches_for_every_modality():
    """probe_batches gives inputs probe.run accepts for text, encoder-decoder text, image, image+text
    and audio models, with token counts that follow from the sizes, and names the input."""
    from types import SimpleNamespace

    from normscope.models.inputs import probe_batches
    from normscope.models.tiny import byte_tokenizer

    tok, texts = byte_tokenizer(64), ["hello norm world " * 40]
    torch.manual_seed(0)
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=300, n_positions=64)).eval()
    t5 = tf.T5ForConditionalGeneration(tf.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                                   vocab_size=300, decoder_start_token_id=0)).eval()
    clip = tf.CLIPModel(tf.CLIPConfig(text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=64, vocab_size=300, max_position_embeddings=64),
                                      vision_config=_VIT, projection_dim=16)).eval()
    cases = {"gpt2": gpt2, "t5": t5, "clip": clip, "vit": built("vit")[0], "whisper": built("whisper")[0]}
    got = {}
    for key, model in cases.items():
        inp = probe_batches(SimpleNamespace(model=model, tokenizer=tok), texts, seq_len=16, max_tokens=64, batch_size=2)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not in normscope's registry")
            st = probe.run(model, inp.batches, progress=False)
        got[key] = (inp.description, st["models"][0]["tokens"], inp.total, _layers(st))
    assert got["gpt2"][:3] == ("CPython pydoc_data.topics prose", 64, 2)
    assert got["t5"][1] == 64 and "shifted right" in got["t5"][0]
    assert got["t5"][3]["decoder.final_layer_norm"]["count"] == 64  # decoder windows as long as the encoder's
    assert got["vit"][0].startswith("scikit-learn digits, 8×8 upsampled to 16×16") and got["vit"][1] == 4 * 17
    assert got["clip"][0].startswith("scikit-learn digits") and "pydoc" in got["clip"][0]
    assert got["clip"][3]["vision_model.post_layernorm"]["count"] > 0 and got["clip"][3]["text_model.final_layer_norm"]["count"] > 0
    assert got["whisper"][0].startswith("synthetic tones + noise, 16 kHz") and got["whisper"][1] == 4 * 16
    with pytest.raises(ValueError, match="no tokenizer"):
        probe_batches(gpt2, texts, seq_len=16, max_tokens=64)


def test_names_off_the_table_take_the_full_trace():
    """A known family whose norm modules differ from the table's (an extra norm) is traced, not table-read."""
    from unittest import mock

    from normscope.models import roles

    model = _FACTORIES["llama"]().eval()
    model.model.layers[0].extra_norm = nn.LayerNorm(32)  # never called: the trace marks it unused
    with mock.patch("normscope.models.roles.infer_roles", wraps=roles.infer_roles) as spy:
        sites = find_norms(model)
    assert spy.call_count == 1
    by = {s.name: s for s in sites}
    assert by["model.layers.0.extra_norm"].role == "other" and by["model.layers.1.input_layernorm"].role == "pre_attention"
