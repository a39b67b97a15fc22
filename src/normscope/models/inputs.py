"""Model inputs for any modality: a dummy input for tracing, and offline images and audio for probing.

- :func:`example_inputs` builds a small random input from a model's ``forward`` signature and config
  (token ids, pixel values, log-mel features, decoder ids), used to trace norm roles
  (:mod:`normscope.models.roles`); its sizes are chosen so no axis length coincides with a model width.
- :func:`image_batches` yields scikit-learn's handwritten **digits** (1797 8×8 greyscale images,
  shipped with scikit-learn, no download), upsampled bilinearly to the model's ``image_size``,
  repeated over ``num_channels`` and standardised to mean 0, SD 1 per image — the scale of
  ImageNet-normalised pixels. They are not natural images; say so when reporting.
- :func:`audio_batches` yields log-mel features of a **synthetic** clip (a chord of three harmonic
  tones with a slow vibrato plus white noise at −20 dB, 16 kHz), computed by transformers'
  ``WhisperFeatureExtractor`` built locally (no download). It is not speech; say so when reporting.
- :func:`probe_batches` picks among these for any loaded model (text, image, image+text, audio;
  decoder ids for encoder-decoders) and says in one line which input it used.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Iterator, NamedTuple

import torch
from torch import nn

__all__ = ["example_inputs", "image_batches", "audio_batches", "modality", "probe_batches", "ProbeInput"]

BATCH, SEQ, DEC_SEQ = 2, 11, 7  # primes: a token axis is never confused with a head or width axis


def _params(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def modality(model: nn.Module) -> str:
    """``"text"``, ``"image"``, ``"audio"`` or ``"image+text"`` from the model's forward arguments."""
    p = _params(model)
    if "input_features" in p:
        return "audio"
    if "pixel_values" in p:
        return "image+text" if "input_ids" in p else "image"
    return "text"


def _vision_config(config: Any) -> Any:
    return getattr(config, "vision_config", None) or config


def _frames(config: Any) -> int:
    """Mel frames Whisper's encoder requires: max_source_positions × the two conv strides (2 in all)."""
    return 2 * int(config.max_source_positions)


def example_inputs(model: nn.Module, *, batch: int = BATCH, seq: int = SEQ, generator: torch.Generator | None = None) -> Any:
    """A small random input for ``model``'s forward, or None when it cannot be built.

    HF models: ``input_ids`` (batch, seq) below the vocabulary size; ``pixel_values`` (batch,
    channels, image_size, image_size); ``input_features`` (batch, mel bins, frames); and
    ``decoder_input_ids`` (batch, 7) for encoder-decoder models. Other modules: a float tensor
    ``(batch, seq, d)`` with d the width of the first norm layer (``(seq, batch, d)`` when a layer
    says ``batch_first=False``).

    **Returns:** a dict of keyword arguments, a tensor (positional argument), or None.
    """
    g = generator or torch.Generator().manual_seed(0)
    config = getattr(model, "config", None)
    p = _params(model)
    emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if config is None and emb is not None and ("input_ids" in p or not any(is_norm(m) for m in _before(model, emb))):
        return {"input_ids": torch.randint(0, emb.num_embeddings, (batch, seq), generator=g)} if "input_ids" in p \
            else torch.randint(0, emb.num_embeddings, (batch, seq), generator=g)
    if config is None:
        d = _first_norm_width(model)
        if d is None:
            return None
        batch_first = all(getattr(m, "batch_first", True) for m in model.modules())
        shape = (batch, seq, d) if batch_first else (seq, batch, d)
        return torch.randn(*shape, generator=g)
    out: dict[str, torch.Tensor] = {}
    text = getattr(config, "text_config", None) or config
    vocab = getattr(text, "vocab_size", None)
    if "input_ids" in p and vocab:
        out["input_ids"] = torch.randint(3, max(4, min(int(vocab), 1000)), (batch, seq), generator=g)
    if "pixel_values" in p:
        vc = _vision_config(config)
        size = vc.image_size if isinstance(vc.image_size, int) else vc.image_size[0]
        out["pixel_values"] = torch.randn(batch, getattr(vc, "num_channels", 3), size, size, generator=g)
    if "input_features" in p:
        out["input_features"] = torch.randn(batch, config.num_mel_bins, _frames(config), generator=g)
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in p and vocab:
        out["decoder_input_ids"] = torch.randint(3, max(4, min(int(vocab), 1000)), (batch, DEC_SEQ), generator=g)
    if not out:
        return None
    dtype = next((q.dtype for q in model.parameters() if q.is_floating_point()), torch.float32)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}


def is_norm(m: nn.Module) -> bool:
    from .registry import is_norm_module

    return is_norm_module(m)


def _before(model: nn.Module, target: nn.Module) -> list[nn.Module]:
    """Modules registered before ``target`` (a proxy for 'runs before it')."""
    out = []
    for m in model.modules():
        if m is target:
            break
        out.append(m)
    return out


def _first_norm_width(model: nn.Module) -> int | None:
    from .registry import _width, is_norm_module

    for m in model.modules():
        if is_norm_module(m):
            return _width(m)
    return None


def image_batches(config: Any, *, n_images: int = 64, batch_size: int = 16) -> Iterator[dict[str, torch.Tensor]]:
    """Batches ``{"pixel_values": (b, C, H, W)}`` of scikit-learn's digits, sized for ``config``.

    Each 8×8 image (values 0–16) is upsampled bilinearly to ``image_size``, repeated over
    ``num_channels`` and standardised per image (mean 0, SD 1). Deterministic: the first
    ``n_images`` digits in the dataset's order.
    """
    from sklearn.datasets import load_digits

    vc = _vision_config(config)
    size = vc.image_size if isinstance(vc.image_size, int) else vc.image_size[0]
    imgs = torch.as_tensor(load_digits().images[:n_images], dtype=torch.float32).unsqueeze(1)
    imgs = nn.functional.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False)
    imgs = imgs.expand(-1, getattr(vc, "num_channels", 3), -1, -1)
    flat = imgs.reshape(imgs.shape[0], -1)
    imgs = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)).reshape(imgs.shape)
    for i in range(0, imgs.shape[0], batch_size):
        yield {"pixel_values": imgs[i : i + batch_size].contiguous()}


def synthetic_clip(seconds: float, *, rate: int = 16000, seed: int = 0) -> torch.Tensor:
    """A mono float clip: tones at 220, 277 and 330 Hz (3 harmonics each, 5 Hz vibrato) + noise at −20 dB."""
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    sig = torch.zeros_like(t)
    for f0 in (220.0, 277.18, 329.63):
        phase = 2 * math.pi * f0 * t + 0.5 * torch.sin(2 * math.pi * 5.0 * t)
        for h in (1, 2, 3):
            sig += torch.sin(h * phase) / h
    sig = sig / sig.abs().max()
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (sig + 0.1 * noise).to(torch.float32)


def audio_batches(config: Any, *, n_clips: int = 4, batch_size: int = 2) -> Iterator[dict[str, torch.Tensor]]:
    """Batches ``{"input_features": (b, mel bins, frames)}`` of synthetic clips, plus decoder ids for Whisper.

    Clip i is :func:`synthetic_clip` with seed i, as long as the encoder's window
    (frames × 10 ms). Decoder ids: ``decoder_start_token_id`` followed by 6 fixed ids.
    """
    from transformers import WhisperFeatureExtractor

    frames = _frames(config)
    fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16000, hop_length=160)
    clips = [synthetic_clip(frames / 100, seed=i).numpy() for i in range(n_clips)]
    feats = fe(clips, sampling_rate=16000, return_tensors="pt")["input_features"][..., :frames]
    start = getattr(config, "decoder_start_token_id", 0) or 0
    dec = torch.tensor([[start] + [min(3 + j, config.vocab_size - 1) for j in range(DEC_SEQ - 1)]])
    for i in range(0, n_clips, batch_size):
        f = feats[i : i + batch_size]
        yield {"input_features": f, "decoder_input_ids": dec.expand(f.shape[0], -1).contiguous()}


DEFAULT_TEXT = "CPython pydoc_data.topics prose"
N_DIGITS = 1797  # images in scikit-learn's digits


class ProbeInput(NamedTuple):
    """What :func:`probe_batches` returns.

    **Fields:** ``batches`` — an iterator for :func:`normscope.probe.run`; ``description`` — one
    line naming the input (for the report and ``stats.json``); ``total`` — the number of batches.
    """

    batches: Iterator[Any]
    description: str
    total: int


def _tokens_per_image(vc: Any) -> int:
    size = vc.image_size if isinstance(vc.image_size, int) else vc.image_size[0]
    patch = vc.patch_size if isinstance(vc.patch_size, int) else vc.patch_size[0]
    return (size // patch) ** 2 + 1  # patches + [CLS]


def _with_decoder_ids(batches: Iterator[torch.Tensor], start: int) -> Iterator[dict[str, torch.Tensor]]:
    """Token batches as ``{input_ids, decoder_input_ids}``: the decoder reads the same window shifted right."""
    for ids in batches:
        dec = torch.cat([torch.full_like(ids[:, :1], start), ids[:, :-1]], dim=1)
        yield {"input_ids": ids, "decoder_input_ids": dec}


def probe_batches(lm: Any, texts: Any, *, seq_len: int, max_tokens: int, batch_size: int = 8,
                  context: int | None = None, text_label: str = DEFAULT_TEXT) -> ProbeInput:
    """Probe inputs for any loaded model, by the modality of its forward (:func:`modality`).

    - **text**: :func:`normscope.models.text.token_batches` of ``texts`` (``seq_len``,
      ``max_tokens``, ``batch_size``, ``context`` as there); encoder-decoder models (T5) get
      ``decoder_input_ids`` = the same window shifted right behind ``decoder_start_token_id``.
    - **image** (ViT, a CLIP vision tower): :func:`image_batches`, enough digits for
      ``max_tokens`` patch tokens (at most the 1797 digits).
    - **image+text** (a full CLIP): each digits batch with a token window of ``texts`` (capped at
      the text tower's context); needs ``lm.tokenizer``.
    - **audio** (Whisper): :func:`audio_batches`, enough synthetic clips for ``max_tokens``
      encoder positions, with decoder ids.

    **Arguments:** ``lm`` — a :class:`normscope.models.LoadedModel` (or any object with
    ``.model`` and ``.tokenizer``, or a bare model); ``texts`` — strings for text models;
    ``text_label`` — how to name ``texts`` in the description.

    **Returns:** a :class:`ProbeInput` ``(batches, description, total)``.
    """
    from . import text as nt

    model = getattr(lm, "model", lm)
    tokenizer = getattr(lm, "tokenizer", None)
    config = getattr(model, "config", None)
    kind = modality(model)
    if kind == "audio":
        n = max(1, math.ceil(max_tokens / int(config.max_source_positions)))
        desc = f"synthetic tones + noise, 16 kHz ({n} clip(s) of {_frames(config) / 100:g} s, log-mel; not speech)"
        return ProbeInput(audio_batches(config, n_clips=n, batch_size=batch_size), desc, math.ceil(n / batch_size))
    if kind in ("image", "image+text"):
        vc = _vision_config(config)
        n = min(N_DIGITS, max(1, math.ceil(max_tokens / _tokens_per_image(vc))))
        size = vc.image_size if isinstance(vc.image_size, int) else vc.image_size[0]
        desc = f"scikit-learn digits, 8×8 upsampled to {size}×{size} ({n} images; not natural images)"
        images = image_batches(config, n_images=n, batch_size=batch_size)
        total = math.ceil(n / batch_size)
        if kind == "image":
            return ProbeInput(images, desc, total)
        if tokenizer is None:
            raise ValueError(f"{type(model).__name__} reads images and text but no tokenizer was loaded with it; "
                             "load it with normscope.models.load (or pass an object with .model and .tokenizer)")
        tc = getattr(config, "text_config", config)
        tlen = min(seq_len, int(getattr(tc, "max_position_embeddings", seq_len)))
        windows = nt.token_batches(tokenizer, texts, seq_len=tlen, batch_size=batch_size)
        pairs = ({**img, "input_ids": ids} for img, ids in zip(images, windows))
        return ProbeInput(pairs, f"{desc}, paired with {text_label} in windows of {tlen} tokens", total)
    if tokenizer is None:
        raise ValueError(f"{type(model).__name__} reads token ids but no tokenizer was loaded with it; "
                         "load it with normscope.models.load (or pass an object with .model and .tokenizer)")
    batches = nt.token_batches(tokenizer, texts, seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size,
                               context=context)
    total = math.ceil(max_tokens / (seq_len * batch_size))
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in _params(model):
        start = getattr(config, "decoder_start_token_id", None) or 0
        return ProbeInput(_with_decoder_ids(batches, start), f"{text_label} (decoder reads the window shifted right)",
                          total)
    return ProbeInput(batches, text_label, total)
