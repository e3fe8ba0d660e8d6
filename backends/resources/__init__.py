"""FPGA resource models behind one :class:`ResourceModel` protocol (``name`` and ``estimate(plan, hw,
**kw) -> ResourceReport``): analytical (:mod:`.analytical`, from the plan, microseconds), da4ml
(:mod:`.adder_graph`, from the integer weights, the accurate offline model) and vendor reports
(:mod:`.report`, csynth / Vivado synthesis files), with their shared arithmetic in :mod:`.base`;
this package re-exports their public names and holds the one registry, :data:`RESOURCE_MODELS`
(name → factory taking the model's keyword arguments), read by :func:`get_resource_model` — a new
model is one module implementing the protocol plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fitc.errors import ConfigError

from .adder_graph import (
    DA4ML_CALIBRATION,
    UNSHARED_SOLVER,
    Da4mlError,
    Da4mlModel,
    InputType,
    plan_input_types,
    quant_input_types,
    quant_int_weights,
)
from .analytical import (
    ANALYTICAL_CALIBRATION,
    DEFAULT_PARAMS,
    AnalyticalModel,
    AnalyticalParams,
    LutCost,
    adder_tree_luts,
    cmvm_luts,
    generic_mult_luts,
)
from .base import (
    COST_KINDS,
    DSP_MIN_WEIGHT_BITS,
    STRATEGY_KEYS,
    UNCALIBRATED,
    LayerNumbers,
    ResourceModel,
    StrategyCalibration,
    accumulator_bits,
    dsp_per_multiplier,
    firmware_label,
    layer_shape,
    n_multipliers,
    strategy_key,
    uses_dsp,
    weight_bram_18k,
)
from .report import (
    VendorReportError,
    VendorReportModel,
    parse_csynth_rpt_instances,
    parse_csynth_xml,
    parse_vivado_synth_rpt,
    read_vendor_report,
)
from .yosys import YosysModel

RESOURCE_MODELS: dict[str, Callable[..., ResourceModel]] = {
    "analytical": AnalyticalModel,
    "da4ml": Da4mlModel,
    "report": VendorReportModel,
    "yosys": YosysModel,
}


def get_resource_model(name: str, **kwargs: Any) -> ResourceModel:
    """A new resource model by name (a key of :data:`RESOURCE_MODELS`: ``analytical``, ``da4ml``,
    ``report``, ``yosys``). The analytical and da4ml models cost the firmware ``hw`` builds
    (:func:`strategy_key`: ``hw.backend == "rtl"``, else ``hw.strategy`` and ``hw.reuse_factor``)
    with their per-strategy calibration to Yosys netlists (:data:`ANALYTICAL_CALIBRATION`,
    :data:`DA4ML_CALIBRATION`), and label their reports (``firmware``, ``basis``, ``note``)."""
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
    "ANALYTICAL_CALIBRATION",
    "COST_KINDS",
    "DA4ML_CALIBRATION",
    "DEFAULT_PARAMS",
    "DSP_MIN_WEIGHT_BITS",
    "RESOURCE_MODELS",
    "STRATEGY_KEYS",
    "UNCALIBRATED",
    "UNSHARED_SOLVER",
    "StrategyCalibration",
    "firmware_label",
    "generic_mult_luts",
    "strategy_key",
    "AnalyticalModel",
    "AnalyticalParams",
    "Da4mlError",
    "Da4mlModel",
    "InputType",
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
