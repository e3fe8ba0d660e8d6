"""The equivalence chain: Brevitas ≡ qonnx executor ≡ onnxruntime (QCDQ), bit for bit.

Contract:

- :func:`verify_chain` runs every input row through the Brevitas model (eval mode, float32),
  the qonnx executor on the QONNX graph (batched: a copy re-cleaned with
  ``cleanup_model(override_inpsize=N)``) and onnxruntime on the QCDQ twin (graph optimizations
  off, one sample per run, as the graph has batch size 1). Each engine is compared with Brevitas:
  one :class:`~fitc.artifacts.HopReport` per hop (max |diff|, fraction of rows whose every value is
  equal, argmax agreement, both accuracies). Given a plan, it also checks per layer that the
  weight Quant node carries the planned weight bits, that the Quant node feeding the layer carries
  the planned activation bits, and that the number of non-zero *quantized* weights in the exported
  graph equals the plan's ``n_nonzero`` (so the exported sparsity equals the planned one exactly);
  with masks, that every masked weight is zero in the graph. It never raises on a mismatch: the
  report records it, and :func:`check_equivalence` turns it into :class:`EquivalenceError`.
- Conditions for bit-exactness, each observed to be needed or checked here: power-of-two scales
  with zero zero points (float weight scales gave max |diff| 1.5e-8 and 19 % identical rows);
  integer biases (both enforced by ``export_qonnx``); every accumulator within float32's 24-bit
  significand (``acc_bound_bits``: 16-bit weights × 16-bit activations gave max |diff| 3e-8);
  the model in eval mode (frozen activation scales); pruned weights exactly zero in the weight
  tensor (no live prune hooks); inputs cast to float32 once, before every engine; round half to
  even everywhere (Brevitas, numpy in qonnx, QuantizeLinear in onnxruntime agree on it).
- "Identical" means every value compares equal (``==``; +0.0 equals -0.0, NaN equals nothing).
- :func:`verify_onnx_file` checks a graph made elsewhere: a QONNX file runs in the qonnx executor
  and, when it converts to QCDQ (constant Quant nodes folded, the rest 2…8 bits), in onnxruntime;
  a QCDQ/plain ONNX file runs in onnxruntime and in the qonnx executor; ``reference`` outputs,
  when given, are compared with each engine.
- Bad input raises :class:`~fitc.errors.FitcError` subclasses: a missing or corrupt file
  (:class:`~fitc.errors.ArtifactError`), a non-power-of-two scale where fixed point is required
  (:class:`NotFixedPointError`), inputs or references of the wrong shape (:class:`InputShapeError`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fitc.artifacts import CompressionPlan, EquivalenceReport, HopReport
from fitc.errors import ArtifactError, DataError, EquivalenceError

from .qonnx_export import (
    ExportedGraph,
    InputShapeError,
    NotFixedPointError,
    act_quant_node,
    attr,
    check_fixed_point,
    const_source,
    is_power_of_two,
    load_onnx,
    quant_params,
    weight_source,
)

log = logging.getLogger(__name__)

_QONNX_OPS = ("Quant", "IntQuant", "BipolarQuant", "Trunc", "FloatQuant", "MultiThreshold")
_QCDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# float32 holds every integer below 2**24 exactly: accumulators that stay below are order-free.
_FLOAT32_EXACT_BITS = 24


# --------------------------------------------------------------------------------------------
# Inputs


def _as_inputs(X: Any, sample_shape: tuple[int, ...], what: str) -> np.ndarray:
    """Float32 batch ``(N, *sample_shape)``; a single sample without batch dim becomes N = 1."""
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise DataError(f"{what}: inputs must be a real numeric array, got dtype {X.dtype}")
    if tuple(X.shape) == tuple(sample_shape):
        X = X[None]
    if X.ndim != len(sample_shape) + 1 or tuple(X.shape[1:]) != tuple(sample_shape):
        raise InputShapeError(
            f"{what}: inputs have shape {tuple(X.shape)}, expected (N, {', '.join(map(str, sample_shape))})"
            + (
                " — a CNN takes (N, C, H, W); reshape flat rows first"
                if len(sample_shape) == 3
                else ""
            )
        )
    if X.shape[0] == 0:
        raise DataError(f"{what}: no input rows")
    X = X.astype(np.float32, copy=False)
    bad = ~np.isfinite(X.reshape(X.shape[0], -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{what}: input row {int(np.argmax(bad))} contains NaN or inf")
    return X


def _labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise InputShapeError(f"labels have shape {tuple(y.shape)}, expected ({n},)")
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise DataError(f"labels must be integers, got dtype {y.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"labels must be integers, got dtype {y.dtype}")
        y = y.astype(np.int64)
    return y


# --------------------------------------------------------------------------------------------
# Engines


def run_brevitas(qmodel: Any, X: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """The Brevitas model's outputs in eval mode (mode restored afterwards)."""
    import torch

    was_training = qmodel.training
    qmodel.eval()
    outs = []
    try:
        with torch.no_grad():
            for i in range(0, len(X), batch_size):
                out = qmodel(torch.from_numpy(np.ascontiguousarray(X[i : i + batch_size])))
                out = getattr(out, "value", out)
                outs.append(out.detach().cpu().numpy())
    finally:
        qmodel.train(was_training)
    return np.concatenate(outs).astype(np.float32, copy=False)


def _graph_input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ArtifactError(
            f"graph must have exactly one data input, has {[i.name for i in inputs]}"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    if len(shape) < 2 or any(d <= 0 for d in shape[1:]):
        raise ArtifactError(f"graph input {inputs[0].name!r} has no static sample shape: {shape}")
    return shape


def run_qonnx(model: onnx.ModelProto, X: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
    """The qonnx executor's outputs, batched (``cleanup_model(override_inpsize=n)`` on a copy)."""
    import qonnx.core.onnx_exec as oxe
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    graphs: dict[int, Any] = {}
    outs = []
    for i in range(0, len(X), chunk):
        xb = X[i : i + chunk]
        n = len(xb)
        if n not in graphs:
            graphs[n] = cleanup_model(ModelWrapper(copy.deepcopy(model)), override_inpsize=n)
        mw = graphs[n]
        iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
        outs.append(np.asarray(oxe.execute_onnx(mw, {iname: xb})[oname]))
    return np.concatenate(outs).astype(np.float32, copy=False)


def onnxruntime_session(model: onnx.ModelProto) -> Any:
    """An onnxruntime CPU session with graph optimizations off (its fusions re-quantize biases)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_onnxruntime(model: onnx.ModelProto, X: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """onnxruntime outputs, one sample per run unless the graph's batch dimension is dynamic."""
    from tqdm import tqdm

    sess = onnxruntime_session(model)
    inp = sess.get_inputs()[0]
    if not isinstance(inp.shape[0], int):
        return np.asarray(sess.run(None, {inp.name: X})[0], dtype=np.float32)
    rows = tqdm(range(len(X)), desc="onnxruntime", unit="sample", disable=not progress)
    outs = [sess.run(None, {inp.name: X[i : i + 1]})[0] for i in rows]
    return np.concatenate(outs).astype(np.float32, copy=False)


def qonnx_to_qcdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    """An onnxruntime-runnable copy of a QONNX graph, or (None, reason).

    Quant nodes on constants (weights, biases) are folded into float initializers — exact, the
    values are the fixed-point ones; the remaining (activation) Quant nodes become
    QuantizeLinear→Clip→DequantizeLinear, which needs 2…8 bits and a zero zero point.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.qonnx_to_qcdq import QuantToQCDQ
    from qonnx.util.cleanup import cleanup_model

    mw = cleanup_model(ModelWrapper(copy.deepcopy(model)))
    mw = mw.transform(FoldConstants(exclude_op_types=[]))
    mw = mw.transform(QuantToQCDQ())
    left = [n for n in mw.graph.node if n.op_type in _QONNX_OPS]
    if left:
        desc = []
        for n in left[:4]:
            bits = quant_params(mw.model, n).bits if n.op_type in ("Quant", "IntQuant") else None
            desc.append(f"{n.name} ({n.op_type}{'' if bits is None else f', {bits:g} bits'})")
        return None, (
            "onnxruntime cannot run it: QCDQ holds 2…8-bit activations only, and these nodes "
            f"remain: {', '.join(desc)}"
        )
    for n in mw.graph.node:
        n.domain = "" if n.domain in ("qonnx.custom_op.general", "onnx.brevitas") else n.domain
    return mw.model, None


def qcdq_to_qonnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """A QONNX copy of a QCDQ graph for the qonnx executor (qonnx ``QCDQToQuant``)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.qcdq_to_qonnx import QCDQToQuant
    from qonnx.util.cleanup import cleanup_model

    # QCDQToQuant reads the element types from value_info: infer shapes first.
    mw = cleanup_model(ModelWrapper(copy.deepcopy(model))).transform(QCDQToQuant())
    return mw.model


# --------------------------------------------------------------------------------------------
# Comparison


def compare(
    a_name: str, a: np.ndarray, b_name: str, b: np.ndarray, y: np.ndarray | None = None
) -> HopReport:
    """One hop's figures. Accuracies are NaN without labels."""
    if a.shape != b.shape:
        raise InputShapeError(
            f"{b_name} output has shape {tuple(b.shape)}, {a_name} output {tuple(a.shape)}"
        )
    n = a.shape[0]
    a2, b2 = a.reshape(n, -1), b.reshape(n, -1)
    diff = np.abs(a2.astype(np.float64) - b2.astype(np.float64))
    max_diff = float(np.max(diff)) if diff.size else 0.0
    if np.isnan(diff).any():
        max_diff = math.inf
    pa, pb = a2.argmax(axis=1), b2.argmax(axis=1)
    acc_a = float(np.mean(pa == y)) if y is not None else math.nan
    acc_b = float(np.mean(pb == y)) if y is not None else math.nan
    return HopReport(
        a=a_name,
        b=b_name,
        n_samples=int(n),
        max_abs_diff=max_diff,
        identical_rows=float(np.mean(np.all(a2 == b2, axis=1))),
        argmax_agreement=float(np.mean(pa == pb)),
        accuracy_a=acc_a,
        accuracy_b=acc_b,
    )


def layer_checks(
    model: onnx.ModelProto,
    layer_map: Mapping[str, str],
    plan: CompressionPlan,
    masks: Mapping[str, Any] | None = None,
) -> tuple[dict, ...]:
    """Per plan layer: planned vs exported weight bits, act bits and non-zero quantized weights.

    Each dict has ``name, node, ok, problems`` and the planned/exported figures; ``ok`` is False
    (with the reasons in ``problems``) on any difference. Exactness of the float32 arithmetic is
    recorded too: ``acc_bound_bits`` is log2 of the largest possible |accumulator| counted in steps
    of its (power-of-two) grid; above 24 bits float32 sums may round and engines may disagree.
    """
    nodes = {n.name: n for n in model.graph.node}
    out = []
    for lp in plan.layers:
        rec: dict[str, Any] = {
            "name": lp.name,
            "node": layer_map.get(lp.name),
            "planned_weight_bits": lp.weight_bits,
            "planned_act_bits": lp.act_bits,
            "n_weights": lp.n_weights,
            "planned_n_nonzero": lp.n_nonzero,
            "planned_sparsity": round(lp.sparsity, 6),
        }
        problems: list[str] = []
        node = nodes.get(layer_map.get(lp.name, ""))
        if node is None:
            problems.append("no node in the exported graph")
            rec.update(ok=False, problems=problems)
            out.append(rec)
            continue
        src = weight_source(model, node)
        if src is None or src.quant_node is None:
            problems.append("weight is not quantized by a Quant node")
            rec.update(ok=False, problems=problems)
            out.append(rec)
            continue
        wq = quant_params(model, src.quant_node)
        q = wq.quantize_int(src.array)
        nnz = int(np.count_nonzero(q))
        rec.update(
            weight_quant_node=wq.node,
            exported_weight_bits=int(wq.bits) if wq.bits.is_integer() else wq.bits,
            exported_n_weights=int(q.size),
            exported_n_nonzero=nnz,
            exported_sparsity=round(1.0 - nnz / q.size, 6),
            weight_scale=float(np.asarray(wq.scale).reshape(-1)[0]),
        )
        if not is_power_of_two(wq.scale):
            problems.append(
                f"weight scale {wq.scale.reshape(-1)[:4].tolist()} is not a power of two"
            )
        if wq.bits != lp.weight_bits:
            problems.append(f"weight bits: planned {lp.weight_bits}, exported {wq.bits:g}")
        if q.size != lp.n_weights:
            problems.append(f"weight count: planned {lp.n_weights}, exported {q.size}")
        if nnz != lp.n_nonzero:
            problems.append(
                f"non-zero weights: planned {lp.n_nonzero}/{lp.n_weights} "
                f"(sparsity {lp.sparsity:.6f}), exported {nnz}/{q.size} "
                f"(sparsity {1.0 - nnz / q.size:.6f})"
            )
        aq_node = act_quant_node(model, node)
        a_bits = None
        if aq_node is None:
            problems.append("no Quant node feeds the layer's input (activation not quantized)")
        else:
            aq = quant_params(model, aq_node)
            a_bits = int(aq.bits) if aq.bits.is_integer() else aq.bits
            rec.update(act_quant_node=aq.node, exported_act_bits=a_bits, act_signed=aq.signed)
            if not is_power_of_two(aq.scale):
                problems.append(
                    f"act scale {aq.scale.reshape(-1)[:4].tolist()} is not a power of two"
                )
            if aq.bits != lp.act_bits:
                problems.append(f"act bits: planned {lp.act_bits}, exported {aq.bits:g}")
            rec["acc_bound_bits"] = _acc_bound_bits(wq, q, aq, model, node)
        if masks is not None and lp.name in masks:
            ok_mask = _mask_respected(q, masks[lp.name])
            rec["mask_respected"] = ok_mask
            if ok_mask is False:
                problems.append("a pruned (masked) weight is non-zero in the exported graph")
        rec.update(ok=not problems, problems=problems)
        out.append(rec)
    return tuple(out)


def _acc_bound_bits(wq: Any, q: np.ndarray, aq: Any, model: onnx.ModelProto, node: Any) -> float:
    """log2(1 + largest |accumulator|) counted in steps of the finest grid it lives on."""
    from qonnx.custom_op.general.intquant import max_int, min_int

    bits = int(aq.bits)
    a_max = max(abs(min_int(aq.signed, aq.narrow, bits)), max_int(aq.signed, aq.narrow, bits))
    sa = float(np.max(aq.scale))
    sw = float(np.max(wq.scale))
    unit = float(np.min(aq.scale)) * float(np.min(wq.scale))
    w = np.abs(q)
    # Output channels: axis 0 for Conv and Gemm(transB=1), axis 1 for MatMul and Gemm(transB=0).
    out_axis = (
        1
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not attr(node, "transB", 0))
        else 0
    )
    per_out = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1).sum(axis=1)
    bound = float(per_out.max(initial=0.0)) * a_max * sa * sw
    if len(node.input) > 2 and node.input[2]:
        bsrc = const_source(model, node.input[2])
        if bsrc is not None and bsrc.quant_node is not None:
            bq = quant_params(model, bsrc.quant_node)
            b = np.abs(bq.quantize_int(bsrc.array)) * np.asarray(bq.scale, dtype=np.float64)
            bound += float(np.max(b, initial=0.0))
            unit = min(unit, float(np.min(bq.scale)))
    return round(math.log2(bound / unit + 1), 3)


def _mask_respected(q: np.ndarray, mask: Any) -> bool | None:
    m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask).astype(bool)
    if m.shape == q.shape:
        return bool(np.all(q[~m] == 0))
    if m.ndim == 2 and m.T.shape == q.shape:
        return bool(np.all(q[~m.T] == 0))
    return None  # layout differs from torch's; cannot compare element-wise


# --------------------------------------------------------------------------------------------
# Public entry points


def range_edge_inputs(
    qmodel: Any, sample_shape: tuple[int, ...], n: int = 512, *, seed: int = 0
) -> np.ndarray:
    """Inputs at the edges of the network's input quantizer, ``(n, *sample_shape)`` float32.

    Each value is one of: an exact grid point ``k·s``; a rounding tie ``(k + ½)·s`` (ties go to
    even); the float32 neighbours of a tie; one step (and half a step) beyond the largest and the
    smallest code; huge (±1e6, ±3e9, ±1e30) and tiny (±1e-9, ±1e-30, 0) values; mixed at random in
    every row, so every hop must round and saturate the same way.
    """
    q = qmodel.get_submodule("input_quant").act_quant
    s = float(q.scale().detach())
    bits = int(q.bit_width().detach())
    signed = bool(getattr(q, "is_signed", True))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    rng = np.random.default_rng(seed)
    size = (n, *sample_shape)
    k = rng.integers(lo, hi + 1, size=size).astype(np.float64)
    tie = ((k + 0.5) * s).astype(np.float32)
    specials = np.array(
        [hi * s + s, lo * s - s, hi * s + 0.5 * s, lo * s - 0.5 * s, 1e6, -1e6, 3e9, -3e9,
         1e30, -1e30, 1e-9, -1e-9, 1e-30, -1e-30, 0.0, hi * s, lo * s],
        dtype=np.float32,
    )  # fmt: skip
    choices = np.stack(
        [
            (k * s).astype(np.float32),
            tie,
            np.nextafter(tie, np.float32(np.inf)),
            np.nextafter(tie, np.float32(-np.inf)),
            rng.choice(specials, size=size),
        ]
    )
    pick = rng.integers(0, len(choices), size=size)
    return np.take_along_axis(choices, pick[None], axis=0)[0].astype(np.float32)


def verify_chain(
    qmodel: Any,
    exported: ExportedGraph,
    X: np.ndarray,
    y: np.ndarray,
    *,
    plan: CompressionPlan | None = None,
    masks: Mapping[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    progress: bool = False,
) -> EquivalenceReport:
    """Run the test set through Brevitas, the qonnx executor and onnxruntime; compare each with
    Brevitas. Pass a dict as ``timings`` to receive wall times (s) per engine."""
    X = _as_inputs(X, exported.input_shape, "verify_chain")
    y = _labels(y, len(X))
    qonnx_model = load_onnx(exported.qonnx_path)
    t = timings if timings is not None else {}

    t0 = time.perf_counter()
    ref = run_brevitas(qmodel, X)
    t["brevitas_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out_q = run_qonnx(qonnx_model, X)
    t["qonnx_s"] = time.perf_counter() - t0
    hops = [compare("brevitas", ref, "qonnx", out_q, y)]

    if exported.qcdq_path is not None:
        qcdq_model = load_onnx(exported.qcdq_path)
        t0 = time.perf_counter()
        out_o = run_onnxruntime(qcdq_model, X, progress=progress)
        t["onnxruntime_s"] = time.perf_counter() - t0
        hops.append(compare("brevitas", ref, "onnxruntime", out_o, y))
    else:
        log.info("no QCDQ twin (%s): onnxruntime hop skipped", exported.qcdq_skipped_reason)

    checks: tuple[dict, ...] = ()
    if plan is not None:
        t0 = time.perf_counter()
        checks = layer_checks(qonnx_model, exported.layer_map, plan, masks)
        t["layer_checks_s"] = time.perf_counter() - t0
    for h in hops:
        log.info(
            "%s→%s: max|diff| %g, identical rows %.4f, argmax %.4f, acc %.4f / %.4f",
            h.a,
            h.b,
            h.max_abs_diff,
            h.identical_rows,
            h.argmax_agreement,
            h.accuracy_a,
            h.accuracy_b,
        )
    return EquivalenceReport(hops=tuple(hops), layer_checks=checks)


def check_equivalence(report: EquivalenceReport) -> None:
    """Raise :class:`EquivalenceError` naming every hop that is not exact and every layer whose
    exported bits or sparsity differ from the plan."""
    failures = []
    for h in report.hops:
        if not h.exact:
            failures.append(
                f"hop {h.a}→{h.b}: max |diff| = {h.max_abs_diff:g}, identical rows "
                f"{h.identical_rows:.2%}, argmax agreement {h.argmax_agreement:.2%} "
                f"over {h.n_samples} samples"
            )
    for c in report.layer_checks:
        if not c.get("ok", False):
            failures.append(
                f"layer {c.get('name')!r} (node {c.get('node')}): {'; '.join(c.get('problems', []))}"
            )
    wide = [
        f"{c['name']} ({c['acc_bound_bits']:g} bits)"
        for c in report.layer_checks
        if c.get("acc_bound_bits", 0) > _FLOAT32_EXACT_BITS
    ]
    if wide and any(not h.exact for h in report.hops):
        failures.append(
            f"hint: layers {', '.join(wide)} can accumulate beyond float32's "
            f"{_FLOAT32_EXACT_BITS}-bit significand, so float sums round and engines may differ — "
            "lower their weight or activation bits"
        )
    if failures:
        raise EquivalenceError("equivalence check failed — " + " | ".join(failures))


@dataclass(frozen=True)
class OnnxFileReport:
    """Result of :func:`verify_onnx_file`: the hops that could be run and why others were not."""

    path: str
    graph_format: str  # "qonnx" | "qcdq" | "onnx"
    n_samples: int
    hops: tuple[HopReport, ...]
    skipped: tuple[str, ...] = ()
    outputs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def exact(self) -> bool:
        return bool(self.hops) and all(h.exact for h in self.hops)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "graph_format": self.graph_format,
            "n_samples": self.n_samples,
            "hops": [h.to_dict() for h in self.hops],
            "skipped": list(self.skipped),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OnnxFileReport:
        return cls(
            path=d["path"],
            graph_format=d["graph_format"],
            n_samples=int(d["n_samples"]),
            hops=tuple(HopReport.from_dict(h) for h in d["hops"]),
            skipped=tuple(d.get("skipped", ())),
        )


def graph_format(model: onnx.ModelProto) -> str:
    ops = {n.op_type for n in model.graph.node}
    if ops & set(_QONNX_OPS):
        return "qonnx"
    if ops & set(_QCDQ_OPS):
        return "qcdq"
    return "onnx"


def verify_onnx_file(
    onnx_path: str | os.PathLike,
    X: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    y: np.ndarray | None = None,
    require_fixed_point: bool = True,
) -> OnnxFileReport:
    """Check a (Q)ONNX graph made elsewhere on inputs ``X`` (shaped like the graph's input, batch
    dimension free). Hops: qonnx executor vs onnxruntime when both can run the graph, and
    ``reference`` (e.g. the user's framework outputs) vs each engine. Engine outputs are in
    ``report.outputs`` (not serialised)."""
    path = Path(onnx_path)
    model = load_onnx(path)
    fmt = graph_format(model)
    if require_fixed_point:
        if fmt == "onnx":
            raise NotFixedPointError(
                f"{path}: no Quant/QuantizeLinear node: a float graph has nothing fixed point to "
                "check bit for bit"
            )
        check_fixed_point(model, source=str(path))
    shape = _graph_input_shape(model)
    X = _as_inputs(X, shape[1:], f"{path.name}")
    labels = _labels(y, len(X)) if y is not None else None
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float32)
        if reference.shape[0] != len(X):
            raise InputShapeError(
                f"reference has {reference.shape[0]} rows ({tuple(reference.shape)}), "
                f"inputs have {len(X)}"
            )

    outputs: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    if fmt == "qonnx":
        outputs["qonnx"] = run_qonnx(model, X)
        ort_model, why = qonnx_to_qcdq(model)
        if ort_model is None:
            skipped.append(f"onnxruntime: {why}")
        else:
            outputs["onnxruntime"] = run_onnxruntime(ort_model, X)
    else:
        outputs["onnxruntime"] = run_onnxruntime(model, X)
        try:
            outputs["qonnx"] = run_qonnx(qcdq_to_qonnx(model) if fmt == "qcdq" else model, X)
        except Exception as e:  # the executor lacks some standard op
            skipped.append(f"qonnx: executor failed ({e.__class__.__name__}: {e})")

    hops = []
    first, *rest = list(outputs)
    if reference is not None:
        for name, out in outputs.items():
            if reference.size != out.size:
                raise InputShapeError(
                    f"reference has shape {tuple(reference.shape)}, {name} outputs "
                    f"{tuple(out.shape)}"
                )
            hops.append(compare("reference", reference.reshape(out.shape), name, out, labels))
    for name in rest:
        hops.append(compare(first, outputs[first], name, outputs[name], labels))
    if not hops:
        skipped.append("nothing to compare: give reference outputs to check a single engine")
    return OnnxFileReport(
        path=str(path),
        graph_format=fmt,
        n_samples=len(X),
        hops=tuple(hops),
        skipped=tuple(skipped),
        outputs=outputs,
    )


__all__ = [
    "range_edge_inputs",
    "OnnxFileReport",
    "check_equivalence",
    "compare",
    "graph_format",
    "layer_checks",
    "onnxruntime_session",
    "qcdq_to_qonnx",
    "qonnx_to_qcdq",
    "run_brevitas",
    "run_onnxruntime",
    "run_qonnx",
    "verify_chain",
    "verify_onnx_file",
]
