"""Any ``.gguf`` path is dequantised once into a cache (parsed once) and reloaded from it."""

from __future__ import annotations

import os
import time

import pytest
import torch

from normscope.models import load, loading

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.real_weights
def test_gguf_path_is_cached_and_parsed_once(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    try:
        gguf = loading._smollm2_gguf()
    except ValueError as e:
        pytest.skip(str(e))
    monkeypatch.setenv("NORMSCOPE_CACHE", str(tmp_path))
    import gguf as g

    parses = []
    real = g.GGUFReader

    class Counting(real):
        def __init__(self, *a, **k):
            parses.append(a[0])
            super().__init__(*a, **k)

    monkeypatch.setattr(g, "GGUFReader", Counting)
    t0 = time.perf_counter()
    first = load(str(gguf))
    cold = time.perf_counter() - t0
    assert len(parses) == 1, f"the GGUF was parsed {len(parses)} times"
    assert g.GGUFReader is Counting  # restored after the build
    folder = loading._gguf_cache_folder(gguf)
    assert (folder / "model.safetensors").is_file() and "cached in" in first.source
    t0 = time.perf_counter()
    second = load(str(gguf))
    warm = time.perf_counter() - t0
    assert len(parses) == 1  # the second load reads the cache, not the GGUF
    assert warm < cold
    # same weights as the packaged smollm2 path (identical dequantisation)
    sd1, sd2 = first.model.state_dict(), second.model.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    ids = first.tokenizer("hello world")["input_ids"]
    assert ids == second.tokenizer("hello world")["input_ids"] and len(ids) > 0


@pytest.mark.parametrize("kind", ["random bytes", "short header", "cut after 3 MB"])
def test_hostile_gguf_fails_in_one_line_before_caching(tmp_path, monkeypatch, kind):
    """A .gguf that is not one, whose header is cut, or whose tensor data is cut: one ValueError
    naming the file and the fix, and no cache folder left behind."""
    pytest.importorskip("gguf")
    monkeypatch.setenv("NORMSCOPE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "model.gguf"
    if kind == "random bytes":
        bad.write_bytes(os.urandom(5000))
        want = "not a GGUF file"
    elif kind == "short header":
        bad.write_bytes(b"GGUF\x03\x00\x00\x00")
        want = "truncated GGUF file"
    else:
        try:
            src = loading._smollm2_gguf()
        except ValueError as e:
            pytest.skip(str(e))
        with open(src, "rb") as f:
            bad.write_bytes(f.read(3_000_000))
        want = "corrupt or truncated GGUF file"
    with pytest.raises(ValueError, match=want) as err:
        load(str(bad))
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(p.name.startswith("model") for p in (cache / "gguf").glob("*"))
