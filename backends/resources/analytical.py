"""The analytical resource model (``"analytical"``): :class:`AnalyticalModel` estimates a plan in
microseconds from the layer plans alone, following hls4ml's rules for DSPs, multipliers, BRAM and
timing (see the class docstring), with the LUT cost of each layer's constant multiplies and adder
tree given by a closed formula fitted to da4ml (:func:`cmvm_luts`) and scaled per layer by
``calibration`` (which the closed loop sets from an accurate measurement with
:meth:`AnalyticalModel.calibrated`); per-layer results are cached by layer plan.
:class:`LutCost` adapts the model to the search's cost protocol (``kind`` attribute, one of
:data:`COST_KINDS`; ``__call__(layers) -> float`` absolute count), and :func:`analytical_layer` /
:func:`finish_layer` are the per-layer rules the da4ml model reuses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from fitc.artifacts import CompressionPlan, HardwareConfig, LayerPlan, ResourceReport
from fitc.errors import ConfigError

from .base import (
    COST_KINDS,
    LayerNumbers,
    accumulator_bits,
    build_report,
    check_parallelization_factor,
    dsp_per_multiplier,
    layer_shape,
    n_multipliers,
    next_layer_act_bits,
    uses_dsp,
    weight_bram_18k,
)


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


def finish_layer(
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
def analytical_layer(
    lp: LayerPlan, hw: HardwareConfig, next_act_bits: int | None, params: AnalyticalParams, pf: int
) -> LayerNumbers:
    """One layer's analytical estimate (uncalibrated), ``pf`` kernel instances of a conv (cached)."""
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
    return finish_layer(
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


@dataclass(frozen=True)
class AnalyticalModel:
    """hls4ml's rules plus a LUT formula fitted to da4ml; per-layer LUT calibration factors.

    A multiplier is a DSP only when the weight is 9 bits or wider (never under
    ``distributed_arithmetic``); at reuse factor 1 (Latency) a zero weight costs nothing; the
    Resource strategy at reuse factor R > 1 instantiates ``ceil(n_weights / R)`` multipliers, zeros
    included, and keeps the weights in BRAM.

    Convolutions (both io types): hls4ml computes one output position per ``reuse_factor`` cycles
    with one instance of the kernel's multiply (``ParallelizationFactor`` instances, default 1), so
    a conv's LUT/DSP are those of its kernel matrix (out_ch × in_ch·k²) charged once
    (× ``parallelization_factor``) and its latency grows with the number of output positions.
    io_parallel and io_stream differ in the activation logic (io_parallel applies the ReLU to the
    whole output tensor at once, io_stream to one pixel per cycle) and in the initiation interval
    (io_stream is a dataflow pipeline).

    ``calibration`` maps a torch layer name to a multiplicative scale of that layer's LUT (missing
    layers: 1.0). ``parallelization_factor`` is hls4ml's conv ``ParallelizationFactor`` (kernel
    instances per conv layer).
    """

    params: AnalyticalParams = DEFAULT_PARAMS
    calibration: Mapping[str, float] = field(default_factory=dict)
    parallelization_factor: int = 1
    name: str = "analytical"

    def __post_init__(self) -> None:
        check_parallelization_factor(self.parallelization_factor)
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
        for lp, nxt in zip(layers, next_layer_act_bits(layers), strict=True):
            x = analytical_layer(lp, hw, nxt, self.params, self.parallelization_factor)
            f = self.calibration.get(lp.name, 1.0) if calibrated else 1.0
            out.append(x if f == 1.0 else x._replace(lut=x.lut * f))
        return out

    def estimate(self, plan: CompressionPlan, hw: HardwareConfig, **kw: Any) -> ResourceReport:
        """The plan's resources. Keyword arguments of other models (weights, …) are ignored."""
        return build_report(
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


__all__ = [
    "DEFAULT_PARAMS",
    "AnalyticalModel",
    "AnalyticalParams",
    "LutCost",
    "adder_tree_luts",
    "analytical_layer",
    "cmvm_luts",
    "finish_layer",
]
