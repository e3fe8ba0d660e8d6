"""QONNX graph → hls4ml project + its C++ emulation, with every layer's precision checked.

Contract:

- :func:`prepare_qonnx` is the qonnx preparation hls4ml's ONNX frontend needs: ``cleanup_model`` →
  (graphs with convolutions or pools only) fitc's ``AveragePoolsToChannelsLast``
  (:mod:`fitc.backends.qonnx_ext`: qonnx 1.0.0 has no channels-last AveragePool; a
  GlobalAveragePool becomes an AveragePool over the whole plane) →
  ``ConvertToChannelsLastAndClean(make_input_channels_last=True)`` → ``GemmToMatMul`` →
  ``cleanup_model``. A CNN's lowered model then takes NHWC input.
- :func:`hls_config` builds the whole hls4ml configuration in one place: the keyword arguments of
  ``hls4ml.converters.convert_from_onnx_model`` (backend, part, clock period, io type, project name
  and the per-layer ``hls_config`` with granularity ``'name'``). Layer precisions stay ``'auto'``:
  hls4ml derives them from the graph's ``Quant`` nodes; the graph input gets ``fixed<64,32>`` so
  no float input is truncated before the first quantizer rounds it. Average pools are the
  exception: hls4ml sizes them too narrow (its global pool overflowed, its average pool truncates
  the average to the input's grid), so their ``accum`` and ``result`` are set from the Quant nodes
  before and after them (:func:`average_pool_types`).
- :func:`lower` converts, checks every weight layer (below), writes the project to ``out_dir``
  (an hls4ml project a Vitis/Vivado user can synthesize, with ``SUMMARY.md`` and
  ``fitc_hls_project.json``) and compiles the C++ emulation with g++ (``compile=True``).
  It returns an :class:`HLSProject`.
- The precision check (:class:`~fitc.errors.PrecisionMismatchError` naming the layer, the field,
  expected and got). Always: the weights equal the QONNX graph's quantized weights (this is also
  how each hls4ml layer is mapped back to its torch module); each weight and bias value is exactly
  representable in ``weight_t``/``bias_t``; ``accum_t`` and ``result_t`` hold every possible sum
  exactly (enough fractional bits for input × weight and for the bias, enough integer bits for the
  largest |Σ w·x + b| over the input type's range). With a plan: ``weight_t`` is signed and exactly
  ``weight_bits`` wide, and the layer's input type is exactly ``act_bits`` wide. Every average
  pool's ``accum_t`` holds each window sum and, with ``result_t``, enough fractional bits for an
  exact (or exactly re-quantized) average.
- :func:`emulation_check` runs the compiled emulation on a whole set and compares it with the qonnx
  executor on the original graph (NCHW inputs are transposed to NHWC for the emulation): a
  :class:`~fitc.artifacts.HopReport` (``a="qonnx"``, ``b="hls4ml"``); ``report.exact`` is the bar.
  A project lowered in this process reuses its compiled model; one lowered earlier is run through
  the compiled library in its ``firmware/`` (compiled with its ``build_lib.sh`` if missing).
- hls4ml's console output is captured and logged at DEBUG level; a failed compile raises
  :class:`HLSCompileError` with the compiler's last lines.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import math
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fitc.artifacts import CompressionPlan, HardwareConfig, HopReport
from fitc.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    FitcError,
    PrecisionMismatchError,
    ToolNotFoundError,
)
from fitc.rundir import write_json, write_text

log = logging.getLogger(__name__)

PROJECT_NAME = "myproject"
INPUT_PRECISION = "fixed<64,32>"
SUMMARY_NAME = "SUMMARY.md"
PROJECT_JSON = "fitc_hls_project.json"
_HLS_CONFIG_FILE = "hls4ml_config.yml"
_WEIGHT_LAYERS = ("Dense", "Conv1D", "Conv2D", "PointwiseConv1D", "PointwiseConv2D")
# Graph ops whose data layout matters: a graph with any of them is converted to channels last.
_LAYOUT_OPS = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
# hls4ml pooling layer classes (pool_op "Average" or "Max").
_POOL_LAYERS = ("Pooling1D", "Pooling2D", "GlobalPooling1D", "GlobalPooling2D")

# Compiled emulations of this process, by resolved project directory (emulation_check reuses them).
_COMPILED: dict[str, Any] = {}


class LoweringError(FitcError):
    """hls4ml could not convert the graph; the message names the graph and hls4ml's reason."""


class HLSCompileError(FitcError):
    """g++ failed to compile the hls4ml project's C++ emulation; the message has its last lines."""


# --------------------------------------------------------------------------------------------
# Artifact


@dataclass(frozen=True)
class HLSProject:
    """A lowered hls4ml project.

    ``layers`` maps each torch module name to its hls4ml layer: ``hls_layer``, ``class``, the
    precisions ``input``, ``weight``, ``bias``, ``accum``, ``result`` (hls4ml type strings),
    ``reuse_factor``, ``strategy``, ``n_weights`` and ``n_nonzero`` (non-zero weights in the
    firmware). ``other_layers`` maps the remaining hls4ml layers (input, activations, pooling) to
    their class and result precision. ``input_shape`` is the emulation's input shape for one
    sample (NHWC for a CNN: ``channels_last`` is then True) and ``output_size`` its number of
    outputs. ``compile_time_s`` is None if the project was not compiled.
    """

    project_dir: str
    hardware: HardwareConfig
    layers: dict[str, dict[str, Any]]
    other_layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    output_size: int = 0
    channels_last: bool = False
    project_name: str = PROJECT_NAME
    convert_time_s: float = 0.0
    compile_time_s: float | None = None
    hls4ml_version: str = ""

    def __post_init__(self) -> None:
        if not self.layers:
            raise ArtifactError(f"HLSProject {self.project_dir}: no weight layers")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["hardware"] = self.hardware.to_dict()
        d["input_shape"] = list(self.input_shape)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HLSProject:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ArtifactError(f"HLSProject: unknown fields {sorted(unknown)}")
        kw = dict(d)
        kw["hardware"] = HardwareConfig.from_dict(kw["hardware"])
        kw["input_shape"] = tuple(int(x) for x in kw.get("input_shape", ()))
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# Preparation and configuration


def prepare_qonnx(model: onnx.ModelProto | str | Path) -> Any:
    """The cleaned, channels-last, MatMul-only copy of a QONNX graph that hls4ml converts
    (a qonnx ``ModelWrapper``; the input is not modified)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    from fitc.backends.qonnx_ext import AveragePoolsToChannelsLast

    if not isinstance(model, onnx.ModelProto):
        from fitc.export import load_onnx

        model = load_onnx(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mw = cleanup_model(ModelWrapper(copy.deepcopy(model)))
        if _needs_channels_last(mw.model):
            # qonnx 1.0.0 has no channels-last AveragePool: fitc's own (backends/qonnx_ext.py)
            mw = mw.transform(AveragePoolsToChannelsLast())
            mw = mw.transform(ConvertToChannelsLastAndClean(make_input_channels_last=True))
        mw = mw.transform(GemmToMatMul())  # warns about Gemm opset versions; the rewrite is exact
        mw = cleanup_model(mw)
    for w in caught:
        log.debug("qonnx preparation: %s", w.message)
    return mw


def _needs_channels_last(proto: onnx.ModelProto) -> bool:
    return any(n.op_type in _LAYOUT_OPS for n in proto.graph.node)


def hls_config(
    onnx_model: Any,
    plan: CompressionPlan | None,
    hw: HardwareConfig,
    *,
    precision_overrides: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """All of hls4ml's configuration for ``onnx_model`` (a prepared ModelWrapper, see
    :func:`prepare_qonnx`): the keyword arguments of ``convert_from_onnx_model`` except the model
    and ``output_dir``. ``hls_config`` inside is the per-layer dict (granularity ``'name'``).

    ``plan``, when given, must have as many layers as the graph has MatMul/Conv nodes.
    ``precision_overrides`` (for experiments and tests) sets precisions by hls4ml config layer
    name, e.g. ``{"MatMul_0": {"accum": "fixed<12,4>"}}``; the precision check still applies.
    """
    import hls4ml

    if hw.strategy == "distributed_arithmetic" and hw.reuse_factor != 1:
        raise ConfigError(
            f"strategy distributed_arithmetic needs reuse_factor 1 (hls4ml's DA kernels are fully "
            f"parallel), got reuse_factor={hw.reuse_factor}; use strategy Resource for reuse"
        )
    if isinstance(onnx_model, onnx.ModelProto):
        from qonnx.core.modelwrapper import ModelWrapper

        onnx_model = ModelWrapper(onnx_model)
    graph = onnx_model.graph
    if plan is not None:
        n_compute = sum(n.op_type in ("MatMul", "Gemm", "Conv") for n in graph.node)
        if n_compute != len(plan.layers):
            raise ArtifactError(
                f"the graph has {n_compute} MatMul/Conv layers but the plan has "
                f"{len(plan.layers)} ({[lp.name for lp in plan.layers]}); lower the graph exported "
                "from this plan"
            )
    with _captured_output("config_from_onnx_model"):
        cfg = hls4ml.utils.config_from_onnx_model(
            onnx_model,
            granularity="name",
            backend=hw.backend,
            default_reuse_factor=hw.reuse_factor,
        )
    cfg["Model"]["Strategy"] = hw.strategy
    cfg["Model"]["ReuseFactor"] = hw.reuse_factor
    input_name = graph.input[0].name
    cfg["LayerName"].setdefault(input_name, {}).setdefault("Precision", {})["result"] = (
        INPUT_PRECISION
    )
    for name, prec in average_pool_precisions(onnx_model).items():
        if name not in cfg["LayerName"]:
            raise LoweringError(f"average pool {name}: no such layer in hls4ml's configuration")
        entry = cfg["LayerName"][name]
        if not isinstance(entry.get("Precision"), dict):
            entry["Precision"] = {}
        entry["Precision"].update(prec)
    for name, fields in (precision_overrides or {}).items():
        if name not in cfg["LayerName"]:
            raise ConfigError(
                f"precision override for {name!r}: no such layer in the hls4ml config; layers: "
                f"{sorted(k for k in cfg['LayerName'] if not k.startswith('Quant_'))}"
            )
        cfg["LayerName"][name].setdefault("Precision", {}).update(dict(fields))
    clock = hw.clock_period_ns
    return {
        "backend": hw.backend,
        "part": hw.part,
        "clock_period": int(clock) if float(clock).is_integer() else clock,
        "io_type": hw.io_type,
        "project_name": PROJECT_NAME,
        "hls_config": cfg,
    }


# --------------------------------------------------------------------------------------------
# Lowering


def lower(
    qonnx_path: str | Path,
    out_dir: str | Path,
    hw: HardwareConfig,
    *,
    plan: CompressionPlan | None = None,
    layer_map: Mapping[str, str] | None = None,
    compile: bool = True,
    precision_overrides: Mapping[str, Mapping[str, str]] | None = None,
) -> HLSProject:
    """Lower the QONNX graph at ``qonnx_path`` into an hls4ml project in ``out_dir``.

    ``layer_map`` (torch module name → node name in ``qonnx_path``, as export writes it) names
    the layers; without it, a plan with as many layers as the graph names them in graph order,
    and otherwise the node names are used. ``out_dir`` is replaced if it holds an earlier
    hls4ml project and must otherwise be empty or absent.
    """
    import hls4ml

    from fitc.export import check_fixed_point, load_onnx

    qonnx_path, out_dir = Path(qonnx_path), Path(out_dir)
    proto = load_onnx(qonnx_path)
    check_fixed_point(proto, source=str(qonnx_path))
    glayers = graph_layers(proto, layer_map, plan, qonnx_path)

    t0 = time.perf_counter()
    prepared = prepare_qonnx(proto)
    kwargs = hls_config(prepared, plan, hw, precision_overrides=precision_overrides)
    _fresh_dir(out_dir)
    workaround: contextlib.AbstractContextManager = contextlib.nullcontext()
    if hw.strategy == "distributed_arithmetic":
        from fitc.backends.da_workaround import distributed_arithmetic_on_qonnx

        workaround = distributed_arithmetic_on_qonnx()
    try:
        with _captured_output("convert_from_onnx_model"), workaround:
            hls_model = hls4ml.converters.convert_from_onnx_model(
                prepared, output_dir=str(out_dir), **kwargs
            )
    except FitcError:
        raise
    except Exception as e:
        raise LoweringError(
            f"hls4ml cannot convert {qonnx_path} ({hw.backend}, {hw.io_type}, {hw.strategy}): "
            f"{e.__class__.__name__}: {e}"
        ) from e
    convert_time = time.perf_counter() - t0

    mapping = map_layers(hls_model, prepared, glayers, qonnx_path)
    layers = {g.name: _describe(hls_model.graph[h], g) for h, g in mapping.items()}
    check_precisions(hls_model, mapping, plan)

    compile_time: float | None = None
    if compile:
        compile_time = _compile(hls_model)
        _COMPILED[str(out_dir.resolve())] = hls_model
    else:
        with _captured_output("write"):
            hls_model.write()

    in_shape = tuple(int(d) for d in hls_model.get_input_variables()[0].shape)
    project = HLSProject(
        project_dir=str(out_dir),
        hardware=hw,
        layers=layers,
        other_layers={
            lyr.name: {
                "class": lyr.class_name,
                "result": _fmt(lyr.get_output_variable().type.precision),
            }
            for lyr in hls_model.get_layers()
            if lyr.name not in mapping
        },
        input_shape=in_shape,
        output_size=int(np.prod(hls_model.get_output_variables()[0].shape)),
        channels_last=_needs_channels_last(proto),
        project_name=PROJECT_NAME,
        convert_time_s=round(convert_time, 3),
        compile_time_s=None if compile_time is None else round(compile_time, 3),
        hls4ml_version=str(hls4ml.__version__),
    )
    write_json(out_dir / PROJECT_JSON, project.to_dict())
    write_text(out_dir / SUMMARY_NAME, summary_markdown(project, qonnx_path))
    log.info(
        "lowered %s → %s (convert %.2f s, compile %s)",
        qonnx_path,
        out_dir,
        convert_time,
        "skipped" if compile_time is None else f"{compile_time:.2f} s",
    )
    return project


def load_project(project_dir: str | Path) -> HLSProject:
    """The :class:`HLSProject` recorded in ``project_dir`` by :func:`lower`."""
    path = Path(project_dir) / PROJECT_JSON
    if not path.is_file():
        raise ArtifactError(
            f"{project_dir}: no {PROJECT_JSON}; it is not a project written by fitc lower"
        )
    return HLSProject.from_dict(json.loads(path.read_text()))


def _fresh_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ArtifactError(f"{out_dir} exists and is not a directory")
        ours = (out_dir / _HLS_CONFIG_FILE).exists() or (out_dir / PROJECT_JSON).exists()
        if any(out_dir.iterdir()) and not ours:
            raise ArtifactError(
                f"{out_dir} is not empty and holds no hls4ml project; refusing to overwrite it — "
                "choose another directory"
            )
        _COMPILED.pop(str(out_dir.resolve()), None)
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def _compile(hls_model: Any) -> float:
    if shutil.which("g++") is None:
        raise ToolNotFoundError(
            "g++ is not on PATH: it compiles hls4ml's C++ emulation. Install g++ (e.g. apt-get "
            "install g++) or lower with compile=False to only write the project"
        )
    t0 = time.perf_counter()
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            hls_model.compile()
    except Exception as e:
        tail = "\n".join(buf.getvalue().strip().splitlines()[-15:])
        raise HLSCompileError(
            f"g++ could not compile the hls4ml project in {hls_model.config.get_output_dir()}: "
            f"{e}\n{tail}"
        ) from e
    log.debug("hls4ml compile output:\n%s", buf.getvalue())
    return time.perf_counter() - t0


@contextlib.contextmanager
def _captured_output(what: str) -> Iterator[None]:
    """hls4ml prints its progress; keep it out of the user's terminal, in the debug log."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        if buf.getvalue().strip():
            log.debug("hls4ml %s output:\n%s", what, buf.getvalue())


# --------------------------------------------------------------------------------------------
# Mapping hls4ml layers to torch modules


@dataclass(frozen=True)
class GraphLayer:
    """A weight layer of the QONNX graph, in a layout-free form: ``values`` are its quantized
    weights sorted, ``matrix`` is ``(n_out, fan_in)`` and ``bias`` ``(n_out,)`` (zeros if none)."""

    name: str  # torch module name (or node name when no map is known)
    node: str
    values: np.ndarray
    matrix: np.ndarray
    bias: np.ndarray


def graph_layers(
    proto: onnx.ModelProto,
    layer_map: Mapping[str, str] | None = None,
    plan: CompressionPlan | None = None,
    source: str | Path = "graph",
) -> list[GraphLayer]:
    """The weight layers of a QONNX graph named by torch module. Names come from ``layer_map``
    (torch name → node name); without it from a plan with as many layers (graph order), else the
    node names are used."""
    from fitc.export.qonnx_export import COMPUTE_OPS

    nodes = {n.name: n for n in proto.graph.node}
    if layer_map:
        missing = [f"{k} → {v}" for k, v in layer_map.items() if v not in nodes]
        if missing:
            raise ArtifactError(
                f"layer map entries {missing} name no node of {source}; re-export the graph"
            )
        named = list(layer_map.items())
    else:
        compute = [n.name for n in proto.graph.node if n.op_type in COMPUTE_OPS]
        if plan is not None and len(plan.layers) == len(compute):
            log.warning("no layer map given: naming the graph's layers in plan order")
            named = list(zip([lp.name for lp in plan.layers], compute, strict=True))
        else:
            named = [(c, c) for c in compute]
    out = []
    for torch_name, node_name in named:
        node = nodes[node_name]
        w = _quantized_const(proto, node.input[1])
        if w is None:
            raise ArtifactError(
                f"layer {torch_name} (node {node_name} of {source}) has no constant weight"
            )
        if node.op_type == "Gemm":
            from fitc.export.qonnx_export import attr

            matrix = w if attr(node, "transB", 0) else w.T
        elif node.op_type == "MatMul":
            matrix = w.T
        else:  # Conv: (out, in/groups, *kernel)
            matrix = w.reshape(w.shape[0], -1)
        bias = _bias(proto, node)
        if bias is None:
            bias = np.zeros(matrix.shape[0])
        out.append(GraphLayer(torch_name, node_name, np.sort(w.ravel()), matrix, bias.ravel()))
    return out


def _quantized_const(proto: onnx.ModelProto, tensor: str) -> np.ndarray | None:
    """The value of a constant tensor after its Quant node (float64, in the consumer's layout)."""
    from fitc.export.qonnx_export import const_source, const_value, quant_params

    src = const_source(proto, tensor)
    if src is None:
        return None
    if src.quant_node is None:
        return np.asarray(src.array, dtype=np.float64)
    q = quant_params(proto, src.quant_node)
    raw = const_value(proto, src.quant_node.input[0])
    scale = np.asarray(q.scale, dtype=np.float64)
    if raw is not None and raw.shape == src.array.shape:
        return q.quantize_int(raw) * scale
    if scale.size != 1:
        raise ArtifactError(
            f"Quant node {q.node}: a per-channel scale behind a transpose is not supported"
        )
    return q.quantize_int(src.array) * scale


def _bias(proto: onnx.ModelProto, node: Any) -> np.ndarray | None:
    if len(node.input) > 2 and node.input[2]:
        return _quantized_const(proto, node.input[2])
    if node.op_type == "MatMul":  # MatMul → Add(constant) is a biased dense layer too
        users = [n for n in proto.graph.node if node.output[0] in n.input]
        if len(users) == 1 and users[0].op_type == "Add":
            other = [i for i in users[0].input if i != node.output[0]]
            return _quantized_const(proto, other[0]) if other else None
    return None


def _weight_layers(hls_model: Any) -> list[Any]:
    return [lyr for lyr in hls_model.get_layers() if lyr.class_name in _WEIGHT_LAYERS]


def _hls_weights(lyr: Any) -> np.ndarray | None:
    """The layer's weight array, or None where hls4ml compiled it into code (distributed
    arithmetic deletes the arrays after generating the kernel)."""
    w = lyr.weights.get("weight") if hasattr(lyr, "weights") else None
    return None if w is None else np.asarray(w.data, dtype=np.float64)


def map_layers(
    hls_model: Any, prepared: Any, layers: list[GraphLayer], source: str | Path = "graph"
) -> dict[str, GraphLayer]:
    """hls4ml layer name → graph layer.

    Each hls4ml weight layer is named after the node of the prepared graph it was converted from
    (``Dense_MatMul_0`` from ``MatMul_0``); that node's weights identify the graph layer (equal
    sorted values; graph order breaks ties). Where hls4ml keeps weight arrays they must equal the
    graph's — otherwise hls4ml changed them and the firmware would not compute the graph.
    """
    proto = getattr(prepared, "model", prepared)
    free = list(layers)
    by_node: dict[str, GraphLayer] = {}
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        w = _quantized_const(proto, node.input[1])
        if w is None:
            continue
        vals = np.sort(w.ravel())
        hit = next(
            (
                i
                for i, g in enumerate(free)
                if g.values.shape == vals.shape and np.array_equal(g.values, vals)
            ),
            None,
        )
        if hit is None:
            raise PrecisionMismatchError(
                f"node {node.name} of the prepared graph has weights that match no layer of "
                f"{source} (unmatched: {[g.name for g in free]})"
            )
        by_node[node.name] = free.pop(hit)
    if free:
        raise PrecisionMismatchError(
            f"layers {[g.name for g in free]} of {source} have no weight node after qonnx "
            "preparation"
        )
    mapping: dict[str, GraphLayer] = {}
    for lyr in _weight_layers(hls_model):
        cands = [n for n in by_node if lyr.name == n or lyr.name.endswith("_" + n)]
        if not cands:
            raise PrecisionMismatchError(
                f"hls4ml layer {lyr.name} cannot be traced to a node of the prepared graph "
                f"({sorted(by_node)})"
            )
        g = by_node.pop(max(cands, key=len))
        w = _hls_weights(lyr)
        if w is not None and not np.array_equal(np.sort(w.ravel()), g.values):
            raise PrecisionMismatchError(
                f"layer {g.name} (hls4ml {lyr.name}): weights: expected the {g.values.size} "
                f"quantized values of node {g.node} in {source}, got {w.size} different values; "
                "hls4ml changed them, so the firmware would not compute the graph"
            )
        mapping[lyr.name] = g
    if by_node:
        raise PrecisionMismatchError(
            f"layers {[g.name for g in by_node.values()]} of {source} have no weight layer in the "
            "hls4ml model"
        )
    return mapping


# --------------------------------------------------------------------------------------------
# Precision check


@dataclass(frozen=True)
class _Fixed:
    """A fixed-point type as numbers: signed, width, integer bits (incl. sign)."""

    signed: bool
    width: int
    integer: int

    @property
    def frac(self) -> int:
        return self.width - self.integer

    @property
    def lo(self) -> float:
        return -math.ldexp(1.0, self.integer - 1) if self.signed else 0.0

    @property
    def hi(self) -> float:
        top = self.integer - 1 if self.signed else self.integer
        return math.ldexp(1.0, top) - math.ldexp(1.0, -self.frac)

    def holds(self, values: np.ndarray) -> bool:
        v = np.asarray(values, dtype=np.float64)
        return _min_frac(v) <= self.frac and bool(np.all((v >= self.lo) & (v <= self.hi)))


def _fixed(precision: Any, where: str, what: str) -> _Fixed:
    width = getattr(precision, "width", None)
    integer = getattr(precision, "integer", None)
    signed = getattr(precision, "signed", None)
    if width is None or integer is None or signed is None:
        raise PrecisionMismatchError(
            f"{where}: {what} precision: expected a fixed-point or integer type, got {precision}"
        )
    return _Fixed(bool(signed), int(width), int(integer))


def _min_frac(values: np.ndarray) -> int:
    """Fewest fractional bits that represent every value exactly (values are dyadic)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[v != 0]
    if v.size == 0:
        return -1024
    for f in range(-64, 128):
        if np.all(np.mod(np.ldexp(v, f), 1.0) == 0):
            return f
    return 128


def check_precisions(
    hls_model: Any, mapping: Mapping[str, GraphLayer], plan: CompressionPlan | None
) -> None:
    """Raise :class:`PrecisionMismatchError` for the first layer whose types differ from the
    plan's bits or cannot hold its arithmetic exactly (see the module docstring). Under
    distributed arithmetic hls4ml compiles weights, bias and accumulator into an exact adder
    graph and deletes their types; input and result are still checked. Average-pooling layers
    are checked too (:func:`average_pool_types`)."""
    _check_average_pools(hls_model)
    for hls_name, g in mapping.items():
        lyr = hls_model.graph[hls_name]
        where = f"layer {g.name} (hls4ml {lyr.name})"
        lp = plan.layer(g.name) if plan is not None else None
        types = {k[:-2]: v.precision for k, v in lyr.types.items()}
        x_prec = lyr.get_input_variable().type.precision
        res_prec = lyr.get_output_variable().type.precision
        x_t = _fixed(x_prec, where, "input")

        def fail(what: str, expected: str, got: str, where: str = where) -> None:
            raise PrecisionMismatchError(f"{where}: {what}: expected {expected}, got {got}")

        if lp is not None and x_t.width != lp.act_bits:
            fail("input precision", f"{lp.act_bits} bits (plan act_bits)", _fmt(x_prec))
        if "weight" in types:
            w_t = _fixed(types["weight"], where, "weight")
            if lp is not None and (not w_t.signed or w_t.width != lp.weight_bits):
                fail(
                    "weight precision",
                    f"signed, {lp.weight_bits} bits (plan)",
                    _fmt(types["weight"]),
                )
            if not w_t.holds(g.values):
                fail("weight precision", "every weight value representable", _fmt(types["weight"]))
        if "bias" in types and not _fixed(types["bias"], where, "bias").holds(g.bias):
            fail("bias precision", "every bias value representable", _fmt(types["bias"]))

        # Σ w·x + b over the input type's range, per output, as hls4ml accumulates it.
        m = g.matrix
        hi = np.maximum(m * x_t.lo, m * x_t.hi).sum(axis=1) + g.bias
        lo = np.minimum(m * x_t.lo, m * x_t.hi).sum(axis=1) + g.bias
        need_frac = max(x_t.frac + _min_frac(m), _min_frac(g.bias))
        checks = [("result", res_prec)]
        if "accum" in types and "weight" in types:
            checks.insert(0, ("accum", types["accum"]))
        for what, prec in checks:
            t = _fixed(prec, where, what)
            if t.frac < need_frac or lo.min() < t.lo or hi.max() > t.hi:
                fail(
                    f"{what} precision",
                    f"≥ {need_frac} fractional bits and range [{lo.min():g}, {hi.max():g}]",
                    f"{_fmt(prec)} ({t.frac} fractional bits, range [{t.lo:g}, {t.hi:g}])",
                )


# --------------------------------------------------------------------------------------------
# Average pooling: exact types

# How hls4ml 1.3.0 averages (nnet_pooling.h ``avg`` for io_parallel, nnet_pooling_stream.h
# ``reduce_pool`` for io_stream): the window's inputs are summed in ``accum_t``, the sum is divided
# by the window size n in ``accum_t`` (ap_fixed division: the quotient keeps the dividend's
# fractional bits and drops the rest), and the quotient is cast to ``result_t``. The graph's
# AveragePool is followed by a Quant node (fitc.build inserts ``<pool>_quant``), which hls4ml
# turns into a linear activation that rounds ``result_t`` to the quantizer's type. So the emulation
# is exact when (1) ``accum_t`` holds every sum exactly and (2) the truncated quotient is rounded
# by that quantizer exactly as the true average is (derivation in :func:`average_pool_types`).


def average_pool_types(
    x: _Fixed, n: int, out_frac: int | None, where: str
) -> tuple[_Fixed, _Fixed]:
    """``(accum, result)``: the narrowest fixed-point types that make hls4ml's average of ``n``
    inputs of type ``x`` bit-exact, when the average is then quantized to ``out_frac`` fractional
    bits (None: the average itself is the output).

    Integer bits: a sum of n values of x's range lies in ``[n·lo, n·hi]``, inside x's range
    widened by ``c = ceil(log2 n)`` integer bits (same signedness); the average lies in x's range.

    Fractional bits ``F'`` of the quotient, with ``F`` those of x:

    - n a power of two: ``F' = F + log2 n``, the average itself (no truncation at all).
    - otherwise ``F' = max(F, out_frac + 1) + c``. Proof that the truncated quotient ``q`` and the
      true average ``a`` quantize alike: with ``L = max(F, out_frac + 1)``, ``a = s / (n·2^L)``
      for an integer s (the sum is a multiple of ``2^-F``). Every point where the quantizer's
      result can change (ties of round-half-even, and its clip bounds) is a multiple ``t`` of
      ``2^-(out_frac+1)``, so ``a - t`` is an integer multiple of ``1 / (n·2^L)``: either
      ``a = t`` or ``|a - t| ≥ 1 / (n·2^L) ≥ 2^-F'``. Truncation moves a by less than one step
      of ``2^-F'`` (toward zero or down, either way) and leaves it unchanged when ``a`` is on
      that grid (every t is). So no step point lies between ``a`` and ``q`` unless ``q = a``, and
      the (monotone, piecewise constant) quantizer maps both to the same value. Without a
      quantizer after it such an average is not a dyadic number: no fixed type is exact.
    """
    if n < 1:
        raise PrecisionMismatchError(f"{where}: pooling window of {n} values")
    c = (n - 1).bit_length()
    if n & (n - 1) == 0:
        frac = x.frac + c
    elif out_frac is None:
        raise PrecisionMismatchError(
            f"{where}: the average of {n} values (not a power of two) is not followed by a "
            "quantizer, so no fixed-point type holds it exactly; re-quantize the pool's output "
            "or use a window of a power-of-two size"
        )
    else:
        frac = max(x.frac, out_frac + 1) + c
    accum = _Fixed(x.signed, x.integer + c + frac, x.integer + c)
    result = _Fixed(x.signed, x.integer + frac, x.integer)
    return accum, result


def _type_str(t: _Fixed) -> str:
    return f"{'' if t.signed else 'u'}fixed<{t.width},{t.integer}>"


def _quant_type(q: Any, where: str) -> _Fixed:
    """The fixed-point type of a Quant node's output (po2 per-tensor scale, zero zero point)."""
    from fitc.export.qonnx_export import is_power_of_two

    scale = np.asarray(q.scale, dtype=np.float64).ravel()
    if scale.size != 1 or not is_power_of_two(scale) or np.any(np.asarray(q.zeropt) != 0):
        raise LoweringError(
            f"{where}: its quantizer {q.node} needs one power-of-two scale and a zero zero point "
            f"to size the pool exactly, got scale {scale[:4].tolist()}"
        )
    frac = -int(np.frexp(scale[0])[1] - 1)
    bits = int(q.bits)
    if bits != q.bits:
        raise LoweringError(f"{where}: quantizer {q.node} has a fractional bit width {q.bits}")
    return _Fixed(bool(q.signed), bits, bits - frac)


def _next_quant(proto: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    """The Quant node that re-quantizes ``tensor`` (through layout-only ops), or None."""
    users: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    for _ in range(16):
        nxt = users.get(tensor, [])
        if len(nxt) != 1:
            return None
        node = nxt[0]
        if node.op_type in ("Quant", "IntQuant"):
            return node
        if node.op_type not in ("Transpose", "Reshape", "Flatten", "Identity"):
            return None
        tensor = node.output[0]
    return None


def average_pool_precisions(onnx_model: Any) -> dict[str, dict[str, str]]:
    """hls4ml ``Precision`` entries (``accum``, ``result``) for every AveragePool node of a
    prepared graph (see :func:`prepare_qonnx`), by node name; see :func:`average_pool_types`.
    The input type is that of the Quant node feeding the pool, the output grid that of the Quant
    node after it."""
    from fitc.export.qonnx_export import act_quant_node, attr, quant_params

    proto = getattr(onnx_model, "model", onnx_model)
    out: dict[str, dict[str, str]] = {}
    for node in proto.graph.node:
        if node.op_type not in ("AveragePool", "GlobalAveragePool"):
            continue
        where = f"average pool {node.name}"
        if node.op_type == "GlobalAveragePool" or node.domain != "qonnx.custom_op.channels_last":
            raise LoweringError(
                f"{where}: not converted to a channels-last AveragePool; prepare the graph with "
                "prepare_qonnx"
            )
        q_in = act_quant_node(proto, node)
        if q_in is None:
            raise LoweringError(
                f"{where}: its input does not come from a Quant node, so its type (and the "
                "accumulator that holds its sums exactly) is unknown"
            )
        x = _quant_type(quant_params(proto, q_in), where)
        n = math.prod(int(k) for k in attr(node, "kernel_shape"))
        q_out = _next_quant(proto, node.output[0])
        out_frac = None if q_out is None else _quant_type(quant_params(proto, q_out), where).frac
        accum, result = average_pool_types(x, n, out_frac, where)
        out[node.name] = {"accum": _type_str(accum), "result": _type_str(result)}
    return out


def _check_average_pools(hls_model: Any) -> None:
    """Raise :class:`PrecisionMismatchError` for an average-pooling layer whose accumulator or
    result type cannot give the exact (or exactly re-quantized) average."""
    layers = list(hls_model.get_layers())
    for lyr in layers:
        if lyr.class_name not in _POOL_LAYERS or str(lyr.get_attr("pool_op")) != "Average":
            continue
        if lyr.class_name == "Pooling2D":
            n = int(lyr.get_attr("pool_height")) * int(lyr.get_attr("pool_width"))
        elif lyr.class_name == "Pooling1D":
            n = int(lyr.get_attr("pool_width"))
        elif lyr.class_name == "GlobalPooling2D":
            n = int(lyr.get_attr("in_height")) * int(lyr.get_attr("in_width"))
        else:
            n = int(lyr.get_attr("n_in"))
        x_prec = lyr.get_input_variable().type.precision
        where = f"average pool {lyr.name} ({n} values of {_fmt(x_prec)})"
        x = _fixed(x_prec, where, "input")
        # The quantizer after it: a linear activation, possibly behind reshapes / transposes.
        out_frac, cur = None, lyr
        for _ in range(16):
            users = [u for u in layers if cur.outputs[0] in u.inputs]
            if len(users) != 1:
                break
            cur = users[0]
            if cur.class_name in ("Reshape", "Transpose"):
                continue
            if cur.class_name == "Activation" and str(cur.get_attr("activation")) == "linear":
                out_frac = _fixed(cur.get_output_variable().type.precision, where, "quantizer").frac
            break
        accum, result = average_pool_types(x, n, out_frac, where)
        types = {k[:-2]: v.precision for k, v in lyr.types.items()}
        if "accum" not in types:
            raise PrecisionMismatchError(f"{where}: no accum type; cannot check its sums")
        checks = [
            ("accum", types["accum"], accum, n),
            ("result", lyr.get_output_variable().type.precision, result, 1),
        ]
        for what, prec, need, m in checks:
            t = _fixed(prec, where, what)
            lo, hi = m * x.lo, m * x.hi
            if t.frac < need.frac or lo < t.lo or hi > t.hi:
                raise PrecisionMismatchError(
                    f"{where}: {what} precision: expected ≥ {need.frac} fractional bits and "
                    f"range [{lo:g}, {hi:g}] (e.g. {_type_str(need)}), got {_fmt(prec)} "
                    f"({t.frac} fractional bits, range [{t.lo:g}, {t.hi:g}])"
                )


def _describe(lyr: Any, g: GraphLayer) -> dict[str, Any]:
    types = {k[:-2]: v.precision for k, v in lyr.types.items()}
    w = _hls_weights(lyr)
    da = w is None
    w = g.values if w is None else w
    in_code = "in DA kernel"
    return {
        "hls_layer": lyr.name,
        "class": lyr.class_name,
        "onnx_node": g.node,
        "input": _fmt(lyr.get_input_variable().type.precision),
        "weight": in_code if da else _fmt(types.get("weight")),
        "bias": in_code if da else _fmt(types.get("bias")),
        "accum": in_code if da else _fmt(types.get("accum")),
        "result": _fmt(lyr.get_output_variable().type.precision),
        "reuse_factor": int(lyr.get_attr("reuse_factor", 1)),
        "strategy": str(lyr.get_attr("strategy", "")),
        "n_weights": int(w.size),
        "n_nonzero": int(np.count_nonzero(w)),
    }


def _fmt(precision: Any) -> str:
    """``fixed<8,3>`` / ``ufixed<6,2,RND_CONV,SAT>``: hls4ml's type without default modes."""
    if precision is None:
        return "-"
    text = str(precision)
    if "<" not in text:
        return text
    head, args = text.split("<", 1)
    parts = [p.strip() for p in args.rstrip(">").split(",")]
    drop = {"TRN", "WRAP", "0"}
    while len(parts) > 2 and parts[-1] in drop:
        parts.pop()
    return f"{head}<{','.join(parts)}>"


# --------------------------------------------------------------------------------------------
# Summary


def summary_markdown(project: HLSProject, qonnx_path: str | Path | None = None) -> str:
    """A short human summary of the project: target, strategy, per-layer precisions, how to build."""
    hw = project.hardware
    build = (
        "vitis-run --tcl build_prj.tcl --mode hls"
        if hw.backend == "Vitis"
        else "vivado_hls -f build_prj.tcl"
    )
    lines = [
        f"# hls4ml project `{project.project_name}`",
        "",
        f"- source graph: `{qonnx_path}`" if qonnx_path else "",
        f"- part: `{hw.part}`, clock period: {hw.clock_period_ns:g} ns",
        f"- backend: {hw.backend}, io type: {hw.io_type}, strategy: {hw.strategy}, "
        f"reuse factor: {hw.reuse_factor}",
        f"- input: {list(project.input_shape)}"
        + (" (NHWC: channels last)" if project.channels_last else "")
        + f", precision `{INPUT_PRECISION}` (the first quantizer rounds it)",
        f"- hls4ml {project.hls4ml_version}; convert {project.convert_time_s:.2f} s, "
        + (
            "C++ emulation not compiled"
            if project.compile_time_s is None
            else f"C++ emulation compiled in {project.compile_time_s:.2f} s"
        ),
        "",
        "## Layers (torch module → hls4ml layer)",
        "",
        "| layer | hls4ml | input | weight | bias | accum | result | reuse | non-zero |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in project.layers.items():
        lines.append(
            f"| {name} | {d['hls_layer']} ({d['class']}) | `{d['input']}` | `{d['weight']}` | "
            f"`{d['bias']}` | `{d['accum']}` | `{d['result']}` | {d['reuse_factor']} | "
            f"{d['n_nonzero']}/{d['n_weights']} |"
        )
    lines += ["", "## Other layers", "", "| hls4ml layer | class | result |", "|---|---|---|"]
    for name, d in project.other_layers.items():
        lines.append(f"| {name} | {d['class']} | `{d['result']}` |")
    lines += [
        "",
        "## Synthesis",
        "",
        f"With {hw.backend} on PATH: `fitc synth {project.project_dir}` "
        f"(or `cd {project.project_dir} && {build}`).",
        "",
    ]
    return "\n".join(line for line in lines if line is not None) + "\n"


# --------------------------------------------------------------------------------------------
# Emulation check


class _LinkedEmulation:
    """The compiled emulation of a project lowered earlier (another process), called through the
    ``<project>_double`` C function of hls4ml's generated bridge. hls4ml's own
    ``link_existing_project`` cannot read ONNX-converted projects (their ``hls4ml_config.yml``
    holds a ``python/object`` YAML tag that ``yaml.safe_load`` rejects)."""

    def __init__(self, project: HLSProject) -> None:
        import ctypes

        from numpy import ctypeslib

        root = Path(project.project_dir)
        if not (root / _HLS_CONFIG_FILE).is_file():
            raise ArtifactError(f"{root}: no hls4ml project (no {_HLS_CONFIG_FILE})")
        if project.output_size <= 0:
            raise ArtifactError(f"{root}: {PROJECT_JSON} does not record the output size")
        libs = sorted((root / "firmware").glob(f"{project.project_name}-*.so"), key=_mtime)
        if not libs:
            if shutil.which("g++") is None:
                raise ToolNotFoundError(
                    f"g++ is not on PATH: it compiles the C++ emulation of the project in {root}"
                )
            t0 = time.perf_counter()
            done = subprocess.run(
                ["bash", "build_lib.sh"], cwd=root, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                raise HLSCompileError(f"g++ could not compile the project in {root}:\n{tail}")
            log.info("compiled %s in %.2f s", root, time.perf_counter() - t0)
            libs = sorted((root / "firmware").glob(f"{project.project_name}-*.so"), key=_mtime)
        self._lib = ctypes.CDLL(str(libs[-1]))
        self._fn = getattr(self._lib, f"{project.project_name}_double")
        arr = ctypeslib.ndpointer(ctypes.c_double, flags="C_CONTIGUOUS")
        self._fn.argtypes = [arr, arr]
        self._fn.restype = None
        self.input_shape = tuple(project.input_shape)
        self.output_size = project.output_size

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        out = np.zeros((len(x), self.output_size), dtype=np.float64)
        for i in range(len(x)):
            row = np.ascontiguousarray(x[i])
            res = np.zeros(self.output_size, dtype=np.float64)
            self._fn(row, res)
            out[i] = res
        return out


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def _emulator(obj: Any) -> tuple[tuple[int, ...], Any]:
    """(input shape of one sample, predict function) of a project or an hls4ml model."""
    if isinstance(obj, HLSProject):
        key = str(Path(obj.project_dir).resolve())
        model = _COMPILED.get(key)
        if model is None:
            model = _LinkedEmulation(obj)
            _COMPILED[key] = model
        if isinstance(model, _LinkedEmulation):
            return model.input_shape, model.predict
        obj = model
    if not hasattr(obj, "predict") or not hasattr(obj, "get_input_variables"):
        raise TypeError(
            f"emulation_check needs an HLSProject or an hls4ml model, got {type(obj).__name__}"
        )
    if getattr(obj, "_top_function_lib", None) is None:  # not compiled yet
        _compile(obj)
    shape = tuple(int(d) for d in obj.get_input_variables()[0].shape)
    return shape, obj.predict


def emulation_check(
    hls_model_or_project: Any, qonnx_path: str | Path, X: np.ndarray, y: np.ndarray
) -> HopReport:
    """Compare hls4ml's C++ emulation with the qonnx executor on every row of ``X``.

    ``X`` has the graph's layout, ``(N, *input_shape)`` (NCHW for a CNN). Exactness is
    ``report.exact`` (max |diff| 0 and every row identical); the caller decides what to do
    with a difference.
    """
    from fitc.export import load_onnx, run_qonnx
    from fitc.export.verify import compare

    in_shape, predict = _emulator(hls_model_or_project)
    proto = load_onnx(qonnx_path)
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    sample = tuple(d.dim_value for d in dims[1:])
    if X.ndim < 2 or tuple(X.shape[1:]) != sample or y.shape != (len(X),) or len(X) == 0:
        raise DataError(
            f"emulation_check: need inputs (N, {', '.join(map(str, sample))}) with N > 0 and N "
            f"labels for {qonnx_path}, got X {X.shape}, y {y.shape}"
        )
    t0 = time.perf_counter()
    ref = run_qonnx(proto, X).reshape(len(X), -1)
    t_ref = time.perf_counter() - t0

    emu_in = X
    if X.ndim == 4 and tuple(X.shape[1:]) != in_shape and (*X.shape[2:], X.shape[1]) == in_shape:
        emu_in = X.transpose(0, 2, 3, 1)
    if math.prod(emu_in.shape[1:]) != math.prod(in_shape):
        raise ArtifactError(
            f"emulation_check: inputs of shape {X.shape[1:]} do not fit the emulation's input "
            f"{in_shape}"
        )
    # float64 in and out: the C++ side converts doubles, exact for any fixed type ≤ 53 bits.
    emu_in = np.ascontiguousarray(emu_in.reshape(len(X), -1), dtype=np.float64)
    t0 = time.perf_counter()
    with _captured_output("predict"):
        out = np.asarray(predict(emu_in), dtype=np.float64).reshape(len(X), -1)
    t_emu = time.perf_counter() - t0
    report = compare("qonnx", ref, "hls4ml", out, y)
    log.info(
        "hls4ml emulation vs qonnx on %d rows: max|diff| %g, identical rows %.4f, argmax %.4f "
        "(qonnx %.2f s, emulation %.2f s)",
        report.n_samples,
        report.max_abs_diff,
        report.identical_rows,
        report.argmax_agreement,
        t_ref,
        t_emu,
    )
    return report


__all__ = [
    "INPUT_PRECISION",
    "PROJECT_JSON",
    "SUMMARY_NAME",
    "HLSCompileError",
    "HLSProject",
    "LoweringError",
    "average_pool_precisions",
    "average_pool_types",
    "check_precisions",
    "GraphLayer",
    "emulation_check",
    "graph_layers",
    "hls_config",
    "load_project",
    "lower",
    "map_layers",
    "prepare_qonnx",
    "summary_markdown",
]
