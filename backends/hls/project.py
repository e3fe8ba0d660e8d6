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
- :func:`lower` converts, checks every weight layer (below), writes the project (an hls4ml
  project a Vitis/Vivado user can synthesize, with ``SUMMARY.md`` and ``fitc_hls_project.json``)
  and compiles the C++ emulation with g++ (``compile=True``), all in a temporary sibling of
  ``out_dir`` renamed onto it at the end (:func:`fitc.rundir.building_dir`): ``out_dir`` holds a
  whole project or the previous one, never half of one, whenever the process dies. The library
  is built for ``out_dir`` (hls4ml bakes the weight files' absolute path into it) and loaded from
  there after the rename. It returns an :class:`HLSProject`.
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
import ctypes
import dataclasses
import io
import json
import logging
import shlex
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

from fitc.artifacts import CompressionPlan, HardwareConfig, check_reuse_factor
from fitc.errors import (
    ArtifactError,
    ConfigError,
    FitcError,
    ToolNotFoundError,
)
from fitc.rundir import building_dir, write_json, write_text

from .layers import (
    LoweringError,
    average_pool_precisions,
    check_precisions,
    describe_layer,
    format_precision,
    graph_layers,
    input_precision,
    map_layers,
)

log = logging.getLogger(__name__)


PROJECT_NAME = "myproject"
INPUT_PRECISION = "fixed<64,32>"
SUMMARY_NAME = "SUMMARY.md"
PROJECT_JSON = "fitc_hls_project.json"
_HLS_CONFIG_FILE = "hls4ml_config.yml"
_PARTIAL = ".fitc_partial"  # marked a half-written project before lower() built it aside
# Graph ops whose data layout matters: a graph with any of them is converted to channels last.
_LAYOUT_OPS = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")

# Compiled emulations of this process, by resolved project directory (emulation_check reuses them).
COMPILED: dict[str, Any] = {}


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
    input_precision: str = ""  # the input port's type (the network's input quantizer)

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
    with captured_output("config_from_onnx_model"):
        cfg = hls4ml.utils.config_from_onnx_model(
            onnx_model,
            granularity="name",
            backend=hw.backend,
            default_reuse_factor=hw.reuse_factor,
        )
    cfg["Model"]["Strategy"] = hw.strategy
    cfg["Model"]["ReuseFactor"] = hw.reuse_factor
    input_name = graph.input[0].name
    # The port carries the quantized input (W bits, rounded and saturated like the first Quant);
    # a graph whose input is not quantized first gets a wide port that never truncates.
    port = input_precision(onnx_model) or INPUT_PRECISION
    cfg["LayerName"].setdefault(input_name, {}).setdefault("Precision", {})["result"] = port
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
    # A reuse factor hls4ml would silently change is an error listing the valid ones.
    check_reuse_factor(hw, [(g.name, g.matrix.shape[1], g.matrix.shape[0]) for g in glayers])

    t0 = time.perf_counter()
    prepared = prepare_qonnx(proto)
    kwargs = hls_config(prepared, plan, hw, precision_overrides=precision_overrides)
    _check_replaceable(out_dir)
    workaround: contextlib.AbstractContextManager = contextlib.nullcontext()
    if hw.strategy == "distributed_arithmetic":
        from fitc.backends.da_workaround import distributed_arithmetic_on_qonnx

        workaround = distributed_arithmetic_on_qonnx()
    # Everything is written into a temporary sibling, renamed onto out_dir at the very end.
    with building_dir(out_dir) as tmp:
        try:
            with captured_output("convert_from_onnx_model"), workaround:
                hls_model = hls4ml.converters.convert_from_onnx_model(
                    prepared, output_dir=str(tmp), **kwargs
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
        layers = {g.name: describe_layer(hls_model.graph[h], g) for h, g in mapping.items()}
        check_precisions(hls_model, mapping, plan)

        with captured_output("write"):
            hls_model.write()
        _repoint_config_file(tmp, out_dir)
        compile_time = _build_library(hls_model, tmp, out_dir) if compile else None

        in_shape = tuple(int(d) for d in hls_model.get_input_variables()[0].shape)
        project = HLSProject(
            project_dir=str(out_dir),
            hardware=hw,
            layers=layers,
            other_layers={
                lyr.name: {
                    "class": lyr.class_name,
                    "result": format_precision(lyr.get_output_variable().type.precision),
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
            input_precision=str(
                kwargs["hls_config"]["LayerName"][prepared.graph.input[0].name]["Precision"][
                    "result"
                ]
            ),
        )
        write_json(tmp / PROJECT_JSON, project.to_dict())
        write_text(tmp / SUMMARY_NAME, summary_markdown(project, qonnx_path))
    # In place: the model writes (and would compile) into out_dir from now on, and its library
    # (built to read its weight files from out_dir) is loaded from there.
    hls_model.config.config["OutputDir"] = str(out_dir)
    COMPILED.pop(str(out_dir.resolve()), None)
    if compile:
        hls_model._top_function_lib = ctypes.cdll.LoadLibrary(str(_library(hls_model, out_dir)))
        COMPILED[str(out_dir.resolve())] = hls_model
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


def _check_replaceable(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that is a file, or a non-empty directory holding no hls4ml project
    (the user's files): :func:`lower` replaces only a project (or an empty directory)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ArtifactError(f"{out_dir} exists and is not a directory")
    ours = any((out_dir / f).exists() for f in (_HLS_CONFIG_FILE, PROJECT_JSON, _PARTIAL))
    if not ours and any(out_dir.iterdir()):
        raise ArtifactError(
            f"{out_dir} is not empty and holds no hls4ml project; refusing to overwrite it — "
            "choose another directory"
        )


def _repoint_config_file(tmp: Path, out_dir: Path) -> None:
    """hls4ml records its output directory (here the temporary) in ``hls4ml_config.yml``: name
    the final one, so the project reads as if written in place."""
    path = tmp / _HLS_CONFIG_FILE
    if path.is_file():
        text = path.read_text()
        if str(tmp) in text:
            write_text(path, text.replace(str(tmp), str(out_dir)))


def _library(hls_model: Any, project_dir: Path) -> Path:
    cfg = hls_model.config
    return project_dir / "firmware" / f"{cfg.get_project_name()}-{cfg.get_config_value('Stamp')}.so"


def _build_library(hls_model: Any, tmp: Path, out_dir: Path) -> float:
    """Compile the C++ emulation of the project written in ``tmp`` as it will be in ``out_dir``.

    hls4ml's ``build_lib.sh`` bakes the absolute path of the weight files (which the emulation
    reads at its first call) into the library: it is run here with that path set to ``out_dir``,
    where the project is renamed next, from a copy (the project keeps hls4ml's own script)."""
    if shutil.which("g++") is None:
        raise ToolNotFoundError(
            "g++ is not on PATH: it compiles hls4ml's C++ emulation. Install g++ (e.g. apt-get "
            "install g++) or lower with compile=False to only write the project"
        )
    script = (tmp / "build_lib.sh").read_text()
    line = 'BASEDIR="$(cd "$(dirname "$0")" && pwd)"'
    if line not in script:
        raise HLSCompileError(f"hls4ml's build_lib.sh in {tmp} has no line {line!r}")
    final = shlex.quote(str(out_dir.resolve()))
    (tmp / ".fitc_build_lib.sh").write_text(script.replace(line, f"BASEDIR={final}"))
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            ["bash", ".fitc_build_lib.sh"], cwd=tmp, capture_output=True, text=True, check=False
        )
    finally:
        (tmp / ".fitc_build_lib.sh").unlink(missing_ok=True)
    log.debug("hls4ml build_lib.sh output:\n%s", done.stdout + done.stderr)
    if done.returncode != 0 or not _library(hls_model, tmp).is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise HLSCompileError(f"g++ could not compile the hls4ml project for {out_dir}:\n{tail}")
    return time.perf_counter() - t0


def compile_model(hls_model: Any) -> float:
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
def captured_output(what: str) -> Iterator[None]:
    """hls4ml prints its progress; keep it out of the user's terminal, in the debug log."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        if buf.getvalue().strip():
            log.debug("hls4ml %s output:\n%s", what, buf.getvalue())


# --------------------------------------------------------------------------------------------
# Summary


def _host_quantization(precision: str) -> str | None:
    """What a host must do to an input value before it enters the firmware's port."""
    import re

    m = re.fullmatch(r"(u?)fixed<(\d+),(-?\d+),RND_CONV,(SAT|SAT_SYM)>", precision or "")
    if not m:
        return None
    unsigned, width, integer, sat = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    frac = width - integer
    if unsigned:
        lo, hi = 0, 2**width - 1
    else:
        lo, hi = -(2 ** (width - 1)) + (sat == "SAT_SYM"), 2 ** (width - 1) - 1
    return (
        f"- host input quantization: `q = clamp(round_half_to_even(x · 2^{frac}), {lo}, {hi})`, "
        f"the port carries `q` ({width} bits, value `q · 2^-{frac}`); the C++ emulation applies "
        "it to float inputs itself, exactly as the QONNX graph's input Quant does"
    )


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
        + f", port type `{project.input_precision or INPUT_PRECISION}`",
        _host_quantization(project.input_precision),
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
    run_dir = Path(project.project_dir).parent
    synth = (
        f"`fitc synth {run_dir}`, then `fitc estimate {run_dir} --model report` "
        f"(or `cd {project.project_dir} && {build}`)"
        if (run_dir / "run.json").is_file()
        else f"`cd {project.project_dir} && {build}`"
    )
    lines += ["", "## Synthesis", "", f"With {hw.backend} on PATH: {synth}.", ""]
    return "\n".join(line for line in lines if line is not None) + "\n"
