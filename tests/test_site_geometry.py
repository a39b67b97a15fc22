"""``normscope.probe.layer_geometry``: every layer gets a geometry record, never an exception."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from normscope.geometry import LayerNormGeometry
from normscope.models import find_norms
from normscope.probe import layer_geometry, run

pytestmark = pytest.mark.filterwarnings("ignore:architecture .* is not in normscope.s registry")


class _Tiny(nn.Module):
    """Embedding → LayerNorm (gain set by the test) → LayerNorm (healthy) → linear head."""

    def __init__(self, gain, d=8, vocab=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.bad = nn.LayerNorm(d)
        self.good = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        with torch.no_grad():
            self.bad.weight.copy_(torch.as_tensor(gain, dtype=torch.float32))
            self.good.weight.copy_(torch.linspace(1.1, 2.0, d))  # all > 1: used to crash dlaed4 at d >= 64

    def forward(self, input_ids):
        return self.head(self.good(self.bad(self.emb(input_ids)) + self.emb(input_ids)))


def _probe(model):
    sites = find_norms(model)
    batches = [torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(0))]
    stats = run(model, batches, progress=False, sites=sites, name="tiny")
    return {la["name"]: la for la in stats["models"][0]["layers"]}


@pytest.mark.parametrize(
    "gain, reason",
    [
        (np.zeros(8), r"^tiny: bad: gain is all zero, .*check that the layer's weights were loaded$"),
        (np.r_[1.0, np.nan, np.ones(6)], r"^tiny: bad: gain has 1 NaN/Inf value\(s\) out of 8; .*corrupt"),
        (np.r_[np.inf, np.ones(7)], r"^tiny: bad: gain has 1 NaN/Inf value\(s\) out of 8; "),
    ],
    ids=["all_zero", "nan", "inf"],
)
def test_unmeasurable_layer_is_recorded_not_raised(gain, reason):
    import re

    layers = _probe(_Tiny(gain))
    geo = layers["bad"]["geometry"]
    assert set(geo) == {"status", "reason"} and geo["status"] == "not measured"
    assert re.search(reason, geo["reason"]), geo["reason"]
    good = layers["good"]["geometry"]  # the other layer is measured as usual
    assert "status" not in good and good["ellipsoid_dim"] == 7
    np.testing.assert_allclose(good["semi_axis_max"], LayerNormGeometry(np.linspace(1.1, 2.0, 8)).axes()[0])


def test_normal_record_keys_and_values():
    g = torch.linspace(1.01, 2.0, 768)  # gains all above 1 at a real width: the crash of issue 9 §1
    ln = nn.LayerNorm(768)
    with torch.no_grad():
        ln.weight.copy_(g)
        ln.bias.copy_(torch.linspace(-0.1, 0.1, 768))
    site = find_norms(nn.Sequential(ln))[0]
    geo = layer_geometry(site)
    assert set(geo) == {"d", "eps", "gain", "bias_norm", "semi_axis_max", "semi_axis_min", "semi_axis_ratio",
                        "ellipsoid_dim", "offset", "offset_normalized"}
    ref = LayerNormGeometry(g.double(), ln.bias.detach().double())
    axes = ref.axes()
    assert geo["semi_axis_max"] == axes[0] and geo["semi_axis_min"] == axes[-1]
    assert geo["semi_axis_ratio"] == axes[0] / axes[-1] and geo["ellipsoid_dim"] == 767
    assert geo["offset"] == ref.offset and geo["offset_normalized"] == ref.plane_distance
    assert math.isfinite(geo["bias_norm"]) and geo["gain"]["min_abs"] == pytest.approx(1.01)


def test_zero_gain_layer_is_measured_without_offset():
    ln = nn.LayerNorm(6)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([0.0, 1.0, 2.0, 0.0, 1.5, 3.0]))
    geo = layer_geometry(find_norms(nn.Sequential(ln))[0])
    assert geo["offset"] is None and geo["offset_normalized"] is None
    assert geo["semi_axis_min"] > 0  # N − k = 4 positive axes
    assert geo["ellipsoid_dim"] == 4  # not N − 1: each zero gain removes a dimension (Riechers §3)


def test_zero_gain_rmsnorm_drops_those_axes():
    rms = nn.RMSNorm(5)
    with torch.no_grad():
        rms.weight.copy_(torch.tensor([0.0, 1.0, 2.0, 0.0, 0.5]))
    geo = layer_geometry(find_norms(nn.Sequential(rms))[0])
    assert geo["ellipsoid_dim"] == 3
    assert geo["semi_axis_max"] == pytest.approx(2 * math.sqrt(5)) and geo["semi_axis_min"] == pytest.approx(0.5 * math.sqrt(5))
    assert geo["semi_axis_ratio"] == pytest.approx(4.0)


def test_import_paths():
    from normscope.probe import layer_geometry as a
    from normscope.probe.runner import layer_geometry as b
    from normscope.probe.site_geometry import layer_geometry as c

    assert a is b is c
