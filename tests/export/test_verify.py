"""The equivalence chain on models built by the real pipeline path (fitc.models → fitc.build):
Brevitas ≡ qonnx ≡ onnxruntime bit for bit at several bit mixes (2-bit layers, 90 % sparsity),
per-layer checks of the planned bits and sparsity, failures named by hop and layer, and
verify_onnx_file on graphs made elsewhere, including every bad input."""

from __future__ import annotations  # noqa: I001 (fitc.export resolves as third-party to ruff)

import dataclasses
import functools
import json

import numpy as np
import onnx
import pytest
import torch

from fitc.artifacts import CompressionPlan, EquivalenceReport
from fitc.build import apply_plan, calibrate, magnitude_masks, make_plan
from fitc.errors import ArtifactError, DataError, EquivalenceError
from fitc.export import (
    InputShapeError,
    NotFixedPointError,
    OnnxFileReport,
    check_equivalence,
    export_qonnx,
    run_brevitas,
    verify_chain,
    verify_onnx_file,
)
from fitc.models import build_model, get_spec, load_data


@functools.cache
def _data(name: str):
    return load_data(get_spec(name))


def built(name: str, wbits, abits, sparsity: float, seed: int = 0):
    """(qmodel, plan, masks, data) for a zoo model at the given per-layer bits and sparsity."""
    spec, data = get_spec(name), _data(name)
    model = build_model(name, seed=seed)
    names = [
        n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    masks = magnitude_masks(model, sparsity, scope="layer") if sparsity else None
    plan = make_plan(
        model,
        model_name=name,
        input_shape=spec.input_shape,
        weight_bits=dict(zip(names, wbits, strict=True)),
        act_bits=dict(zip(names, abits, strict=True)),
        masks=masks,
    )
    qmodel = calibrate(apply_plan(model, plan, masks), data.X_train, n_batches=2)
    return qmodel, plan, masks, data


CASES = [
    ("digits-mlp", (8, 8, 8, 8), (8, 8, 8, 8), 0.0),
    ("digits-mlp", (8, 4, 2, 6), (8, 6, 4, 2), 0.9),
    ("digits-mlp", (2, 2, 2, 2), (2, 2, 2, 2), 0.5),
    ("digits-cnn", (8, 8, 8), (8, 8, 8), 0.0),
    ("digits-cnn", (2, 4, 3), (8, 3, 2), 0.9),
    ("digits-cnn", (6, 2, 2), (4, 2, 5), 0.7),
]


@pytest.mark.parametrize("name,wbits,abits,sparsity", CASES)
def test_chain_is_bit_exact_and_matches_the_plan(tmp_path, name, wbits, abits, sparsity):
    qmodel, plan, masks, data = built(name, wbits, abits, sparsity)
    g = export_qonnx(qmodel, get_spec(name).input_shape, tmp_path, plan=plan)
    report = verify_chain(qmodel, g, data.X_test, data.y_test, plan=plan, masks=masks)
    assert [(h.a, h.b) for h in report.hops] == [("brevitas", "qonnx"), ("brevitas", "onnxruntime")]
    for h in report.hops:
        assert h.max_abs_diff == 0.0 and h.identical_rows == 1.0 and h.argmax_agreement == 1.0
        assert h.n_samples == len(data.X_test) and h.accuracy_a == h.accuracy_b
    assert [c["name"] for c in report.layer_checks] == [lp.name for lp in plan.layers]
    for c, lp in zip(report.layer_checks, plan.layers, strict=True):
        assert c["ok"], c["problems"]
        assert c["exported_weight_bits"] == lp.weight_bits and c["exported_act_bits"] == lp.act_bits
        assert c["exported_n_nonzero"] == lp.n_nonzero
        assert c["exported_sparsity"] == round(lp.sparsity, 6)
        assert c["mask_respected"] is True if masks else "mask_respected" not in c
        assert c["acc_bound_bits"] < 24  # float32 sums are exact: the precondition of equality
    for c in report.layer_checks:  # masks prune round(s·n) weights; quantization adds zeros
        assert c["exported_sparsity"] >= sparsity - 0.5 / c["n_weights"] - 1e-6
    check_equivalence(report)
    # the report survives run.json
    back = EquivalenceReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert back == report


@pytest.fixture(scope="module")
def mlp_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp")
    qmodel, plan, masks, data = built("digits-mlp", (6, 3, 2, 4), (8, 5, 3, 4), 0.8)
    return qmodel, plan, masks, data, export_qonnx(qmodel, (64,), out, plan=plan)


def test_wrong_plan_bits_and_sparsity_fail_naming_the_layer(mlp_export):
    qmodel, plan, masks, data, g = mlp_export
    d = plan.to_dict()
    d["layers"][1]["weight_bits"] = 4
    d["layers"][2]["act_bits"] = 5
    d["layers"][3]["n_nonzero"] -= 1
    wrong = CompressionPlan.from_dict(d)
    report = verify_chain(qmodel, g, data.X_test[:50], data.y_test[:50], plan=wrong)
    assert report.exact  # the graphs agree; only the plan does not
    bad = {c["name"]: c["problems"] for c in report.layer_checks if not c["ok"]}
    assert list(bad) == ["fc2", "fc3", "fc4"]
    with pytest.raises(EquivalenceError) as e:
        check_equivalence(report)
    msg = str(e.value)
    assert "layer 'fc2'" in msg and "weight bits: planned 4, exported 3" in msg
    assert "layer 'fc3'" in msg and "act bits: planned 5, exported 3" in msg
    assert "layer 'fc4'" in msg and "non-zero weights" in msg and "sparsity" in msg


def test_violated_mask_is_reported(mlp_export):
    qmodel, plan, masks, data, g = mlp_export
    flipped = dict(masks)
    flipped["fc1"] = ~masks["fc1"]
    report = verify_chain(qmodel, g, data.X_test[:20], data.y_test[:20], plan=plan, masks=flipped)
    c = report.layer_checks[0]
    assert c["mask_respected"] is False and not c["ok"]


def test_a_changed_model_fails_the_hop(mlp_export):
    qmodel, plan, masks, data, g = mlp_export
    layer = qmodel.get_submodule("fc4")
    saved = layer.bias.detach().clone()
    try:
        with torch.no_grad():
            layer.bias.add_(1.0)
        report = verify_chain(qmodel, g, data.X_test, data.y_test)
    finally:
        with torch.no_grad():
            layer.bias.copy_(saved)
    assert not report.exact and report.hops[0].max_abs_diff > 0
    with pytest.raises(
        EquivalenceError, match="hop brevitas→qonnx: max \\|diff\\|.*hop brevitas→onnxruntime"
    ):
        check_equivalence(report)


def test_wrong_inputs_to_verify_chain(mlp_export):
    qmodel, plan, masks, data, g = mlp_export
    with pytest.raises(InputShapeError, match=r"shape \(10, 1, 8, 8\), expected \(N, 64\)"):
        verify_chain(qmodel, g, data.X_test[:10].reshape(10, 1, 8, 8), data.y_test[:10])
    with pytest.raises(InputShapeError, match=r"labels have shape \(9,\), expected \(10,\)"):
        verify_chain(qmodel, g, data.X_test[:10], data.y_test[:9])
    X = data.X_test[:10].copy()
    X[3, 5] = np.nan
    with pytest.raises(DataError, match="row 3 contains NaN"):
        verify_chain(qmodel, g, X, data.y_test[:10])


def test_missing_or_corrupt_exported_graphs(tmp_path, mlp_export):
    qmodel, plan, masks, data, g = mlp_export
    gone = dataclasses.replace(g, qonnx_path=str(tmp_path / "model.qonnx.onnx"))
    with pytest.raises(ArtifactError, match=r"model.qonnx.onnx: ONNX file not found"):
        verify_chain(qmodel, gone, data.X_test, data.y_test)
    bad = tmp_path / "model.qcdq.onnx"
    bad.write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"model.qcdq.onnx: .*(empty|not a readable)"):
        verify_chain(qmodel, dataclasses.replace(g, qcdq_path=str(bad)), data.X_test, data.y_test)


def test_more_than_8_bits_runs_the_qonnx_hop_only(tmp_path):
    qmodel, plan, masks, data = built("digits-mlp", (8, 10, 4, 4), (8, 8, 12, 8), 0.5)
    g = export_qonnx(qmodel, (64,), tmp_path, plan=plan)
    assert g.qcdq_path is None
    assert "10 bits" in g.qcdq_skipped_reason and "12 bits" in g.qcdq_skipped_reason
    report = verify_chain(qmodel, g, data.X_test, data.y_test, plan=plan, masks=masks)
    assert [h.b for h in report.hops] == ["qonnx"] and report.exact
    check_equivalence(report)
    # verify_onnx_file cannot convert the 12-bit activation for onnxruntime either, and says why
    ref = run_brevitas(qmodel, data.X_test)
    r = verify_onnx_file(g.qonnx_path, data.X_test, reference=ref, y=data.y_test)
    assert [(h.a, h.b) for h in r.hops] == [("reference", "qonnx")] and r.exact
    assert any("onnxruntime" in s and "12 bits" in s for s in r.skipped)


def test_accumulators_wider_than_float32_break_equality_and_the_error_says_so(tmp_path):
    """Condition for bit-exactness: every accumulator fits float32's 24-bit significand."""
    qmodel, plan, masks, data = built("digits-mlp", (16, 16, 16, 16), (16, 16, 16, 16), 0.0)
    g = export_qonnx(qmodel, (64,), tmp_path, plan=plan)
    report = verify_chain(qmodel, g, data.X_test, data.y_test, plan=plan)
    assert all(c["ok"] and c["acc_bound_bits"] > 24 for c in report.layer_checks)
    if report.exact:
        # Whether float32 sums differ depends on the CPU's kernels (summation order): on some
        # machines Brevitas and qonnx happen to agree. Force a difference to check the message.
        hop = dataclasses.replace(report.hops[0], max_abs_diff=5e-7, identical_rows=0.5)
        report = dataclasses.replace(report, hops=(hop, *report.hops[1:]))
    assert not report.exact and 0 < report.hops[0].max_abs_diff < 1e-6
    with pytest.raises(EquivalenceError, match="hop brevitas→qonnx.*hint: layers fc1 .*24-bit"):
        check_equivalence(report)


# --- verify_onnx_file ---------------------------------------------------------------------


def test_verify_onnx_file_on_both_graph_formats(mlp_export):
    qmodel, plan, masks, data, g = mlp_export
    ref = run_brevitas(qmodel, data.X_test)
    for path, fmt, first in (
        (g.qonnx_path, "qonnx", "qonnx"),
        (g.qcdq_path, "qcdq", "onnxruntime"),
    ):
        r = verify_onnx_file(path, data.X_test, reference=ref, y=data.y_test)
        assert r.graph_format == fmt and r.exact and r.n_samples == len(data.X_test)
        pairs = [(h.a, h.b) for h in r.hops]
        assert ("reference", first) in pairs and len(pairs) == 3
        np.testing.assert_array_equal(r.outputs["qonnx"], ref)
        assert OnnxFileReport.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    # a single sample without its batch dimension is accepted
    one = verify_onnx_file(g.qonnx_path, data.X_test[0])
    assert one.n_samples == 1 and one.exact and all(np.isnan(h.accuracy_a) for h in one.hops)


def test_verify_onnx_file_detects_a_wrong_reference(mlp_export):
    qmodel, plan, masks, data, g = mlp_export
    ref = run_brevitas(qmodel, data.X_test[:30])
    ref[7, 2] += 2.0**-10
    r = verify_onnx_file(g.qcdq_path, data.X_test[:30], reference=ref)
    bad = [h for h in r.hops if h.a == "reference"]
    assert bad and all(h.max_abs_diff == 2.0**-10 and h.identical_rows == 29 / 30 for h in bad)
    assert not r.exact


def test_verify_onnx_file_bad_inputs(tmp_path, mlp_export):
    qmodel, plan, masks, data, g = mlp_export
    with pytest.raises(ArtifactError, match="not found"):
        verify_onnx_file(tmp_path / "missing.onnx", data.X_test)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xfe" * 10)
    with pytest.raises(ArtifactError, match="corrupt.onnx"):
        verify_onnx_file(corrupt, data.X_test)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(open(g.qonnx_path, "rb").read()[:1000])
    with pytest.raises(ArtifactError, match="truncated.onnx"):
        verify_onnx_file(truncated, data.X_test)
    with pytest.raises(InputShapeError, match=r"got|expected \(N, 64\)"):
        verify_onnx_file(g.qonnx_path, data.X_test[:, :60])
    with pytest.raises(InputShapeError, match="reference has 5 rows"):
        verify_onnx_file(g.qonnx_path, data.X_test[:4], reference=np.zeros((5, 10)))
    with pytest.raises(InputShapeError, match=r"reference has shape \(4, 9\)"):
        verify_onnx_file(g.qonnx_path, data.X_test[:4], reference=np.zeros((4, 9)))


def test_float_scale_graph_is_rejected_where_fixed_point_is_required(tmp_path, mlp_export):
    qmodel, plan, masks, data, g = mlp_export
    model = onnx.load(g.qonnx_path)
    quant = next(n for n in model.graph.node if n.op_type == "Quant")
    scale = next(i for i in model.graph.initializer if i.name == quant.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(np.array(0.0123, dtype=np.float32), scale.name))
    path = tmp_path / "float_scale.onnx"
    onnx.save(model, str(path))
    with pytest.raises(
        NotFixedPointError, match=rf"'{quant.name}' has scale \[0\.0123\].*power of two"
    ):
        verify_onnx_file(path, data.X_test[:5])
    r = verify_onnx_file(path, data.X_test[:5], require_fixed_point=False)
    assert r.graph_format == "qonnx" and r.hops
