"""A probe run split over 2 gloo processes equals a one-process run on the same data."""

import json
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from normscope.probe import run, shard

pytestmark = pytest.mark.distributed


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.mix = nn.Linear(d, d)
        self.ln_2 = nn.RMSNorm(d, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, h):
        h = h + self.mix(self.ln_1(h)).cumsum(1) / torch.arange(1, h.shape[1] + 1)[:, None]  # causal mixing
        return h + self.mlp(self.ln_2(h))


class _TinyLM(nn.Module):
    """Plain-torch pre-LN toy LM (spawned workers then need not import transformers)."""

    def __init__(self, d=32, vocab=61):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([_Block(d), _Block(d)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, input_ids):
        h = self.emb(input_ids)
        for blk in self.layers:
            h = blk(h)
        return self.ln_f(h)


def _model():
    torch.manual_seed(0)
    model = _TinyLM()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "ln" in n:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _batches():
    gen = torch.Generator().manual_seed(11)
    return [torch.randint(0, 61, (2, 8 + i), generator=gen) for i in range(5)]


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # toy architecture: not in the registry
            stats = run(_model(), shard(_batches()), skip_first=True, progress=False)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(stats, f)
    finally:
        dist.destroy_process_group()


def _walk(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k != "world_size":
                _walk(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_two_process_gloo_equals_single(tmp_path, one_thread):
    store, out = str(tmp_path / "store"), str(tmp_path / "stats")
    mp.spawn(_worker, args=(2, store, out), nprocs=2, join=True)
    with pytest.warns(UserWarning, match="registry"):
        single = json.loads(json.dumps(run(_model(), _batches(), skip_first=True, progress=False)))
    r0 = json.load(open(f"{out}.0"))
    r1 = json.load(open(f"{out}.1"))
    assert r0["models"][0]["world_size"] == 2
    assert [la["kind"] for la in r0["models"][0]["layers"]] == ["layernorm", "rmsnorm"] * 2 + ["layernorm"]
    assert r0["models"][0]["tokens"] == single["models"][0]["tokens"] == sum(2 * (7 + i) for i in range(5))
    _walk(r0, r1)  # every rank returns the merged result
    _walk(single, r0)  # ... which equals one process over all batches (counts, hists exact; floats to rounding)
