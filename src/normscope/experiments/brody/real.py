"""Unselectable keys and query angles in packaged real models (minilm: BERT, post-LN LayerNorm;
smollm2: Llama family, RMSNorm, GQA), via :func:`normscope.attention.measure_attention`.

Not in the paper (it measured its own d = 8 models); an extension with the same definitions.
Text: CPython's ``pydoc_data.topics`` windows. In d = 384 / 576 a sequence of n <= d tokens is
affinely independent in general, so unselectable hidden states need n > d + 1 (we use the
longest windows the budget allows) and the per-head keys (head_dim 32 / 64) are where the
question bites.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from normscope._io import atomic_write_json, atomic_write_text
from normscope.attention import attention_section, measure_attention
from normscope.experiments.brody.common import PAPER

MODELS = ("minilm", "smollm2")


def run(out: Path, *, paper_scale: bool = False, models: tuple[str, ...] = MODELS, sequences: int | None = None,
        seq_len: int | None = None, progress: bool = True) -> dict[str, Any]:
    import torch

    from normscope.models import load
    from normscope.models.text import context_length, default_texts, token_batches

    out.mkdir(parents=True, exist_ok=True)
    n_seq = sequences or (8 if paper_scale else 2)
    results, sections = [], []
    for name in models:
        t0 = time.perf_counter()
        lm = load(name, dtype=torch.float32)
        ctx = context_length(lm.model) or 512
        length = seq_len or min(1024 if paper_scale else 512, ctx)
        batches = token_batches(lm.tokenizer, default_texts(), seq_len=length, max_tokens=n_seq * length, batch_size=1, context=ctx)
        res = measure_attention(lm.model, batches, name=name, max_sequences=n_seq, progress=progress)
        res["elapsed_s"] = time.perf_counter() - t0
        results.append(res)
        sections.append(attention_section(res))
        del lm
    atomic_write_json(out / "real.json", {"experiment": "real models (extension)", "models": results})
    md = ["# Real models: unselectable keys and effective-query angles (extension, not in the paper)", "",
          f"Definitions from {PAPER}; measured per sequence over all positions. The paper's claim to check: after a "
          "LayerNorm (projection + scaling) no hidden state is unselectable (except exact duplicates); RMSNorm also scales, "
          "so the same holds; per-head keys W_K·y need W_K injective on the norm's output set.", ""]
    for title, body in sections:
        md += [f"## {title}", "", body]
    atomic_write_text(out / "real.md", "\n".join(md) + "\n")
    return {"models": results}
