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
) -> ResourceReport:
    """A :class:`ResourceReport` from per-layer numbers: per-layer entries named ``names``, totals
    summed (latency: layers in sequence), initiation interval the largest layer's."""
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


__all__ = [
    "COST_KINDS",
    "DSP_MIN_WEIGHT_BITS",
    "LayerNumbers",
    "ResourceModel",
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
