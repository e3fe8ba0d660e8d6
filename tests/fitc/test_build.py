"""fitc.build: the built Brevitas model is the plan (bits, zeros, quantizer recipe), unsupported
layers are refused by name, and a saved model reloads bit for bit."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fitc.artifacts import CompressionPlan
from fitc.build import (
    INPUT_QUANT,
    apply_plan,
    bias_bit_width,
    calibrate,
    fixed_point_quantize,
    float_layers,
    int_weight,
    load_quant_model,
    magnitude_masks,
    make_plan,
    measure_layers,
    predict,
    quant_layers,
    save_quant_model,
    weight_scale,
)
from fitc.errors import ArtifactError, UnsupportedLayerError
from fitc.models import build_model, get_spec
from fitc.rundir import load_torch

BITS = (8, 6, 4, 3, 2, 5, 7)


def _plan(name: str, sparsity: float = 0.6, act_bits=None, seed: int = 0):
    model = build_model(name, seed=seed)
    spec = get_spec(name)
    masks = magnitude_masks(model, sparsity)
    wbits = {n: BITS[i % len(BITS)] for i, n in enumerate(float_layers(model))}
    plan = make_plan(
        model,
        model_name=name,
        input_shape=spec.input_shape,
        weight_bits=wbits,
        act_bits=6 if act_bits is None else act_bits,
        masks=masks,
    )
    return model, spec, plan, masks


def _inputs(spec, n=64, seed=0):
    return torch.randn((n, *spec.input_shape), generator=torch.Generator().manual_seed(seed))


def test_fixed_point_quantize_is_brevitas_bit_for_bit():
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerTensorFixedPoint

    from fitc.space import quantize_weight

    g = torch.Generator().manual_seed(0)
    for trial in range(140):
        bits = 2 + trial % 7
        w = torch.randn(8, 16, generator=g) * 10 ** (torch.rand(1, generator=g).item() * 4 - 3)
        if trial % 4 == 1:  # max exactly on a power of two times the level count
            w = w.clamp(-1, 1)
            w[0, 0] = (2 ** (bits - 1) - 1) * 2.0 ** (trial % 5 - 4)
        if trial % 4 == 2:  # every value exactly half-way between two levels
            w = (torch.randint(-(2**bits), 2**bits + 1, (8, 16), generator=g) / 2) * 2.0**-4
        layer = qnn.QuantLinear(
            16, 8, bias=False, weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=bits
        )
        with torch.no_grad():
            layer.weight.copy_(w)
        q, scale = fixed_point_quantize(w, bits)
        assert torch.equal(q, int_weight(layer).float()), (trial, bits)
        assert torch.equal(scale, weight_scale(layer).reshape(())), (trial, bits)
        assert torch.equal(q * scale, quantize_weight(w, bits)), (trial, bits)


def test_bias_bit_width_rule():
    assert bias_bit_width(8, 8, 64) == 22
    assert bias_bit_width(8, 8, 576) == 26
    assert bias_bit_width(2, 2, 1) == 4
    assert bias_bit_width(16, 16, 4096) == 32  # capped at the int32 bias of the QCDQ graph


@pytest.mark.parametrize(
    "name", ["digits-mlp", "digits-cnn", pytest.param("resnet8", marks=pytest.mark.slow)]
)
def test_built_model_is_the_plan(name):
    model, spec, plan, masks = _plan(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = apply_plan(model, plan, masks)
    # the float model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # bits, zero counts and output positions measured on the built model equal the plan
    assert measure_layers(qmodel, plan, input_shape=spec.input_shape) == plan.layers
    layers = quant_layers(qmodel)
    assert set(layers) == {lp.name for lp in plan.layers}  # same qualified names
    float_mods = float_layers(model)
    for lp in plan.layers:
        layer = layers[lp.name]
        # integer weights equal the recipe applied to the masked float weights
        q, _ = fixed_point_quantize(
            float_mods[lp.name].weight.detach() * masks[lp.name], lp.weight_bits
        )
        assert torch.equal(int_weight(layer).float(), q)
        assert not int_weight(layer)[~masks[lp.name]].any()
        assert int(layer.weight_quant.bit_width()) == lp.weight_bits
        bias_bits = layer.bias_quant.tensor_quant.msb_clamp_bit_width_impl()
        assert int(bias_bits) == bias_bit_width(lp.weight_bits, lp.act_bits, lp.fan_in)
    # the input quantizer is signed, the ReLUs unsigned, at the planned bits
    assert qmodel.get_submodule(INPUT_QUANT).act_quant.is_signed
    assert not qmodel.get_submodule("relu1").act_quant.is_signed
    calibrate(qmodel, _inputs(spec))
    out = predict(qmodel, _inputs(spec, 8, seed=1))
    assert out.shape == (8, spec.num_classes) and torch.isfinite(out).all()


def test_resnet8_activation_bits_follow_the_layer_they_feed():
    model = build_model("resnet8")
    spec = get_spec("resnet8")
    names = list(float_layers(model))
    # one act width per quantizer: the shortcut conv shares stage2/3.conv1's input quantizer
    feeder_bits = {
        "conv1": 8,
        "stage1.conv1": 7,
        "stage1.conv2": 6,
        "stage2.conv1": 5,
        "stage2.shortcut": 5,
        "stage2.conv2": 4,
        "stage3.conv1": 3,
        "stage3.shortcut": 3,
        "stage3.conv2": 6,
        "fc": 4,
    }
    assert set(feeder_bits) == set(names)
    plan = make_plan(
        model,
        model_name="resnet8",
        input_shape=spec.input_shape,
        weight_bits=4,
        act_bits=feeder_bits,
    )
    qmodel = apply_plan(model, plan, None)
    bits = {
        n: int(m.act_quant.bit_width())
        for n, m in qmodel.named_modules()
        if hasattr(m, "act_quant")
    }
    assert bits[INPUT_QUANT] == 8
    assert bits["relu1"] == 7  # feeds stage1.conv1 and stage1's identity residual add
    assert bits["stage1.relu1"] == 6
    assert bits["stage1.relu2"] == 5  # feeds stage2.conv1 and stage2.shortcut
    assert bits["stage2.relu1"] == 4
    assert bits["stage3.relu1"] == 6
    assert bits["stage3.relu2"] == 4  # through the max pool and flatten into fc
    assert qmodel.meta["fitc"]["input_quantizers"]["stage2.shortcut"] == "stage1.relu2"
    # a shared quantizer with two different planned widths is refused, naming both layers
    feeder_bits["stage2.shortcut"] = 8
    bad = make_plan(
        model,
        model_name="resnet8",
        input_shape=spec.input_shape,
        weight_bits=4,
        act_bits=feeder_bits,
    )
    with pytest.raises(ArtifactError, match=r"stage2.conv1.*stage2.shortcut.*stage1.relu2"):
        apply_plan(model, bad, None)


class _BN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class _Unquantized(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)) + x)


def _seq(**mods):
    return nn.Sequential(OrderedDict(mods))


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        (_BN(), r"module norm \(BatchNorm1d\)"),
        (_seq(fc1=nn.Linear(4, 4), act=nn.Tanh(), fc2=nn.Linear(4, 2)), r"module act \(Tanh\)"),
        (_seq(fc1=nn.Linear(4, 4), act=nn.GELU(), fc2=nn.Linear(4, 2)), r"module act \(GELU\)"),
        (_Functional(), r"function relu .*nn.ReLU module"),
        (_Unquantized(), r"layer fc2 \(Linear\).*function add.*not quantized"),
        (_seq(conv=nn.Conv1d(1, 2, 3), flat=nn.Flatten(), fc=nn.Linear(4, 2)), r"conv \(Conv1d\)"),
    ],
)
def test_unsupported_layers_are_named(model, pattern):
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    plan = CompressionPlan.from_dict(
        {
            "model": "toy",
            "budget": {"kind": "size", "limit": 1.0},
            "achieved_cost": 0.25,
            "predicted_fit": 0.0,
            "layers": [
                {
                    "name": n,
                    "kind": "linear",
                    "weight_bits": 8,
                    "act_bits": 8,
                    "n_weights": m.weight.numel(),
                    "n_nonzero": m.weight.numel(),
                    "fan_in": m.in_features,
                }
                for n, m in layers.items()
            ],
        }
    )
    with pytest.raises(UnsupportedLayerError, match=pattern):
        apply_plan(model, plan, None)


def test_plan_and_masks_must_match_the_model():
    model, spec, plan, masks = _plan("digits-mlp")
    bad = dict(masks, fc2=masks["fc2"].T.contiguous())
    with pytest.raises(
        ArtifactError, match=r"mask of layer fc2: expected a bool tensor of shape \(32, 64\)"
    ):
        apply_plan(model, plan, bad)
    with pytest.raises(ArtifactError, match=r"layer fc1: the built model has n_nonzero"):
        apply_plan(model, plan, None)  # the plan counted pruned weights as zero
    other = build_model("digits-mlp", seed=1)
    with pytest.raises(ArtifactError, match="n_nonzero"):
        apply_plan(other, plan, masks)


def test_saved_model_reloads_bit_for_bit(tmp_path):
    model, spec, plan, masks = _plan("digits-cnn", sparsity=0.8)
    qmodel = apply_plan(model, plan, masks)
    with pytest.raises(ArtifactError, match="calibrate"):
        save_quant_model(tmp_path / "model.pt", qmodel, masks)
    calibrate(qmodel, _inputs(spec, 256))
    with torch.no_grad():  # make the saved weights differ from the float model's
        for layer in quant_layers(qmodel).values():
            layer.weight.mul_(1.01)
    save_quant_model(tmp_path / "model.pt", qmodel, masks)
    blob = torch.load(tmp_path / "model.pt", weights_only=True)
    assert blob["format"] == "fitc.quant_model/1" and set(blob["masks"]) == set(masks)
    assert load_torch(tmp_path / "model.pt")["state_dict"].keys() == qmodel.state_dict().keys()
    X = _inputs(spec, 200, seed=3)
    for given in (masks, None):  # masks from the caller or from the file
        reloaded = load_quant_model(build_model("digits-cnn"), plan, given, tmp_path / "model.pt")
        assert torch.equal(predict(reloaded, X), predict(qmodel, X))
    with pytest.raises(ArtifactError, match="not a fitc quantized model"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
        load_quant_model(model, plan, masks, tmp_path / "other.pt")


def test_built_models_export_to_qonnx_and_qcdq(tmp_path):
    import numpy as np
    import onnxruntime as ort
    from brevitas.export import export_onnx_qcdq, export_qonnx

    model, spec, plan, masks = _plan("digits-cnn", sparsity=0.7)
    qmodel = apply_plan(model, plan, masks)
    calibrate(qmodel, _inputs(spec, 256))
    x = _inputs(spec, 8, seed=5)
    export_qonnx(qmodel, input_t=x[:1], export_path=str(tmp_path / "m.onnx"), dynamo=False)
    export_onnx_qcdq(qmodel, input_t=x[:1], export_path=str(tmp_path / "q.onnx"), dynamo=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), opts)
    name = sess.get_inputs()[0].name
    got = np.concatenate([sess.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(len(x))])
    assert np.array_equal(got, predict(qmodel, x).numpy())


class _AvgHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 3)
        self.out_relu = nn.ReLU()

    def forward(self, x):
        return self.out_relu(self.fc(self.flatten(self.pool(self.relu(self.conv(x))))))


def test_average_pool_gets_its_own_quantizer_and_a_final_relu_returns_a_tensor():
    model = _AvgHead()
    plan = make_plan(
        model,
        model_name="toy",
        input_shape=(1, 4, 4),
        weight_bits=4,
        act_bits={"conv": 8, "fc": 5},
    )
    qmodel = apply_plan(model, plan, None)
    assert qmodel.meta["fitc"]["input_quantizers"] == {"conv": INPUT_QUANT, "fc": "pool_quant"}
    assert int(qmodel.pool_quant.act_quant.bit_width()) == 5
    assert not qmodel.pool_quant.act_quant.is_signed  # averages of ReLU outputs
    assert int(qmodel.relu.act_quant.bit_width()) == 8  # feeds no planned layer: widest act bits
    calibrate(qmodel, torch.randn(32, 1, 4, 4))
    out = qmodel(torch.randn(2, 1, 4, 4))
    assert type(out) is torch.Tensor and (out >= 0).all()
    assert measure_layers(qmodel, plan, input_shape=(1, 4, 4)) == plan.layers


def test_build_and_finetune_share_the_quant_helpers_without_a_cycle():
    import ast
    import inspect

    import fitc.build
    import fitc.finetune
    import fitc.quant

    imported = {
        mod.__name__: {
            n.module
            for n in ast.walk(ast.parse(inspect.getsource(mod)))
            if isinstance(n, ast.ImportFrom) and n.module
        }
        for mod in (fitc.build, fitc.finetune, fitc.quant)
    }
    assert "fitc.finetune" not in imported["fitc.build"]
    assert "fitc.build" not in imported["fitc.finetune"]
    assert not imported["fitc.quant"] & {"fitc.build", "fitc.finetune"}
    assert fitc.build.calibrate is fitc.quant.calibrate
