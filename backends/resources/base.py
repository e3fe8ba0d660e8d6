"""Shared contract and arithmetic of the resource models. A resource model (:class:`ResourceModel`)
has ``name: str`` and ``estimate(plan, hw, **kw) -> ResourceReport``: a report per layer (keyed by
the torch module name) and in total, whose ``source`` names the model; a model ignores keyword
arguments meant for other models, so a caller can pass the same ``**kw`` to any of them. This module
holds what more than one model needs — hls4ml's per-layer rules (matrix shape, accumulator width,
DSP or LUT multipliers, multipliers per kernel instance, weight BRAM), one layer's
:class:`LayerNumbers` and :func:`build_report`, which sums them into a report — and imports none of
the model modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from fitc.artifacts import (
    CompressionPlan,
    HardwareConfig,
    LayerPlan,
    LayerResources,
    ResourceReport,
)
from fitc.errors import ConfigError

#: Cost kinds a :class:`LutCost` can measure (the hardware budget kinds of :class:`Budget`).
COST_KINDS = ("lut", "ff", "dsp", "bram", "latency")
#: hls4ml's rule: a product maps to a DSP only when the weight is at least this wide.
DSP_MIN_WEIGHT_BITS = 9


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
    """hls4ml's rule: DSP multipliers only from 9-bit weights, and never in distributed arithmetic
    (nor in the RTL backend: da4ml's adder graphs are LUTs)."""
    return (
        hw.backend != "rtl"
        and hw.strategy != "distributed_arithmetic"
        and lp.weight_bits >= DSP_MIN_WEIGHT_BITS
    )


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
# Which firmware a plan is costed for, and the per-strategy calibration to Yosys netlists

#: The strategy keys of :data:`StrategyCalibration` tables: the four arithmetic structures fitc
#: builds. ``rtl``: da4ml's Verilog (``hw.backend == "rtl"``), shared adder graphs, every conv
#: position unrolled. ``distributed_arithmetic``: hls4ml's DA kernels (da4ml's shared adder graphs
#: inside HLS). ``Latency``: hls4ml's unrolled constant multiplies, one per non-zero weight, summed
#: (also ``Resource`` at reuse factor 1, which HLS unrolls the same way). ``Resource``: reuse factor
#: > 1, generic multipliers fed from weight memory.
STRATEGY_KEYS = ("rtl", "distributed_arithmetic", "Latency", "Resource")


def strategy_key(hw: HardwareConfig) -> str:
    """The arithmetic structure ``hw`` builds (one of :data:`STRATEGY_KEYS`)."""
    if hw.backend == "rtl":
        return "rtl"
    if hw.strategy == "distributed_arithmetic":
        return "distributed_arithmetic"
    if hw.strategy == "Resource" and hw.reuse_factor > 1:
        return "Resource"
    return "Latency"


def latency_floor_hw(hw: HardwareConfig) -> HardwareConfig | None:
    """For the Latency structure (unshared constant multiplies): the same hardware under
    ``distributed_arithmetic``, whose calibrated estimate is the Latency estimate's floor per
    layer (an unshared multiply is not costed below the shared one: Yosys measured the unshared
    structure at 0.97–1.37× the shared one on the same plans, 1.15× on average); None otherwise."""
    if strategy_key(hw) != "Latency" or hw.reuse_factor != 1:
        return None
    import dataclasses

    return dataclasses.replace(hw, strategy="distributed_arithmetic", reuse_factor=1)


def firmware_label(hw: HardwareConfig) -> str:
    """What a report's numbers are for: ``"rtl"`` (da4ml Verilog) or ``"hls4ml <strategy>"``
    with the reuse factor when it is above 1 (e.g. ``"hls4ml Resource RF=4"``)."""
    if hw.backend == "rtl":
        return "rtl"
    rf = f" RF={hw.reuse_factor}" if hw.reuse_factor > 1 else ""
    return f"hls4ml {hw.strategy}{rf}"


@dataclass(frozen=True)
class StrategyCalibration:
    """Constants that turn a fast model's raw cost into the cost of one firmware structure.

    ``arith`` scales the constant-multiply (adder-graph) LUT of each layer, ``act`` the LUT of its
    quantized activation, ``ff`` the registers; ``margin`` multiplies the calibrated LUT total
    where Yosys cannot build the firmware itself (hls4ml's HLS maps the arithmetic): ``1 / (1 −
    u)`` for ``u`` the worst measured under-estimate of the calibrated model on the calibration
    designs, so that the estimate is an upper bound of every design measured. ``measured`` says
    on what the constants were measured (bench, designs, error before → after), ``note`` what
    the model cannot know.
    """

    arith: float = 1.0
    act: float = 1.0
    ff: float = 1.0
    margin: float = 1.0
    measured: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        for k in ("arith", "act", "ff", "margin"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(
                    f"calibration constant {k} must be a finite number > 0, got {v!r}"
                )


#: No calibration: the model's raw numbers.
UNCALIBRATED = StrategyCalibration(measured="uncalibrated")

#: What each strategy's calibration cannot know (the ``note`` of its reports).
RTL_NOTE = (
    "Yosys synth_xilinx cell counts before place and route (Vivado's can differ); FF calibrated "
    "on pipelined RTL, 0 if the RTL is combinational"
)
DA_NOTE = (
    "hls4ml builds these adder graphs through Vitis HLS, which this machine cannot run: "
    "calibrated on Yosys netlists of the same adder graphs (the RTL backend), with a safety "
    "margin covering the worst under-estimate measured there; FF not calibrated (HLS pipeline)"
)
LATENCY_NOTE = (
    "Vitis HLS builds the Latency strategy's constant multipliers itself, which this machine "
    "cannot run: calibrated on Yosys netlists of the same unshared structure (da4ml without "
    "sharing: one constant multiplier per non-zero weight, summed), with a safety margin "
    "covering the worst under-estimate measured there; FF not calibrated (HLS pipeline)"
)
RESOURCE_NOTE = (
    "generic multipliers calibrated on Yosys (-nodsp) netlists of single multipliers; the "
    "adder tree, the weight memory's multiplexers and HLS's schedule are not measured (Vitis "
    "HLS may also put such multipliers in DSPs); the margin covers the multipliers' worst "
    "measured under-estimate"
)

#: The arithmetic each strategy key builds, as the fast models cost it.
STRUCTURES = {
    "rtl": "da4ml's shared adder graphs, every conv output position unrolled (RTL backend)",
    "distributed_arithmetic": "da4ml's shared adder graphs, one kernel instance per conv "
    "(hls4ml distributed_arithmetic)",
    "Latency": "one constant multiplier per non-zero weight without sharing, summed "
    "(hls4ml Latency)",
    "Resource": "ceil(n_weights/RF) generic multipliers fed from weight memory "
    "(hls4ml Resource, RF > 1)",
}


def describe(model: str, hw: HardwareConfig, cal: StrategyCalibration) -> tuple[str, str]:
    """``(basis, note)`` of a report of ``model`` for ``hw`` under the strategy calibration ``cal``."""
    key = strategy_key(hw)
    scale = f"LUT × {cal.arith:.3g} (arithmetic), × {cal.act:.3g} (activations), FF × {cal.ff:.3g}"
    margin = f", safety margin × {cal.margin:.3g}" if cal.margin != 1.0 else ""
    basis = f"{model}: {STRUCTURES[key]}; {scale}{margin}; {cal.measured}"
    return basis, cal.note


# ------------------------------------------------------------------------------------------------
# Dead logic: outputs nobody reads, inputs that are constant


def chain_groups(layers: Sequence[LayerPlan]) -> list[int] | None:
    """For a plain chain of layers (each layer reads only the previous layer's outputs, through
    activations, pools and flattening), the number of inputs of layer ``i+1`` that each output
    channel of layer ``i`` feeds (k² for a conv, H·W after a flatten, 1 dense → dense); None when
    the shapes do not chain (e.g. residual shortcuts), and then no logic is taken as dead."""
    out = []
    for a, b in zip(layers, layers[1:], strict=False):
        n_out = layer_shape(a)[1]
        if b.fan_in % n_out:
            return None
        out.append(b.fan_in // n_out)
    if len(layers) > 1 and any(
        layer_shape(a)[1] * g != b.fan_in for a, b, g in zip(layers, layers[1:], out, strict=False)
    ):
        return None
    return out


def live_layers(layers: Sequence[LayerPlan], hw: HardwareConfig) -> list[LayerPlan]:
    """The layers with the logic synthesis removes taken out, in expectation (the analytical
    model's view; :func:`fitc.backends.resources.adder_graph.live_weights` does it exactly from
    the weights): an output channel of layer ``i`` whose weights in layer ``i+1`` are all zero is
    read by nobody (probability ``s_{i+1}^(consumers)``, independent zeros at layer ``i+1``'s
    sparsity ``s``), and an input of layer ``i+1`` fed by a channel whose weights are all zero is a
    constant (``s_i^fan_in``). Only for a chain (:func:`chain_groups`) with constant weights: the
    Resource strategy at RF > 1 reads weights from memory and keeps every multiplier."""
    groups = chain_groups(layers)
    if groups is None or strategy_key(hw) == "Resource" or len(layers) < 2:
        return list(layers)
    out = []
    for i, lp in enumerate(layers):
        n_in, n_out = layer_shape(lp)
        live_out = 1.0
        if i + 1 < len(layers):
            nxt = layers[i + 1]
            consumers = nxt.n_weights // n_out
            live_out = 1.0 - nxt.sparsity**consumers
        live_in = 1.0
        if i > 0:
            prev = layers[i - 1]
            live_in = 1.0 - prev.sparsity**prev.fan_in
        if live_out >= 1.0 and live_in >= 1.0:
            out.append(lp)
            continue
        outs = max(1, round(n_out * live_out))
        out.append(
            LayerPlan(
                lp.name,
                lp.kind,
                lp.weight_bits,
                lp.act_bits,
                n_in * outs,
                min(n_in * outs, round(lp.n_nonzero * live_out * live_in)),
                lp.fan_in,
                lp.out_positions,
            )
        )
    return out


class LayerNumbers(NamedTuple):
    """One layer's estimate: resources of all its instances and its latency / interval in cycles."""

    lut: float
    ff: float
    dsp: float
    bram_18k: float
    latency_cycles: float
    ii_cycles: float


def next_layer_act_bits(layers: Sequence[LayerPlan]) -> list[int | None]:
    """The input width of the following layer (its quantized ReLU), None for the last layer."""
    return [layers[i + 1].act_bits if i + 1 < len(layers) else None for i in range(len(layers))]


def check_parallelization_factor(pf: int) -> int:
    """``pf`` if it is a valid hls4ml ``ParallelizationFactor`` (an integer ≥ 1), else ConfigError."""
    if not (isinstance(pf, int) and pf >= 1):
        raise ConfigError(f"parallelization_factor must be an integer ≥ 1, got {pf!r}")
    return pf


def build_report(
    source: str,
    hw: HardwareConfig,
    names: Sequence[str],
    numbers: Sequence[LayerNumbers],
    *,
    basis: str = "",
    note: str = "",
) -> ResourceReport:
    """A :class:`ResourceReport` from per-layer numbers: per-layer entries named ``names``, totals
    summed (latency: layers in sequence), initiation interval the largest layer's; labelled with
    the firmware ``hw`` builds (:func:`firmware_label`), ``basis`` and ``note``."""
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
        firmware=firmware_label(hw),
        basis=basis,
        note=note,
    )


__all__ = [
    "COST_KINDS",
    "DSP_MIN_WEIGHT_BITS",
    "DA_NOTE",
    "LATENCY_NOTE",
    "RESOURCE_NOTE",
    "RTL_NOTE",
    "STRATEGY_KEYS",
    "UNCALIBRATED",
    "LayerNumbers",
    "ResourceModel",
    "STRUCTURES",
    "StrategyCalibration",
    "describe",
    "chain_groups",
    "firmware_label",
    "latency_floor_hw",
    "live_layers",
    "strategy_key",
    "accumulator_bits",
    "build_report",
    "check_parallelization_factor",
    "dsp_per_multiplier",
    "layer_shape",
    "n_multipliers",
    "next_layer_act_bits",
    "uses_dsp",
    "weight_bram_18k",
]
