"""Shared test fixtures: tiny random-init Hugging Face models, token batches, a thread-count guard.

Several test files build the same tiny GPT-2 / Llama / BERT models by hand. The factories here
build them the same way (``torch.manual_seed(seed)``, then the model class on a config built from
keywords, in eval mode), so a test that switches to them gets bit-identical parameters as long as
it passes the same sizes (``tests/test_fixtures.py`` checks this). Request the factory as a
fixture and call it::

    def test_something(tiny_gpt2):
        model = tiny_gpt2(d=16, vocab=97, bos_token_id=0, eos_token_id=0)

Any other config field passes through as a keyword; ``seed=None`` skips the reseeding, so several
models drawn one after another from one ``torch.manual_seed`` keep their weights. The factories are
session-scoped, so module-scoped fixtures can use them too.

Thread count: never call ``torch.set_num_threads`` at import time of a test module (it changes the
whole pytest run); use the ``one_thread`` fixture, which restores the previous setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from normscope._threads import single_thread  # noqa: F401  (re-exported for tests)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _config_kwargs(fixed: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {**fixed, **config}.items() if v is not None}


def _seed(seed: int | None) -> None:
    """``torch.manual_seed(seed)``; None continues the current random stream (several models from one seed)."""
    if seed is not None:
        torch.manual_seed(seed)


def make_gpt2(d: int = 32, layers: int = 2, heads: int = 4, vocab: int = 97, positions: int = 64, *,
              seed: int | None = 0, **config: Any) -> torch.nn.Module:
    """``GPT2LMHeadModel`` (pre-LN, LayerNorm, learned positions, tied embeddings), eval mode."""
    import transformers as T

    _seed(seed)
    cfg = T.GPT2Config(**_config_kwargs(dict(n_embd=d, n_layer=layers, n_head=heads, vocab_size=vocab,
                                             n_positions=positions), config))
    return T.GPT2LMHeadModel(cfg).eval()


def make_llama(d: int = 32, layers: int = 2, heads: int = 4, vocab: int = 97, *, kv_heads: int | None = None,
               intermediate: int | None = None, seed: int | None = 0, **config: Any) -> torch.nn.Module:
    """``LlamaForCausalLM`` (pre-RMSNorm, rotary), eval mode; ``intermediate`` defaults to 2·d."""
    import transformers as T

    _seed(seed)
    cfg = T.LlamaConfig(**_config_kwargs(dict(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                              num_key_value_heads=kv_heads, intermediate_size=intermediate or 2 * d,
                                              vocab_size=vocab), config))
    return T.LlamaForCausalLM(cfg).eval()


def make_bert(d: int = 32, layers: int = 2, heads: int = 4, vocab: int = 97, *, intermediate: int | None = None,
              seed: int | None = 0, **config: Any) -> torch.nn.Module:
    """``BertModel`` (post-LN encoder), eval mode; ``intermediate`` defaults to 2·d."""
    import transformers as T

    _seed(seed)
    cfg = T.BertConfig(**_config_kwargs(dict(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                             intermediate_size=intermediate or 2 * d, vocab_size=vocab), config))
    return T.BertModel(cfg).eval()


def save_model(model: torch.nn.Module, folder: str | Path, tokenizer: Any = None) -> Path:
    """``save_pretrained`` the model (and a tokenizer: the byte-level one of ``normscope.models.tiny``
    with the model's context length when ``tokenizer`` is None) into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if tokenizer is None:
        from normscope.models.tiny import byte_tokenizer

        n = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 64)
        tokenizer = byte_tokenizer(n)
    tokenizer.save_pretrained(folder)
    return folder


def make_batches(n: int = 2, batch: int = 2, seq: int = 16, vocab: int = 97, *, low: int = 0,
                 seed: int = 0) -> list[torch.Tensor]:
    """``n`` token-id tensors (batch, seq) uniform in [low, vocab), from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, vocab, (batch, seq), generator=g) for _ in range(n)]


def run_command(*argv: str) -> int:
    """Run ``normscope ARGV`` through the real parser, without ``main``'s error handling: a failure
    raises its exception (for ``pytest.raises``) instead of printing one line and returning 1."""
    from normscope.cli import build_parser

    args = build_parser().parse_args(list(argv))
    return args.func(args)


@pytest.fixture(scope="session")
def tiny_gpt2() -> Callable[..., torch.nn.Module]:
    return make_gpt2


@pytest.fixture(scope="session")
def tiny_llama() -> Callable[..., torch.nn.Module]:
    return make_llama


@pytest.fixture(scope="session")
def tiny_bert() -> Callable[..., torch.nn.Module]:
    return make_bert


@pytest.fixture(scope="session")
def save_tiny() -> Callable[..., Path]:
    return save_model


@pytest.fixture(scope="session")
def token_batches() -> Callable[..., list[torch.Tensor]]:
    return make_batches


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (``single_thread``), restored afterwards."""
    with single_thread():
        yield


# --- random-init causal LMs of many families (test_convert.py, test_fold.py) -------------------------

LM_VOCAB, LM_D = 97, 32
LM_SMALL = dict(vocab_size=LM_VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def layernorm_lm_configs() -> dict[str, Any]:
    """Tiny configs (d = 32, 2 layers, vocabulary 97) of the LayerNorm families both the conversion and
    the folding tests cover; each test file adds its own variants (Falcon's, the RMSNorm families)."""
    import transformers as T

    D, SMALL = LM_D, LM_SMALL
    return {
        "gpt2": T.GPT2Config(n_layer=2, n_embd=D, n_head=4, n_positions=64, **SMALL),
        "gpt_neo": T.GPTNeoConfig(num_layers=2, hidden_size=D, num_heads=4, max_position_embeddings=64,
                                  attention_types=[[["global", "local"], 1]], window_size=8, **SMALL),
        "gpt_bigcode": T.GPTBigCodeConfig(n_layer=2, n_embd=D, n_head=4, n_positions=64, **SMALL),
        "gpt_neox": T.GPTNeoXConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, intermediate_size=64,
                                    max_position_embeddings=64, **SMALL),
        "gptj": T.GPTJConfig(n_layer=2, n_embd=D, n_head=4, n_positions=64, rotary_dim=4, **SMALL),
        "codegen": T.CodeGenConfig(n_layer=2, n_embd=D, n_head=4, n_positions=64, n_ctx=64, rotary_dim=4, **SMALL),
        "opt": T.OPTConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, ffn_dim=64,
                           max_position_embeddings=64, word_embed_proj_dim=D, **SMALL),
        "opt_project_in_out": T.OPTConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, ffn_dim=64,
                                          max_position_embeddings=64, word_embed_proj_dim=16, **SMALL),
        "phi": T.PhiConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, intermediate_size=64,
                           max_position_embeddings=64, **SMALL),
        "phi_qk_layernorm": T.PhiConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, intermediate_size=64,
                                        max_position_embeddings=64, qk_layernorm=True, **SMALL),
        "bloom": T.BloomConfig(n_layer=2, hidden_size=D, n_head=4, **SMALL),
        "stablelm": T.StableLmConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, num_key_value_heads=4,
                                     intermediate_size=64, **SMALL),
    }


def perturbed_lm(config: Any, seed: int = 0, *, all_norms: bool = False) -> torch.nn.Module:
    """``AutoModelForCausalLM`` from ``config`` (seeded), eval mode, far from the trivial case: norm gains
    1 + 0.3·N(0, 1) (Gemma's offset gains 0.3·N(0, 1)), biases 0.3·N(0, 1), and a shared offset
    0.5 + 0.1·N(0, 1) along every embedding row (a mean that centring must remove).

    **Arguments:** ``all_norms`` — False: only ``nn.LayerNorm`` modules are perturbed; True: every
    module whose class name contains "norm" and has a 1-D weight (RMSNorm variants too).
    """
    import copy

    import transformers as T
    from torch import nn

    torch.manual_seed(seed)
    m = T.AutoModelForCausalLM.from_config(copy.deepcopy(config)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            w = getattr(mod, "weight", None)
            if all_norms:
                is_norm = "norm" in type(mod).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1
            else:
                is_norm = isinstance(mod, nn.LayerNorm) and w is not None
            if is_norm:
                offset = "Gemma" in type(mod).__name__
                w.copy_((0.0 if offset else 1.0) + 0.3 * torch.randn(w.shape, generator=g))
                b = getattr(mod, "bias", None)
                if isinstance(b, torch.Tensor):
                    b.copy_(0.3 * torch.randn(b.shape, generator=g))
            elif isinstance(mod, nn.Embedding):
                mod.weight.add_(0.5 + 0.1 * torch.randn(mod.weight.shape[-1], generator=g))
    return m


def lm_ids(seed: int = 1, batch: int = 2, seq: int = 16) -> torch.Tensor:
    """Token ids (batch, seq) uniform in [1, 97) from a seeded generator."""
    return torch.randint(1, LM_VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


# Test files whose assertions carry floating-point tolerances. scripts/test.sh reruns them under a
# second OpenBLAS kernel (OPENBLAS_CORETYPE=Haswell), so a bound that only holds on one CPU's BLAS
# kernel fails in CI instead of on a user's machine.
NUMERICAL_FILES = {
    "test_geometry.py", "test_geometry_property.py", "test_geometry_dtypes.py", "test_geometry_maps.py",
    "test_site_geometry.py", "test_nn.py", "test_nn_compat.py", "test_attention_unselectable.py",
    "test_attention_unselectable_props.py", "test_probe_metrics.py", "test_convert.py", "test_roles.py",
    "test_fold.py", "test_verify.py", "test_riechers.py", "test_lnnet.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in NUMERICAL_FILES:
            item.add_marker(pytest.mark.numerical)
