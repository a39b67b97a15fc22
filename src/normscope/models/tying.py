"""Tied input embedding and unembedding: detect the tie, and untie before one side is changed.

Many language models store one matrix for the token embedding E and the unembedding
(``lm_head.weight is embed_tokens.weight``; ``config.tie_word_embeddings``). A transformation
that must change only one of them (writer centring changes E, ``docs/convert.md``; folding the
final norm's gain changes the unembedding, ``docs/fold.md``) first gives the unembedding its own
copy, and clears the config flag so that neither ``save_pretrained`` nor the stock loader ties
them again. Shared by :mod:`normscope.convert.exact`, :mod:`normscope.surgery.folding` and
(config only) :mod:`normscope.surgery.stream`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["tied_to_input", "untie_config", "untie_embedding"]


def tied_to_input(model: nn.Module, reader: nn.Module) -> bool:
    """Whether ``reader.weight`` is the storage of ``model``'s input-embedding matrix.

    **Arguments:**

    - ``model``: an HF model (``get_input_embeddings``); a model without one has no tie.
    - ``reader``: a submodule of ``model`` (a module without a ``weight`` is never tied). On
      the meta device (shapes only, no storage) the parameters themselves are compared.

    **Returns:** True if the two share storage.
    """
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    w = getattr(reader, "weight", None)
    if emb is None or w is None:
        return False
    if w.is_meta:
        return w is emb.weight
    return w.data_ptr() == emb.weight.data_ptr()


def untie_config(config: Any) -> None:
    """Set ``tie_word_embeddings = False`` on ``config`` and on its text config (composite models).

    **Arguments:** ``config`` — an HF ``PretrainedConfig``, changed in place.
    """
    config.tie_word_embeddings = False
    if hasattr(config, "get_text_config"):
        config.get_text_config().tie_word_embeddings = False


def untie_embedding(model: nn.Module, reader: nn.Module) -> int:
    """Give ``reader`` its own copy of ``model``'s input-embedding matrix, if they share one.

    Why: a change to one of two tied matrices silently changes the other; a checkpoint
    written with the tie flag set would be tied again on loading. So the copy gets a new
    ``nn.Parameter`` (same values, dtype, device, ``requires_grad``), the config flag is
    cleared (:func:`untie_config`) and transformers' list of tied keys is rebuilt
    (``all_tied_weights_keys``, transformers ≥ 5) so ``tie_weights`` does not re-tie them.

    **Arguments:**

    - ``model``: an HF model, changed in place.
    - ``reader``: the module reading the tied matrix (the unembedding, ``lm_head``).

    **Returns:** the bytes the copy adds (``numel × element_size``), or 0 if ``reader`` was
    not tied to the input embedding (then nothing is changed).
    """
    if not tied_to_input(model, reader):
        return 0
    emb = model.get_input_embeddings()
    reader.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    untie_config(model.config)
    if hasattr(model, "get_expanded_tied_weights_keys"):
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    return reader.weight.numel() * reader.weight.element_size()
