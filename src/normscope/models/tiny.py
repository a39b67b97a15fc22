"""A tiny pre-LN GPT-2 trained locally: the LayerNorm decoder with real (trained) weights.

No GPT-2/Pythia/OPT weights ship in any offline-installable package, so the exact
LN → RMSNorm conversion, the naive swap test and the conversion benchmark use this model
besides random-init configs. It is a ``transformers`` ``GPT2LMHeadModel`` (pre-LN, LayerNorm,
learned positions, tied embeddings) trained on CPython's ``pydoc_data.topics``.

Tokenizer: byte-level (256 byte tokens + ``<|endoftext|>``). Chosen over the packaged
SmolLM2/MiniLM tokenizers because the corpus is small (~65k words, ~430k bytes): with a 30–49k
vocabulary the embeddings would dominate a few-million-parameter model and a few minutes of
training would see each token only a handful of times. Losses are therefore in nats per byte.
Held-out split: the last 10% of every topic (cut at a line break), never seen in training.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from normscope._threads import threads as torch_threads

__all__ = ["byte_tokenizer", "train_tiny", "split_texts", "heldout_loss"]

EOS = "<|endoftext|>"


def _byte_chars() -> list[str]:
    """Printable stand-in character for each byte value (the GPT-2 byte-level convention).

    Printable Latin-1 bytes map to themselves; the rest map to code points 256, 257, ... in order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_tokenizer(model_max_length: int = 256):
    """An HF fast tokenizer with one token per byte (ids 0–255) and ``<|endoftext|>`` = 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    vocab[EOS] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None, model_max_length=model_max_length
    )


def split_texts(texts: list[str], fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """(train, held_out): the last ``fraction`` of each text (cut at a line break) is held out."""
    train, held = [], []
    for t in texts:
        cut = t.rfind("\n", 0, int(len(t) * (1 - fraction)))
        cut = cut if cut > 0 else int(len(t) * (1 - fraction))
        if t[:cut].strip():
            train.append(t[:cut])
        if t[cut:].strip():
            held.append(t[cut:])
    return train, held


def _stream(tokenizer, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor, seq_len: int, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats/token) over non-overlapping windows of ``stream``."""
    was = model.training
    model.eval()
    n = (len(stream) - 1) // seq_len
    x = stream[: n * seq_len + 1]
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        j = min(n, i + batch_size)
        inp = torch.stack([x[k * seq_len : (k + 1) * seq_len] for k in range(i, j)])
        tgt = torch.stack([x[k * seq_len + 1 : (k + 1) * seq_len + 1] for k in range(i, j)])
        logits = model(input_ids=inp).logits
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="sum"))
        count += tgt.numel()
    model.train(was)
    return total / count


def train_tiny(
    out: str | Path,
    *,
    steps: int = 400,
    batch_size: int = 8,
    seq_len: int = 256,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 4,
    lr: float = 2e-3,
    warmup: int = 30,
    seed: int = 0,
    threads: int = 2,
    max_seconds: float | None = None,
    force: bool = False,
    texts: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a small pre-LN GPT-2 on ``texts`` (default: ``pydoc_data.topics``) and save it.

    AdamW (β = (0.9, 0.95), weight decay 0.1 on matrices), linear warm-up then cosine decay to
    lr/10, gradient clipping at 1, random windows of ``seq_len`` bytes, no dropout. With
    ``max_seconds`` the schedule runs on max(step/steps, elapsed/max_seconds) and training stops
    when either reaches 1, so a busy machine gets a shorter but complete schedule (the summary
    records the steps done). Writes an HF folder (``save_pretrained`` + tokenizer +
    ``training.json``) atomically to ``out``.

    **Returns:** the summary written to ``training.json`` (config, parameter count, held-out
    loss before and after training in nats/byte, bits per byte, wall time).
    """
    from transformers import GPT2Config, GPT2LMHeadModel
    from tqdm.auto import tqdm

    from normscope._io import atomic_write_json, check_out, output_dir
    from normscope.models.text import default_texts

    if steps < 1 or batch_size < 1 or seq_len < 2:
        raise ValueError(f"need steps >= 1, batch_size >= 1, seq_len >= 2; got {steps}, {batch_size}, {seq_len}")
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
    out = Path(out)
    check_out(out, force=force)
    with torch_threads(max(1, threads)):  # restored on exit
        torch.manual_seed(seed)
        tok = byte_tokenizer(seq_len)
        train_texts, held_texts = split_texts(texts if texts is not None else default_texts())
        train, held = _stream(tok, train_texts), _stream(tok, held_texts)
        if len(train) <= seq_len + 1 or len(held) <= seq_len + 1:
            raise ValueError(f"texts too short for seq_len={seq_len}")
        cfg = GPT2Config(
            vocab_size=len(tok), n_positions=seq_len, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
        )
        model = GPT2LMHeadModel(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        initial = heldout_loss(model, held, seq_len)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
        )

        def progress_at(step: int) -> float:
            p = step / steps
            if max_seconds:
                p = max(p, (time.perf_counter() - t0) / max_seconds)
            return p

        def lr_at(step: int, p: float) -> float:
            if step < warmup:
                return lr * (step + 1) / warmup
            p0 = warmup / steps  # cosine over the rest of the run
            t = min(1.0, max(0.0, (p - p0) / max(1e-9, 1 - p0)))
            return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

        gen = torch.Generator().manual_seed(seed)
        model.train()
        losses = []
        t0 = time.perf_counter()
        bar = tqdm(range(steps), desc="train-tiny", disable=not progress)
        for step in bar:
            p = progress_at(step)
            if p >= 1.0:
                break
            starts = torch.randint(0, len(train) - seq_len - 1, (batch_size,), generator=gen)
            x = torch.stack([train[s : s + seq_len] for s in starts.tolist()])
            y = torch.stack([train[s + 1 : s + seq_len + 1] for s in starts.tolist()])
            for g in opt.param_groups:
                g["lr"] = lr_at(step, p)
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        train_s = time.perf_counter() - t0
        model.eval()
        final = heldout_loss(model, held, seq_len)
        summary = {
            "model": "GPT2LMHeadModel (pre-LN, LayerNorm eps 1e-5, tied embeddings), random init then trained here",
            "config": {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_positions": seq_len, "vocab_size": len(tok)},
            "parameters": n_params,
            "tokenizer": "byte-level: ids 0-255 are bytes, 256 is <|endoftext|>; losses are nats per byte",
            "data": "CPython pydoc_data.topics; held out: the last 10% of every topic",
            "train_tokens": len(train),
            "heldout_tokens": len(held),
            "steps": len(losses),
            "steps_planned": steps,
            "max_seconds": max_seconds,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "lr": lr,
            "seed": seed,
            "threads": torch.get_num_threads(),
            "train_seconds": round(train_s, 2),
            "heldout_loss_initial": initial,
            "heldout_loss": final,
            "heldout_bits_per_byte": final / math.log(2),
            "train_loss_last10": sum(losses[-10:]) / len(losses[-10:]),
        }
        with output_dir(out, force=force) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            atomic_write_json(tmp / "training.json", summary | {"train_losses": losses})
        return summary


def load_heldout(tokenizer, texts: list[str] | None = None) -> torch.Tensor:
    """The held-out token stream :func:`train_tiny` evaluates on."""
    from normscope.models.text import default_texts

    return _stream(tokenizer, split_texts(texts if texts is not None else default_texts())[1])


def read_summary(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "training.json").read_text())
