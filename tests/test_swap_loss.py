"""Swap-test losses: chunked LM-head cross-entropy and the baseline shared with the probe's forward."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
import transformers as T

from normscope.convert import loss as lo
from normscope.convert import swap as sw
from normscope.convert import swap_test
from normscope.probe import run

from conftest import make_batches, make_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T.logging.set_verbosity_error()

V, D = 211, 32


def batches(n: int = 3, seq: int = 12) -> list[torch.Tensor]:
    return make_batches(n, 2, seq, V, low=3)


def llama() -> torch.nn.Module:
    return make_llama(d=D, vocab=V, kv_heads=2, max_position_embeddings=64)


def dense_loss(model, xs):
    """Reference: the whole model's full-vocabulary logits, cast to float64, one cross_entropy."""
    tot = n = 0.0
    with torch.no_grad():
        for ids in xs:
            lg = model(input_ids=ids, use_cache=False).logits[:, :-1].double()
            tot += float(F.cross_entropy(lg.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
            n += lg.shape[0] * lg.shape[1]
    return tot / n


@pytest.mark.parametrize("chunk", [1 << 22, V * 5 + 3, V])  # one chunk, ragged chunks, one token per chunk
def test_chunked_head_loss_matches_dense(monkeypatch, chunk):
    monkeypatch.setattr(lo, "_CHUNK_ELEMENTS", chunk)
    m, xs = llama(), batches()
    got = sw._Evaluator(m, xs, "lm", None)()["loss"]
    # both sides compute float32 logits with the same head; only the matmul blocking may differ:
    # |Δℓ| ≲ few·eps32·Σ|h||w| ≈ 1e-6 relative on O(1) logits, so the mean loss agrees to ~1e-6
    assert got == pytest.approx(dense_loss(m, xs), rel=1e-6, abs=1e-6)


def test_baseline_from_probe_forward_is_identical():
    m, xs = llama(), batches()
    col = sw.BaselineCollector(m, xs[:2])
    stats = run(m, xs, progress=False, on_output=col.on_output)
    assert col.complete
    shared = swap_test(m, xs[:2], progress=False, per="all", angles=stats["models"][0], baseline=col)
    alone = swap_test(m, xs[:2], progress=False, per="all", angles=True)
    assert shared["baseline_source"] == "probe forward" and alone["baseline_source"] == "separate forward"
    # same tokens, same batching, same float32 forward: bit-identical per-batch sums
    assert shared["baseline"]["loss"] == alone["baseline"]["loss"]
    assert [r["loss"] for r in shared["rows"]] == [r["loss"] for r in alone["rows"]]
    # angles come from the probe entry (all 3 batches), not from a second probe of 2 batches
    assert shared["angles_tokens"] == sum(b.numel() for b in xs)
    name = next(iter(shared["angles"]))
    want = next(la for la in stats["models"][0]["layers"] if la["name"] == name)["input"]["angle_deg"]["mean"]
    assert shared["angles"][name]["angle_in_mean"] == want


def test_collector_ignores_other_batches_and_falls_back():
    m, xs = llama(), batches()
    col = sw.BaselineCollector(m, [xs[2]])
    run(m, xs[:2], progress=False, on_output=col.on_output)  # never sees xs[2]
    assert not col.complete
    r = swap_test(m, [xs[2]], progress=False, per="all", angles=False, baseline=col)
    assert r["baseline_source"] == "separate forward"
    assert r["baseline"]["loss"] == pytest.approx(dense_loss(m, [xs[2]]), rel=1e-6)


def test_nonfinite_loss_is_nan_with_count():
    logits = torch.zeros(4, 7)
    logits[1, 3] = math.nan
    s = lo.lm_loss_from_logits(logits, torch.tensor([0, 1, 2, -100]))
    assert s.count == 3 and s.nonfinite == 1
    assert s.total == pytest.approx(2 * math.log(7), rel=1e-15)  # 2 finite rows of uniform logits


class _ScaledHead(torch.nn.Linear):
    """A head that is not a plain nn.Linear (the chunked loss must call it, not its weight)."""

    def forward(self, h):
        return 0.5 * super().forward(h)


@pytest.mark.parametrize("head_kind", ["linear", "linear+bias", "custom"])
@pytest.mark.parametrize("cap", [None, 3.0])
def test_chunked_loss_head_variants_match_dense(monkeypatch, head_kind, cap):
    """Heads with a bias, heads that are not nn.Linear, and soft-capped logits, in ragged chunks:
    the same float32 logits as calling the head, so the float64 loss agrees to ~1e-6 relative
    (float32 matmul blocking, see above); float64 inputs agree to ~1e-12."""
    monkeypatch.setattr(lo, "_CHUNK_ELEMENTS", V * 7 + 5)
    gen = torch.Generator().manual_seed(3)
    for dtype, rel in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        cls = _ScaledHead if head_kind == "custom" else torch.nn.Linear
        head = cls(D, V, bias=head_kind != "linear").to(dtype)
        cfg = type("Cfg", (), {"final_logit_softcapping": cap})()
        model = type("M", (torch.nn.Module,), {"get_output_embeddings": lambda self: head})()
        model.config = cfg
        hidden = torch.randn(3, 17, D, generator=gen, dtype=dtype)
        ids = torch.randint(0, V, (3, 17), generator=gen)
        with torch.no_grad():
            s = lo.lm_loss_from_hidden(model, hidden, ids)
            lg = head(hidden[:, :-1]).double()
            if cap:
                lg = cap * torch.tanh(lg / cap)
            want = float(F.cross_entropy(lg.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
        assert s.count == 3 * 16 and s.nonfinite == 0
        assert s.total == pytest.approx(want, rel=rel)


def test_chunked_loss_calls_a_hooked_head():
    """A head with forward hooks (how accelerate places and offloads weights) is called, not
    bypassed: here the hook scales the logits, so bypassing it would change the loss."""
    gen = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(D, V, bias=False)
    head.register_forward_hook(lambda mod, inp, out: out * 0.25)
    model = type("M", (torch.nn.Module,), {"get_output_embeddings": lambda self: head})()
    model.config = type("Cfg", (), {})()
    hidden = torch.randn(2, 9, D, generator=gen)
    ids = torch.randint(0, V, (2, 9), generator=gen)
    with torch.no_grad():
        s = lo.lm_loss_from_hidden(model, hidden, ids)
        want = float(F.cross_entropy(head(hidden[:, :-1]).double().flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
    assert s.total == pytest.approx(want, rel=1e-6)
