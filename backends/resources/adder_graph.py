"""The da4ml resource model (``"da4ml"``, the accurate offline model): :class:`Da4mlModel` solves
each layer's constant matrix-vector multiply with da4ml's ``cmvm.solve`` on the quantized integer
weights (``weights=`` from :func:`quant_int_weights`) and the fixed-point input types
(``input_types=`` from :func:`quant_input_types`, or :func:`plan_input_types` from the plan's act
bits) and reports the LUT-equivalent adder-graph cost and its depth in adder levels, with
activations, registers, BRAM and timing added by the analytical rules (:func:`finish_layer`);
layers da4ml does not model (DSP multipliers, Resource strategy at RF > 1) take the analytical
estimate. The module is named ``adder_graph`` so as not to shadow the ``da4ml`` library.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitc.artifacts import CompressionPlan, HardwareConfig, LayerPlan, ResourceReport
from fitc.errors import ArtifactError, ConfigError, FitcError

from .analytical import DEFAULT_PARAMS, AnalyticalParams, analytical_layer, finish_layer
from .base import (
    LayerNumbers,
    build_report,
    check_parallelization_factor,
    next_layer_act_bits,
    uses_dsp,
)

log = logging.getLogger(__name__)


class Da4mlError(FitcError):
    """da4ml could not solve a layer (bad weights or input types)."""


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
        check_parallelization_factor(self.parallelization_factor)

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
        nexts = next_layer_act_bits(plan.layers)
        for lp, nxt in tqdm(
            list(zip(plan.layers, nexts, strict=True)), desc="da4ml", disable=not progress
        ):
            nums.append(self.layer(lp, hw, weights, types[lp.name], nxt))
        return build_report(self.name, hw, [lp.name for lp in plan.layers], nums)

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
            return analytical_layer(lp, hw, next_act_bits, self.params, self.parallelization_factor)
        t0 = time.perf_counter()
        cost, depth = self.solve(w, input_type)
        log.debug(
            "da4ml %s: cost %.0f, depth %.0f, %.2f s",
            lp.name,
            cost,
            depth,
            time.perf_counter() - t0,
        )
        return finish_layer(
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


__all__ = [
    "Da4mlError",
    "Da4mlModel",
    "InputType",
    "plan_input_types",
    "quant_input_types",
    "quant_int_weights",
]
