"""Brevitas model → cleaned QONNX graph (+ a QCDQ twin for onnxruntime), with a layer map.

Contract of :func:`export_qonnx`:

- writes ``<out_dir>/model.qonnx.onnx``: Brevitas ``export_qonnx`` (TorchScript exporter unless
  ``dynamo=True``), then qonnx ``cleanup_model`` (shape inference, constant folding that keeps the
  ``Quant`` nodes, unique node names ``Gemm_0``…, readable tensor names), ``InferShapes``,
  ``InferDataTypes`` and ``onnx.checker``. Weights stay float initializers behind their weight
  ``Quant`` node, exactly as Brevitas holds them (pruned weights are exact zeros);
- writes ``<out_dir>/model.qcdq.onnx`` (Brevitas ``export_onnx_qcdq``, always with the TorchScript
  exporter: Brevitas' dynamo QCDQ path cannot export a quantized bias) when every weight and
  activation quantizer has 2…8 bits; otherwise no twin, and ``qcdq_skipped_reason`` says why;
- every file is written to a temporary name and renamed into place (:func:`fitc.rundir.atomic_path`);
- with ``require_fixed_point=True`` (the default) every ``Quant`` node must have a power-of-two
  scale and a zero zero-point, and every layer weight must be quantized; otherwise
  :class:`NotFixedPointError` names the node and the scale. Bit-exact lowering depends on it
  (TOOLCHAIN.md, condition 1).

The layer map (torch module name → node name of its MatMul/Gemm/Conv) is derived by *value*: each
compute node's weight input is traced back (through ``Quant``/``Transpose``/``Identity`` nodes)
to its initializer, and that array is compared for exact equality with every layer's weight (also
transposed, and also the quantized weight; as a fallback, as a multiset of values, which survives
the row permutation of a channels-last conversion). Values survive every renaming and layout rewrite the
exporters and qonnx apply, where node and tensor names do not (the dynamo exporter names nodes
``node_linear``, cleanup renames them ``Gemm_0``). Layers with identical weights are assigned in
module order. :func:`match_layers` is public so later stages (hls4ml lowering, after their own
cleanup) can rebuild the map on their graph.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from fitc.artifacts import CompressionPlan
from fitc.errors import ArtifactError, DataError, FitcError
from fitc.rundir import atomic_path

log = logging.getLogger(__name__)

QONNX_NAME = "model.qonnx.onnx"
QCDQ_NAME = "model.qcdq.onnx"
COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
# Ops that move or select values without changing their quantization grid.
_PASS_THROUGH_OPS = (
    "MaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Identity",
    "Squeeze",
    "Unsqueeze",
    "Pad",
    "Concat",
)
_QCDQ_MAX_BITS = 8
_QCDQ_MIN_BITS = 2


# --------------------------------------------------------------------------------------------
# Errors


class ExportError(FitcError):
    """Brevitas or qonnx could not export/clean the model; the message names the step and module."""


class NotFixedPointError(ArtifactError):
    """A Quant node has a non-power-of-two scale (or non-zero zero point) where fixed point is
    required, or a layer weight is not quantized at all."""


class InputShapeError(DataError):
    """Inputs do not have the shape the graph or model expects (message gives expected vs got)."""


# --------------------------------------------------------------------------------------------
# Artifact


@dataclass(frozen=True)
class ExportedGraph:
    """The exported graphs of one model.

    ``input_shape`` is the shape of one sample (no batch dimension), e.g. ``(64,)`` or ``(1, 8, 8)``;
    the graphs themselves have batch size 1. ``layer_map`` maps torch module names (plan names when
    a plan was given) to the QONNX node name of the layer's MatMul/Gemm/Conv.
    """

    qonnx_path: str
    qcdq_path: str | None
    qcdq_skipped_reason: str | None
    input_shape: tuple[int, ...]
    layer_map: dict[str, str] = field(default_factory=dict)
    exporter: str = "torchscript"  # "torchscript" | "dynamo" (QONNX graph)
    export_time_s: float = 0.0

    def __post_init__(self) -> None:
        if (self.qcdq_path is None) == (self.qcdq_skipped_reason is None):
            raise ArtifactError(
                "ExportedGraph: exactly one of qcdq_path and qcdq_skipped_reason must be set, "
                f"got qcdq_path={self.qcdq_path!r}, qcdq_skipped_reason={self.qcdq_skipped_reason!r}"
            )
        if not self.input_shape or not all(isinstance(d, int) and d > 0 for d in self.input_shape):
            raise ArtifactError(
                f"ExportedGraph: input_shape must be positive ints, got {self.input_shape!r}"
            )
        if self.exporter not in ("torchscript", "dynamo"):
            raise ArtifactError(f"ExportedGraph: unknown exporter {self.exporter!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "qonnx_path": self.qonnx_path,
            "qcdq_path": self.qcdq_path,
            "qcdq_skipped_reason": self.qcdq_skipped_reason,
            "input_shape": list(self.input_shape),
            "layer_map": dict(self.layer_map),
            "exporter": self.exporter,
            "export_time_s": self.export_time_s,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExportedGraph:
        names = {
            "qonnx_path",
            "qcdq_path",
            "qcdq_skipped_reason",
            "input_shape",
            "layer_map",
            "exporter",
            "export_time_s",
        }
        unknown = set(d) - names
        if unknown:
            raise ArtifactError(f"ExportedGraph: unknown fields {sorted(unknown)}")
        kw = dict(d)
        kw["input_shape"] = tuple(int(x) for x in kw.get("input_shape", ()))
        kw["layer_map"] = dict(kw.get("layer_map", {}))
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# Graph helpers (shared with verify.py)


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file, turning a missing or corrupt file into :class:`ArtifactError`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise ArtifactError(
            f"{path}: not a readable ONNX file ({e.__class__.__name__}: {e}); re-export it"
        ) from e
    if len(model.graph.node) == 0:
        raise ArtifactError(f"{path}: ONNX file holds no graph nodes (empty or truncated file)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ArtifactError(f"{path}: onnx.checker rejects the graph: {e}") from e
    return model


def const_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The constant value of tensor ``name`` (initializer or Constant node output), else None."""
    for init in model.graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return onnx.numpy_helper.to_array(a.t)
    return None


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            out.setdefault(name, []).append((n, i))
    return out


def is_power_of_two(x: np.ndarray) -> bool:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)) or np.any(x <= 0):
        return False
    _, exp = np.frexp(x)
    return bool(np.all(x == np.ldexp(0.5, exp)))


@dataclass(frozen=True)
class QuantParams:
    """The parameters of one QONNX ``Quant`` node."""

    node: str
    scale: np.ndarray
    zeropt: np.ndarray
    bits: float
    signed: bool
    narrow: bool
    rounding_mode: str

    def quantize_int(self, x: np.ndarray) -> np.ndarray:
        """Integer codes of ``x`` exactly as the qonnx executor computes them (float64 array)."""
        from qonnx.custom_op.general.intquant import int_quant

        y = int_quant(
            np.asarray(x, dtype=np.float32),
            self.scale,
            self.zeropt,
            np.float32(self.bits),  # int_quant calls .astype on values derived from it
            self.signed,
            self.narrow,
            self.rounding_mode,
        )
        return np.asarray(y, dtype=np.float64) / np.asarray(self.scale, dtype=np.float64)


def quant_params(model: onnx.ModelProto, node: onnx.NodeProto) -> QuantParams:
    vals = [const_value(model, n) for n in node.input[1:4]]
    if any(v is None for v in vals):
        raise ArtifactError(
            f"Quant node {node.name!r}: scale, zero point and bit width must be constants"
        )
    scale, zeropt, bits = vals
    return QuantParams(
        node=node.name,
        scale=np.asarray(scale),
        zeropt=np.asarray(zeropt),
        bits=float(np.asarray(bits).reshape(-1)[0]),
        signed=bool(attr(node, "signed", 1)),
        narrow=bool(attr(node, "narrow", 0)),
        rounding_mode=str(attr(node, "rounding_mode", "ROUND")),
    )


@dataclass(frozen=True)
class WeightSource:
    """Where a compute node's weight comes from: the float initializer (in the compute node's
    layout) and the Quant node on the way, if any."""

    array: np.ndarray
    quant_node: onnx.NodeProto | None


def weight_source(model: onnx.ModelProto, node: onnx.NodeProto) -> WeightSource | None:
    """Trace the weight input of a MatMul/Gemm/Conv back to a constant; None if it is dynamic."""
    return const_source(model, node.input[1])


def const_source(model: onnx.ModelProto, name: str) -> WeightSource | None:
    """Trace tensor ``name`` through Quant/Transpose/Identity nodes back to a constant."""
    prod = _producers(model)
    perms: list[tuple[int, ...]] = []
    quant: onnx.NodeProto | None = None
    for _ in range(16):
        value = const_value(model, name)
        if value is not None:
            for perm in reversed(perms):
                value = np.transpose(value, perm) if perm else value.T
            return WeightSource(array=np.asarray(value), quant_node=quant)
        p = prod.get(name)
        if p is None:
            return None
        if p.op_type in ("Quant", "IntQuant") and quant is None:
            quant = p
        elif p.op_type == "Transpose":
            perms.append(tuple(attr(p, "perm", ()) or ()))
        elif p.op_type != "Identity":
            return None
        name = p.input[0]
    return None


def act_quant_node(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Quant node that sets the quantization grid of a compute node's data input, or None."""
    prod = _producers(model)
    name = node.input[0]
    for _ in range(64):
        p = prod.get(name)
        if p is None:
            return None
        if p.op_type in ("Quant", "IntQuant"):
            return p
        if p.op_type not in _PASS_THROUGH_OPS:
            return None
        name = p.input[0]
    return None


def bias_quant_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of Quant nodes that quantize a bias (input 2 of Gemm/Conv)."""
    prod = _producers(model)
    out = set()
    for n in model.graph.node:
        if n.op_type in COMPUTE_OPS and len(n.input) > 2 and n.input[2]:
            p = prod.get(n.input[2])
            if p is not None and p.op_type in ("Quant", "IntQuant"):
                out.add(p.name)
    return out


def check_fixed_point(model: onnx.ModelProto, source: str = "graph") -> None:
    """Raise :class:`NotFixedPointError` unless every quantizer scale is a power of two with a zero
    zero-point (Quant, QuantizeLinear and DequantizeLinear nodes)."""
    for n in model.graph.node:
        if n.op_type in ("Quant", "IntQuant"):
            q = quant_params(model, n)
            scale, zp = q.scale, q.zeropt
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = const_value(model, n.input[1])
            zp = const_value(model, n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros(1)
            if scale is None:
                raise NotFixedPointError(f"{source}: node {n.name!r} has a non-constant scale")
        else:
            continue
        if not is_power_of_two(scale):
            bad = np.asarray(scale).reshape(-1)
            shown = ", ".join(np.format_float_positional(v, unique=True) for v in bad[:4])
            shown += ", …" if bad.size > 4 else ""
            raise NotFixedPointError(
                f"{source}: {n.op_type} node {n.name!r} has scale [{shown}], not a power of two; "
                "fixed point is required for a bit-exact lowering — build the model with Brevitas "
                "*FixedPoint quantizers (Int8WeightPerTensorFixedPoint, Int8ActPerTensorFixedPoint, "
                "Uint8ActPerTensorFixedPoint)"
            )
        if np.any(np.asarray(zp) != 0):
            raise NotFixedPointError(
                f"{source}: {n.op_type} node {n.name!r} has a non-zero zero point "
                f"{np.asarray(zp).reshape(-1)[:4].tolist()}; fixed point needs symmetric quantizers"
            )


# --------------------------------------------------------------------------------------------
# Layer map


def layer_weights(qmodel: Any, plan: CompressionPlan | None = None) -> dict[str, list[np.ndarray]]:
    """Candidate weight arrays of every Linear/Conv layer of ``qmodel``, keyed by layer name.

    Each layer contributes its float weight and, for Brevitas layers, its quantized weight (either
    may appear in a graph). Names are the module's qualified names, translated to plan names when a
    plan is given (a module ``wrapper.fc1`` is plan layer ``fc1``).
    """
    import torch

    out: dict[str, list[np.ndarray]] = {}
    plan_names = [lp.name for lp in plan.layers] if plan is not None else None
    for qname, mod in qmodel.named_modules():
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d)):
            continue
        name = _to_plan_name(qname, plan_names)
        arrays = [mod.weight.detach().cpu().numpy().astype(np.float32)]
        if hasattr(mod, "quant_weight"):
            with torch.no_grad():
                qw = mod.quant_weight()
            qv = getattr(qw, "value", qw)
            arrays.append(qv.detach().cpu().numpy().astype(np.float32))
        out[name] = arrays
    return out


def _to_plan_name(qname: str, plan_names: list[str] | None) -> str:
    if plan_names is None or qname in plan_names:
        return qname
    hits = [p for p in plan_names if qname.endswith("." + p)]
    return hits[0] if len(hits) == 1 else qname


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.size != b.size:
        return False
    if a.shape == b.shape and np.array_equal(a, b):
        return True
    for perm in itertools.permutations(range(b.ndim)):
        bt = np.transpose(b, perm)
        if bt.shape == a.shape and np.array_equal(a, bt):
            return True
    return False


def match_layers(
    model: onnx.ModelProto | Any, weights: Mapping[str, list[np.ndarray]]
) -> dict[str, str]:
    """Map layer names to compute-node names by exact weight values (see module docstring).

    ``model`` is an ``onnx.ModelProto`` or a qonnx ``ModelWrapper``; ``weights`` comes from
    :func:`layer_weights`. A first pass matches arrays equal up to a transpose; a second pass
    matches the remaining nodes by the sorted multiset of values, which survives the row
    permutation qonnx's ``ConvertToChannelsLastAndClean`` applies to the Dense weight after a
    Flatten. Layers that match no node are absent from the result.
    """
    proto = getattr(model, "model", model)
    sources = []
    for node in proto.graph.node:
        if node.op_type in COMPUTE_OPS:
            src = weight_source(proto, node)
            if src is not None:
                sources.append((node.name, src.array))
    result: dict[str, str] = {}

    def assign(same) -> None:
        for node_name, array in sources:
            if node_name in result.values():
                continue
            hits = [
                name
                for name, arrays in weights.items()
                if name not in result and any(same(array, w) for w in arrays)
            ]
            if hits:
                result[hits[0]] = node_name

    assign(_same)
    assign(_same_values)
    return result


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    return a.size == b.size and np.array_equal(np.sort(a, axis=None), np.sort(b, axis=None))


# --------------------------------------------------------------------------------------------
# Export


def _check_module(qmodel: Any) -> None:
    import torch

    if not isinstance(qmodel, torch.nn.Module):
        raise ExportError(f"export_qonnx needs a torch.nn.Module, got {type(qmodel).__name__}")
    from torch.nn.utils import prune

    for name, mod in qmodel.named_modules():
        live = hasattr(mod, "weight_orig") or any(
            isinstance(h, prune.BasePruningMethod) for h in mod._forward_pre_hooks.values()
        )
        if live:
            raise ExportError(
                f"module {name!r} carries a live torch.nn.utils.prune mask, which breaks the QCDQ "
                "export; keep masks outside the module (zero the weights) or call "
                "torch.nn.utils.prune.remove() before exporting"
            )


def _brevitas_export(kind: str, qmodel: Any, sample: Any, path: Path, dynamo: bool) -> None:
    from brevitas.export import export_onnx_qcdq
    from brevitas.export import export_qonnx as brevitas_export_qonnx

    fn = brevitas_export_qonnx if kind == "qonnx" else export_onnx_qcdq
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(qmodel, input_t=sample, export_path=str(path), dynamo=dynamo)
    for w in caught:
        log.debug("brevitas %s export: %s", kind, w.message)


def _clean(model: onnx.ModelProto) -> onnx.ModelProto:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model

    mw = cleanup_model(ModelWrapper(model))
    for t in (InferShapes(), InferDataTypes(), GiveUniqueNodeNames(), GiveReadableTensorNames()):
        mw = mw.transform(t)
    return mw.model


def qcdq_obstacle(model: onnx.ModelProto) -> str | None:
    """Why a QONNX graph cannot have a QCDQ twin (None if it can): QCDQ stores weights and
    activations as int8/uint8, so every non-bias Quant node needs 2…8 bits."""
    biases = bias_quant_nodes(model)
    problems = []
    for n in model.graph.node:
        if n.op_type in ("Quant", "IntQuant") and n.name not in biases:
            bits = quant_params(model, n).bits
            if not (_QCDQ_MIN_BITS <= bits <= _QCDQ_MAX_BITS):
                problems.append(f"{n.name} has {bits:g} bits")
        elif n.op_type in ("BipolarQuant", "Trunc", "FloatQuant"):
            problems.append(f"{n.name} is a {n.op_type} node")
    if not problems:
        return None
    return (
        f"QCDQ holds only {_QCDQ_MIN_BITS}…{_QCDQ_MAX_BITS}-bit int8/uint8 weights and activations, "
        f"but {'; '.join(problems)}"
    )


def _layer_names(qmodel: Any, plan: CompressionPlan | None) -> dict[str, str]:
    import torch

    plan_names = [lp.name for lp in plan.layers] if plan is not None else None
    return {
        _to_plan_name(q, plan_names): q
        for q, m in qmodel.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d))
    }


def export_qonnx(
    qmodel: Any,
    input_shape: tuple[int, ...],
    out_dir: str | os.PathLike,
    *,
    dynamo: bool = False,
    plan: CompressionPlan | None = None,
    require_fixed_point: bool = True,
    qonnx_name: str = QONNX_NAME,
    qcdq_name: str = QCDQ_NAME,
) -> ExportedGraph:
    """Export a Brevitas model to ``out_dir/model.qonnx.onnx`` and, when possible, its QCDQ twin.

    ``input_shape`` is one sample's shape without the batch dimension. ``plan`` names the layers
    (every plan layer must be found in the graph). The model is put in eval mode for the export
    and restored afterwards. See the module docstring for the full contract.
    """
    import torch

    t0 = time.perf_counter()
    _check_module(qmodel)
    input_shape = tuple(input_shape)
    if not input_shape or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise InputShapeError(
            f"input_shape must be one sample's shape as positive ints, e.g. (64,) or (1, 8, 8); "
            f"got {input_shape!r}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = qmodel.training
    qmodel.eval()
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn((1, *input_shape), generator=gen)
    try:
        with torch.no_grad():
            try:
                qmodel(sample)
            except Exception as e:
                shape_words = ("shape", "size", "mat1", "dimension", "expected input")
                cls = (
                    InputShapeError
                    if any(w in str(e).lower() for w in shape_words)
                    else ExportError
                )
                raise cls(
                    f"the model fails on one sample of shape {input_shape} (batch shape "
                    f"{(1, *input_shape)}) before export: {e.__class__.__name__}: {e}"
                ) from e
        with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
            raw = Path(tmp) / "raw.qonnx.onnx"
            try:
                _brevitas_export("qonnx", qmodel, sample, raw, dynamo)
                proto = onnx.load(str(raw))  # pulls in a dynamo side *.onnx.data file
                proto = _clean(proto)
            except FitcError:
                raise
            except Exception as e:
                exporter = "dynamo" if dynamo else "TorchScript"
                raise ExportError(
                    f"QONNX export ({exporter} exporter) failed: {e.__class__.__name__}: {e}"
                ) from e
            if require_fixed_point:
                check_fixed_point(proto, source=f"exported QONNX graph of {type(qmodel).__name__}")
            layer_map = _build_layer_map(qmodel, proto, plan, require_fixed_point)
            try:
                onnx.checker.check_model(proto)
            except Exception as e:
                raise ExportError(f"onnx.checker rejects the exported QONNX graph: {e}") from e
            qonnx_path = out_dir / qonnx_name
            with atomic_path(qonnx_path) as t:
                onnx.save(proto, str(t))

            qcdq_path: Path | None = None
            reason = qcdq_obstacle(proto)
            if reason is None:
                raw_q = Path(tmp) / "raw.qcdq.onnx"
                try:
                    # Brevitas' dynamo QCDQ export cannot carry a quantized bias.
                    _brevitas_export("qcdq", qmodel, sample, raw_q, dynamo=False)
                    qproto = onnx.load(str(raw_q))
                    onnx.checker.check_model(qproto)
                except Exception as e:
                    reason = f"Brevitas QCDQ export failed: {e.__class__.__name__}: {e}"
                else:
                    qcdq_path = out_dir / qcdq_name
                    with atomic_path(qcdq_path) as t:
                        onnx.save(qproto, str(t))
            if reason is not None:
                log.warning("QCDQ twin skipped: %s", reason)
                stale = out_dir / qcdq_name
                if stale.exists():
                    stale.unlink()  # never leave a twin from an earlier export next to this graph
    finally:
        qmodel.train(was_training)
    wall = time.perf_counter() - t0
    log.info("exported %s in %.2f s (%d layers)", qonnx_path, wall, len(layer_map))
    return ExportedGraph(
        qonnx_path=str(qonnx_path),
        qcdq_path=str(qcdq_path) if qcdq_path is not None else None,
        qcdq_skipped_reason=reason,
        input_shape=input_shape,
        layer_map=layer_map,
        exporter="dynamo" if dynamo else "torchscript",
        export_time_s=round(wall, 4),
    )


def _build_layer_map(
    qmodel: Any, proto: onnx.ModelProto, plan: CompressionPlan | None, require_fixed_point: bool
) -> dict[str, str]:
    weights = layer_weights(qmodel, plan)
    layer_map = match_layers(proto, weights)
    missing = [n for n in weights if n not in layer_map]
    if missing:
        raise ExportError(
            f"layers {missing} have no MatMul/Gemm/Conv node with their weights in the exported "
            "graph; the layer map cannot be built"
        )
    if plan is not None:
        absent = [lp.name for lp in plan.layers if lp.name not in layer_map]
        if absent:
            raise ExportError(
                f"plan layers {absent} are not layers of the model "
                f"(model layers: {sorted(layer_map)})"
            )
    nodes = {n.name: n for n in proto.graph.node}
    if require_fixed_point:
        for name, node_name in layer_map.items():
            src = weight_source(proto, nodes[node_name])
            if src is None or src.quant_node is None:
                raise NotFixedPointError(
                    f"layer {name!r} (node {node_name!r}) has an unquantized float weight; "
                    "fixed point is required — use a Brevitas QuantLinear/QuantConv2d with "
                    "Int8WeightPerTensorFixedPoint"
                )
            node = nodes[node_name]
            if len(node.input) > 2 and node.input[2]:
                bias = const_source(proto, node.input[2])
                if bias is None or bias.quant_node is None:
                    raise NotFixedPointError(
                        f"layer {name!r} (node {node_name!r}) has a float bias; fixed point is "
                        "required (hls4ml truncates a float bias and onnxruntime's fusions "
                        "re-quantize it) — give the layer an integer bias quantizer, e.g. "
                        "bias_quant=Int16Bias"
                    )
    order = (
        [lp.name for lp in plan.layers] if plan is not None else list(_layer_names(qmodel, None))
    )
    return {k: layer_map[k] for k in order if k in layer_map}


__all__ = [
    "COMPUTE_OPS",
    "QCDQ_NAME",
    "QONNX_NAME",
    "ExportError",
    "ExportedGraph",
    "InputShapeError",
    "NotFixedPointError",
    "QuantParams",
    "WeightSource",
    "act_quant_node",
    "bias_quant_nodes",
    "check_fixed_point",
    "const_source",
    "const_value",
    "export_qonnx",
    "is_power_of_two",
    "layer_weights",
    "load_onnx",
    "match_layers",
    "qcdq_obstacle",
    "quant_params",
    "weight_source",
]
