"""One check recognises normscope's model outputs: ``models.load`` and ``surgery.load_any`` accept every kind.

Kinds: ``normscope convert`` (records ``normscope_conversion``), ``normscope fold`` of an RMSNorm
model (only ``normscope_fold``: before the shared check, ``models.load`` read it as a plain HF
folder with the stock norms) and of a LayerNorm model (both records), ``fold --streaming``, and a
conversion written by the Python API (no ``manifest.json``: ``models.load`` used to require one).

Tolerances: the same model read twice from the same files gives identical logits (0); against the
source model, the float32 bounds of convert/fold (≤ 1e-4, see tests/test_fold.py).
"""

from __future__ import annotations

import os

import pytest
import torch
import transformers as T

from conftest import make_gpt2, make_llama, run_command as cli, save_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T.logging.set_verbosity_error()

VOCAB = 257  # the byte-level tokenizer of normscope.models.tiny


def _perturbed(m: torch.nn.Module) -> torch.nn.Module:
    """Norm gains away from 1 (and LayerNorm biases away from 0) so that converting or folding changes weights."""
    with torch.no_grad():
        for mod in m.modules():
            if type(mod).__name__.endswith(("LayerNorm", "RMSNorm")):
                mod.weight.uniform_(0.5, 1.5)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.normal_(0, 0.2)
    return m


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """{kind: (output folder, source model)} for every kind of normscope output."""
    from normscope.convert import to_rmsnorm, write

    root = tmp_path_factory.mktemp("outputs")
    gpt2 = _perturbed(make_gpt2(vocab=VOCAB, bos_token_id=256, eos_token_id=256))
    llama = _perturbed(make_llama(vocab=VOCAB, max_position_embeddings=64))
    src_gpt2, src_llama = save_model(gpt2, root / "gpt2"), save_model(llama, root / "llama")
    small = ("--seq-len", "16", "--max-tokens", "32")
    assert cli("convert", str(src_gpt2), str(root / "convert"), *small) == 0
    assert cli("fold", str(src_llama), str(root / "fold_rms"), *small) == 0
    assert cli("fold", str(src_gpt2), str(root / "fold_ln"), *small) == 0
    assert cli("fold", str(src_llama), str(root / "fold_streamed"), "--streaming", *small) == 0
    api = root / "convert_api"
    api.mkdir()
    write(to_rmsnorm(gpt2), api, tokenizer=T.AutoTokenizer.from_pretrained(src_gpt2))
    assert not (api / "manifest.json").exists()
    return {"source_gpt2": (src_gpt2, gpt2), "source_llama": (src_llama, llama), "convert": (root / "convert", gpt2),
            "fold_rms": (root / "fold_rms", llama), "fold_ln": (root / "fold_ln", gpt2),
            "fold_streamed": (root / "fold_streamed", llama), "convert_api": (api, gpt2)}


def test_check_tells_outputs_from_plain_folders(outputs, tmp_path):
    from normscope.models.loading import is_normscope_output

    assert not is_normscope_output(outputs["source_gpt2"][0]) and not is_normscope_output(outputs["source_llama"][0])
    assert all(is_normscope_output(folder) for k, (folder, _) in outputs.items() if not k.startswith("source"))
    assert not is_normscope_output(tmp_path / "missing") and not is_normscope_output("minilm")
    (tmp_path / "config.json").write_text('{"normscope_fold": "not a record"')  # truncated JSON
    assert not is_normscope_output(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "note": "\\"normscope_ mentioned in a string"}')
    assert not is_normscope_output(tmp_path)  # the old substring sniff in load_any took this for an output


@pytest.mark.parametrize("kind", ["convert", "fold_rms", "fold_ln", "fold_streamed", "convert_api"])
def test_models_load_and_load_any_accept_every_output(outputs, kind):
    from normscope.convert import compare
    from normscope.models import load
    from normscope.nn import RMSNorm
    from normscope.surgery.verification import load_any

    folder, source = outputs[kind]
    lm = load(folder)
    any_ = load_any(str(folder))
    assert lm.tokenizer is not None and type(lm.model) is type(any_) is type(source)
    cfg = lm.model.config
    conv, fold = getattr(cfg, "normscope_conversion", None), getattr(cfg, "normscope_fold", None)
    assert (conv is not None) == (kind != "fold_rms" and kind != "fold_streamed") and (fold is not None) == ("fold" in kind)
    # the converted / folded norms are normscope's RMSNorm in both (the stock LlamaRMSNorm before, for fold_rms)
    names = conv["norms"] if conv else fold["folded"]
    for m in (lm.model, any_):
        assert all(isinstance(m.get_submodule(n), RMSNorm) for n in names), kind
    ids = [torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))]
    assert compare(lm.model, any_, ids)["max_abs_dlogits"] == 0.0
    assert compare(source, lm.model, ids)["max_abs_dlogits"] <= 1e-4


def test_outputs_load_onto_one_device_and_refuse_sharding(outputs):
    """``device_map`` naming one device moves the loaded output there; a per-module map is refused
    in one line naming the folder (these outputs are rebuilt by normscope, not by accelerate)."""
    from normscope import models

    folder = outputs["fold_rms"][0]
    lm = models.load(str(folder), device_map="cpu")
    assert {p.device.type for p in lm.model.parameters()} == {"cpu"}
    with pytest.raises(ValueError, match=r"loads on one device; pass device_map as one device") as err:
        models.load(str(folder), device_map={"": "cpu"})
    assert str(folder) in str(err.value) and "\n" not in str(err.value)
    if torch.cuda.is_available():
        assert next(models.load(str(folder), device_map="cuda").model.parameters()).is_cuda
