"""The firmware's input is the network's quantized input: range-edge inputs through every hop.

Inputs at the input quantizer's edges (rounding ties and their float neighbours, one step beyond
the largest and smallest code, huge and tiny values) must be rounded half to even and saturated
identically by Brevitas, qonnx, onnxruntime and hls4ml's emulation, whose input port now has the
quantizer's width instead of a wide ``fixed<64,32>`` that wrapped above 2^31.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fitc.backends.hls import emulation_check, lower
from fitc.build import apply_plan, calibrate, magnitude_masks, make_plan
from fitc.export import export_qonnx, range_edge_inputs, verify_chain
from fitc.models import build_model, get_spec


def _built(name: str, tmp_path, weight_bits: int = 4, act_bits: int = 6):
    spec = get_spec(name)
    model = build_model(name, seed=0)
    masks = magnitude_masks(model, 0.5)
    plan = make_plan(
        model, model_name=name, input_shape=spec.input_shape, weight_bits=weight_bits,
        act_bits=act_bits, masks=masks,
    )  # fmt: skip
    X = torch.randn((256, *spec.input_shape), generator=torch.Generator().manual_seed(0))
    qmodel = calibrate(apply_plan(model, plan, masks), X)
    exported = export_qonnx(qmodel, spec.input_shape, tmp_path, plan=plan)
    return spec, qmodel, plan, exported


def test_range_edge_inputs_are_edges(tmp_path):
    spec, qmodel, plan, _ = _built("digits-mlp", tmp_path)
    X = range_edge_inputs(qmodel, spec.input_shape, 64)
    q = qmodel.get_submodule("input_quant").act_quant
    s, bits = float(q.scale()), int(q.bit_width())
    codes = X / s
    assert X.shape == (64, 64) and X.dtype == np.float32
    assert np.isclose(codes % 1, 0.5).mean() > 0.1  # rounding ties
    assert (codes > 2 ** (bits - 1)).any() and (codes < -(2 ** (bits - 1))).any()  # saturate
    assert (np.abs(X) >= 1e30).any() and ((np.abs(X) > 0) & (np.abs(X) <= 1e-9)).any()


@pytest.mark.parametrize(
    "name", ["digits-mlp", "digits-cnn", pytest.param("resnet8", marks=pytest.mark.slow)]
)
def test_brevitas_qonnx_onnxruntime_agree_on_range_edges(tmp_path, name):
    spec, qmodel, plan, exported = _built(name, tmp_path)
    X = range_edge_inputs(qmodel, spec.input_shape, 96 if name == "resnet8" else 400)
    report = verify_chain(qmodel, exported, X, np.zeros(len(X), dtype=np.int64), plan=plan)
    for hop in report.hops:
        assert hop.max_abs_diff == 0 and hop.identical_rows == 1, hop


@pytest.mark.compile
@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_hls4ml_port_is_the_quantized_input_and_emulation_agrees_on_range_edges(tmp_path, name):
    from fitc.artifacts import HardwareConfig

    spec, qmodel, plan, exported = _built(name, tmp_path)
    project = lower(
        exported.qonnx_path, tmp_path / "hls4ml", HardwareConfig(), plan=plan,
        layer_map=exported.layer_map,
    )  # fmt: skip
    q = qmodel.get_submodule("input_quant").act_quant
    bits, frac = int(q.bit_width()), -int(np.log2(float(q.scale())))
    assert project.input_precision == f"fixed<{bits},{bits - frac},RND_CONV,SAT>"
    summary = (tmp_path / "hls4ml" / "SUMMARY.md").read_text()
    assert "host input quantization" in summary and f"2^{frac}" in summary
    X = range_edge_inputs(qmodel, spec.input_shape, 500, seed=1)
    hop = emulation_check(project, exported.qonnx_path, X, np.zeros(len(X), dtype=np.int64))
    assert hop.max_abs_diff == 0 and hop.identical_rows == 1, hop
