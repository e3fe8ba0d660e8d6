"""Pooling through the whole chain: Brevitas → QONNX → onnxruntime → hls4ml C++ emulation.

- global average pooling (``nn.AdaptiveAvgPool2d(1)``, ONNX GlobalAveragePool) and
  ``nn.AvgPool2d(k)`` (ONNX AveragePool, kernel == stride, no padding), windows of power-of-two
  and other sizes, io_parallel and io_stream: hls4ml needs fitc's channels-last AveragePool
  (``backends/qonnx_ext.py``) and exact accumulator / result types (``average_pool_types``);
- a height-1 convolution (kernel ``(1, k)``) with ``nn.MaxPool2d((1, 2))`` on ``(C, 1, L)``
  inputs, the way fitc runs a user's Conv1d.

Graphs are made the real way (float model → plan → Brevitas build → calibrate → QONNX export).
Tests marked ``compile`` build the C++ emulation (≈10 s each), so every network is tiny.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fitc.artifacts import CompressionPlan, HardwareConfig
from fitc.backends.hls import (
    average_pool_precisions,
    average_pool_types,
    emulation_check,
    hls_config,
    lower,
    prepare_qonnx,
)
from fitc.backends.hls.layers import _Fixed
from fitc.errors import PrecisionMismatchError, UnsupportedLayerError

# --------------------------------------------------------------------------------------------
# Graphs


@dataclass
class Graph:
    qonnx_path: Path
    layer_map: dict[str, str]
    plan: CompressionPlan | None
    X: np.ndarray
    y: np.ndarray


def _seq(**mods: nn.Module) -> nn.Module:
    return nn.Sequential(OrderedDict(mods))


def _gap(side: int) -> tuple[nn.Module, tuple[int, ...]]:
    """Global average over (side-4)² positions after two 3×3 convolutions."""
    model = _seq(
        conv1=nn.Conv2d(1, 3, 3),
        relu1=nn.ReLU(),
        conv2=nn.Conv2d(3, 4, 3),
        relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc1=nn.Linear(4, 5),
    )
    return model, (1, side, side)


def _avg(k: int, into_conv: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """AvgPool2d(k) on a 3-channel 2k×2k map → 2×2, then a Linear or a 2×2 convolution."""
    head: dict[str, nn.Module] = (
        {"conv2": nn.Conv2d(3, 4, 2), "relu2": nn.ReLU(), "flatten": nn.Flatten()}
        if into_conv
        else {"flatten": nn.Flatten()}
    )
    model = _seq(
        conv1=nn.Conv2d(1, 3, 3),
        relu1=nn.ReLU(),
        pool=nn.AvgPool2d(k),
        **head,
        fc1=nn.Linear(4 if into_conv else 12, 5),
    )
    return model, (1, 2 * k + 2, 2 * k + 2)


def _conv1d_maxpool() -> tuple[nn.Module, tuple[int, ...]]:
    """A Conv1d network run as height-1 2-D convolutions: kernels (1, 3), MaxPool2d((1, 2))."""
    model = _seq(
        conv1=nn.Conv2d(2, 3, (1, 3)),
        relu1=nn.ReLU(),
        pool=nn.MaxPool2d((1, 2)),
        conv2=nn.Conv2d(3, 4, (1, 3)),
        relu2=nn.ReLU(),
        flatten=nn.Flatten(),
        fc1=nn.Linear(4 * 5, 5),
    )
    return model, (2, 1, 16)


def _inputs(shape: tuple[int, ...], n: int = 300) -> np.ndarray:
    """Random rows, rows on coarse dyadic grids (rounding ties of the input quantizer) and
    range-edge rows: zeros, saturating ±, alternating signs, single hot pixels."""
    gen = torch.Generator().manual_seed(1)
    X = (torch.randn((n, *shape), generator=gen) * 1.5).numpy()
    for i in range(60):
        k = 1 + i % 7
        X[i] = np.round(X[i] * 2**k) / 2**k
    edge = [np.zeros(shape), np.full(shape, 1e3), np.full(shape, -1e3)]
    signs = np.indices(shape).sum(axis=0) % 2 * 2 - 1
    edge += [signs * 1e3, -signs * 1e3, signs * 7.9375, np.full(shape, 7.9375)]
    for j in range(5):
        hot = np.full(shape, -8.0)
        hot.reshape(-1)[(j * 7) % hot.size] = 1e3
        edge.append(hot)
    X[60 : 60 + len(edge)] = np.stack(edge)
    return X.astype(np.float32)


def _make_graph(
    out_dir: Path, model: nn.Module, input_shape: tuple[int, ...], weight_bits, act_bits
) -> Graph:
    from fitc.build import apply_plan, calibrate, magnitude_masks, make_plan
    from fitc.export import check_equivalence, export_qonnx, verify_chain

    torch.manual_seed(0)
    model.eval()
    names = list(weight_bits)
    masks = magnitude_masks(model, 0.3)
    plan = make_plan(
        model,
        model_name="test",
        input_shape=input_shape,
        weight_bits=weight_bits,
        act_bits=dict(zip(names, act_bits, strict=True)),
        masks=masks,
    )
    X = _inputs(input_shape)
    qmodel = calibrate(apply_plan(model, plan, masks), X[100:])
    exported = export_qonnx(qmodel, input_shape, out_dir, plan=plan)
    with torch.no_grad():
        y = model(torch.from_numpy(X)).argmax(1).numpy()
    # Brevitas ≡ qonnx ≡ onnxruntime first: the emulation is then compared with qonnx.
    report = verify_chain(qmodel, exported, X, y, plan=plan)
    check_equivalence(report)
    assert [h.b for h in report.hops] == ["qonnx", "onnxruntime"]
    return Graph(Path(exported.qonnx_path), dict(exported.layer_map), plan, X, y)


def _graph(tmp_path_factory, name: str, build, weight_bits, act_bits) -> Graph:
    torch.manual_seed(0)  # the float weights, whatever ran before
    model, shape = build()
    return _make_graph(tmp_path_factory.mktemp(name), model, shape, weight_bits, act_bits)


WBITS = {"conv1": 6, "conv2": 5, "fc1": 5}


@pytest.fixture(scope="module")
def gap16(tmp_path_factory) -> Graph:  # 4×4 = 16 values (a power of two)
    return _graph(tmp_path_factory, "gap16", lambda: _gap(8), WBITS, (8, 6, 5))


@pytest.fixture(scope="module")
def gap25(tmp_path_factory) -> Graph:  # 5×5 = 25 values
    return _graph(tmp_path_factory, "gap25", lambda: _gap(9), WBITS, (8, 6, 5))


@pytest.fixture(scope="module")
def avg2(tmp_path_factory) -> Graph:
    return _graph(tmp_path_factory, "avg2", lambda: _avg(2, False), {"conv1": 6, "fc1": 5}, (8, 6))


@pytest.fixture(scope="module")
def avg3(tmp_path_factory) -> Graph:
    return _graph(tmp_path_factory, "avg3", lambda: _avg(3, True), WBITS, (8, 6, 5))


@pytest.fixture(scope="module")
def conv1d(tmp_path_factory) -> Graph:
    return _graph(tmp_path_factory, "conv1d", _conv1d_maxpool, WBITS, (8, 6, 5))


def _lower(graph: Graph, out: Path, io_type: str = "io_parallel", **kw):
    hw = HardwareConfig(io_type=io_type, backend="Vitis" if io_type == "io_parallel" else "Vivado")
    return lower(graph.qonnx_path, out, hw, plan=graph.plan, layer_map=graph.layer_map, **kw)


def _assert_exact(project, graph: Graph) -> None:
    report = emulation_check(project, graph.qonnx_path, graph.X, graph.y)
    assert report.n_samples == len(graph.X) == 300
    assert report.max_abs_diff == 0.0
    assert report.identical_rows == 1.0
    assert report.argmax_agreement == 1.0
    assert report.exact


def _pool_layer(project) -> dict:
    pools = {k: v for k, v in project.other_layers.items() if v["class"] == "Pooling2D"}
    assert len(pools) == 1, project.other_layers
    return next(iter(pools.values()))


# --------------------------------------------------------------------------------------------
# Bit-exact emulation (compiles C++)


@pytest.mark.compile
def test_global_average_pool_is_bit_exact(gap16, tmp_path):
    project = _lower(gap16, tmp_path / "hls4ml")
    assert project.channels_last and project.input_shape == (8, 8, 1)
    assert _pool_layer(project)["result"] == "ufixed<12,1>"  # 16 × ufixed<8,1>: exact average
    _assert_exact(project, gap16)


@pytest.mark.compile
def test_global_average_pool_over_25_values_io_stream_is_bit_exact(gap25, tmp_path):
    project = _lower(gap25, tmp_path / "hls4ml", "io_stream")
    _assert_exact(project, gap25)


@pytest.mark.compile
@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_avg_pool_is_bit_exact(avg2, io_type, tmp_path):
    project = _lower(avg2, tmp_path / "hls4ml", io_type)
    assert _pool_layer(project)["result"].startswith("ufixed<")
    _assert_exact(project, avg2)


@pytest.mark.compile
def test_avg_pool_over_9_values_feeding_a_conv_is_bit_exact(avg3, tmp_path):
    _assert_exact(_lower(avg3, tmp_path / "hls4ml"), avg3)


@pytest.mark.compile
@pytest.mark.parametrize("io_type", ["io_parallel", "io_stream"])
def test_height_one_conv_with_maxpool_is_bit_exact(conv1d, io_type, tmp_path):
    project = _lower(conv1d, tmp_path / "hls4ml", io_type)
    assert project.channels_last and project.input_shape == (1, 16, 2)
    assert project.layers["conv1"]["class"] == "Conv2D"
    _assert_exact(project, conv1d)


@pytest.mark.compile
def test_signed_average_pools_are_bit_exact(tmp_path):
    """Pools over signed values (ap_fixed division truncates toward zero): AvgPool2d(3) then a
    global average of 2×2, straight on the quantized input, with no convolution in the graph.
    Built with Brevitas by hand: fitc.build cannot put a pool right after the input yet."""
    from brevitas.nn import QuantIdentity, QuantLinear
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Int16Bias

    from fitc.export import check_equivalence, export_qonnx, verify_chain

    def quant(bits: int) -> nn.Module:
        return QuantIdentity(
            act_quant=Int8ActPerTensorFixedPoint, bit_width=bits, return_quant_tensor=True
        )

    torch.manual_seed(0)
    fc1 = QuantLinear(
        2,
        5,
        bias=True,
        weight_quant=Int8WeightPerTensorFixedPoint,
        weight_bit_width=5,
        bias_quant=Int16Bias,
    )
    qmodel = _seq(
        inp=quant(6),
        pool=nn.AvgPool2d(3),
        pool_quant=quant(5),
        gap=nn.AdaptiveAvgPool2d(1),
        gap_quant=quant(4),
        flatten=nn.Flatten(),
        fc1=fc1,
    )
    X = _inputs((2, 6, 6))
    qmodel.train()
    with torch.no_grad():
        for i in range(100, 300, 50):
            qmodel(torch.from_numpy(X[i : i + 50]))
    qmodel.eval()
    with torch.no_grad():
        y = qmodel(torch.from_numpy(X)).argmax(1).numpy()
    exported = export_qonnx(qmodel, (2, 6, 6), tmp_path / "graph")
    check_equivalence(verify_chain(qmodel, exported, X, y))
    project = lower(
        exported.qonnx_path, tmp_path / "hls4ml", HardwareConfig(), layer_map=exported.layer_map
    )
    pools = [v for v in project.other_layers.values() if v["class"] == "Pooling2D"]
    assert len(pools) == 2 and all(p["result"].startswith("fixed<") for p in pools)
    graph = Graph(Path(exported.qonnx_path), dict(exported.layer_map), None, X, y)
    _assert_exact(project, graph)


# --------------------------------------------------------------------------------------------
# Graph preparation and configuration (no compile)


@pytest.mark.parametrize("name", ["gap16", "avg3"])
def test_prepared_graph_pools_channels_last_and_computes_the_same(name, request):
    """fitc's channels-last AveragePool: no transpose left around the pool, and the qonnx
    executor gives the original graph's outputs bit for bit on the NHWC input."""
    from qonnx.core.onnx_exec import execute_onnx

    from fitc.export import load_onnx, run_qonnx

    graph: Graph = request.getfixturevalue(name)
    prepared = prepare_qonnx(graph.qonnx_path)
    ops = [(n.op_type, n.domain) for n in prepared.graph.node]
    assert ("AveragePool", "qonnx.custom_op.channels_last") in ops
    assert not any(op in ("Transpose", "GlobalAveragePool") for op, _ in ops)
    ref = run_qonnx(load_onnx(graph.qonnx_path), graph.X[:40]).reshape(40, -1)
    inp, out = prepared.graph.input[0].name, prepared.graph.output[0].name
    got = np.stack(
        [
            execute_onnx(prepared, {inp: x.transpose(1, 2, 0)[None]})[out].reshape(-1)
            for x in graph.X[:40]
        ]
    )
    assert np.array_equal(got, ref)


def test_hls_config_sizes_average_pools_from_the_quantizers(gap16, avg3):
    # gap16: relu2 feeds only the pool, so it has the plan's widest act_bits: ufixed<8,1> (7
    # fractional bits). 16 values: sums need 4 more integer bits, the average 4 more fractional.
    prepared = prepare_qonnx(gap16.qonnx_path)
    cfg = hls_config(prepared, gap16.plan, HardwareConfig())["hls_config"]["LayerName"]
    assert cfg["AveragePool_0"]["Precision"] == {"accum": "ufixed<16,5>", "result": "ufixed<12,1>"}
    # avg3: 9 values of ufixed<6,2> (F=4), re-quantized to 5 fractional bits:
    # max(4, 5+1) + ceil(log2 9) = 10 fractional bits.
    prec = average_pool_precisions(prepare_qonnx(avg3.qonnx_path))
    assert prec == {"AveragePool_0": {"accum": "ufixed<16,6>", "result": "ufixed<12,2>"}}


def test_precision_check_catches_a_narrow_pool_accumulator(gap16, tmp_path):
    """A sum type with too few fractional bits (the exact average of 16 × ufixed<8,1> needs 11)
    and a result type that truncates the average to the input's grid are both refused, naming
    the layer and the field."""
    with pytest.raises(PrecisionMismatchError) as err:
        _lower(
            gap16,
            tmp_path / "hls4ml",
            compile=False,
            precision_overrides={"AveragePool_0": {"accum": "fixed<16,8>"}},
        )
    msg = str(err.value)
    assert "average pool AveragePool_0" in msg and "accum precision" in msg
    assert "fixed<16,8>" in msg and "≥ 11 fractional bits" in msg
    with pytest.raises(PrecisionMismatchError, match=r"AveragePool_0.*result precision"):
        _lower(
            gap16,
            tmp_path / "hls4ml2",
            compile=False,
            precision_overrides={"AveragePool_0": {"result": "ufixed<6,1>"}},
        )


def test_padded_avg_pool_is_refused_with_a_clear_error(tmp_path):
    torch.manual_seed(0)
    model = _seq(
        conv1=nn.Conv2d(1, 3, 3),
        relu1=nn.ReLU(),
        pool=nn.AvgPool2d(2, padding=1),
        flatten=nn.Flatten(),
        fc1=nn.Linear(3 * 4 * 4, 5),
    )
    graph = _make_graph(tmp_path / "g", model, (1, 8, 8), {"conv1": 6, "fc1": 5}, (8, 6))
    with pytest.raises(UnsupportedLayerError, match=r"AveragePool.*pads \[1, 1, 1, 1\]"):
        _lower(graph, tmp_path / "hls4ml", compile=False)


def test_qonnx_ext_still_needed():
    """qonnx 1.0.0 has no channels-last AveragePool; fitc registers its own
    (backends/qonnx_ext.py). If this fails, qonnx ships one now: delete backends/qonnx_ext.py and
    its use in backends/hls.py (prepare_qonnx), and check GlobalAveragePool still lowers exactly."""
    import qonnx.custom_op.channels_last as cl

    assert not hasattr(cl, "AveragePool_v1") and "AveragePool" not in str(cl.__all__)


# --------------------------------------------------------------------------------------------
# The exactness argument of average_pool_types, checked with exact rationals


def _round_half_even(v: Fraction, frac: int, lo: Fraction, hi: Fraction) -> Fraction:
    scaled = v * 2**frac
    return min(max(Fraction(round(scaled), 2**frac), lo), hi)  # round(): half to even


def _truncated(v: Fraction, frac: int, toward_zero: bool) -> Fraction:
    scaled = v * 2**frac
    k = math.trunc(scaled) if toward_zero else math.floor(scaled)
    return Fraction(k, 2**frac)


@pytest.mark.parametrize("signed", [False, True])
def test_average_pool_types_quantize_like_the_true_average(signed):
    for n, (width, integer), out_frac in itertools.product(
        (2, 3, 4, 5, 6, 9, 25), ((4, 1), (5, 3)), (0, 1, 3, 4, 6)
    ):
        x = _Fixed(signed, width, integer)
        accum, result = average_pool_types(x, n, out_frac, "test")
        step = Fraction(1, 2**x.frac)
        lo, hi = Fraction(x.lo), Fraction(x.hi)
        q_lo, q_hi = -Fraction(2**out_frac) if signed else Fraction(0), Fraction(2**out_frac)
        for s in range(int(n * lo / step), int(n * hi / step) + 1):
            total = s * step
            assert Fraction(accum.lo) <= total <= Fraction(accum.hi)
            true = total / n
            for toward_zero in (True, False):
                q = _truncated(true, accum.frac, toward_zero)
                assert Fraction(result.lo) <= q <= Fraction(result.hi)
                assert _round_half_even(q, out_frac, q_lo, q_hi) == _round_half_even(
                    true, out_frac, q_lo, q_hi
                ), (n, x, out_frac, s)


def test_average_pool_types_are_not_wider_than_needed():
    """One fractional bit less breaks it somewhere: the bound is tight enough to matter."""
    x = _Fixed(False, 6, 2)
    accum, _ = average_pool_types(x, 9, 4, "test")
    short = accum.frac - 1
    step = Fraction(1, 2**x.frac)
    top = Fraction(2**4)
    broken = [
        s
        for s in range(0, int(9 * Fraction(x.hi) / step) + 1)
        if _round_half_even(_truncated(s * step / 9, short, True), 4, Fraction(0), top)
        != _round_half_even(s * step / 9, 4, Fraction(0), top)
    ]
    assert broken
    assert average_pool_types(x, 16, None, "test")[1].frac == x.frac + 4
    with pytest.raises(PrecisionMismatchError, match="not followed by a quantizer"):
        average_pool_types(x, 9, None, "test")
