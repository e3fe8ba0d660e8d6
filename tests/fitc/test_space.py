"""The search's weight quantizer equals Brevitas bit for bit; the space and the cost models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fitc.artifacts import Budget, LayerPlan
from fitc.cost import BopsCost, CostModel, SizeCost, cost_for
from fitc.errors import ConfigError
from fitc.space import DEFAULT_PRUNE_LEVELS, SearchSpace, quantize_weight, weight_scale

brevitas_nn = pytest.importorskip("brevitas.nn")
from brevitas.quant import Int8WeightPerTensorFixedPoint  # noqa: E402

BITS = (2, 3, 4, 5, 6, 7, 8, 12, 16)


def _weights(seed: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for mag in (1e-6, 3e-3, 0.07, 0.5, 1.0, 13.0, 900.0):
        w = torch.randn(shape, generator=g) * mag
        out.append(w)
        out.append(w * (torch.rand(shape, generator=g) > 0.7))  # ~70 % pruned
    edge = torch.randn(shape, generator=g)
    edge = edge / edge.abs().max()  # max |w| exactly 1 (a power of two)
    out.append(edge)
    out.append(edge * 0.75)
    out.append(torch.zeros(shape))  # fully pruned
    one = torch.zeros(shape)
    one.view(-1)[3] = -0.3  # a single survivor
    out.append(one)
    return out


def _brevitas(layer: torch.nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        layer.weight.copy_(w)
    qw = layer.quant_weight()
    return qw.value.detach(), qw.scale.detach().reshape(())


@pytest.mark.parametrize("bits", BITS)
def test_quantize_weight_equals_brevitas_linear(bits):
    layer = brevitas_nn.QuantLinear(
        12, 5, bias=False, weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=bits
    )
    for w in _weights(bits, (5, 12)):
        value, scale = _brevitas(layer, w)
        assert torch.equal(quantize_weight(w, bits), value), (bits, w.abs().max())
        assert torch.equal(weight_scale(w, bits), scale)


@pytest.mark.parametrize("bits", (2, 4, 8))
def test_quantize_weight_equals_brevitas_conv_masked(bits):
    layer = brevitas_nn.QuantConv2d(
        3, 4, 3, bias=False, weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=bits
    )
    for w in _weights(100 + bits, (4, 3, 3, 3)):
        mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(bits)) > 0.5
        value, _ = _brevitas(layer, w * mask)
        q = quantize_weight(w * mask, bits)
        assert torch.equal(q, value)
        assert not q[~mask].any()  # pruned weights stay exactly zero


def test_quantizer_is_symmetric_narrow_range_power_of_two():
    w = torch.linspace(-1.0, 1.0, 101)
    for bits in (2, 3, 8):
        s = float(weight_scale(w, bits))
        assert math.log2(s).is_integer()
        q = quantize_weight(w, bits) / s
        n = 2 ** (bits - 1) - 1
        assert q.min() == -n and q.max() == n
        assert torch.equal(q, torch.round(q))
    with pytest.raises(ConfigError, match="2..32"):
        quantize_weight(w, 1)


def test_search_space_defaults_and_normalisation():
    sp = SearchSpace()
    assert sp.weight_bits == (8, 7, 6, 5, 4, 3, 2)
    assert sp.act_bits == (8,)
    assert len(sp.prune_levels) == 40 and sp.prune_levels[0] == 0.0
    assert sp.prune_levels == DEFAULT_PRUNE_LEVELS
    assert np.allclose(sp.prune_levels, 1 - np.logspace(0, -3, 40))
    assert sp.per_layer_prune is False
    sp2 = SearchSpace(weight_bits=(2, 8, 4, 4), act_bits=(6, 8), prune_levels=(0.5, 0.25))
    assert sp2.weight_bits == (8, 4, 2) and sp2.act_bits == (8, 6)
    assert sp2.prune_levels == (0.0, 0.25, 0.5)
    for bad in (dict(weight_bits=()), dict(weight_bits=(8, 1)), dict(prune_levels=(0.2, 1.0))):
        with pytest.raises(ConfigError):
            SearchSpace(**bad)


def _lp(name, kind, wb, ab, n, nnz, fan_in, pos=1):
    return LayerPlan(name, kind, wb, ab, n, nnz, fan_in, pos)


def test_size_and_bops_costs_by_hand():
    layers = [
        _lp("c", "conv2d", 4, 8, 8 * 3 * 9, 100, 27, 36),
        _lp("f", "linear", 2, 6, 640, 64, 64),
    ]
    size = (100 * 4 + 64 * 2) / ((216 + 640) * 32)
    assert SizeCost()(layers) == pytest.approx(size, rel=1e-15)

    def bops(n, pos, p, ba, bw, fan):
        return n * pos * (p * ba * bw + ba + bw + math.log2(fan))

    num = bops(216, 36, 100 / 216, 8, 4, 27) + bops(640, 1, 64 / 640, 6, 2, 64)
    den = bops(216, 36, 1, 32, 32, 27) + bops(640, 1, 1, 32, 32, 64)
    assert BopsCost()(layers) == pytest.approx(num / den, rel=1e-12)
    dense32 = [_lp("f", "linear", 32, 32, 640, 640, 64)]
    assert SizeCost()(dense32) == 1.0 and BopsCost()(dense32) == 1.0


def test_cost_for_budget_kinds():
    assert isinstance(cost_for(Budget("size", 0.1)), SizeCost)
    assert isinstance(cost_for(Budget("bops", 0.1)), BopsCost)
    # the cost model of a budget measures that budget's kind: values recomputed by hand
    layers = [
        _lp("c", "conv2d", 4, 8, 8 * 3 * 9, 100, 27, 36),
        _lp("f", "linear", 3, 6, 640, 64, 64),
    ]
    size = (100 * 4 + 64 * 3) / ((216 + 640) * 32)
    num = 216 * 36 * (100 / 216 * 8 * 4 + 8 + 4 + math.log2(27)) + 640 * (
        64 / 640 * 6 * 3 + 6 + 3 + 6
    )
    den = 216 * 36 * (32 * 32 + 64 + math.log2(27)) + 640 * (32 * 32 + 64 + 6)
    for kind, want in (("size", size), ("bops", num / den)):
        model = cost_for(Budget(kind, 0.1))
        assert isinstance(model, CostModel) and model.kind == kind
        assert model(layers) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ConfigError, match="cost=") as e:
        cost_for(Budget("lut", 1000))
    assert "lut" in str(e.value)
