"""FPGA resource models: analytical (from the plan, microseconds), da4ml (from the integer weights,
the accurate offline model) and vendor reports (csynth / Vivado synthesis files).

Contract:

- A resource model has ``name: str`` and ``estimate(plan, hw, **kw) -> ResourceReport``. Reports are
  per layer (keyed by the torch module name) and in total; ``source`` names the model. Models ignore
  keyword arguments meant for other models, so a caller can pass the same ``**kw`` to any of them.
  :data:`RESOURCE_MODELS` maps a name to a factory; :func:`get_resource_model` looks one up.
- :class:`AnalyticalModel` (``"analytical"``) follows hls4ml's rules: a multiplier is a DSP only when
  the weight is 9 bits or wider (never under ``distributed_arithmetic``); at reuse factor 1 (Latency)
  a zero weight costs nothing; the Resource strategy at reuse factor R > 1 instantiates
  ``ceil(n_weights / R)`` multipliers, zeros included, and keeps the weights in BRAM. The LUT cost of a
  layer's constant multiplies and adder tree is a closed formula fitted to da4ml (see
  :func:`cmvm_luts`); ``calibration`` scales each layer's LUT by a factor (the closed loop sets it from
  an accurate measurement with :meth:`AnalyticalModel.calibrated`). Results are cached per layer
  plan, so a call costs microseconds.
- :class:`LutCost` adapts a model to the search's cost protocol (``kind`` attribute, ``__call__(layers)
  -> float`` absolute count); ``kind`` is one of ``lut``, ``ff``, ``dsp``, ``bram``, ``latency``.
- :class:`Da4mlModel` (``"da4ml"``) solves each layer's constant matrix-vector multiply with da4ml's
  ``cmvm.solve`` on the quantized integer weights (``weights=`` from :func:`quant_int_weights`) and
  the fixed-point input types (``input_types=`` from :func:`quant_input_types`, or derived from the
  plan's act bits): the LUT-equivalent adder-graph cost and its depth in adder levels.
- :class:`VendorReportModel` (``"report"``) reads hls4ml/Vivado HLS ``<top>_csynth.xml`` (latency,
  interval, clock, HLS resource estimate) and ``vivado_synth.rpt`` (post-synthesis LUT, FF, DSP,
  BRAM) from a project or a folder holding those files; see :func:`read_vendor_report`.

Convolutions (both io types): hls4ml computes one output position per ``reuse_factor`` cycles with
one instance of the kernel's multiply (``ParallelizationFactor`` instances, default 1), so a conv's
LUT/DSP are those of its kernel matrix (out_ch × in_ch·k²) charged once (× ``parallelization_factor``)
and its latency grows with the number of output positions. io_parallel and io_stream differ in the
activation logic (io_parallel applies the ReLU to the whole output tensor at once, io_stream to one
pixel per cycle) and in the initiation interval (io_stream is a dataflow pipeline).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from fitc.artifacts import (
    CompressionPlan,
    HardwareConfig,
    LayerPlan,
    LayerResources,
    ResourceReport,
)
from fitc.errors import ArtifactError, ConfigError, FitcError

log = logging.getLogger(__name__)

#: Cost kinds a :class:`LutCost` can measure (the hardware budget kinds of :class:`Budget`).
COST_KINDS = ("lut", "ff", "dsp", "bram", "latency")
#: hls4ml's rule: a product maps to a DSP only when the weight is at least this wide.
DSP_MIN_WEIGHT_BITS = 9


class VendorReportError(ArtifactError):
    """A vendor report file is missing, unreadable or lacks a field fitc needs."""


class Da4mlError(FitcError):
    """da4ml could not solve a layer (bad weights or input types)."""


@runtime_checkable
class ResourceModel(Protocol):
    """Anything that turns a plan (plus model-specific inputs) into a :class:`ResourceReport`."""

    name: str

    def estimate(self, plan: CompressionPlan, hw: HardwareConfig, **kw: Any) -> ResourceReport: ...


# ------------------------------------------------------------------------------------------------
# Shared per-layer arithmetic


def layer_shape(lp: LayerPlan) -> tuple[int, int]:
    """``(n_in, n_out)`` of the layer's matrix: fan-in (in_ch·k²) and output features/channels."""
    return lp.fan_in, max(1, lp.n_weights // lp.fan_in)


def accumulator_bits(lp: LayerPlan) -> int:
    """Width of an exact accumulator: weight + input bits + ceil(log2(fan_in))."""
    return lp.weight_bits + lp.act_bits + math.ceil(math.log2(max(lp.fan_in, 1)))


def uses_dsp(lp: LayerPlan, hw: HardwareConfig) -> bool:
    """hls4ml's rule: DSP multipliers only from 9-bit weights, and never in distributed arithmetic."""
    return hw.strategy != "distributed_arithmetic" and lp.weight_bits >= DSP_MIN_WEIGHT_BITS


def dsp_per_multiplier(weight_bits: int, act_bits: int) -> int:
    """DSP48 slices per product (a DSP48E1/E2 multiplies 25 × 18 bits signed)."""
    big, small = max(weight_bits, act_bits), min(weight_bits, act_bits)
    return math.ceil(big / 25) * math.ceil(small / 18)


def n_multipliers(lp: LayerPlan, hw: HardwareConfig) -> int:
    """Multipliers one kernel instance needs (hls4ml's ``multiplier_limit``).

    Latency / distributed arithmetic, and any strategy at RF 1: zero weights are free,
    ``ceil(n_nonzero / RF)``. Resource strategy at RF > 1: the weights are read from memory, zeros
    included, ``ceil(n_weights / RF)``.
    """
    rf = hw.reuse_factor
    if hw.strategy == "Resource" and rf > 1:
        return math.ceil(lp.n_weights / rf)
    return math.ceil(lp.n_nonzero / rf)


def weight_bram_18k(lp: LayerPlan, hw: HardwareConfig) -> int:
    """BRAM_18K of the stored weights: only the Resource strategy at RF > 1 keeps weights in BRAM.

    hls4ml reshapes the weights into one memory ``RF`` deep and ``ceil(n_weights / RF) × weight_bits``
    wide; a BRAM_18K is at most 36 bits wide at 512 deep.
    """
    rf = hw.reuse_factor
    if hw.strategy != "Resource" or rf <= 1:
        return 0
    width = math.ceil(lp.n_weights / rf) * lp.weight_bits
    return math.ceil(width / 36) * math.ceil(rf / 512)


# ------------------------------------------------------------------------------------------------
# Analytical model


@dataclass(frozen=True)
class AnalyticalParams:
    """Constants of the analytical model.

    The first six were fitted (least squares on log cost, per-layer offsets removed) to da4ml 0.6.0
    LUT costs (``adder_size=1``: LUT-equivalents) of 400 random Gaussian/uniform matrices (9–144
    inputs, 8–64 outputs) and of digits-mlp/digits-cnn layers from a separate training run, over
    2–8-bit weights, 2–8-bit inputs and 0–95 % magnitude sparsity. ``bench/resource_models.py``
    reports the agreement on freshly trained models and refits them on one model to test on the
    other. The rest are rules of thumb for a 7-series / UltraScale fabric.
    """

    lut_per_acc_bit: float = 0.684  # LUT per bit of the accumulating adder of each non-zero product
    lut_per_mult_bit: float = 0.438  # LUT per bit of each shift-add of a constant multiplier
    magnitude_offset: float = 2.506  # expected log2|q| of a kept weight = weight_bits - offset
    csd_digits_per_bit: float = 0.419  # extra signed digits per magnitude bit of a weight
    acc_growth: float = 0.682  # adder width growth per log2(products summed per output)
    sharing_exponent: float = 0.182  # common-subexpression sharing among weights of one input
    generic_mult_lut_per_bit2: float = (
        0.55  # LUT per weight-bit × act-bit of a non-constant multiplier
    )
    relu_lut_per_bit: float = 1.0  # LUT per output bit of the quantized ReLU after a layer
    ff_per_lut: float = 0.15  # pipeline registers per LUT of adder tree (3 adder levels per stage)
    adder_delay_ns: float = 1.6  # one adder level, so ~3 levels per 5 ns cycle
    dsp_pipeline_cycles: int = 3  # DSP48 input/multiply/output registers
    layer_overhead_cycles: int = 1  # output register of each layer


DEFAULT_PARAMS = AnalyticalParams()


def cmvm_luts(lp: LayerPlan, params: AnalyticalParams = DEFAULT_PARAMS) -> float:
    """LUT of one instance of a layer's constant matrix multiply with LUT multipliers.

    With ``m = clip(weight_bits - magnitude_offset, 0, log2(2^(weight_bits-1) - 1))`` the expected
    log2 magnitude of a kept weight, ``d = 1 + csd_digits_per_bit·m`` its expected non-zero
    signed digits, ``w = act_bits + m + acc_growth·log2(n_nonzero / n_out)`` the width of the
    accumulating adder and ``s = (n_nonzero / n_in)^(-sharing_exponent)`` the sharing of
    sub-expressions among the weights applied to one input::

        LUT = n_nonzero · s · (lut_per_acc_bit · w + lut_per_mult_bit · (d - 1) · (act_bits + m))

    i.e. an accumulating adder per non-zero product plus ``d - 1`` shift-adds per constant multiply
    whose width grows with the weight and input widths. Zero weights are free.
    """
    nnz = lp.n_nonzero
    if nnz == 0:
        return 0.0
    n_in, n_out = layer_shape(lp)
    p = params
    mag = min(
        max(lp.weight_bits - p.magnitude_offset, 0.0),
        math.log2(max(2 ** (lp.weight_bits - 1) - 1, 1)),
    )
    digits = 1.0 + p.csd_digits_per_bit * mag
    width = lp.act_bits + mag + p.acc_growth * math.log2(max(nnz / n_out, 1.0))
    share = max(nnz / n_in, 1.0) ** (-p.sharing_exponent)
    return (
        nnz
        * share
        * (p.lut_per_acc_bit * width + p.lut_per_mult_bit * (digits - 1.0) * (lp.act_bits + mag))
    )


def adder_tree_luts(
    lp: LayerPlan, n_products: int, params: AnalyticalParams = DEFAULT_PARAMS
) -> float:
    """LUT of the adders summing ``n_products`` products into the layer's outputs."""
    _, n_out = layer_shape(lp)
    n_add = max(n_products - n_out, 0)
    width = (
        lp.act_bits + lp.weight_bits + params.acc_growth * math.log2(max(n_products / n_out, 1.0))
    )
    return params.lut_per_acc_bit * n_add * width


def _levels_per_cycle(hw: HardwareConfig, params: AnalyticalParams) -> int:
    return max(1, int(hw.clock_period_ns / params.adder_delay_ns))


def _activation_elements(lp: LayerPlan, hw: HardwareConfig) -> int:
    _, n_out = layer_shape(lp)
    if lp.kind == "conv2d" and hw.io_type == "io_parallel":
        return n_out * lp.out_positions
    return n_out


def _activation_luts(
    lp: LayerPlan, next_act_bits: int | None, hw: HardwareConfig, params: AnalyticalParams
) -> float:
    """The quantized ReLU re-quantizing this layer's outputs to the next layer's input width."""
    if next_act_bits is None:
        return 0.0
    return params.relu_lut_per_bit * next_act_bits * _activation_elements(lp, hw)


class LayerNumbers(NamedTuple):
    """One layer's estimate: resources of all its instances and its latency / interval in cycles."""

    lut: float
    ff: float
    dsp: float
    bram_18k: float
    latency_cycles: float
    ii_cycles: float


def _timing(
    lp: LayerPlan,
    hw: HardwareConfig,
    depth_levels: float,
    dsp: bool,
    params: AnalyticalParams,
    pf: int,
) -> tuple[float, float]:
    """Latency and initiation interval (cycles) of a layer whose adder graph is ``depth_levels`` deep."""
    rf = hw.reuse_factor
    one = math.ceil(depth_levels / _levels_per_cycle(hw, params)) + params.layer_overhead_cycles
    if dsp:
        one += params.dsp_pipeline_cycles
    if hw.strategy == "Resource" and rf > 1:
        one += rf
    ii_inner = rf
    positions = math.ceil(lp.out_positions / pf) if lp.kind == "conv2d" else 1
    latency = one + (positions - 1) * ii_inner
    return float(latency), float(positions * ii_inner)


def _finish(
    lp: LayerPlan,
    hw: HardwareConfig,
    next_act_bits: int | None,
    *,
    arith_lut: float,
    dsp: float,
    depth_levels: float,
    uses_dsps: bool,
    params: AnalyticalParams,
    pf: int,
) -> LayerNumbers:
    """Add activations, registers, BRAM and timing to a layer's arithmetic cost."""
    instances = pf if lp.kind == "conv2d" else 1
    _, n_out = layer_shape(lp)
    acc = accumulator_bits(lp)
    latency, ii = _timing(lp, hw, depth_levels, uses_dsps, params, pf)
    act_lut = _activation_luts(lp, next_act_bits, hw, params)
    cycles = max(1.0, math.ceil(depth_levels / _levels_per_cycle(hw, params)))
    ff = instances * (params.ff_per_lut * arith_lut + n_out * acc * cycles)
    if uses_dsps:
        ff += instances * n_multipliers(lp, hw) * (lp.weight_bits + lp.act_bits)
    if next_act_bits is not None:
        ff += next_act_bits * _activation_elements(lp, hw)
    return LayerNumbers(
        lut=instances * arith_lut + act_lut,
        ff=ff,
        dsp=instances * dsp,
        bram_18k=float(weight_bram_18k(lp, hw)),
        latency_cycles=latency,
        ii_cycles=ii,
    )


@lru_cache(maxsize=1 << 16)
def _analytical_layer(
    lp: LayerPlan, hw: HardwareConfig, next_act_bits: int | None, params: AnalyticalParams, pf: int
) -> LayerNumbers:
    n_in, n_out = layer_shape(lp)
    dsp_mult = uses_dsp(lp, hw)
    n_mult = n_multipliers(lp, hw)
    rf = hw.reuse_factor
    if hw.strategy == "Resource" and rf > 1:
        # Weights come from memory: generic multipliers (zeros included) feeding accumulators.
        mult_lut = (
            0.0 if dsp_mult else params.generic_mult_lut_per_bit2 * lp.weight_bits * lp.act_bits
        )
        arith = n_mult * mult_lut + adder_tree_luts(lp, n_mult, params)
        products = max(lp.n_weights / n_out, 1.0)
    elif dsp_mult:
        arith = adder_tree_luts(lp, n_mult, params)
        products = max(lp.n_nonzero / n_out, 1.0)
    else:
        # Constant multiplies in LUTs; at Latency RF > 1 the same logic is shared over RF cycles.
        arith = cmvm_luts(lp, params) / rf
        products = max(lp.n_nonzero / n_out, 1.0)
    mag = max(lp.weight_bits - params.magnitude_offset, 0.0)
    digits = 1.0 + params.csd_digits_per_bit * mag
    depth = (
        0.0
        if lp.n_nonzero == 0
        else math.ceil(math.log2(max(products * (1.0 if dsp_mult else digits), 1.0)))
    )
    dsp = float(n_mult * dsp_per_multiplier(lp.weight_bits, lp.act_bits)) if dsp_mult else 0.0
    return _finish(
        lp,
        hw,
        next_act_bits,
        arith_lut=arith,
        dsp=dsp,
        depth_levels=depth,
        uses_dsps=dsp_mult,
        params=params,
        pf=pf,
    )


def _next_act_bits(layers: Sequence[LayerPlan]) -> list[int | None]:
    """The input width of the following layer (its quantized ReLU), None for the last layer."""
    return [layers[i + 1].act_bits if i + 1 < len(layers) else None for i in range(len(layers))]


def _check_pf(pf: int) -> int:
    if not (isinstance(pf, int) and pf >= 1):
        raise ConfigError(f"parallelization_factor must be an integer ≥ 1, got {pf!r}")
    return pf


def _report(
    source: str,
    hw: HardwareConfig,
    names: Sequence[str],
    numbers: Sequence[LayerNumbers],
) -> ResourceReport:
    layers = tuple(
        LayerResources(
            name=n,
            lut=float(x.lut),
            ff=float(x.ff),
            dsp=float(x.dsp),
            bram_18k=float(x.bram_18k),
            latency_cycles=float(x.latency_cycles),
        )
        for n, x in zip(names, numbers, strict=True)
    )
    latency = float(sum(x.latency_cycles for x in numbers))
    ii = float(max((x.ii_cycles for x in numbers), default=1.0))
    return ResourceReport(
        source=source,
        hardware=hw,
        lut=float(sum(x.lut for x in numbers)),
        ff=float(sum(x.ff for x in numbers)),
        dsp=float(sum(x.dsp for x in numbers)),
        bram_18k=float(sum(x.bram_18k for x in numbers)),
        latency_cycles=latency,
        latency_ns=latency * hw.clock_period_ns,
        initiation_interval_cycles=ii,
        layers=layers,
    )


@dataclass(frozen=True)
class AnalyticalModel:
    """hls4ml's rules plus a LUT formula fitted to da4ml; per-layer LUT calibration factors.

    ``calibration`` maps a torch layer name to a multiplicative scale of that layer's LUT (missing
    layers: 1.0). ``parallelization_factor`` is hls4ml's conv ``ParallelizationFactor`` (kernel
    instances per conv layer).
    """

    params: AnalyticalParams = DEFAULT_PARAMS
    calibration: Mapping[str, float] = field(default_factory=dict)
    parallelization_factor: int = 1
    name: str = "analytical"

    def __post_init__(self) -> None:
        _check_pf(self.parallelization_factor)
        for layer, f in self.calibration.items():
            if not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0):
                raise ConfigError(
                    f"calibration factor of layer {layer} must be a finite number > 0, got {f!r}"
                )
        object.__setattr__(self, "calibration", dict(self.calibration))

    # -- per layer ------------------------------------------------------------------------------
    def layer_numbers(
        self, layers: Sequence[LayerPlan], hw: HardwareConfig, *, calibrated: bool = True
    ) -> list[LayerNumbers]:
        """Per-layer estimates, in order (LUT scaled by the calibration unless ``calibrated=False``)."""
        out = []
        for lp, nxt in zip(layers, _next_act_bits(layers), strict=True):
            x = _analytical_layer(lp, hw, nxt, self.params, self.parallelization_factor)
            f = self.calibration.get(lp.name, 1.0) if calibrated else 1.0
            out.append(x if f == 1.0 else x._replace(lut=x.lut * f))
        return out

    def estimate(self, plan: CompressionPlan, hw: HardwareConfig, **kw: Any) -> ResourceReport:
        """The plan's resources. Keyword arguments of other models (weights, …) are ignored."""
        return _report(
            self.name, hw, [lp.name for lp in plan.layers], self.layer_numbers(plan.layers, hw)
        )

    def total(self, kind: str, layers: Sequence[LayerPlan], hw: HardwareConfig) -> float:
        """One total (``lut``, ``ff``, ``dsp``, ``bram``, ``latency`` in cycles) of ``layers``."""
        nums = self.layer_numbers(layers, hw)
        if kind == "lut":
            return float(sum(x.lut for x in nums))
        if kind == "ff":
            return float(sum(x.ff for x in nums))
        if kind == "dsp":
            return float(sum(x.dsp for x in nums))
        if kind == "bram":
            return float(sum(x.bram_18k for x in nums))
        if kind == "latency":
            return float(sum(x.latency_cycles for x in nums))
        raise ConfigError(f"cost kind {kind!r} is not one of {', '.join(COST_KINDS)}")

    # -- calibration ----------------------------------------------------------------------------
    def calibrated(self, factors: Mapping[str, float]) -> AnalyticalModel:
        """A copy whose per-layer LUT factors are ``factors`` (layers not given keep theirs)."""
        return replace(self, calibration={**self.calibration, **dict(factors)})

    def calibration_from(
        self,
        plan: CompressionPlan,
        hw: HardwareConfig,
        measured: ResourceReport,
        *,
        clip: tuple[float, float] = (0.1, 10.0),
    ) -> dict[str, float]:
        """Per-layer factors ``measured LUT / uncalibrated estimate`` for the layers ``measured``
        reports, clipped to ``clip`` (a layer whose estimate is below 1 LUT is skipped)."""
        raw = {
            lp.name: x.lut
            for lp, x in zip(
                plan.layers, self.layer_numbers(plan.layers, hw, calibrated=False), strict=True
            )
        }
        out = {}
        for lr in measured.layers:
            est = raw.get(lr.name)
            if est is None or est < 1.0:
                continue
            out[lr.name] = float(min(max(lr.lut / est, clip[0]), clip[1]))
        return out


class LutCost:
    """The search's cost protocol over a resource model: ``kind`` and ``__call__(layers) -> float``.

    ``kind`` is the budget kind (``lut``, ``ff``, ``dsp``, ``bram``, ``latency``); the value is an
    absolute count (latency in cycles). The model must offer ``total(kind, layers, hw)``
    (:class:`AnalyticalModel` does).
    """

    def __init__(self, model: AnalyticalModel, hw: HardwareConfig, kind: str = "lut") -> None:
        if kind not in COST_KINDS:
            raise ConfigError(f"cost kind {kind!r} is not one of {', '.join(COST_KINDS)}")
        self.model = model
        self.hw = hw
        self.kind = kind

    def __call__(self, layers: Sequence[LayerPlan]) -> float:
        return self.model.total(self.kind, layers, self.hw)

    def __repr__(self) -> str:
        cal = f", {len(self.model.calibration)} calibrated layers" if self.model.calibration else ""
        return f"LutCost({self.model.name}, kind={self.kind!r}{cal})"


# ------------------------------------------------------------------------------------------------
# da4ml model

InputType = tuple[bool, int, int]  # (signed, integer bits excluding the sign, fractional bits)


def plan_input_types(plan: CompressionPlan) -> dict[str, InputType]:
    """Input types from the plan alone: the first layer's input is the signed network input
    quantizer, every other layer is fed by an unsigned quantized ReLU; integer grids."""
    out = {}
    for i, lp in enumerate(plan.layers):
        signed = i == 0
        out[lp.name] = (signed, lp.act_bits - (1 if signed else 0), 0)
    return out


def _qinterval(t: InputType) -> tuple[float, float, float]:
    signed, i, f = t
    if i + f + int(bool(signed)) <= 0:
        raise Da4mlError(f"input type {t} has no bits")
    step = 2.0 ** (-f)
    lo = -(2.0**i) if signed else 0.0
    return (lo, 2.0**i - step, step)


def quant_int_weights(
    qmodel: Any, layer_names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The integer weights (Brevitas ``quant_weight().int()``) of a built model's layers, as int64
    arrays in the torch layout (out, in[, kh, kw]); pruned weights are exactly zero."""
    import torch

    from fitc.build import quant_layers

    layers = quant_layers(qmodel)
    names = list(layers) if layer_names is None else list(layer_names)
    out = {}
    for n in names:
        if n not in layers:
            raise ArtifactError(
                f"layer {n!r} is not a quantized layer of the model; layers: {sorted(layers)}"
            )
        with torch.no_grad():
            out[n] = layers[n].quant_weight().int().detach().cpu().numpy().astype(np.int64)
    return out


def quant_input_types(
    qmodel: Any, layer_names: Sequence[str] | None = None
) -> dict[str, InputType]:
    """Each layer's input fixed-point type ``(signed, int_bits, frac_bits)`` read from the quantizer
    feeding it in a model built by :func:`fitc.build.apply_plan` (power-of-two scales)."""
    import torch

    meta = getattr(qmodel, "meta", {}).get("fitc")
    if meta is None:
        raise ArtifactError("not a model built by fitc.build.apply_plan (no build metadata)")
    feeders: dict[str, str] = meta["input_quantizers"]
    names = list(feeders) if layer_names is None else list(layer_names)
    out = {}
    for n in names:
        if n not in feeders:
            raise ArtifactError(
                f"layer {n!r} has no recorded input quantizer; layers: {sorted(feeders)}"
            )
        aq = qmodel.get_submodule(feeders[n]).act_quant
        with torch.no_grad():
            bits = int(aq.bit_width().item())
            scale = float(aq.scale().item())
        frac = -math.log2(scale)
        if frac != round(frac):
            raise ArtifactError(
                f"input quantizer {feeders[n]} of layer {n} has a non power-of-two scale {scale}"
            )
        signed = bool(aq.is_signed)
        frac = int(round(frac))
        out[n] = (signed, bits - frac - (1 if signed else 0), frac)
    return out


@dataclass(frozen=True)
class Da4mlModel:
    """The adder-graph cost of each layer's constant matrix multiply, from da4ml 0.6.0.

    ``estimate(plan, hw, weights=..., input_types=None)``: ``weights`` maps each plan layer to its
    integer weight array (torch layout, masked; :func:`quant_int_weights`); ``input_types`` maps it
    to ``(signed, int_bits, frac_bits)`` (:func:`quant_input_types`; default
    :func:`plan_input_types`). LUT = da4ml's cost with ``adder_size=1`` (one LUT per adder bit),
    charged once per kernel instance; depth = da4ml's adder levels, converted to cycles at the
    clock. DSP, BRAM and the Resource strategy (RF > 1) follow the analytical rules: da4ml models a
    fully unrolled constant multiply, so layers with DSP multipliers (≥ 9-bit weights outside
    ``distributed_arithmetic``) and Resource layers at RF > 1 use the analytical estimate for
    their arithmetic (logged). Solutions are cached by weights and input type.
    """

    params: AnalyticalParams = DEFAULT_PARAMS
    parallelization_factor: int = 1
    method0: str = "wmc"
    hard_dc: int = 2  # hls4ml's distributed_arithmetic default
    search_all_decompose_dc: bool = False  # True: ~1-2 % cheaper, 4-6x slower
    name: str = "da4ml"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_pf(self.parallelization_factor)

    def solve(self, weight: np.ndarray, input_type: InputType) -> tuple[float, float]:
        """``(LUT cost, depth in adder levels)`` of ``y = W x`` for an integer ``W`` (out × in·k²)."""
        w = np.asarray(weight)
        if w.ndim < 2:
            raise Da4mlError(f"weights must be at least 2-D (out, in, ...), got shape {w.shape}")
        w2 = w.reshape(w.shape[0], -1)
        if not np.all(np.isfinite(w2)) or not np.array_equal(w2, np.round(w2)):
            raise Da4mlError(
                "weights must be integers (the quantized weights, e.g. quant_int_weights)"
            )
        qi = _qinterval(input_type)
        key = (
            hashlib.blake2b(
                np.ascontiguousarray(w2, dtype=np.int64).tobytes(), digest_size=16
            ).hexdigest(),
            w2.shape,
            qi,
        )
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if not np.any(w2):
            result = (0.0, 0.0)
        else:
            from da4ml.cmvm import solve

            kernel = np.ascontiguousarray(w2.T.astype(np.float32))  # da4ml: (n_in, n_out)
            sol = solve(
                kernel,
                method0=self.method0,
                hard_dc=self.hard_dc,
                search_all_decompose_dc=self.search_all_decompose_dc,
                qintervals=[qi] * kernel.shape[0],
                adder_size=1,
                carry_size=-1,
            )
            result = (float(sol.cost), float(sol.latency[1]))
        self._cache[key] = result
        return result

    def estimate(
        self,
        plan: CompressionPlan,
        hw: HardwareConfig,
        *,
        weights: Mapping[str, np.ndarray] | None = None,
        input_types: Mapping[str, InputType] | None = None,
        progress: bool = False,
        **kw: Any,
    ) -> ResourceReport:
        if weights is None:
            raise ConfigError(
                "the da4ml model needs weights=: the integer weights per layer (quant_int_weights)"
            )
        from tqdm import tqdm

        types = dict(plan_input_types(plan))
        types.update(input_types or {})
        nums = []
        nexts = _next_act_bits(plan.layers)
        for lp, nxt in tqdm(
            list(zip(plan.layers, nexts, strict=True)), desc="da4ml", disable=not progress
        ):
            nums.append(self.layer(lp, hw, weights, types[lp.name], nxt))
        return _report(self.name, hw, [lp.name for lp in plan.layers], nums)

    def layer(
        self,
        lp: LayerPlan,
        hw: HardwareConfig,
        weights: Mapping[str, np.ndarray],
        input_type: InputType,
        next_act_bits: int | None,
    ) -> LayerNumbers:
        """One layer's numbers (see the class docstring for what da4ml measures)."""
        if lp.name not in weights:
            raise ConfigError(
                f"da4ml model: no weights given for layer {lp.name}; have {sorted(weights)}"
            )
        w = np.asarray(weights[lp.name])
        if w.size != lp.n_weights:
            raise ArtifactError(
                f"layer {lp.name}: weights have {w.size} elements, the plan says {lp.n_weights}"
            )
        nnz = int(np.count_nonzero(w))
        if nnz != lp.n_nonzero:
            log.warning(
                "layer %s: %d non-zero weights given, the plan says %d", lp.name, nnz, lp.n_nonzero
            )
        if uses_dsp(lp, hw) or (hw.strategy == "Resource" and hw.reuse_factor > 1):
            log.info(
                "layer %s: DSP or Resource-strategy layer, analytical arithmetic estimate", lp.name
            )
            return _analytical_layer(
                lp, hw, next_act_bits, self.params, self.parallelization_factor
            )
        t0 = time.perf_counter()
        cost, depth = self.solve(w, input_type)
        log.debug(
            "da4ml %s: cost %.0f, depth %.0f, %.2f s",
            lp.name,
            cost,
            depth,
            time.perf_counter() - t0,
        )
        return _finish(
            lp,
            hw,
            next_act_bits,
            arith_lut=cost / hw.reuse_factor,
            dsp=0.0,
            depth_levels=depth,
            uses_dsps=False,
            params=self.params,
            pf=self.parallelization_factor,
        )


# ------------------------------------------------------------------------------------------------
# Vendor reports


def _xml_text(root: ET.Element, path: str, where: Path) -> str:
    node = root.find(path)
    if node is None or node.text is None:
        raise VendorReportError(f"{where}: no <{path}> element")
    return node.text.strip()


def parse_csynth_xml(path: str | Path) -> dict[str, Any]:
    """Vivado/Vitis HLS ``<top>_csynth.xml``: part, target and estimated clock (ns), best/worst
    latency (cycles), interval min/max, and the HLS resource estimate (BRAM_18K, DSP, FF, LUT,
    URAM) with the part's available resources."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise VendorReportError(f"cannot read csynth report {path}: {e}") from None
    out: dict[str, Any] = {
        "part": _xml_text(root, "UserAssignments/Part", path),
        "top": (root.findtext("UserAssignments/TopModelName") or "").strip(),
        "target_clock_ns": float(_xml_text(root, "UserAssignments/TargetClockPeriod", path)),
        "estimated_clock_ns": float(
            _xml_text(
                root, "PerformanceEstimates/SummaryOfTimingAnalysis/EstimatedClockPeriod", path
            )
        ),
    }
    lat = "PerformanceEstimates/SummaryOfOverallLatency/"
    for key, tag in (
        ("best_latency", "Best-caseLatency"),
        ("worst_latency", "Worst-caseLatency"),
        ("interval_min", "Interval-min"),
        ("interval_max", "Interval-max"),
    ):
        text = _xml_text(root, lat + tag, path)
        out[key] = (
            float(text) if re.fullmatch(r"[0-9.]+", text) else None
        )  # "undef" for unbounded loops
    for section, prefix in (("Resources", ""), ("AvailableResources", "available_")):
        node = root.find(f"AreaEstimates/{section}")
        if node is None:
            raise VendorReportError(f"{path}: no <AreaEstimates/{section}> element")
        for child in node:
            tag = "DSP" if child.tag.startswith("DSP") else child.tag
            out[prefix + tag] = float(child.text)
    return out


def parse_vivado_synth_rpt(path: str | Path) -> dict[str, float]:
    """Vivado ``report_utilization`` output (``vivado_synth.rpt``): LUT, FF, DSP, BRAM_18K (RAMB36 × 2
    + RAMB18) and URAM of the synthesized design, plus ``device``."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise VendorReportError(f"cannot read Vivado synthesis report {path}: {e}") from None
    out: dict[str, Any] = {}
    m = re.search(r"^\|\s*Device\s*:\s*(\S+)", text, re.M)
    if m:
        out["device"] = m.group(1)

    def used(label: str) -> float | None:
        m = re.search(rf"^\|\s*{label}\s*\|\s*([0-9.]+)\s*\|", text, re.M)
        return float(m.group(1)) if m else None

    out["LUT"] = used(r"(?:Slice|CLB) LUTs\*?")
    out["FF"] = used(r"(?:Slice|CLB) Registers")
    out["DSP"] = used(r"DSPs")
    ramb36, ramb18 = used(r"RAMB36/FIFO\*?"), used(r"RAMB18")
    tile = used(r"Block RAM Tile")
    if ramb36 is not None and ramb18 is not None:
        out["BRAM_18K"] = 2 * ramb36 + ramb18
    elif tile is not None:
        out["BRAM_18K"] = 2 * tile
    else:
        out["BRAM_18K"] = None
    out["URAM"] = used(r"URAM") or 0.0
    missing = [k for k in ("LUT", "FF", "DSP", "BRAM_18K") if out[k] is None]
    if missing:
        raise VendorReportError(f"{path}: could not find {missing} in the utilization tables")
    return out


def _leading_number(cell: str) -> float | None:
    """``"7"`` → 7.0, ``"35.000 ns"`` → 35.0, ``"-"``/``""`` → 0.0, anything else → None."""
    if cell in ("-", ""):
        return 0.0
    m = re.match(r"[0-9]+(?:\.[0-9]*)?", cell)
    return float(m.group(0)) if m else None


def parse_csynth_rpt_instances(path: str | Path) -> list[dict[str, Any]]:
    """The per-instance rows of ``<top>_csynth.rpt``: name, module, BRAM_18K, DSP, FF, LUT and,
    where the latency table has them, latency and interval (cycles)."""
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        raise VendorReportError(f"cannot read csynth report {path}: {e}") from None
    rows: dict[str, dict[str, Any]] = {}
    section = None
    in_instances = False  # inside an "Instance | Module | ..." table
    for line in lines:
        s = line.strip()
        if s.startswith("== "):
            section = s.strip("= ").lower()
            in_instances = False
        if not s.startswith("|"):
            if s.startswith("*"):
                in_instances = False
            continue
        cells = [c.strip() for c in s.strip("|").split("|")]
        if cells[0] == "Instance":
            in_instances = len(cells) > 1 and cells[1] == "Module"
            continue
        if not in_instances or cells[0] in ("", "Total"):
            continue
        nums = [_leading_number(c) for c in cells[2:8]]
        if any(x is None for x in nums):
            continue
        row = rows.setdefault(cells[0], {"name": cells[0], "module": cells[1]})
        if section == "utilization estimates" and len(cells) >= 6:
            row.update(bram_18k=nums[0], dsp=nums[1], ff=nums[2], lut=nums[3])
        elif section == "performance estimates" and len(cells) >= 8:
            row.update(latency_cycles=nums[1], ii_cycles=nums[5])
    return [r for r in rows.values() if "lut" in r]


def _find(root: Path, pattern: str) -> Path | None:
    if root.is_file():
        return root if root.match(pattern) else None
    hits = sorted(root.rglob(pattern), key=lambda p: (len(p.parts), str(p)))
    return hits[0] if hits else None


def _project_top(root: Path) -> str | None:
    """The top function of an hls4ml project (``set project_name "..."`` in project.tcl)."""
    tcl = root / "project.tcl"
    if root.is_dir() and tcl.is_file():
        m = re.search(r'set\s+project_name\s+"([^"]+)"', tcl.read_text(errors="replace"))
        if m:
            return m.group(1)
    return None


def _find_csynth_xml(root: Path, top: str | None) -> Path | None:
    """The top-level csynth XML: ``<top>_csynth.xml`` when the top is known, otherwise the largest
    design among the ``*_csynth.xml`` files (HLS also writes one per sub-module)."""
    if root.is_file():
        return root if root.name.endswith("_csynth.xml") else None
    cands = sorted(root.rglob("*_csynth.xml"), key=lambda p: (len(p.parts), str(p)))
    top = top or _project_top(root)
    if top:
        named = [p for p in cands if p.name in (f"{top}_csynth.xml", f"{top}_axi_csynth.xml")]
        if named:
            return named[0]
    if len(cands) <= 1:
        return cands[0] if cands else None

    def size(p: Path) -> float:
        try:
            r = parse_csynth_xml(p)
        except VendorReportError:
            return -1.0
        return r.get("LUT", 0.0) + r.get("FF", 0.0)

    return max(cands, key=size)


def read_vendor_report(
    report_dir: str | Path,
    hw: HardwareConfig | None = None,
    *,
    layer_index: Mapping[str, int | Sequence[int]] | None = None,
    prefer: str = "vivado_synth",
    top: str | None = None,
) -> ResourceReport:
    """Read the vendor reports under ``report_dir`` (an hls4ml project or a folder of files) into a
    :class:`ResourceReport`.

    Latency, interval and clock come from ``*_csynth.xml``; LUT, FF, DSP and BRAM_18K from
    ``vivado_synth.rpt`` when present and ``prefer == "vivado_synth"`` (``source="vivado_synth"``),
    else from the HLS estimate (``source="csynth"``). ``hw`` fills the fields the reports do not
    hold (backend, io type, strategy, reuse factor); part and clock are taken from the report.
    ``layer_index`` (torch name → hls4ml layer index, or several: the layer and its activation)
    turns the csynth instance rows whose module name contains ``config<index>`` into per-layer
    entries (HLS estimates, summed over the indices; latency is the largest). ``top`` names the
    top function (default: from ``project.tcl``, else the largest ``*_csynth.xml``).
    """
    root = Path(report_dir)
    if not root.exists():
        raise VendorReportError(f"report path {root} does not exist")
    if prefer not in ("vivado_synth", "csynth"):
        raise ConfigError(f"prefer must be 'vivado_synth' or 'csynth', got {prefer!r}")
    xml = _find_csynth_xml(root, top)
    if xml is None:
        raise VendorReportError(
            f"no *_csynth.xml under {root} (run C synthesis: hls_model.build(csynth=True))"
        )
    cs = parse_csynth_xml(xml)
    synth_path = _find(root, "vivado_synth.rpt")
    if prefer == "vivado_synth" and synth_path is not None:
        res, source = parse_vivado_synth_rpt(synth_path), "vivado_synth"
    else:
        res, source = cs, "csynth"
    hw = hw or HardwareConfig()
    hw = replace(hw, part=cs["part"], clock_period_ns=cs["target_clock_ns"])
    layers: tuple[LayerResources, ...] = ()
    rpt = xml.with_suffix(".rpt")
    if layer_index and rpt.exists():
        inst = parse_csynth_rpt_instances(rpt)
        found = []
        for name, idx in layer_index.items():
            idxs = (idx,) if isinstance(idx, int) else tuple(idx)
            pat = re.compile(rf"config(?:{'|'.join(str(int(i)) for i in idxs)})(?:_|$)")
            rows = [r for r in inst if pat.search(r["module"]) or pat.search(r["name"])]
            if rows:
                found.append(
                    LayerResources(
                        name=name,
                        lut=sum(r["lut"] for r in rows),
                        ff=sum(r["ff"] for r in rows),
                        dsp=sum(r["dsp"] for r in rows),
                        bram_18k=sum(r["bram_18k"] for r in rows),
                        latency_cycles=max(r.get("latency_cycles", 0.0) for r in rows),
                    )
                )
        layers = tuple(found)
    latency = cs["worst_latency"] if cs["worst_latency"] is not None else float("nan")
    ii = cs["interval_max"] if cs["interval_max"] is not None else float("nan")
    return ResourceReport(
        source=source,
        hardware=hw,
        lut=float(res["LUT"]),
        ff=float(res["FF"]),
        dsp=float(res["DSP"]),
        bram_18k=float(res["BRAM_18K"]),
        latency_cycles=float(latency),
        latency_ns=float(latency) * cs["target_clock_ns"],
        initiation_interval_cycles=float(ii),
        layers=layers,
    )


@dataclass(frozen=True)
class VendorReportModel:
    """Resources from real vendor reports: ``estimate(plan, hw, report_dir=..., layer_index=None)``."""

    prefer: str = "vivado_synth"
    name: str = "report"

    def estimate(
        self,
        plan: CompressionPlan | None,
        hw: HardwareConfig,
        *,
        report_dir: str | Path | None = None,
        layer_index: Mapping[str, int | Sequence[int]] | None = None,
        **kw: Any,
    ) -> ResourceReport:
        if report_dir is None:
            raise ConfigError(
                "the report model needs report_dir=: an hls4ml project or a folder with *_csynth.xml"
            )
        return read_vendor_report(report_dir, hw, layer_index=layer_index, prefer=self.prefer)


# ------------------------------------------------------------------------------------------------
# Registry

RESOURCE_MODELS: dict[str, Callable[..., ResourceModel]] = {
    "analytical": AnalyticalModel,
    "da4ml": Da4mlModel,
    "report": VendorReportModel,
}


def get_resource_model(name: str, **kwargs: Any) -> ResourceModel:
    """A new resource model by name (``analytical``, ``da4ml``, ``report``)."""
    try:
        factory = RESOURCE_MODELS[name]
    except KeyError:
        import difflib

        near = difflib.get_close_matches(name, list(RESOURCE_MODELS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(
            f"unknown resource model {name!r}{hint}; choose one of {', '.join(RESOURCE_MODELS)}"
        ) from None
    return factory(**kwargs)


__all__ = [
    "COST_KINDS",
    "DEFAULT_PARAMS",
    "DSP_MIN_WEIGHT_BITS",
    "RESOURCE_MODELS",
    "AnalyticalModel",
    "AnalyticalParams",
    "Da4mlError",
    "Da4mlModel",
    "LayerNumbers",
    "LutCost",
    "ResourceModel",
    "VendorReportError",
    "VendorReportModel",
    "accumulator_bits",
    "adder_tree_luts",
    "cmvm_luts",
    "dsp_per_multiplier",
    "get_resource_model",
    "layer_shape",
    "n_multipliers",
    "parse_csynth_rpt_instances",
    "parse_csynth_xml",
    "parse_vivado_synth_rpt",
    "plan_input_types",
    "quant_input_types",
    "quant_int_weights",
    "read_vendor_report",
    "uses_dsp",
    "weight_bram_18k",
]
