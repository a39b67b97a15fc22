"""Text corpus and token batching: chunking without silent truncation, clear errors."""

import pytest
import torch

from normscope.models.text import context_length, default_texts, read_texts, token_batches


class WordTokenizer:
    """Minimal HF-like tokenizer: one id per whitespace word; optional BERT-style affixes."""

    def __init__(self, affixes=False, model_max_length=10**30):
        self.vocab: dict[str, int] = {}
        self.affixes = affixes
        self.model_max_length = model_max_length
        self.eos_token_id = None if affixes else 0
        self.sep_token_id = 2 if affixes else None

    def __call__(self, text, add_special_tokens=True, verbose=True):
        ids = [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]
        if add_special_tokens and self.affixes:
            ids = [1] + ids + [2]
        return {"input_ids": ids}


def _flat(batches):
    return [t for b in batches for row in b.tolist() for t in row]


def test_default_texts():
    texts = default_texts()
    assert len(texts) > 50 and all(t.strip() for t in texts)
    assert texts == default_texts()  # deterministic order


def test_chunks_cover_everything_in_order():
    tok = WordTokenizer()
    texts = [" ".join(f"a{i}" for i in range(23)), " ".join(f"b{i}" for i in range(10))]
    batches = list(token_batches(tok, texts, seq_len=5, batch_size=2))
    flat = _flat(batches)
    expected = tok(texts[0])["input_ids"] + [0] + tok(texts[1])["input_ids"]  # EOS joins texts
    assert flat == expected  # nothing dropped, nothing reordered
    assert [tuple(b.shape) for b in batches] == [(2, 5), (2, 5), (2, 5), (1, 4)]
    assert all(b.dtype == torch.long for b in batches)


def test_max_tokens_caps_exactly():
    tok = WordTokenizer()
    text = " ".join(f"w{i}" for i in range(100))
    batches = list(token_batches(tok, text, seq_len=8, max_tokens=30, batch_size=3))
    assert sum(b.numel() for b in batches) == 30
    assert _flat(batches) == tok(text)["input_ids"][:30]


def test_special_tokens_added_per_window():
    tok = WordTokenizer(affixes=True)
    text = " ".join(f"w{i}" for i in range(7))
    batches = list(token_batches(tok, text, seq_len=5, batch_size=4))
    rows = [r for b in batches for r in b.tolist()]
    assert all(r[0] == 1 and r[-1] == 2 for r in rows)
    assert [len(r) for r in rows] == [5, 5, 3]  # 7 words = 3 + 3 + 1; the short window is kept
    assert [t for r in rows for t in r[1:-1]] == tok(text, add_special_tokens=False)["input_ids"]


def test_errors():
    tok = WordTokenizer(model_max_length=16)
    with pytest.raises(ValueError, match="empty"):
        list(token_batches(tok, ["fine", "  "], seq_len=4))
    with pytest.raises(ValueError, match="no texts"):
        list(token_batches(tok, [], seq_len=4))
    with pytest.raises(ValueError, match="model_max_length"):
        list(token_batches(tok, "a b c", seq_len=17))
    with pytest.raises(ValueError, match="context length"):
        list(token_batches(WordTokenizer(), "a b c", seq_len=65, context=64))
    with pytest.raises(ValueError, match="no room"):
        list(token_batches(WordTokenizer(affixes=True), "a b c", seq_len=2))


def test_read_texts(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "e.txt").write_text("\n")
    assert read_texts([tmp_path / "a.txt"]) == ["hello world"]
    with pytest.raises(ValueError, match="empty"):
        read_texts([tmp_path / "e.txt"])
    with pytest.raises(ValueError, match="does not exist"):
        read_texts([tmp_path / "missing.txt"])


def test_context_length_from_config():
    import transformers as tf

    assert context_length(tf.GPT2Config(n_positions=77)) == 77
    assert context_length(tf.LlamaConfig(max_position_embeddings=99)) == 99
