"""Text for probing: the default corpus, text files, and token batches.

The default corpus is CPython's ``pydoc_data.topics`` (79 documentation topics, about 65k words
of English prose about Python; always installed). It is *not* the Wikipedia text Gupta et al.
used; reports say so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

__all__ = ["default_texts", "read_texts", "context_length", "token_batches"]


def default_texts() -> list[str]:
    """CPython's ``pydoc_data.topics`` texts, sorted by topic name (deterministic order)."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def read_texts(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Read UTF-8 text files, refusing anything that is not one.

    **Arguments:** ``paths`` — text files, read in order.

    **Returns:** their contents. Raises :class:`normscope.errors.UserError` (a ``ValueError``)
    naming the file for a missing path, a folder, a binary file (a NUL byte), bytes that are not
    UTF-8, or an empty file.
    """
    from normscope.errors import UserError

    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            raise UserError(f"text file {p} is a folder, not a file; pass the text files in it (e.g. {p}/*.txt)")
        if not p.is_file():
            raise UserError(f"text file {p} does not exist")
        data = p.read_bytes()
        nul = data.find(b"\x00")
        if nul >= 0:
            raise UserError(f"text file {p} is binary (a NUL byte at offset {nul}); pass a UTF-8 text file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"text file {p} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                f"convert it first, e.g. iconv -f latin1 -t utf-8 {p} > {p.stem}.utf8.txt"
            ) from None
        if not text.strip():
            raise UserError(f"text file {p} is empty")
        out.append(text.removeprefix("\ufeff"))
    if not out:
        raise UserError("no text files given")
    return out


_CTX_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(model_or_config: Any) -> int | None:
    """The longest input the model accepts, read from its config (None if the config has none)."""
    config = getattr(model_or_config, "config", model_or_config)
    config = getattr(config, "text_config", None) or config
    for attr in _CTX_ATTRS:
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids the tokenizer adds before and after a sequence (e.g. BERT's [CLS] ... [SEP])."""
    bare = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    n = len(bare)
    for i in range(len(full) - n + 1):
        if full[i : i + n] == bare:
            return list(full[:i]), list(full[i + n :])
    return [], []


def token_batches(
    tokenizer: Any,
    texts: str | Sequence[str],
    *,
    seq_len: int,
    max_tokens: int | None = None,
    batch_size: int = 8,
    context: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``LongTensor (batch, seq_len)`` windows of the tokenised texts.

    The texts are tokenised without special tokens and concatenated into one stream, joined by
    the tokenizer's EOS (or SEP) token. The stream is cut into windows; each window gets the
    tokenizer's own special tokens (BERT: ``[CLS] ... [SEP]``) and is exactly ``seq_len`` long,
    special tokens included. Nothing is dropped: the last window may be shorter and then comes
    alone in a final batch. ``max_tokens`` caps the total number of positions (special tokens
    included), cutting the last window if needed.

    **Arguments:**

    - ``tokenizer``: an HF tokenizer.
    - ``texts``: a string or a list of non-empty strings.
    - ``seq_len``: positions per window (special tokens included).
    - ``max_tokens``: cap on the total positions yielded (None: all text).
    - ``batch_size``: windows per batch.
    - ``context``: the model's context length (see :func:`context_length`); ``seq_len`` above it
      raises. The tokenizer's ``model_max_length`` is checked as well.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("no texts given")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text #{i} is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    limits = []
    if context is not None:
        limits.append(("the model's context length", int(context)))
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and tml < 10**8:
        limits.append(("the tokenizer's model_max_length", tml))
    for what, lim in limits:
        if seq_len > lim:
            raise ValueError(f"seq_len={seq_len} is larger than {what} ({lim}); use --seq-len <= {lim}")
    pre, post = _special_affixes(tokenizer)
    body = seq_len - len(pre) - len(post)
    if body < 1:
        raise ValueError(f"seq_len={seq_len} leaves no room for text after {len(pre) + len(post)} special tokens")
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    sep = [] if sep is None or (post and post[-1] == sep) else [sep]

    def stream() -> Iterator[int]:
        for i, t in enumerate(texts):
            ids = tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]
            if i and ids:
                yield from sep
            yield from ids

    def windows() -> Iterator[list[int]]:
        left = max_tokens
        buf: list[int] = []
        it = stream()
        while left is None or left > 0:
            want = body if left is None else min(body, left - len(pre) - len(post))
            if want < 1:
                return
            buf = []
            for tok in it:
                buf.append(tok)
                if len(buf) == want:
                    break
            if not buf:
                return
            win = pre + buf + post
            if left is not None:
                left -= len(win)
            yield win
            if len(buf) < want:
                return

    got_any = False
    batch: list[list[int]] = []
    for win in windows():
        got_any = True
        if batch and len(win) != len(batch[0]):
            yield torch.tensor(batch, dtype=torch.long)
            batch = []
        batch.append(win)
        if len(batch) == batch_size:
            yield torch.tensor(batch, dtype=torch.long)
            batch = []
    if batch:
        yield torch.tensor(batch, dtype=torch.long)
    if not got_any:
        raise ValueError(
            "the texts produced no tokens: the tokenizer returned nothing for them (an empty or missing tokenizer?); "
            "save the model's tokenizer into its folder with tokenizer.save_pretrained(folder)"
        )
