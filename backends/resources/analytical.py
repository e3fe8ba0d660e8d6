"""The analytical resource model (``"analytical"``): :class:`AnalyticalModel` estimates a plan in
microseconds from the layer plans alone, following hls4ml's rules for DSPs, multipliers, BRAM and
timing (see the class docstring), with the LUT cost of each layer's constant multiplies and adder
tree given by a closed formula fitted to da4ml (:func:`cmvm_luts`, shared or not by strategy),
calibrated per strategy to Yosys netlists (:data:`ANALYTICAL_CALIBRATION`, measured by
``bench/resource_calibration.py``) and scaled per layer by ``calibration`` (which the closed loop
sets from an accurate measurement with :meth:`AnalyticalModel.calibrated`); per-layer results are
cached by layer plan.
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
    DA_NOTE,
    LATENCY_NOTE,
    RESOURCE_NOTE,
    RTL_NOTE,
    UNCALIBRATED,
    LayerNumbers,
    StrategyCalibration,
    accumulator_bits,
    build_report,
    check_parallelization_factor,
    describe,
    dsp_per_multiplier,
    latency_floor_hw,
    layer_shape,
    live_layers,
    n_multipliers,
    next_layer_act_bits,
    strategy_key,
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
    # A generic (non-constant) w × a-bit multiplier in LUTs: per_bit2·w·a − per_bit·(w + a),
    # fitted to Yosys (synth_xilinx -nodsp, xc7) on 12 sizes, w 2–8 × a 3–8 bits
    # (bench/resource_calibration.py): mean error 7.7 %, worst 16.4 % (the earlier 0.55·w·a was
    # 2–3× too low).
    generic_mult_lut_per_bit2: float = 2.162
    generic_mult_lut_per_bit: float = 1.715
    # The quantized ReLU after a layer (round half to even, saturate), per output element:
    # relu_lut_per_bit · output bits + relu_lut_per_sat_bit · (accumulator bits − output bits),
    # the accumulator ``weight + input bits + log2(non-zeros per output)`` wide; fitted to Yosys
    # netlists with the arithmetic (bench/resource_calibration.py).
    relu_lut_per_bit: float = 0.000
    relu_lut_per_sat_bit: float = 0.000
    ff_per_lut: float = 0.15  # pipeline registers per LUT of adder tree (3 adder levels per stage)
    adder_delay_ns: float = 1.6  # one adder level, so ~3 levels per 5 ns cycle
    dsp_pipeline_cycles: int = 3  # DSP48 input/multiply/output registers
    layer_overhead_cycles: int = 1  # output register of each layer


DEFAULT_PARAMS = AnalyticalParams()


def cmvm_luts(
    lp: LayerPlan, params: AnalyticalParams = DEFAULT_PARAMS, *, shared: bool = True
) -> float:
    """LUT of one instance of a layer's constant matrix multiply with LUT multipliers.

    With ``m = clip(weight_bits - magnitude_offset, 0, log2(2^(weight_bits-1) - 1))`` the expected
    log2 magnitude of a kept weight, ``d = 1 + csd_digits_per_bit·m`` its expected non-zero
    signed digits, ``w = act_bits + m + acc_growth·log2(n_nonzero / n_out)`` the width of the
    accumulating adder and ``s = (n_nonzero / n_in)^(-sharing_exponent)`` the sharing of
    sub-expressions among the weights applied to one input::

        LUT = n_nonzero · s · (lut_per_acc_bit · w + lut_per_mult_bit · (d - 1) · (act_bits + m))

    i.e. an accumulating adder per non-zero product plus ``d - 1`` shift-adds per constant multiply
    whose width grows with the weight and input widths. Zero weights are free. ``shared=False``:
    no sharing of sub-expressions (``s = 1``), every constant multiply on its own, as hls4ml's
    Latency strategy asks HLS for.
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
    share = max(nnz / n_in, 1.0) ** (-p.sharing_exponent) if shared else 1.0
    return (
        nnz
        * share
        * (p.lut_per_acc_bit * width + p.lut_per_mult_bit * (digits - 1.0) * (lp.act_bits + mag))
    )


def generic_mult_luts(
    weight_bits: int, act_bits: int, params: AnalyticalParams = DEFAULT_PARAMS
) -> float:
    """LUT of one generic (non-constant) multiplier of a ``weight_bits`` signed weight by an
    ``act_bits`` activation, as the Resource strategy at RF > 1 needs (weights from memory):
    ``per_bit2·w·a − per_bit·(w + a)``, at least one LUT."""
    w, a = weight_bits, act_bits
    return max(
        params.generic_mult_lut_per_bit2 * w * a - params.generic_mult_lut_per_bit * (w + a), 1.0
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
    if lp.kind == "conv2d" and (hw.io_type == "io_parallel" or hw.backend == "rtl"):
        return n_out * lp.out_positions
    return n_out


def _activation_luts(
    lp: LayerPlan, next_act_bits: int | None, hw: HardwareConfig, params: AnalyticalParams
) -> float:
    """The quantized ReLU re-quantizing this layer's outputs to the next layer's input width:
    rounding on the output bits, saturation on the accumulator bits above them."""
    if next_act_bits is None:
        return 0.0
    _, n_out = layer_shape(lp)
    acc = lp.weight_bits + lp.act_bits + math.log2(max(lp.n_nonzero / n_out, 1.0))
    per_element = params.relu_lut_per_bit * next_act_bits + params.relu_lut_per_sat_bit * max(
        acc - next_act_bits, 0.0
    )
    return per_element * _activation_elements(lp, hw)


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


def kernel_instances(lp: LayerPlan, hw: HardwareConfig, pf: int) -> int:
    """Instances of a layer's multiply: a conv's ``ParallelizationFactor`` in hls4ml, every output
    position in the RTL backend (da4ml unrolls the convolution); 1 for a dense layer."""
    if lp.kind != "conv2d":
        return 1
    return lp.out_positions if hw.backend == "rtl" else pf


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
    cal: StrategyCalibration = UNCALIBRATED,
) -> LayerNumbers:
    """Add activations, registers, BRAM and timing to a layer's arithmetic cost (one kernel
    instance), then apply the strategy's calibration ``cal``: LUT = ``margin · (arith ·
    instances · arith_lut + act · activation LUT)``, FF scaled by ``cal.ff``."""
    pf = kernel_instances(lp, hw, pf)
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
        lut=cal.margin * (cal.arith * instances * arith_lut + cal.act * act_lut),
        ff=cal.ff * ff,
        dsp=instances * dsp,
        bram_18k=float(weight_bram_18k(lp, hw)),
        latency_cycles=latency,
        ii_cycles=ii,
    )


@lru_cache(maxsize=1 << 16)
def analytical_layer(
    lp: LayerPlan,
    hw: HardwareConfig,
    next_act_bits: int | None,
    params: AnalyticalParams,
    pf: int,
    cal: StrategyCalibration = UNCALIBRATED,
) -> LayerNumbers:
    """One layer's analytical estimate, ``pf`` kernel instances of a conv (every output position
    in the RTL backend), under the strategy calibration ``cal`` (cached). Latency (and Resource
    at RF 1) costs the constant multiplies without sharing, distributed arithmetic and RTL with
    da4ml-style sharing (:func:`cmvm_luts`)."""
    n_in, n_out = layer_shape(lp)
    dsp_mult = uses_dsp(lp, hw)
    n_mult = n_multipliers(lp, hw)
    rf = hw.reuse_factor
    if hw.strategy == "Resource" and rf > 1:
        # Weights come from memory: generic multipliers (zeros included) feeding accumulators.
        mult_lut = 0.0 if dsp_mult else generic_mult_luts(lp.weight_bits, lp.act_bits, params)
        arith = n_mult * mult_lut + adder_tree_luts(lp, n_mult, params)
        products = max(lp.n_weights / n_out, 1.0)
    elif dsp_mult:
        arith = adder_tree_luts(lp, n_mult, params)
        products = max(lp.n_nonzero / n_out, 1.0)
    else:
        # Constant multiplies in LUTs; at Latency RF > 1 the same logic is shared over RF cycles.
        arith = cmvm_luts(lp, params, shared=strategy_key(hw) != "Latency") / rf
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
        cal=cal,
    )


#: The analytical model's calibration per strategy key, fitted to Yosys netlists by
#: ``bench/resource_calibration.py`` (cache: ``bench/yosys_cache.json``; rerun it to refit).
ANALYTICAL_CALIBRATION: dict[str, StrategyCalibration] = {
    "rtl": StrategyCalibration(
        arith=1.306,
        act=1.000,
        ff=0.151,
        measured="bench/resource_calibration.py, Yosys synth_xilinx xc7: 23 RTL designs (digits-mlp, jet-mlp, digits-cnn), LUT error mean 37.7% → 20.6%, worst 145.3% → 63.0%; FF of 3 pipelined designs ±55% (worst 78%)",
        note=RTL_NOTE,
    ),
    "distributed_arithmetic": StrategyCalibration(
        arith=1.306,
        act=1.000,
        margin=1.778,
        measured="bench/resource_calibration.py, Yosys synth_xilinx xc7: the RTL designs' constants (23 designs, LUT error mean 20.6%, worst under-estimate 43.8%; margin 1/(1 − 43.8%), the worst of the shared and unshared designs)",
        note=DA_NOTE,
    ),
    "Latency": StrategyCalibration(
        arith=1.092,
        act=1.000,
        margin=1.778,
        measured="bench/resource_calibration.py, Yosys synth_xilinx xc7: 8 unshared designs, LUT error mean 19.0% → 16.9%, worst 43.8% → 33.1%, worst under-estimate 23.2%; margin 1/(1 − 43.8%), the worst of the shared and unshared designs; never below the distributed_arithmetic estimate",
        note=LATENCY_NOTE,
    ),
    "Resource": StrategyCalibration(
        act=1.000,
        margin=1.196,
        measured="bench/resource_calibration.py, Yosys synth_xilinx xc7 -nodsp: 12 generic multipliers (2–8 × 3–8 bits), LUT error mean 7.7%, worst 16.4%, worst under-estimate 16.4%; margin 1/(1 − that)",
        note=RESOURCE_NOTE,
    ),
}


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

    The firmware ``hw`` builds (:func:`~.base.strategy_key`) picks the structure costed and its
    calibration to Yosys netlists (``strategies``, default :data:`ANALYTICAL_CALIBRATION`):
    ``Latency`` (and Resource at RF 1) one constant multiplier per non-zero weight without
    sharing; ``distributed_arithmetic`` da4ml-style shared adder graphs; the RTL backend
    (``hw.backend == "rtl"``) shared adder graphs with every conv output position unrolled;
    ``Resource`` at RF > 1 generic multipliers (:func:`generic_mult_luts`). With ``live`` (default)
    the logic synthesis removes is taken out in expectation (:func:`~.base.live_layers`: outputs
    no later layer reads, constant inputs). Reports say for which firmware and on what basis
    (``firmware``, ``basis``, ``note``).

    ``calibration`` maps a torch layer name to a multiplicative scale of that layer's LUT (missing
    layers: 1.0), on top of the strategy's: the closed loop's per-layer correction.
    ``parallelization_factor`` is hls4ml's conv ``ParallelizationFactor`` (kernel instances per
    conv layer).
    """

    params: AnalyticalParams = DEFAULT_PARAMS
    calibration: Mapping[str, float] = field(default_factory=dict)
    parallelization_factor: int = 1
    name: str = "analytical"
    strategies: Mapping[str, StrategyCalibration] = field(
        default_factory=lambda: dict(ANALYTICAL_CALIBRATION)
    )
    live: bool = True

    def __post_init__(self) -> None:
        check_parallelization_factor(self.parallelization_factor)
        object.__setattr__(self, "strategies", dict(self.strategies))
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
        cal = self.strategy_calibration(hw)
        nexts = next_layer_act_bits(layers)
        if self.live:
            layers = live_layers(layers, hw)
        floor = latency_floor_hw(hw) if self.strategies else None
        cal_da = self.strategy_calibration(floor) if floor is not None else None
        for lp, nxt in zip(layers, nexts, strict=True):
            x = analytical_layer(lp, hw, nxt, self.params, self.parallelization_factor, cal)
            if floor is not None and not uses_dsp(lp, hw):
                y = analytical_layer(
                    lp, floor, nxt, self.params, self.parallelization_factor, cal_da
                )
                x = x._replace(lut=max(x.lut, y.lut))
            f = self.calibration.get(lp.name, 1.0) if calibrated else 1.0
            out.append(x if f == 1.0 else x._replace(lut=x.lut * f))
        return out

    def strategy_calibration(self, hw: HardwareConfig) -> StrategyCalibration:
        """The calibration of the strategy ``hw`` builds (:func:`strategy_key`)."""
        return self.strategies.get(strategy_key(hw), UNCALIBRATED)

    def estimate(self, plan: CompressionPlan, hw: HardwareConfig, **kw: Any) -> ResourceReport:
        """The plan's resources for the firmware ``hw`` builds, labelled with it (``firmware``,
        ``basis``, ``note``). Keyword arguments of other models (weights, …) are ignored."""
        basis, note = describe(self.name, hw, self.strategy_calibration(hw))
        if self.calibration:
            basis += f"; per-layer LUT factors of {len(self.calibration)} layers (closed loop)"
        return build_report(
            self.name,
            hw,
            [lp.name for lp in plan.layers],
            self.layer_numbers(plan.layers, hw),
            basis=basis,
            note=note,
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
    "ANALYTICAL_CALIBRATION",
    "DEFAULT_PARAMS",
    "AnalyticalModel",
    "AnalyticalParams",
    "LutCost",
    "adder_tree_luts",
    "analytical_layer",
    "cmvm_luts",
    "finish_layer",
    "generic_mult_luts",
    "kernel_instances",
]
