"""The da4ml resource model (``"da4ml"``, the accurate offline model): :class:`Da4mlModel` solves
each layer's constant matrix-vector multiply with da4ml's ``cmvm.solve`` on the quantized integer
weights (``weights=`` from :func:`quant_int_weights`) and the fixed-point input types
(``input_types=`` from :func:`quant_input_types`, or :func:`plan_input_types` from the plan's act
bits) and reports the LUT-equivalent adder-graph cost and its depth in adder levels, with
activations, registers, BRAM and timing added by the analytical rules (:func:`finish_layer`);
layers da4ml does not model (DSP multipliers, Resource strategy at RF > 1) take the analytical
estimate. The structure solved follows the firmware ``hw`` builds: shared sub-expressions for
``distributed_arithmetic`` and the RTL backend (every conv position unrolled there), none for
``Latency`` (:data:`UNSHARED_SOLVER`: one constant multiplier per weight, as HLS builds them);
dead logic (outputs nobody reads, constant inputs) is removed exactly from the weights
(:func:`live_weights`); the result is calibrated to Yosys netlists per strategy
(:data:`DA4ML_CALIBRATION`, measured by ``bench/resource_calibration.py``). The module is named
``adder_graph`` so as not to shadow the ``da4ml`` library.
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

from .analytical import (
    ANALYTICAL_CALIBRATION,
    DEFAULT_PARAMS,
    AnalyticalParams,
    analytical_layer,
    finish_layer,
)
from .base import (
    DA_NOTE,
    LATENCY_NOTE,
    RESOURCE_NOTE,
    RTL_NOTE,
    UNCALIBRATED,
    LayerNumbers,
    StrategyCalibration,
    build_report,
    chain_groups,
    check_parallelization_factor,
    describe,
    latency_floor_hw,
    next_layer_act_bits,
    strategy_key,
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


#: da4ml's solver options for a multiply without shared sub-expressions (each constant multiply
#: decomposed on its own, then summed): the structure hls4ml's Latency strategy asks HLS for.
UNSHARED_SOLVER: dict[str, Any] = {"method0": "dummy", "method1": "dummy", "hard_dc": -1}

#: The da4ml model's calibration per strategy key, fitted to Yosys netlists by
#: ``bench/resource_calibration.py`` (cache: ``bench/yosys_cache.json``).
DA4ML_CALIBRATION: dict[str, StrategyCalibration] = {
    "rtl": StrategyCalibration(
        arith=1.337,
        act=1.000,
        ff=0.160,
        measured="bench/resource_calibration.py, Yosys synth_xilinx xc7: 23 RTL designs (digits-mlp, jet-mlp, digits-cnn), LUT error mean 26.8% → 12.7%, worst 83.9% → 50.5%; FF of 3 pipelined designs ±56% (worst 71%)",
        note=RTL_NOTE,
    ),
    "distributed_arithmetic": StrategyCalibration(
        arith=1.337,
        act=1.000,
        margin=1.319,
        measured="bench/resource_calibration.py, Yosys synth_xilinx xc7: the RTL designs' constants (23 designs, LUT error mean 12.7%, worst under-estimate 24.2%; margin 1/(1 − 24.2%), the worst of the shared and unshared designs)",
        note=DA_NOTE,
    ),
    "Latency": StrategyCalibration(
        arith=1.321,
        act=1.000,
        margin=1.319,
        measured="bench/resource_calibration.py, Yosys synth_xilinx xc7: 8 unshared designs, LUT error mean 15.8% → 7.7%, worst 27.2% → 14.4%, worst under-estimate 14.4%; margin 1/(1 − 24.2%), the worst of the shared and unshared designs; never below the distributed_arithmetic estimate",
        note=LATENCY_NOTE,
    ),
    # Resource at RF > 1: the analytical arithmetic (generic multipliers), the same calibration.
    "Resource": StrategyCalibration(
        act=1.000,
        margin=1.196,
        measured="bench/resource_calibration.py, Yosys synth_xilinx xc7 -nodsp: 12 generic multipliers (2–8 × 3–8 bits), LUT error mean 7.7%, worst 16.4%, worst under-estimate 16.4%; margin 1/(1 − that)",
        note=RESOURCE_NOTE,
    ),
}


def live_weights(
    layers: Sequence[LayerPlan], weights: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray] | None:
    """The weights with the logic synthesis removes zeroed, exactly (to a fixed point): an output
    channel of a layer whose weights in the next layer are all zero is read by nobody, and an
    input of the next layer fed by a channel whose own weights are all zero is a constant (the
    activation of its bias, folded into the next bias). Only for a plain chain of layers
    (:func:`chain_groups`); None otherwise (nothing is taken as dead)."""
    groups = chain_groups(layers)
    if groups is None or len(layers) < 2 or any(lp.name not in weights for lp in layers):
        return None
    w = [np.array(weights[lp.name], dtype=np.int64, copy=True) for lp in layers]
    shapes = [x.shape for x in w]
    flat = [x.reshape(x.shape[0], -1) for x in w]  # (out, fan_in), channel-major inputs
    for a, b, g in zip(flat, flat[1:], groups, strict=False):
        if b.shape[1] != a.shape[0] * g:
            return None
    changed = True
    while changed:
        changed = False
        for i, g in enumerate(groups):
            a, b = flat[i], flat[i + 1]
            bg = b.reshape(b.shape[0], a.shape[0], g)
            dead = ~np.any(bg != 0, axis=(0, 2))  # outputs of layer i nobody reads
            if np.any(a[dead]):
                a[dead] = 0
                changed = True
            const = ~np.any(a != 0, axis=1)  # outputs of layer i that are constants
            if np.any(bg[:, const, :]):
                bg[:, const, :] = 0
                changed = True
    return {lp.name: f.reshape(s) for lp, f, s in zip(layers, flat, shapes, strict=True)}


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
    live: bool = True  # take out the logic synthesis removes (live_weights)
    strategies: Mapping[str, StrategyCalibration] = field(
        default_factory=lambda: dict(DA4ML_CALIBRATION)
    )
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_parallelization_factor(self.parallelization_factor)
        object.__setattr__(self, "strategies", dict(self.strategies))

    def strategy_calibration(self, hw: HardwareConfig) -> StrategyCalibration:
        """The calibration of the strategy ``hw`` builds (:func:`strategy_key`)."""
        return self.strategies.get(strategy_key(hw), UNCALIBRATED)

    def solve(
        self,
        weight: np.ndarray,
        input_type: InputType,
        *,
        shared: bool = True,
        per_output: bool = False,
    ) -> tuple[float, float]:
        """``(LUT cost, depth in adder levels)`` of ``y = W x`` for an integer ``W`` (out × in·k²);
        ``shared=False``: without shared sub-expressions (:data:`UNSHARED_SOLVER`);
        ``per_output=True``: every output solved on its own (sharing only within an output), the
        sum of their costs: an upper bound of the shared solve's cost in a fraction of its time
        (resnet8's 576 × 64 layer: 3.9 s against 127 s; 124,647 against 91,879 LUT)."""
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
            shared,
            per_output,
        )
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if not np.any(w2):
            result = (0.0, 0.0)
        elif per_output and w2.shape[0] > 1:
            parts = [self.solve(row[None, :], input_type, shared=shared) for row in w2]
            result = (float(sum(c for c, _ in parts)), float(max(d for _, d in parts)))
        else:
            from da4ml.cmvm import solve

            kernel = np.ascontiguousarray(w2.T.astype(np.float32))  # da4ml: (n_in, n_out)
            opts = (
                {"method0": self.method0, "hard_dc": self.hard_dc}
                if shared
                else dict(UNSHARED_SOLVER)
            )
            sol = solve(
                kernel,
                **opts,
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
        layers = list(plan.layers)
        live = (
            live_weights(plan.layers, weights)
            if self.live and strategy_key(hw) != "Resource"
            else None
        )
        if live is not None:
            for lp in layers:
                _check_weights(lp, weights)
            weights = live
            layers = [_live_plan(lp, live[lp.name]) for lp in layers]
        for lp, nxt in tqdm(
            list(zip(layers, nexts, strict=True)), desc="da4ml", disable=not progress
        ):
            x = self.layer(lp, hw, weights, types[lp.name], nxt, check=live is None)
            floor = latency_floor_hw(hw) if self.strategies else None
            if floor is not None and not uses_dsp(lp, hw):
                # The floor binds only if the shared estimate exceeds the unshared one. Its upper
                # bound (every output solved alone) settles that in most layers; only where the
                # bound does not is the full shared solve run (minutes on a large conv layer).
                kw = {"check": False}
                bound = self.layer(lp, floor, weights, types[lp.name], nxt, per_output=True, **kw)
                if bound.lut > x.lut:
                    y = self.layer(lp, floor, weights, types[lp.name], nxt, **kw)
                    x = x._replace(lut=max(x.lut, y.lut))
            nums.append(x)
        basis, note = describe(self.name, hw, self.strategy_calibration(hw))
        return build_report(
            self.name, hw, [lp.name for lp in plan.layers], nums, basis=basis, note=note
        )

    def layer(
        self,
        lp: LayerPlan,
        hw: HardwareConfig,
        weights: Mapping[str, np.ndarray],
        input_type: InputType,
        next_act_bits: int | None,
        *,
        check: bool = True,
        per_output: bool = False,
    ) -> LayerNumbers:
        """One layer's numbers (see the class docstring for what da4ml measures); ``check``:
        compare the weights with the layer plan first; ``per_output``: see :meth:`solve`."""
        if check:
            _check_weights(lp, weights)
        w = np.asarray(weights[lp.name])
        cal = self.strategy_calibration(hw)
        if uses_dsp(lp, hw) or (hw.strategy == "Resource" and hw.reuse_factor > 1):
            log.info(
                "layer %s: DSP or Resource-strategy layer, analytical arithmetic estimate", lp.name
            )
            # the analytical formula, with the analytical model's calibration for this strategy
            acal = (
                ANALYTICAL_CALIBRATION.get(strategy_key(hw), UNCALIBRATED)
                if self.strategies
                else UNCALIBRATED
            )
            return analytical_layer(
                lp, hw, next_act_bits, self.params, self.parallelization_factor, acal
            )
        t0 = time.perf_counter()
        cost, depth = self.solve(
            w, input_type, shared=strategy_key(hw) != "Latency", per_output=per_output
        )
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
            cal=cal,
        )


def _check_weights(lp: LayerPlan, weights: Mapping[str, np.ndarray]) -> None:
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


def _live_plan(lp: LayerPlan, w: np.ndarray) -> LayerPlan:
    """``lp`` with the live weights' counts: outputs read by someone, their non-zero weights."""
    flat = w.reshape(w.shape[0], -1)
    outs = max(1, int(np.count_nonzero(np.any(flat != 0, axis=1))))
    return LayerPlan(
        lp.name,
        lp.kind,
        lp.weight_bits,
        lp.act_bits,
        lp.fan_in * outs,
        int(np.count_nonzero(flat)),
        lp.fan_in,
        lp.out_positions,
    )


__all__ = [
    "DA4ML_CALIBRATION",
    "UNSHARED_SOLVER",
    "Da4mlError",
    "Da4mlModel",
    "InputType",
    "live_weights",
    "plan_input_types",
    "quant_input_types",
    "quant_int_weights",
]
