"""Resource models: analytical rules, the search cost adapter, da4ml on tiny layers, vendor reports."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from fitc.artifacts import Budget, CompressionPlan, HardwareConfig, LayerPlan, ResourceReport
from fitc.backends.resources import (
    COST_KINDS,
    RESOURCE_MODELS,
    AnalyticalModel,
    Da4mlModel,
    LutCost,
    VendorReportError,
    VendorReportModel,
    cmvm_luts,
    get_resource_model,
    parse_csynth_rpt_instances,
    parse_csynth_xml,
    parse_vivado_synth_rpt,
    plan_input_types,
    read_vendor_report,
)
from fitc.errors import ConfigError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vivado-report"
HW = HardwareConfig()  # Latency, RF 1, io_parallel, 5 ns


def dense(name="fc", wb=6, ab=8, n_in=64, n_out=32, nnz=None, **kw) -> LayerPlan:
    n = n_in * n_out
    return LayerPlan(name, "linear", wb, ab, n, n if nnz is None else nnz, n_in, **kw)


def conv(name="conv", wb=6, ab=8, in_ch=8, out_ch=16, k=3, positions=16, nnz=None) -> LayerPlan:
    n = out_ch * in_ch * k * k
    return LayerPlan(name, "conv2d", wb, ab, n, n if nnz is None else nnz, in_ch * k * k, positions)


def plan_of(*layers: LayerPlan) -> CompressionPlan:
    return CompressionPlan("test", tuple(layers), Budget("lut", 1e4), 0.0, 0.0)


def one(model, lp: LayerPlan, hw: HardwareConfig = HW):
    return model.estimate(plan_of(lp), hw).layers[0]


# ------------------------------------------------------------------------------------------
# Analytical rules


def test_dsp_only_from_nine_bit_weights():
    m = AnalyticalModel()
    assert one(m, dense(wb=8)).dsp == 0
    r9 = one(m, dense(wb=9, nnz=1000))
    assert r9.dsp == 1000  # one DSP per non-zero product at RF 1
    assert one(m, dense(wb=16, nnz=1000)).dsp == 1000
    # distributed arithmetic never uses DSPs
    assert one(m, dense(wb=12), HardwareConfig(strategy="distributed_arithmetic")).dsp == 0
    # a DSP layer's LUT is only its adder tree: far below the LUT-multiplier layer
    assert r9.lut < one(m, dense(wb=8, nnz=1000)).lut


def test_zero_weights_free_at_rf1_but_counted_in_resource_strategy():
    m = AnalyticalModel()
    sparse, dense_ = dense(wb=12, nnz=200), dense(wb=12)
    assert one(m, sparse).dsp == 200
    res = HardwareConfig(strategy="Resource", reuse_factor=4)
    n = 64 * 32
    # Resource, RF 4: ceil(n_weights / RF) multipliers whatever the sparsity
    assert one(m, sparse, res).dsp == math.ceil(n / 4) == one(m, dense_, res).dsp
    assert one(m, dense(wb=6, nnz=200), res).lut == one(m, dense(wb=6), res).lut
    # ... but at RF 1 zeros are free whatever the strategy
    assert one(m, sparse, HardwareConfig(strategy="Resource", reuse_factor=1)).dsp == 200
    # Latency strategy at RF 4: zeros still free, multipliers shared over 4 cycles
    lat4 = HardwareConfig(strategy="Latency", reuse_factor=4)
    assert one(m, sparse, lat4).dsp == 50


def test_bram_only_for_stored_weights_at_rf_above_one():
    m = AnalyticalModel()
    lp = dense(wb=8)
    assert one(m, lp).bram_18k == 0
    assert one(m, lp, HardwareConfig(strategy="Latency", reuse_factor=4)).bram_18k == 0
    assert one(m, lp, HardwareConfig(strategy="Resource", reuse_factor=1)).bram_18k == 0
    # 64·32 weights at RF 64: a 64-deep memory 32·8 bits wide -> ceil(256 / 36) BRAM_18K
    assert one(m, lp, HardwareConfig(strategy="Resource", reuse_factor=64)).bram_18k == 8
    # 8192 weights at RF 1024: 1024 deep (2 × 512) and 8·8 bits wide (2 × 36)
    big = dense(wb=8, n_in=128, n_out=64)
    assert one(m, big, HardwareConfig(strategy="Resource", reuse_factor=1024)).bram_18k == 4


def test_lut_monotonic_in_bits_and_nonzeros():
    m = AnalyticalModel()
    for ab in (2, 4, 8):
        luts = [one(m, dense(wb=wb, ab=ab, nnz=600)).lut for wb in range(2, 9)]
        assert all(a <= b for a, b in zip(luts[:-1], luts[1:], strict=True)), luts
    for wb in (2, 4, 8):
        luts = [one(m, dense(wb=wb, ab=ab, nnz=600)).lut for ab in range(2, 9)]
        assert all(a < b for a, b in zip(luts[:-1], luts[1:], strict=True)), luts
        luts = [one(m, dense(wb=wb, nnz=nnz)).lut for nnz in (0, 1, 10, 100, 500, 1000, 2048)]
        assert all(a < b for a, b in zip(luts[:-1], luts[1:], strict=True)), luts
    assert cmvm_luts(dense(nnz=0)) == 0.0


def test_latency_and_interval():
    m = AnalyticalModel()
    r = m.estimate(plan_of(dense("a", nnz=100), dense("b", n_in=32, n_out=10, nnz=40)), HW)
    assert r.latency_cycles == sum(lr.latency_cycles for lr in r.layers) > 0
    assert r.latency_ns == r.latency_cycles * HW.clock_period_ns
    assert r.initiation_interval_cycles == 1
    # Resource strategy: the reuse factor is paid in latency and interval
    res = m.estimate(plan_of(dense(nnz=100)), HardwareConfig(strategy="Resource", reuse_factor=8))
    assert res.initiation_interval_cycles == 8
    assert res.latency_cycles >= 8 + m.estimate(plan_of(dense(nnz=100)), HW).latency_cycles
    # a convolution computes one output position per cycle with one kernel instance
    c = m.estimate(plan_of(conv(positions=36)), HW)
    assert c.initiation_interval_cycles == 36 and c.latency_cycles >= 36
    assert one(m, conv(positions=36)).lut == pytest.approx(one(m, conv(positions=4)).lut, rel=0.2)
    pf = AnalyticalModel(parallelization_factor=4).estimate(plan_of(conv(positions=36)), HW)
    assert pf.initiation_interval_cycles == 9 and pf.lut > 3 * c.lut * 0.9


def test_io_stream_applies_the_activation_per_pixel():
    import dataclasses

    from fitc.backends.resources import DEFAULT_PARAMS

    # The shipped ReLU LUT constants are fitted to Yosys (which merges the ReLU into the adders'
    # LUTs); the rule itself, with a LUT cost per ReLU bit:
    params = dataclasses.replace(DEFAULT_PARAMS, relu_lut_per_bit=1.0)
    for m in (AnalyticalModel(params=params), AnalyticalModel()):
        p = plan_of(conv("c1", positions=36), conv("c2", in_ch=16, positions=16))
        par = m.estimate(p, HW)
        stream = m.estimate(p, HardwareConfig(io_type="io_stream"))
        assert stream.layers[0].ff < par.layers[0].ff  # the ReLU's output registers
        if m.params.relu_lut_per_bit > 0:
            assert stream.layers[0].lut < par.layers[0].lut
        assert stream.layers[1].lut == par.layers[1].lut  # the last layer has no ReLU


def test_calibration_scales_lut_per_layer():
    m = AnalyticalModel()
    p = plan_of(dense("a", nnz=500), dense("b", n_in=32, n_out=10, nnz=100))
    base = m.estimate(p, HW)
    cal = m.calibrated({"a": 2.0})
    r = cal.estimate(p, HW)
    assert r.layers[0].lut == pytest.approx(2.0 * base.layers[0].lut)
    assert r.layers[1].lut == base.layers[1].lut
    assert r.ff == base.ff and r.dsp == base.dsp
    assert m.calibration == {}  # calibrated() returns a copy
    # factors from a measurement reproduce it, and are clipped
    measured = base.layers[0].__class__(name="a", lut=base.layers[0].lut * 1.3)
    rep = ResourceReport("da4ml", HW, 0, 0, 0, 0, 0, 0, 1, layers=(measured,))
    f = m.calibration_from(p, HW, rep)
    assert f == {"a": pytest.approx(1.3)}
    assert m.calibrated(f).estimate(p, HW).layers[0].lut == pytest.approx(measured.lut)
    huge = ResourceReport(
        "da4ml", HW, 0, 0, 0, 0, 0, 0, 1, layers=(measured.__class__("a", lut=1e12),)
    )
    assert m.calibration_from(p, HW, huge)["a"] == 10.0
    with pytest.raises(ConfigError, match="layer a"):
        AnalyticalModel(calibration={"a": 0.0})


def test_lut_cost_adapter_is_the_search_protocol_and_fast():
    from fitc.cost import CostModel

    m = AnalyticalModel()
    layers = (dense("a", wb=8, nnz=1500), dense("b", n_in=32, n_out=10, wb=4, nnz=200))
    for kind in COST_KINDS:
        c = LutCost(m, HW, kind)
        assert isinstance(c, CostModel) and c.kind == kind
        assert c(layers) == m.total(kind, layers, HW)
    assert LutCost(m, HW, "lut")(layers) == m.estimate(plan_of(*layers), HW).lut
    with pytest.raises(ConfigError, match="cost kind"):
        LutCost(m, HW, "size")
    c = LutCost(m, HW, "lut")
    variants = [(dense("a", wb=b, nnz=1500 - 100 * b), layers[1]) for b in range(2, 9)]
    t0 = time.perf_counter()
    for _ in range(200):
        for v in variants:
            c(v)
    per_call = (time.perf_counter() - t0) / (200 * len(variants))
    assert per_call < 200e-6, f"{per_call * 1e6:.0f} µs per call"


def test_registry():
    assert set(RESOURCE_MODELS) == {"analytical", "da4ml", "report", "yosys"}
    assert isinstance(get_resource_model("analytical"), AnalyticalModel)
    assert get_resource_model("da4ml").name == "da4ml"
    assert get_resource_model("report").name == "report"
    with pytest.raises(ConfigError, match="did you mean 'da4ml'"):
        get_resource_model("da4m")


def test_report_round_trips_json():
    r = AnalyticalModel().estimate(plan_of(dense("a", nnz=100), conv("c")), HW)
    assert ResourceReport.from_dict(r.to_dict()) == r
    assert r.source == "analytical" and [lr.name for lr in r.layers] == ["a", "c"]


# ------------------------------------------------------------------------------------------
# da4ml


def _int_weights(rng, shape, bits, density):
    q = rng.integers(-(2 ** (bits - 1) - 1), 2 ** (bits - 1), size=shape)
    return np.where(rng.random(shape) < density, q, 0).astype(np.int64)


def _plan_for(w: np.ndarray, wb: int, ab: int, name="fc") -> CompressionPlan:
    return plan_of(LayerPlan(name, "linear", wb, ab, w.size, int(np.count_nonzero(w)), w.shape[1]))


def test_da4ml_sparser_is_cheaper_and_zero_is_free():
    rng = np.random.default_rng(0)
    model = Da4mlModel()
    costs = []
    t0 = time.perf_counter()
    for density in (1.0, 0.5, 0.2):
        w = _int_weights(np.random.default_rng(1), (16, 24), 6, density)
        r = model.estimate(_plan_for(w, 6, 6), HW, weights={"fc": w})
        assert r.source == "da4ml" and r.dsp == 0
        costs.append(r.layers[0].lut)
    assert costs[0] > costs[1] > costs[2] > 0
    assert time.perf_counter() - t0 < 5
    z = np.zeros((16, 24), dtype=np.int64)
    r = model.estimate(_plan_for(z, 6, 6), HW, weights={"fc": z})
    assert r.lut == 0 and r.layers[0].latency_cycles <= 1
    assert model.solve(z, (False, 6, 0)) == (0.0, 0.0)
    # fewer weight bits are cheaper too
    w8 = _int_weights(rng, (16, 24), 8, 1.0)
    w3 = np.clip(w8 // 32, -3, 3)
    assert model.solve(w3, (False, 6, 0))[0] < model.solve(w8, (False, 6, 0))[0]


def test_da4ml_known_small_case_and_cache():
    model = Da4mlModel()
    # y = x0 + x1: one adder over 4-bit unsigned inputs -> a few LUTs, depth 1
    w = np.array([[1, 1]])
    cost, depth = model.solve(w, (False, 4, 0))
    assert 0 < cost <= 6 and depth == 1
    assert model.solve(w, (False, 4, 0)) == (cost, depth)
    assert len(model._cache) == 1
    # scale of the input grid does not change the adder cost
    assert model.solve(w, (False, 2, 2)) == (cost, depth)
    with pytest.raises(Exception, match="integers"):
        model.solve(np.array([[0.5, 1.0]]), (False, 4, 0))


def test_da4ml_conv_kernel_charged_once_and_agrees_with_analytical_rank():
    rng = np.random.default_rng(2)
    w = _int_weights(rng, (8, 4, 3, 3), 5, 0.6)
    lp = LayerPlan("c", "conv2d", 5, 6, w.size, int(np.count_nonzero(w)), 36, 25)
    model = Da4mlModel(strategies={})  # raw costs: no strategy calibration
    r = model.estimate(plan_of(lp), HW, weights={"c": w})
    cost, _ = model.solve(w, (True, 5, 0), shared=False)  # Latency: unshared multiplies
    assert r.layers[0].lut == cost  # one kernel instance, first layer: signed input
    assert r.initiation_interval_cycles == 25
    r4 = Da4mlModel(parallelization_factor=5, strategies={}).estimate(
        plan_of(lp), HW, weights={"c": w}
    )
    assert r4.layers[0].lut == 5 * cost


def test_da4ml_input_types_and_errors():
    p = plan_of(dense("a", ab=6, n_in=4, n_out=2), dense("b", ab=4, n_in=2, n_out=2))
    assert plan_input_types(p) == {"a": (True, 5, 0), "b": (False, 4, 0)}
    with pytest.raises(ConfigError, match="weights="):
        Da4mlModel().estimate(p, HW)
    with pytest.raises(ConfigError, match="no weights given for layer b"):
        Da4mlModel().estimate(p, HW, weights={"a": np.ones((2, 4), dtype=np.int64)})


def test_da4ml_dsp_layers_follow_the_hls4ml_rule():
    w = _int_weights(np.random.default_rng(3), (8, 16), 10, 0.5)
    p = _plan_for(w, 10, 8)
    r = Da4mlModel().estimate(p, HW, weights={"fc": w})
    assert r.dsp == np.count_nonzero(w)
    assert r.layers[0].lut == AnalyticalModel().estimate(p, HW).layers[0].lut


def test_quant_weights_and_input_types_from_brevitas():
    torch = pytest.importorskip("torch")
    from fitc.backends.resources import quant_input_types, quant_int_weights
    from fitc.build import apply_plan, calibrate, fixed_point_quantize, make_plan

    torch.manual_seed(0)
    from collections import OrderedDict

    model = torch.nn.Sequential(
        OrderedDict(fc1=torch.nn.Linear(8, 6), relu1=torch.nn.ReLU(), fc2=torch.nn.Linear(6, 3))
    )
    masks = {"fc1": torch.rand(6, 8) > 0.5, "fc2": torch.ones(3, 6, dtype=torch.bool)}
    plan = make_plan(
        model,
        model_name="t",
        input_shape=(8,),
        weight_bits={"fc1": 4, "fc2": 3},
        act_bits={"fc1": 6, "fc2": 5},
        masks=masks,
    )
    q = apply_plan(model, plan, masks)
    calibrate(q, torch.randn(64, 8))
    w = quant_int_weights(q)
    assert set(w) == {"fc1", "fc2"} and w["fc1"].shape == (6, 8) and w["fc1"].dtype == np.int64
    expect, _ = fixed_point_quantize(model.fc1.weight.detach() * masks["fc1"], 4)
    assert np.array_equal(w["fc1"], expect.numpy().astype(np.int64))
    assert np.count_nonzero(w["fc1"]) == plan.layer("fc1").n_nonzero
    types = quant_input_types(q)
    s1, i1, f1 = types["fc1"]
    s2, i2, f2 = types["fc2"]
    assert s1 is True and s1 + i1 + f1 == 6
    assert s2 is False and i2 + f2 == 5
    r = Da4mlModel().estimate(plan, HW, weights=w, input_types=types)
    assert r.lut > 0


# ------------------------------------------------------------------------------------------
# Vendor reports (real Vivado HLS 2020.1 / Vivado 2020.1 files of an hls4ml project on xc7z020;
# from hls4ml's test suite, test/pytest/test_report/)


def test_csynth_xml_fixture_numbers():
    cs = parse_csynth_xml(FIXTURE / "myproject_csynth.xml")
    assert cs["part"] == "xc7z020-clg400-1"
    assert cs["target_clock_ns"] == 5.0 and cs["estimated_clock_ns"] == 4.049
    assert cs["best_latency"] == cs["worst_latency"] == 10
    assert cs["interval_min"] == cs["interval_max"] == 8
    assert (cs["LUT"], cs["FF"], cs["DSP"], cs["BRAM_18K"], cs["URAM"]) == (2532, 7969, 73, 0, 0)
    assert (cs["available_LUT"], cs["available_FF"], cs["available_DSP"]) == (53200, 106400, 220)
    assert cs["available_BRAM_18K"] == 280


def test_vivado_synth_fixture_numbers():
    vs = parse_vivado_synth_rpt(FIXTURE / "vivado_synth.rpt")
    assert (vs["LUT"], vs["FF"], vs["DSP"], vs["BRAM_18K"]) == (1526, 2428, 66, 0)
    assert vs["device"] == "7z020clg400-1"


def test_csynth_instances_fixture():
    rows = {r["name"]: r for r in parse_csynth_rpt_instances(FIXTURE / "myproject_csynth.rpt")}
    d = rows["dense_array_array_ap_fixed_16_6_5_3_0_5u_config2_U0"]
    assert (d["lut"], d["ff"], d["dsp"], d["bram_18k"]) == (2134, 7860, 73, 0)
    assert (d["latency_cycles"], d["ii_cycles"]) == (7, 7)
    r = rows["relu_array_array_ap_fixed_5u_relu_config3_U0"]
    assert (r["lut"], r["ff"], r["dsp"], r["latency_cycles"], r["ii_cycles"]) == (256, 84, 0, 2, 1)
    assert len(rows) == 2


def test_vendor_report_model_prefers_post_synthesis():
    hw = HardwareConfig(io_type="io_stream", part="ignored", clock_period_ns=10.0)
    r = VendorReportModel().estimate(None, hw, report_dir=FIXTURE)
    assert r.source == "vivado_synth"
    assert (r.lut, r.ff, r.dsp, r.bram_18k) == (1526, 2428, 66, 0)
    assert (r.latency_cycles, r.latency_ns, r.initiation_interval_cycles) == (10, 50.0, 8)
    assert r.hardware.part == "xc7z020-clg400-1" and r.hardware.clock_period_ns == 5.0
    assert r.hardware.io_type == "io_stream"
    c = read_vendor_report(FIXTURE, prefer="csynth", layer_index={"fc1": (2, 3)})
    assert c.source == "csynth" and (c.lut, c.ff, c.dsp, c.bram_18k) == (2532, 7969, 73, 0)
    (fc1,) = c.layers
    assert (fc1.name, fc1.lut, fc1.ff, fc1.dsp, fc1.latency_cycles) == ("fc1", 2390, 7944, 73, 7)
    assert ResourceReport.from_dict(c.to_dict()) == c


def test_vendor_report_matches_hls4ml_parser_on_a_project_layout(tmp_path, capsys):
    from hls4ml.report import parse_vivado_report

    prj = tmp_path / "hls4ml_prj"
    rep = prj / "myproject_prj" / "solution1" / "syn" / "report"
    rep.mkdir(parents=True)
    (prj / "project.tcl").write_text('set project_name "myproject"\nset backend "vivado"\n')
    shutil.copy(FIXTURE / "vivado_hls.app", prj / "myproject_prj")
    shutil.copy(FIXTURE / "myproject_csynth.xml", rep)
    shutil.copy(FIXTURE / "myproject_csynth.rpt", rep)
    shutil.copy(FIXTURE / "vivado_synth.rpt", prj)
    # HLS also writes one report per sub-module next to the top's: never pick those
    sub = (FIXTURE / "myproject_csynth.xml").read_text().replace("<LUT>2532</LUT>", "<LUT>99</LUT>")
    (rep / "a_dense_csynth.xml").write_text(sub)
    theirs = parse_vivado_report(str(prj))
    ours = read_vendor_report(prj)
    syn, cs = theirs["VivadoSynthReport"], theirs["CSynthesisReport"]
    assert (ours.lut, ours.ff, ours.dsp) == (
        float(syn["LUT"]),
        float(syn["FF"]),
        float(syn["DSP48E"]),
    )
    assert ours.latency_cycles == float(cs["WorstLatency"])
    assert ours.initiation_interval_cycles == float(cs["IntervalMax"])
    assert read_vendor_report(prj, prefer="csynth").lut == float(cs["LUT"]) == 2532
    (prj / "project.tcl").unlink()  # without the project file: the largest design is the top
    assert read_vendor_report(prj, prefer="csynth").lut == 2532
    assert read_vendor_report(prj, prefer="csynth", top="a_dense").lut == 99


def test_vendor_report_errors(tmp_path):
    with pytest.raises(VendorReportError, match="does not exist"):
        read_vendor_report(tmp_path / "nope")
    with pytest.raises(VendorReportError, match="no \\*_csynth.xml"):
        read_vendor_report(tmp_path)
    (tmp_path / "x_csynth.xml").write_text("<profile><UserAssignments/></profile>")
    with pytest.raises(VendorReportError, match="Part"):
        read_vendor_report(tmp_path)
    bad = tmp_path / "vivado_synth.rpt"
    bad.write_text("nothing here\n")
    with pytest.raises(VendorReportError, match="LUT"):
        parse_vivado_synth_rpt(bad)
    with pytest.raises(ConfigError, match="report_dir"):
        VendorReportModel().estimate(None, HW)
