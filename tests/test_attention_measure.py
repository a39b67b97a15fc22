"""normscope.attention.measure on tiny random-init GPT-2, Llama (GQA) and BERT models."""

import numpy as np
import pytest
import torch

from normscope.attention import attention_layers, attention_section, measure_attention, unselectable
from normscope.models import find_norms

from conftest import make_bert, make_gpt2, make_llama


def _gpt2():
    return make_gpt2(d=16, vocab=97, bos_token_id=0, eos_token_id=0)


def _llama():
    return make_llama(d=16, kv_heads=2, vocab=97, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _bert():
    return make_bert(d=16, vocab=97)


def _randomise_norm_affine(model):
    """Random-init norms are γ = 1, β = 0; perturb them so the affine handling matters."""
    g = torch.Generator().manual_seed(1)
    for s in find_norms(model):
        with torch.no_grad():
            s.module.weight.copy_(1 + 0.3 * torch.randn(s.module.weight.shape, generator=g))
            if getattr(s.module, "bias", None) is not None:
                s.module.bias.copy_(0.2 * torch.randn(s.module.bias.shape, generator=g))


@pytest.mark.parametrize("make", [_gpt2, _llama, _bert])


def test_qk_extraction_matches_module(make):
    model = make()
    layers = attention_layers(model)
    assert [al.layer for al in layers] == [0, 1]
    y = torch.randn(5, 16, dtype=torch.float64)
    for al in layers:
        attn = dict(model.named_modules())[al.module_name]
        if hasattr(attn, "c_attn"):
            qkv = attn.c_attn.double()(y)
            q_ref, k_ref = qkv[:, :16], qkv[:, 16:32]
            attn.c_attn.float()
            bk = attn.c_attn.bias.detach().double()[16:32]
        else:
            lq, lk = (attn.q_proj, attn.k_proj) if hasattr(attn, "q_proj") else (attn.query, attn.key)
            q_ref = y @ lq.weight.detach().double().T + (lq.bias.detach().double() if lq.bias is not None else 0)
            k_ref = y @ lk.weight.detach().double().T
            bk = lk.bias.detach().double() if lk.bias is not None else torch.zeros(lk.weight.shape[0], dtype=torch.float64)
            k_ref = k_ref + bk
        hd = al.wq.shape[1]
        group = al.heads // al.kv_heads
        for h in range(al.heads):
            q = y @ al.wq[h].T + (al.bq[h] if al.bq is not None else 0)
            torch.testing.assert_close(q, q_ref[:, h * hd : (h + 1) * hd])
            g = h // group
            k = k_ref[:, g * hd : (g + 1) * hd]
            # scores as a linear function of the key input: q·k = q̃·y + q·b_K
            qt = q @ al.wk[g]
            torch.testing.assert_close(q @ k.T, qt @ y.T + (q @ bk[g * hd : (g + 1) * hd])[:, None])


def test_sites_per_architecture():
    assert [al.site.name for al in attention_layers(_gpt2())] == ["transformer.h.0.ln_1", "transformer.h.1.ln_1"]
    assert [al.site.role for al in attention_layers(_llama())] == ["pre_attention"] * 2
    assert [al.site.name for al in attention_layers(_bert())] == ["embeddings.LayerNorm", "encoder.layer.0.output.LayerNorm"]
    llama = attention_layers(_llama())[0]
    assert (llama.heads, llama.kv_heads) == (4, 2) and llama.rotary


def test_measure_gpt2_against_direct_computation():
    model = _gpt2()
    _randomise_norm_affine(model)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(0))
    res = measure_attention(model, [ids], name="tiny-gpt2")
    assert res["sequences"] == 2 and res["seq_len"] == 40 and len(res["layers"]) == 2
    # direct: hidden states entering block 1 = output of block 0
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    x1 = out.hidden_states[1].double()
    ln = model.transformer.h[1].ln_1
    c = x1 - x1.mean(-1, keepdim=True)
    y1 = (c / torch.sqrt((c * c).mean(-1, keepdim=True) + ln.eps) * ln.weight.double() + ln.bias.double()).detach()
    L1 = res["layers"][1]
    before = [100 * unselectable(x1[s].numpy()).mean() for s in range(2)]
    after = [100 * unselectable(y1[s].numpy()).mean() for s in range(2)]
    assert L1["before"]["mean"] == pytest.approx(np.mean(before))
    assert L1["after"]["mean"] == pytest.approx(np.mean(after))
    assert L1["after"]["mean"] == 0.0  # LN outputs: an ellipsoid in a hyperplane, all extreme
    assert L1["recompute_rel_err"] < 1e-5
    al = attention_layers(model)[1]
    q = y1[0] @ al.wq[2].T + al.bq[2]
    qt = q @ al.wk[2]
    ang = torch.rad2deg(torch.arccos(qt.sum(-1).abs() / (qt.norm(dim=-1) * 4.0)))
    assert L1["angle_ones"][2]["n"] == 80
    g = ln.weight.detach().double()
    angn = torch.rad2deg(torch.arccos((qt * g).sum(-1).abs() / ((qt * g).norm(dim=-1) * 4.0)))
    both = torch.cat([ang, angn])
    assert 0 <= both.min() and both.max() <= 90
    # the first sequence's mean is part of the two-sequence mean; check the exact per-seq value
    res1 = measure_attention(model, [ids[:1]])
    assert res1["layers"][1]["angle_ones"][2]["mean"] == pytest.approx(float(ang.mean()))
    assert res1["layers"][1]["angle_normalized"][2]["mean"] == pytest.approx(float(angn.mean()))
    title, md = attention_section(res)
    assert "tiny-gpt2" in title and md.count("\n| ") >= 3


def test_measure_llama_and_bert_run_and_report_notes():
    ids = torch.randint(3, 97, (1, 48), generator=torch.Generator().manual_seed(1))
    r = measure_attention(_llama(), [ids], name="llama", max_sequences=1)
    assert len(r["layers"][0]["keys"]) == 2 and len(r["layers"][0]["angle_ones"]) == 4
    assert r["layers"][0]["angle_normalized"] is None
    assert any("rotary" in n for n in r["notes"])
    # layer 0 input is the token embedding: repeated tokens give duplicates (strictly unselectable)
    dup = r["layers"][0]["duplicates"]["mean"]
    assert dup > 0 and r["layers"][0]["before"]["mean"] >= dup
    b = measure_attention(_bert(), [ids], name="bert")
    assert any("post-LN" in n for n in b["notes"])
    assert b["layers"][1]["role"] == "post_mlp"
    assert all(L["after"]["mean"] == 0.0 for L in b["layers"])


@pytest.mark.filterwarnings("ignore:architecture")
def test_unsupported_model_raises():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    with pytest.raises(ValueError):
        attention_layers(model)
