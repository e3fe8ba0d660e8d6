"""The fast resource models cost the firmware each strategy builds, calibrated to Yosys netlists
(``bench/resource_calibration.py``, cache ``bench/yosys_cache.json``), and every report says for
which firmware it was produced and on what basis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fitc.artifacts import Budget, CompressionPlan, HardwareConfig, LayerPlan, ResourceReport
from fitc.backends.resources import (
    ANALYTICAL_CALIBRATION,
    DA4ML_CALIBRATION,
    STRATEGY_KEYS,
    AnalyticalModel,
    Da4mlModel,
    StrategyCalibration,
    firmware_label,
    generic_mult_luts,
    strategy_key,
)
from fitc.errors import ConfigError

CACHE = Path(__file__).resolve().parents[2] / "bench" / "yosys_cache.json"

LAT = HardwareConfig(strategy="Latency")
DA = HardwareConfig(strategy="distributed_arithmetic")
RTL = HardwareConfig(backend="rtl", strategy="distributed_arithmetic")


def res(rf: int) -> HardwareConfig:
    return HardwareConfig(strategy="Resource", reuse_factor=rf)


def _weights(rng, shape, bits, density):
    q = rng.integers(-(2 ** (bits - 1) - 1), 2 ** (bits - 1), size=shape)
    return np.where(rng.random(shape) < density, q, 0).astype(np.int64)


def _mlp(seed: int = 0, bits=(6, 4), density=(0.5, 0.7)):
    rng = np.random.default_rng(seed)
    w1 = _weights(rng, (16, 24), bits[0], density[0])
    w2 = _weights(rng, (8, 16), bits[1], density[1])
    layers = (
        LayerPlan("fc1", "linear", bits[0], 6, w1.size, int(np.count_nonzero(w1)), 24),
        LayerPlan("fc2", "linear", bits[1], 5, w2.size, int(np.count_nonzero(w2)), 16),
    )
    return CompressionPlan("t", layers, Budget("lut", 1e4), 0.0, 0.0), {"fc1": w1, "fc2": w2}


def _conv(seed: int = 1):
    rng = np.random.default_rng(seed)
    w = _weights(rng, (8, 4, 3, 3), 4, 0.5)
    lp = LayerPlan("c", "conv2d", 4, 5, w.size, int(np.count_nonzero(w)), 36, 16)
    return CompressionPlan("t", (lp,), Budget("lut", 1e4), 0.0, 0.0), {"c": w}


# ------------------------------------------------------------------------------------------------
# Which firmware


def test_strategy_keys_and_labels():
    assert strategy_key(LAT) == "Latency" and firmware_label(LAT) == "hls4ml Latency"
    assert strategy_key(DA) == "distributed_arithmetic"
    assert strategy_key(RTL) == "rtl" and firmware_label(RTL) == "rtl"
    assert strategy_key(res(1)) == "Latency"  # HLS unrolls constant multiplies at RF 1
    assert strategy_key(res(4)) == "Resource" and firmware_label(res(4)) == "hls4ml Resource RF=4"
    assert firmware_label(HardwareConfig(reuse_factor=2)) == "hls4ml Latency RF=2"


def test_shipped_tables_cover_every_strategy_with_measured_constants():
    for table in (ANALYTICAL_CALIBRATION, DA4ML_CALIBRATION):
        assert set(table) == set(STRATEGY_KEYS)
        for key, cal in table.items():
            assert cal.measured, key  # says what it was measured on
            # RTL is what Yosys builds: no margin; hls4ml strategies are mapped by HLS: a margin ≥ 1
            assert cal.margin == 1.0 if key == "rtl" else cal.margin >= 1.0, key
            if key != "rtl":
                assert cal.note, key  # says what the model cannot know
    with pytest.raises(ConfigError, match="margin"):
        StrategyCalibration(margin=0.0)


# ------------------------------------------------------------------------------------------------
# Strategies cost differently


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latency_costs_at_least_distributed_arithmetic(seed):
    plan, w = _mlp(seed)
    for model, kw in ((AnalyticalModel(), {}), (Da4mlModel(), {"weights": w})):
        lat = model.estimate(plan, LAT, **kw)
        da = model.estimate(plan, DA, **kw)
        assert lat.lut >= da.lut > 0, model.name
        # and without any calibration the unshared structure alone already costs more
        raw = type(model)(strategies={})
        assert raw.estimate(plan, LAT, **kw).lut >= raw.estimate(plan, DA, **kw).lut


def test_da4ml_latency_solves_without_sharing():
    plan, w = _mlp(0, bits=(8, 8), density=(1.0, 1.0))
    m = Da4mlModel(strategies={})
    shared = m.solve(w["fc1"], (True, 5, 0))[0]
    unshared = m.solve(w["fc1"], (True, 5, 0), shared=False)[0]
    assert unshared > 1.1 * shared  # dense 8-bit weights share a lot
    lat = m.estimate(plan, LAT, weights=w).layers[0]
    da = m.estimate(plan, DA, weights=w).layers[0]
    assert lat.lut - da.lut == pytest.approx(unshared - shared)


def test_margin_and_scales_are_applied():
    plan, w = _mlp(3)
    base = AnalyticalModel(strategies={"Latency": StrategyCalibration()})
    scaled = AnalyticalModel(strategies={"Latency": StrategyCalibration(margin=1.5, ff=2.0)})
    assert scaled.estimate(plan, LAT).lut == pytest.approx(1.5 * base.estimate(plan, LAT).lut)
    assert scaled.estimate(plan, LAT).ff == pytest.approx(2.0 * base.estimate(plan, LAT).ff)
    # only the strategy it is for
    assert scaled.estimate(plan, DA).lut == base.estimate(plan, DA).lut
    arith = AnalyticalModel(strategies={"Latency": StrategyCalibration(arith=2.0)})
    d = Da4mlModel(strategies={"Latency": StrategyCalibration(arith=2.0)})
    d0 = Da4mlModel(strategies={})
    # the last layer has no activation: its LUT is all arithmetic
    assert d.estimate(plan, LAT, weights=w).layers[1].lut == pytest.approx(
        2.0 * d0.estimate(plan, LAT, weights=w).layers[1].lut
    )
    assert arith.estimate(plan, LAT).layers[1].lut == pytest.approx(
        2.0 * AnalyticalModel(strategies={}).estimate(plan, LAT).layers[1].lut
    )
    # the shipped model applies its table
    shipped = AnalyticalModel()
    cal = ANALYTICAL_CALIBRATION["Latency"]
    assert shipped.estimate(plan, LAT).layers[1].lut == pytest.approx(
        cal.margin * cal.arith * AnalyticalModel(strategies={}).estimate(plan, LAT).layers[1].lut
    )


def test_rtl_unrolls_every_conv_position():
    plan, w = _conv()
    for model, kw in (
        (AnalyticalModel(strategies={}), {}),
        (Da4mlModel(strategies={}), {"weights": w}),
    ):
        rtl = model.estimate(plan, RTL, **kw)
        da = model.estimate(plan, DA, **kw)
        assert rtl.lut == pytest.approx(16 * da.lut)  # one layer, no activation after it
        assert rtl.initiation_interval_cycles == 1 and da.initiation_interval_cycles == 16
        assert rtl.dsp == 0


def test_resource_reuse_factor_divides_multipliers():
    plan, _ = _mlp(0, bits=(6, 6), density=(1.0, 1.0))
    m = AnalyticalModel()
    luts = [m.estimate(plan, res(rf)).lut for rf in (2, 4, 8)]
    assert luts[0] > luts[1] > luts[2] > 0
    assert generic_mult_luts(8, 8) > generic_mult_luts(4, 8) > generic_mult_luts(2, 3) > 0


# ------------------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize("hw", [LAT, DA, RTL, res(4)], ids=["lat", "da", "rtl", "res4"])
def test_reports_say_which_model_and_firmware(hw):
    plan, w = _mlp(4)
    for model, kw in ((AnalyticalModel(), {}), (Da4mlModel(), {"weights": w})):
        r = model.estimate(plan, hw, **kw)
        assert r.source == model.name
        assert r.firmware == firmware_label(hw)
        assert r.basis.startswith(f"{model.name}: ") and "×" in r.basis
        if strategy_key(hw) != "rtl":
            assert r.note  # what the model cannot know about HLS
        assert ResourceReport.from_dict(r.to_dict()) == r
        assert json.loads(json.dumps(r.to_dict()))["firmware"] == r.firmware


def test_old_reports_without_labels_still_read():
    plan, _ = _mlp(5)
    d = AnalyticalModel().estimate(plan, LAT).to_dict()
    for k in ("firmware", "basis", "note"):
        d.pop(k)
    old = ResourceReport.from_dict(d)
    assert (old.firmware, old.basis, old.note) == ("", "", "")
    assert old.lut == AnalyticalModel().estimate(plan, LAT).lut


def test_per_layer_loop_calibration_composes_with_the_strategy_calibration():
    plan, _ = _mlp(6)
    m = AnalyticalModel()
    raw = m.layer_numbers(plan.layers, LAT, calibrated=False)
    c = m.calibrated({"fc1": 2.0})
    got = c.layer_numbers(plan.layers, LAT)
    assert got[0].lut == pytest.approx(2.0 * raw[0].lut) and got[1].lut == raw[1].lut
    assert "closed loop" in c.estimate(plan, LAT).basis


# ------------------------------------------------------------------------------------------------
# The measurements behind the constants


def test_yosys_cache_holds_the_calibration_designs():
    data = json.loads(CACHE.read_text())["entries"]
    shared = [e for e in data.values() if e.get("variant") == "shared"]
    assert len(shared) >= 20
    assert {e["model"] for e in shared} == {"digits-mlp", "jet-mlp", "digits-cnn"}
    assert any(e.get("variant") == "unshared" for e in data.values())
    assert any(e.get("variant") == "pipe" and e["ff"] > 0 for e in data.values())
    for e in shared:
        assert e["lut"] > 0 and e["ff"] == 0  # combinational


# ------------------------------------------------------------------------------------------------
# Dead logic


def test_live_weights_removes_unread_outputs_and_constant_inputs():
    from fitc.backends.resources.adder_graph import live_weights

    plan, w = _mlp(7, bits=(6, 6), density=(1.0, 1.0))
    w = {k: v.copy() for k, v in w.items()}
    w["fc2"][:, 3] = 0  # nobody reads fc1's output 3
    w["fc1"][5, :] = 0  # fc1's output 5 is a constant
    live = live_weights(plan.layers, w)
    assert not live["fc1"][3].any() and w["fc1"][3].any()
    assert not live["fc2"][:, 5].any() and w["fc2"][:, 5].any()
    assert np.array_equal(np.delete(live["fc2"], 5, axis=1), np.delete(w["fc2"], 5, axis=1))
    # the da4ml model costs the live weights
    m = Da4mlModel(strategies={})
    assert (
        m.estimate(plan, DA, weights=w).lut
        < Da4mlModel(strategies={}, live=False).estimate(plan, DA, weights=w).lut
    )
    # shapes that do not chain (a shortcut): nothing is taken as dead
    odd = LayerPlan("fc3", "linear", 6, 6, 8 * 20, 8 * 20, 20)
    plan3 = CompressionPlan("t", (*plan.layers, odd), Budget("lut", 1e4), 0.0, 0.0)
    assert live_weights(plan3.layers, {**w, "fc3": np.ones((8, 20), dtype=np.int64)}) is None


def test_analytical_expects_dead_logic_at_high_sparsity_only():
    dense_plan, _ = _mlp(8, bits=(6, 6), density=(1.0, 1.0))
    sparse_plan, _ = _mlp(8, bits=(6, 6), density=(0.5, 0.1))
    for plan, fewer in ((dense_plan, False), (sparse_plan, True)):
        live = AnalyticalModel(strategies={}).estimate(plan, DA).lut
        full = AnalyticalModel(strategies={}, live=False).estimate(plan, DA).lut
        assert (live < full) if fewer else (live == full)
    # Resource at RF > 1 keeps every multiplier (weights come from memory)
    r = res(4)
    assert (
        AnalyticalModel().estimate(sparse_plan, r).lut
        == AnalyticalModel(live=False).estimate(sparse_plan, r).lut
    )


@pytest.mark.parametrize(
    "seed, bits, density",
    [(0, (6, 4), (0.5, 0.7)), (1, (2, 2), (0.2, 0.3)), (2, (8, 8), (1.0, 1.0))],
)
def test_latency_floor_settled_by_its_bound_equals_the_full_floor(seed, bits, density):
    """The Latency estimate is max(unshared, distributed-arithmetic floor) per layer; the floor's
    full shared solve is skipped where its per-output upper bound already shows it cannot bind.
    The bound is an upper bound of the shared solve, and the estimate equals the one with the
    full floor solved for every layer."""
    plan, w = _mlp(seed, bits=bits, density=density)
    m = Da4mlModel()
    for wl in w.values():
        assert m.solve(wl, (True, 5, 0), per_output=True)[0] >= m.solve(wl, (True, 5, 0))[0]
    got = m.estimate(plan, LAT, weights=w)
    ref = _FullFloor().estimate(plan, LAT, weights=w)
    assert [x.lut for x in got.layers] == [x.lut for x in ref.layers]


class _FullFloor(Da4mlModel):
    """The da4ml model with the bound replaced by the full solve: the floor is always solved."""

    def layer(self, *args, per_output=False, **kw):
        return super().layer(*args, **kw)
