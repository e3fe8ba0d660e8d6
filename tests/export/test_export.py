"""fitc.export.export_qonnx: both graphs written and checked, layer map, planned bits and sparsity
visible in the graph, QCDQ skipped above 8 bits, and every bad input rejected with a clear error."""

from __future__ import annotations  # noqa: I001 (fitc.export resolves as third-party to ruff)

from collections import OrderedDict

import numpy as np
import onnx
import pytest
import torch
from brevitas.nn import QuantIdentity, QuantLinear, QuantReLU
from brevitas.quant import (
    Int8ActPerTensorFixedPoint,
    Int8WeightPerTensorFixedPoint,
    Int8WeightPerTensorFloat,
    Int16Bias,
    Uint8ActPerTensorFixedPoint,
)
from sklearn.datasets import load_digits
from torch import nn

from fitc.artifacts import Budget, CompressionPlan, LayerPlan
from fitc.build import apply_plan, calibrate, magnitude_masks, make_plan
from fitc.errors import ArtifactError, FitcError
from fitc.export import (
    ExportedGraph,
    ExportError,
    InputShapeError,
    NotFixedPointError,
    export_qonnx,
    layer_weights,
    match_layers,
)
from fitc.export.qonnx_export import const_value, quant_params, weight_source
from fitc.models import build_model, get_spec, load_data

MLP = (("fc1", 64, 64), ("fc2", 64, 32), ("fc3", 32, 32), ("fc4", 32, 10))


def built(name: str, wbits, abits, sparsity: float = 0.0):
    """(qmodel, plan, masks) through the real pipeline path: fitc.models → fitc.build."""
    spec = get_spec(name)
    model = build_model(name, seed=0)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    masks = magnitude_masks(model, sparsity, scope="layer") if sparsity else None
    plan = make_plan(
        model,
        model_name=name,
        input_shape=spec.input_shape,
        weight_bits=dict(zip(names, wbits, strict=True)),
        act_bits=dict(zip(names, abits, strict=True)),
        masks=masks,
    )
    X = load_data(spec).X_train
    return calibrate(apply_plan(model, plan, masks), X, n_batches=2), plan, masks


def digits_x(n: int = 64, image: bool = False) -> np.ndarray:
    X = load_digits().data[:n].astype(np.float32) / 4.0 - 2.0
    return X.reshape(-1, 1, 8, 8) if image else X


def mlp(
    wbits,
    abits,
    sparsity=0.0,
    seed=0,
    weight_quant=Int8WeightPerTensorFixedPoint,
    bias_quant=Int16Bias,
):
    """A Brevitas MLP built with the project's recipe; returns (model, plan, masks)."""
    torch.manual_seed(seed)
    mods: OrderedDict[str, nn.Module] = OrderedDict()
    mods["inp"] = QuantIdentity(
        act_quant=Int8ActPerTensorFixedPoint, bit_width=abits[0], return_quant_tensor=True
    )
    for i, (name, n_in, n_out) in enumerate(MLP):
        if i:
            mods[f"relu{i}"] = QuantReLU(
                act_quant=Uint8ActPerTensorFixedPoint, bit_width=abits[i], return_quant_tensor=True
            )
        mods[name] = QuantLinear(
            n_in,
            n_out,
            bias=True,
            weight_quant=weight_quant,
            weight_bit_width=wbits[i],
            bias_quant=bias_quant,
            return_quant_tensor=False,
        )
    model = nn.Sequential(mods)
    return _finish(model, [m[0] for m in MLP], wbits, abits, sparsity, digits_x(256), seed)


def _finish(model, names, wbits, abits, sparsity, X, seed):
    gen = torch.Generator().manual_seed(seed + 1)
    masks = {}
    for name in names:
        w = model.get_submodule(name).weight
        keep = torch.zeros(w.numel(), dtype=torch.bool)
        keep[torch.randperm(w.numel(), generator=gen)[: round((1 - sparsity) * w.numel())]] = True
        masks[name] = keep.reshape(w.shape)
        with torch.no_grad():
            w.mul_(masks[name])
    model.train()
    with torch.no_grad():
        for i in range(0, len(X), 64):
            model(torch.from_numpy(X[i : i + 64]))
    model.eval()
    layers = []
    for i, name in enumerate(names):
        mod = model.get_submodule(name)
        with torch.no_grad():
            nnz = int(torch.count_nonzero(mod.quant_weight().value))
        conv = isinstance(mod, nn.Conv2d)
        layers.append(
            LayerPlan(
                name=name,
                kind="conv2d" if conv else "linear",
                weight_bits=wbits[i],
                act_bits=abits[i],
                n_weights=mod.weight.numel(),
                n_nonzero=nnz,
                fan_in=mod.weight[0].numel(),
                out_positions=1,
            )
        )
    plan = CompressionPlan(
        model="test", layers=tuple(layers), budget=Budget("size", 0.1), achieved_cost=0.0,
        predicted_fit=0.0,
    )  # fmt: skip
    return model, plan, masks


def test_mlp_writes_both_checked_graphs_and_a_layer_map(tmp_path):
    model, plan, _ = built("digits-mlp", (8, 6, 4, 2), (8, 6, 4, 3), sparsity=0.9)
    g = export_qonnx(model, (64,), tmp_path, plan=plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.qcdq.onnx", "model.qonnx.onnx"]
    for path in (g.qonnx_path, g.qcdq_path):
        onnx.checker.check_model(onnx.load(path))
    assert g.qcdq_skipped_reason is None
    assert g.input_shape == (64,) and g.exporter == "torchscript"
    assert g.layer_map == {"fc1": "Gemm_0", "fc2": "Gemm_1", "fc3": "Gemm_2", "fc4": "Gemm_3"}
    proto = onnx.load(g.qonnx_path)
    names = {n.name for n in proto.graph.node}
    assert len(names) == len(proto.graph.node) and "" not in names
    assert ExportedGraph.from_dict(g.to_dict()) == g


def test_layer_map_matches_the_torchscript_scope_names(tmp_path):
    """Value matching agrees with the names the TorchScript exporter gives (``/fc2/Gemm``)."""
    from brevitas.export import export_qonnx as brevitas_export

    model, _, _ = built("digits-mlp", (4, 4, 4, 4), (8, 8, 8, 8))
    brevitas_export(
        model, input_t=torch.zeros(1, 64), export_path=str(tmp_path / "raw.onnx"), dynamo=False
    )
    raw = onnx.load(str(tmp_path / "raw.onnx"))
    by_value = match_layers(raw, layer_weights(model))
    assert by_value == {name: f"/{name}/Gemm" for name, _, _ in MLP}


def test_layer_map_uses_plan_names_for_a_wrapped_model(tmp_path):
    model, plan, _ = built("digits-mlp", (8, 8, 8, 8), (8, 8, 8, 8))
    wrapped = nn.Sequential(OrderedDict(net=model))
    g = export_qonnx(wrapped, (64,), tmp_path, plan=plan)
    assert list(g.layer_map) == ["fc1", "fc2", "fc3", "fc4"]


def test_planned_bits_and_sparsity_are_visible_in_both_graphs(tmp_path):
    wbits, abits = (2, 5, 3, 8), (7, 2, 4, 6)
    model, plan, masks = built("digits-mlp", wbits, abits, sparsity=0.9)
    g = export_qonnx(model, (64,), tmp_path, plan=plan)
    proto = onnx.load(g.qonnx_path)
    nodes = {n.name: n for n in proto.graph.node}
    for lp in plan.layers:
        src = weight_source(proto, nodes[g.layer_map[lp.name]])
        q = quant_params(proto, src.quant_node)
        assert q.bits == lp.weight_bits and q.narrow and q.signed
        codes = q.quantize_int(src.array)
        assert np.count_nonzero(codes) == lp.n_nonzero
        assert np.all(codes[~masks[lp.name].numpy()] == 0)  # masked weights are exact zeros
        assert np.abs(codes).max() <= 2 ** (lp.weight_bits - 1) - 1
    # the QCDQ twin stores the same integer codes as int8
    qcdq = onnx.load(g.qcdq_path)
    int_weights = [
        onnx.numpy_helper.to_array(i)
        for i in qcdq.graph.initializer
        if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2
    ]
    assert sorted(w.size - np.count_nonzero(w) for w in int_weights) == sorted(
        lp.n_weights - lp.n_nonzero for lp in plan.layers
    )
    assert all(lp.sparsity > 0.8999 for lp in plan.layers)  # 90 % of weights pruned


def test_cnn_export_and_layer_map(tmp_path):
    model, plan, _ = built("digits-cnn", (4, 2, 3), (8, 4, 3), sparsity=0.5)
    g = export_qonnx(model, (1, 8, 8), tmp_path, plan=plan)
    assert g.layer_map == {"conv1": "Conv_0", "conv2": "Conv_1", "fc1": "Gemm_0"}
    assert g.qcdq_path is not None and g.input_shape == (1, 8, 8)
    # the map can be rebuilt on the graph hls4ml takes (channels-last, Gemm → MatMul), where the
    # Dense weight's rows are permuted to the channels-last flatten order
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    mw = cleanup_model(ModelWrapper(g.qonnx_path)).transform(ConvertToChannelsLastAndClean())
    mw = cleanup_model(mw.transform(GemmToMatMul()))
    assert match_layers(mw, layer_weights(model, plan)) == {
        "conv1": "Conv_0",
        "conv2": "Conv_1",
        "fc1": "MatMul_0",
    }


@pytest.mark.parametrize(
    "wbits,abits,culprit",
    [((8, 10, 4, 4), (8, 8, 8, 8), "10 bits"), ((8, 8, 8, 8), (8, 8, 12, 8), "12 bits")],
)
def test_more_than_8_bits_skips_the_qcdq_twin_with_a_reason(tmp_path, wbits, abits, culprit):
    (tmp_path / "model.qcdq.onnx").write_bytes(b"stale twin of an earlier export")
    model, plan, _ = built("digits-mlp", wbits, abits)
    g = export_qonnx(model, (64,), tmp_path, plan=plan)
    assert g.qcdq_path is None
    assert culprit in g.qcdq_skipped_reason and "int8" in g.qcdq_skipped_reason
    assert not (tmp_path / "model.qcdq.onnx").exists()
    assert ExportedGraph.from_dict(g.to_dict()) == g


def test_float_weight_scale_is_rejected_naming_node_and_scale(tmp_path):
    model, _, _ = mlp((8, 8, 8, 8), (8, 8, 8, 8), weight_quant=Int8WeightPerTensorFloat)
    with pytest.raises(NotFixedPointError, match=r"Quant node 'Quant_\d+' has scale \[0\.\d+"):
        export_qonnx(model, (64,), tmp_path)
    assert not (tmp_path / "model.qonnx.onnx").exists()


def test_float_bias_is_rejected(tmp_path):
    model, _, _ = mlp((8, 8, 8, 8), (8, 8, 8, 8), bias_quant=None)
    with pytest.raises(NotFixedPointError, match="layer 'fc1' .*float bias.*Int16Bias"):
        export_qonnx(model, (64,), tmp_path)
    g = export_qonnx(model, (64,), tmp_path, require_fixed_point=False)
    assert g.qcdq_path is not None


def test_unquantized_layer_is_rejected(tmp_path):
    model, _, _ = mlp((8, 8, 8, 8), (8, 8, 8, 8))
    model.fc3 = nn.Linear(32, 32)
    with pytest.raises(NotFixedPointError, match="layer 'fc3'.*unquantized float weight"):
        export_qonnx(model, (64,), tmp_path)


def test_wrong_input_shape_is_rejected(tmp_path):
    model, _, _ = mlp((8, 8, 8, 8), (8, 8, 8, 8))
    with pytest.raises(InputShapeError, match=r"shape \(63,\)"):
        export_qonnx(model, (63,), tmp_path)
    with pytest.raises(InputShapeError, match="positive ints"):
        export_qonnx(model, (), tmp_path)


def test_live_prune_mask_is_rejected(tmp_path):
    model, _, _ = mlp((8, 8, 8, 8), (8, 8, 8, 8))
    torch.nn.utils.prune.l1_unstructured(model.fc2, "weight", amount=0.5)
    with pytest.raises(ExportError, match="'fc2'.*prune.remove"):
        export_qonnx(model, (64,), tmp_path)


def test_plan_layer_missing_from_the_model_is_rejected(tmp_path):
    model, plan, _ = mlp((8, 8, 8, 8), (8, 8, 8, 8))
    bad = CompressionPlan.from_dict(
        {**plan.to_dict(), "layers": [{**plan.layers[0].to_dict(), "name": "fc9"}]}
    )
    with pytest.raises(ExportError, match="fc9"):
        export_qonnx(model, (64,), tmp_path, plan=bad)


def test_exported_graph_validates_itself():
    with pytest.raises(ArtifactError, match="exactly one"):
        ExportedGraph("a.onnx", None, None, (64,))
    with pytest.raises(ArtifactError, match="input_shape"):
        ExportedGraph("a.onnx", "b.onnx", None, (0,))
    with pytest.raises(ArtifactError, match="unknown fields"):
        ExportedGraph.from_dict({"qonnx_path": "a", "bogus": 1})
    assert issubclass(NotFixedPointError, FitcError) and issubclass(InputShapeError, FitcError)


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_graph_semantics(tmp_path):
    model, plan, _ = built("digits-mlp", (8, 3, 2, 6), (8, 4, 3, 5), sparsity=0.7)
    ts = export_qonnx(model, (64,), tmp_path / "ts", plan=plan)
    dy = export_qonnx(model, (64,), tmp_path / "dy", dynamo=True, plan=plan)
    assert dy.exporter == "dynamo" and dy.qcdq_path is not None
    assert list(dy.layer_map) == list(ts.layer_map)
    assert not list((tmp_path / "dy").glob("*.data"))  # weights inlined, no side file
    a, b = onnx.load(ts.qonnx_path), onnx.load(dy.qonnx_path)
    na = {n.name: n for n in a.graph.node}
    nb = {n.name: n for n in b.graph.node}
    for name in ts.layer_map:
        wa = weight_source(a, na[ts.layer_map[name]])
        wb = weight_source(b, nb[dy.layer_map[name]])
        np.testing.assert_array_equal(wa.array, wb.array)
        assert quant_params(a, wa.quant_node).bits == quant_params(b, wb.quant_node).bits
    assert const_value(a, "no-such-tensor") is None
