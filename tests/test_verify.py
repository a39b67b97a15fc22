"""normscope.surgery.verify: exact pairs pass every site, an injected error is found where it was made."""

from __future__ import annotations

import copy

import pytest
import torch

from test_fold import ids, make


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_folded_pair_has_no_divergence(name):
    from normscope.surgery import fold, verify

    m = make(name)
    r = verify(m, fold(m).model, ids(4))
    assert r.first_divergence is None, r.table(every=True)
    assert r.max_abs_dlogits <= 1e-4 and r.kl_max < 1e-9 and r.top1_agreement == 1.0
    assert r.centred == (name == "gpt2")
    assert len([s for s in r.sites if s.what == "block"]) == 2 and any(s.what == "norm" for s in r.sites)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_injected_error_found_at_its_block(k):
    """One weight of block k's MLP output projection perturbed: the first divergent site is block k's output."""
    from normscope.surgery import verify

    T = pytest.importorskip("transformers")
    from test_fold import CONFIGS

    cfg = copy.deepcopy(CONFIGS["llama"])
    cfg.num_hidden_layers = 3
    torch.manual_seed(0)
    a = T.AutoModelForCausalLM.from_config(cfg).eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.model.layers[k].mlp.down_proj.weight[3, 5] += 0.5
    r = verify(a, b, ids(5))
    assert r.first_divergence == f"model.layers.{k}.mlp.down_proj" or r.first_divergence == f"model.layers.{k} (block)", r.table(every=True)
    assert all(not s.diverged for s in r.sites[: [x.name for x in r.sites].index(f"model.layers.{k}")])


def test_non_finite_fails():
    from normscope.surgery import verify
    from normscope.surgery.verification import NonFiniteError

    a = make("llama")
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.model.layers[1].self_attn.o_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="model B is not finite at model.layers.1"):
        verify(a, b, ids(6))


def test_error_table_over_dtypes():
    from normscope.surgery import error_table, fold

    m = make("llama")
    rows = error_table(m, fold(m).model, ids(7))
    assert [r.dtype for r in rows] == ["float64", "float32", "bfloat16"]
    # float64 row: only the fold's float32 weight rounding is left (~u32·|logit|); float32 adds the arithmetic
    assert rows[0].max_abs_dlogits <= 1e-6 and rows[1].max_abs_dlogits <= 1e-4
    assert rows[2].max_abs_dlogits > rows[1].max_abs_dlogits  # bf16 rounding shows, and is reported


def test_rotation_pair():
    """A residual rotation Q applied to every writer and undone in every reader: compared with rotation=Q."""
    from normscope.surgery import fold, verify

    m = fold(make("llama")).model.double()  # weightless norms: RMSNorm commutes with an orthogonal Q
    q, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    rot = copy.deepcopy(m)
    with torch.no_grad():
        rot.model.embed_tokens.weight.copy_(m.model.embed_tokens.weight @ q)
        rot.lm_head.weight.copy_(m.lm_head.weight @ q)
        for la, lb in zip(m.model.layers, rot.model.layers):
            for r in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
                lb.get_submodule(r).weight.copy_(la.get_submodule(r).weight @ q)
            for w in ("self_attn.o_proj", "mlp.down_proj"):
                lb.get_submodule(w).weight.copy_(q.T @ la.get_submodule(w).weight)
    r = verify(m, rot, ids(8), rotation=q)
    # HF's Llama norm rounds to float32 inside a float64 model, so the bound is float32's
    assert r.first_divergence is None and r.max_abs_dlogits < 1e-5, r.table(every=True)
    assert verify(m, rot, ids(8)).first_divergence is not None  # without Q the streams differ


def test_logit_agreement_refuses_nan_in_a_later_batch():
    """The one comparison behind convert, fold (in memory and streamed) and verify: Python's ``max`` drops NaN
    (``max(0.0, nan) == 0.0``), the fold command's former private loop did; the shared one names where it is."""
    from normscope._verify import logit_agreement
    from normscope.errors import NonFiniteError

    a = torch.zeros(1, 2, 3, dtype=torch.float64)
    bad = a.clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"the B model's logits .* batch 1, row 0, position 1, output 2"):
        logit_agreement([(a, a), (a, bad)], names=("A", "B"))
    with pytest.raises(ValueError, match="no batches"):
        logit_agreement([])


def test_logit_agreement_values():
    """KL against its closed form: p_a = (1/3, 2/3), p_b = (1/2, 1/2) gives KL = ln(2/3)/3 + 2 ln(4/3)/3.

    Tolerance 1e-14: a handful of float64 operations (log-softmax, exp, a 2-term sum), each ≤ 1 ulp ~ 1e-16."""
    import math

    from normscope._verify import logit_agreement

    a = torch.tensor([[[0.0, math.log(2.0)]] * 3], dtype=torch.float64)  # (1, 3, 2): three positions
    b = torch.zeros_like(a)
    r = logit_agreement([(a, b)])
    kl = math.log(2 / 3) / 3 + 2 * math.log(4 / 3) / 3
    assert r["tokens"] == 3 and r["max_abs_dlogits"] == math.log(2.0) and r["max_abs_logit"] == math.log(2.0)
    assert r["mean_abs_dlogits"] == math.log(2.0) / 2
    assert abs(r["kl_max"] - kl) <= 1e-14 and abs(r["kl_mean"] - kl) <= 1e-14
    assert set(r) == {"tokens", "max_abs_dlogits", "mean_abs_dlogits", "max_abs_logit", "kl_mean", "kl_max"}
