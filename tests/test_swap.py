"""The naive swap test (normscope.convert.swap_test) and its report section."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import transformers as T
from torch import nn

from normscope.convert import swap_markdown, swap_test, swap_test_section, swapped, to_rmsnorm
from normscope.nn import RMSNorm

from conftest import make_batches, make_bert, make_gpt2, make_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T.logging.set_verbosity_error()

V, D = 97, 32


def batches(n: int = 2, seq: int = 16) -> list[torch.Tensor]:
    return make_batches(n, 2, seq, V, low=5)


def gpt2(offset: float = 0.5) -> nn.Module:
    m = make_gpt2(d=D, vocab=V, bos_token_id=0, eos_token_id=0)
    with torch.no_grad():
        m.transformer.wte.weight.add_(offset)  # residual stream with a large mean: naive swap must hurt
    return m


def state(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_lm_swap_rows_and_restoration():
    m = gpt2()
    before, types = state(m), {n: type(x) for n, x in m.named_modules()}
    x = batches()
    r = swap_test(m, x, progress=False)
    # the model is restored exactly
    assert types == {n: type(x) for n, x in m.named_modules()}
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert r["loss_kind"] == "lm" and r["norm_kinds"] == ["layernorm"]
    variants = [row["variant"] for row in r["rows"]]
    assert variants == ["transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.h.1.ln_1", "transformer.h.1.ln_2",
                        "transformer.ln_f", "all", "exact (centred writers)"]
    assert r["tokens"] == sum(b.numel() for b in x)
    base = r["baseline"]
    assert base["ppl"] == pytest.approx(torch.tensor(base["loss"]).exp().item())
    rows = {row["variant"]: row for row in r["rows"]}
    # the exact conversion changes nothing; the naive all-swap of an offset stream does
    assert abs(rows["exact (centred writers)"]["delta_loss"]) < 1e-5
    assert abs(rows["all"]["delta_loss"]) > 1e-3
    # angles from the probe sit beside each single-site row; an offset stream is far from 90°
    assert rows["transformer.h.0.ln_1"]["angle_in_mean"] < 60


def test_all_row_matches_manual_swap():
    m = gpt2()
    x = batches()
    r = swap_test(m, x, progress=False, angles=False, exact=False)
    manual = copy.deepcopy(m)
    from normscope.convert.exact import rmsnorm_like

    for n in ["transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.h.1.ln_1", "transformer.h.1.ln_2",
              "transformer.ln_f"]:
        parent, _, leaf = n.rpartition(".")
        setattr(manual.get_submodule(parent), leaf, rmsnorm_like(manual.get_submodule(n)))
    tot = cnt = 0.0
    with torch.no_grad():
        for b in x:
            logits = manual(input_ids=b).logits[:, :-1]
            tot += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(), b[:, 1:].flatten(), reduction="sum"))
            cnt += logits.shape[0] * logits.shape[1]
    all_row = next(row for row in r["rows"] if row["variant"] == "all")
    assert all_row["loss"] == pytest.approx(tot / cnt, rel=1e-6)


def test_centred_stream_makes_naive_swap_exact():
    """An LN model whose writers are centred has inputs at 90° to 𝟙: the naive swap changes nothing."""
    c = to_rmsnorm(gpt2())
    for n in c.config.normscope_conversion["norms"]:  # back to torch LayerNorm, same parameters
        rms = c.get_submodule(n)
        ln = nn.LayerNorm(D, eps=rms.eps)
        with torch.no_grad():
            ln.weight.copy_(rms.weight)
            ln.bias.copy_(rms.bias)
        parent, _, leaf = n.rpartition(".")
        setattr(c.get_submodule(parent), leaf, ln)
    r = swap_test(c, batches(), progress=False, exact=False)
    for row in r["rows"]:
        assert abs(row["delta_loss"]) < 1e-5, row
        if "angle_in_std" in row:
            assert row["angle_in_mean"] == pytest.approx(90.0, abs=1e-3)


def test_rmsnorm_model_swaps_to_layernorm():
    m = make_llama(d=D, vocab=V)
    with torch.no_grad():
        m.model.embed_tokens.weight.add_(1.0)
    seen = []
    from normscope.models import find_norms

    sites = find_norms(m)
    with swapped(m, sites[:1]):
        seen.append(type(m.get_submodule(sites[0].name)))
    assert seen == [nn.LayerNorm]
    assert type(m.get_submodule(sites[0].name)).__name__ == "LlamaRMSNorm"
    r = swap_test(m, batches(), progress=False, per="layer")
    assert r["norm_kinds"] == ["rmsnorm"] and "RMSNorm → LayerNorm" in r["swap"]
    assert [row["variant"] for row in r["rows"]] == ["layer 0", "layer 1", "model.norm", "all"]
    assert not any(row["variant"].startswith("exact") for row in r["rows"])
    assert abs(r["rows"][-1]["delta_loss"]) > 1e-4


def test_encoder_embedding_and_mlm_losses():
    enc = make_bert(d=D, vocab=V)
    r = swap_test(enc, batches(), progress=False)
    assert r["loss_kind"] == "embedding"
    assert r["baseline"]["loss"] == 0.0 and r["baseline"]["cos_mean"] == pytest.approx(1.0)
    assert all(-1 <= row["cos_min"] <= row["cos_mean"] <= 1 + 1e-12 for row in r["rows"])
    assert len(r["rows"]) == 5 + 1  # embeddings.LayerNorm + 2 per layer, then all

    mlm = T.BertForMaskedLM(enc.config).eval()  # continues the RNG stream after enc

    class Tok:
        mask_token_id = 4
        all_special_ids = [0, 1, 2, 3, 4]

    r = swap_test(mlm, batches(), progress=False, tokenizer=Tok())
    assert r["loss_kind"] == "mlm" and r["baseline"]["loss"] > 0
    with pytest.raises(ValueError, match="mask token"):
        swap_test(mlm, batches(), progress=False, angles=False)


def test_markdown_and_report_section():
    r = swap_test(gpt2(), batches(1), progress=False)
    md = swap_markdown(r)
    assert md.count("\n|") == len(r["rows"]) + 2  # header, rule, rows
    title, body = swap_test_section(r)
    assert "gpt2" in title and "without centring" in body and md in body


def test_bad_input():
    with pytest.raises(ValueError):
        swap_test(gpt2(), [], progress=False)
    with pytest.raises(ValueError):
        swap_test(gpt2(), [torch.zeros(3, dtype=torch.long)], progress=False)
    with pytest.raises(ValueError):
        swap_test(gpt2(), batches(), loss="nope", progress=False)
    with pytest.raises(ValueError):
        swap_test(gpt2(), batches(), per="nope", progress=False, angles=False)


def test_replacement_types():
    from normscope.convert.swap import _replacement
    from normscope.models import find_norms

    site = find_norms(gpt2())[0]
    rep = _replacement(site)
    assert isinstance(rep, RMSNorm) and rep.bias is not None and rep.eps == site.eps


def test_per_role_groups_and_all_row():
    """per="role": one variant per role group (pre-sublayer, final for GPT-2), then all; "all" as per="all"."""
    m, x = gpt2(), batches(1)
    r = swap_test(m, x, progress=False, per="role", angles=False, exact=False)
    assert [row["variant"] for row in r["rows"]] == ["pre-sublayer norms", "final norm", "all"]
    pre = r["rows"][0]
    assert pre["sites"] == ["transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.h.1.ln_1",
                            "transformer.h.1.ln_2"] and pre["role"] == "pre_attention+pre_mlp"
    r_all = swap_test(m, x, progress=False, per="all", angles=False, exact=False)
    assert r["rows"][-1]["loss"] == r_all["rows"][-1]["loss"]
    assert "role group" in swap_test_section(r)[1]


def test_per_role_sandwich_and_post_ln_groups():
    from normscope.convert.swap import _groups
    from normscope.models import find_norms

    torch.manual_seed(0)
    g3 = T.Gemma2ForCausalLM(T.Gemma2Config(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                            num_key_value_heads=2, head_dim=8, intermediate_size=64,
                                            vocab_size=V)).eval()
    sites = [s for s in find_norms(g3) if s.role != "other"]
    assert [label for label, _ in _groups(sites, "role")] == ["pre-sublayer norms", "sandwich norms", "final norm"]
    bert = T.BertModel(T.BertConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                    intermediate_size=64, vocab_size=V)).eval()
    labels = [label for label, _ in _groups([s for s in find_norms(bert) if s.role != "other"], "role")]
    assert labels == ["embedding norm", "post-LN norms"]
