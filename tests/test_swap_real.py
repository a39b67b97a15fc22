"""Swap test and conversion refusals on the packaged real-weight models (MiniLM, SmolLM2)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def minilm():
    from normscope.models import load

    return load("minilm")


def test_minilm_has_no_mlm_head_so_embedding_loss(minilm):
    from normscope.convert import swap_test
    from normscope.models.text import default_texts, token_batches

    assert not any(k.startswith("cls.") for k in minilm.model.state_dict())
    batches = list(token_batches(minilm.tokenizer, default_texts(), seq_len=64, max_tokens=256, batch_size=2))
    r = swap_test(minilm, batches, per="layer", progress=False)
    assert r["loss_kind"] == "embedding" and r["norm_kinds"] == ["layernorm"]
    assert [row["variant"] for row in r["rows"]] == ["embeddings.LayerNorm"] + [f"layer {i}" for i in range(6)] + ["all"]
    assert r["angles"]["embeddings.LayerNorm"]["angle_in_mean"] > 0
    for row in r["rows"]:
        assert 0.0 <= row["delta_loss"] <= 2.0 and -1.0 <= row["cos_min"] <= row["cos_mean"] <= 1.0 + 1e-9


def test_minilm_conversion_refused(minilm):
    from normscope.convert import NotConvertibleError, to_rmsnorm

    with pytest.raises(NotConvertibleError, match="post-LN"):
        to_rmsnorm(minilm.model)


def test_smollm2_conversion_refused():
    from normscope.convert import NotConvertibleError, to_rmsnorm
    from normscope.models import load

    with pytest.raises(NotConvertibleError, match="already uses RMSNorm"):
        to_rmsnorm(load("smollm2").model)
