"""The conftest factories build exactly the models the test files used to build by hand."""

from __future__ import annotations

import torch
import transformers as T


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k  # bit-identical: same seed, same config, same init order
    assert type(a) is type(b) and not a.training and not b.training


def test_gpt2_matches_hand_built(tiny_gpt2):
    torch.manual_seed(0)
    hand = T.GPT2LMHeadModel(T.GPT2Config(n_embd=16, n_layer=2, n_head=4, vocab_size=97, n_positions=64,
                                          bos_token_id=0, eos_token_id=0)).eval()
    _same(tiny_gpt2(d=16, bos_token_id=0, eos_token_id=0), hand)
    assert tiny_gpt2(seed=1).transformer.wte.weight.ne(tiny_gpt2(seed=0).transformer.wte.weight).any()


def test_llama_matches_hand_built(tiny_llama):
    torch.manual_seed(0)
    hand = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=64, vocab_size=61,
                                            max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                                            eos_token_id=2)).eval()
    built = tiny_llama(vocab=61, kv_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    _same(built, hand)
    assert built.config.intermediate_size == 64 and built.config.num_key_value_heads == 2


def test_bert_matches_hand_built(tiny_bert):
    torch.manual_seed(0)
    hand = T.BertModel(T.BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    vocab_size=97)).eval()
    _same(tiny_bert(d=16), hand)


def test_save_and_batches(tiny_gpt2, save_tiny, token_batches, tmp_path):
    from normscope.models import load

    folder = save_tiny(tiny_gpt2(vocab=257), tmp_path / "gpt2")
    loaded = load(folder, dtype=torch.float32)
    _same(loaded.model, tiny_gpt2(vocab=257))
    a, b = token_batches(n=2, vocab=257, seq=8), token_batches(n=2, vocab=257, seq=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a[0].shape == (2, 8) and int(a[0].max()) < 257


def test_one_thread_restores(one_thread):
    from conftest import single_thread

    assert torch.get_num_threads() == 1  # the fixture is active
    torch.set_num_threads(2)
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2  # restored on exit
