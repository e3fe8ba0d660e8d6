"""Cost models of a compression state: the quantity a budget limits.

Contract:
- a cost model is anything with a ``kind: str`` attribute (the budget kind it measures) and
  ``__call__(layers: Sequence[LayerPlan]) -> float``; the search only ever calls it on complete
  tuples of :class:`~fitc.artifacts.LayerPlan` (one per compressible layer, in forward order), so a
  hardware model (LUT, DSP, latency) plugs in without touching the search;
- a cost model must be a pure function of the layer plans (same plans, same cost);
- :class:`SizeCost` and :class:`BopsCost` are relative to the float model (32-bit weights and
  activations, no sparsity), so their budgets are fractions in (0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from fitc.artifacts import Budget, LayerPlan
from fitc.errors import ConfigError

__all__ = [
    "BopsCost",
    "CostModel",
    "MaxRatioCost",
    "SizeCost",
    "cost_for",
    "layer_bops",
    "layer_size_bits",
]

FLOAT_BITS = 32


@runtime_checkable
class CostModel(Protocol):
    """The cost the budget limits, as a function of the per-layer plans."""

    kind: str

    def __call__(self, layers: Sequence[LayerPlan]) -> float: ...


def layer_size_bits(lp: LayerPlan) -> int:
    """Bits of the non-zero weights of one layer (sign bit included)."""
    return lp.n_nonzero * lp.weight_bits


def layer_bops(lp: LayerPlan, *, dense_float: bool = False) -> float:
    """Sparsity-aware BOPs of one layer (Hawks et al. 2021, "Ps and Qs").

    ``m·n·k²·(p·b_a·b_w + b_a + b_w + log2(n·k²))`` per output position, times the output
    positions of a convolution, with ``m·n·k² = n_weights``, ``n·k² = fan_in`` and
    ``p = n_nonzero / n_weights``. ``dense_float`` gives the same layer with 32-bit weights and
    activations and no sparsity (the reference the relative cost divides by).
    """
    if dense_float:
        b_w = b_a = FLOAT_BITS
        p = 1.0
    else:
        b_w, b_a = lp.weight_bits, lp.act_bits
        p = lp.n_nonzero / lp.n_weights
    per_position = lp.n_weights * (p * b_a * b_w + b_a + b_w + math.log2(lp.fan_in))
    return per_position * lp.out_positions


class SizeCost:
    """Σ n_nonzero·weight_bits / Σ n_weights·32: the weight memory relative to the float model."""

    kind = "size"

    def __call__(self, layers: Sequence[LayerPlan]) -> float:
        num = sum(layer_size_bits(lp) for lp in layers)
        den = sum(lp.n_weights for lp in layers) * FLOAT_BITS
        return num / den

    def __repr__(self) -> str:
        return "SizeCost()"


class BopsCost:
    """Sparsity-aware BOPs relative to the same model with 32-bit weights/activations, dense."""

    kind = "bops"

    def __call__(self, layers: Sequence[LayerPlan]) -> float:
        num = sum(layer_bops(lp) for lp in layers)
        den = sum(layer_bops(lp, dense_float=True) for lp in layers)
        return num / den

    def __repr__(self) -> str:
        return "BopsCost()"


def cost_for(budget: Budget) -> CostModel:
    """The built-in cost model of a ``size`` or ``bops`` budget."""
    if budget.kind == "size":
        return SizeCost()
    if budget.kind == "bops":
        return BopsCost()
    raise ConfigError(
        f"budget kind {budget.kind!r} has no built-in cost model in the search; pass a hardware "
        f"cost model to search_plan(..., cost=...) or use a size or bops budget"
    )


class MaxRatioCost:
    """Several budgets as one: the worst ``cost_k(layers) / limit_k`` (kind ``combined``).

    A plan meets every budget exactly when this cost is ≤ 1, so the search takes it with
    ``Budget("combined", 1.0)``. A zero limit (``dsp=0``) gives 0 when the cost is 0, else +inf.
    """

    kind = "combined"

    def __init__(self, parts: Sequence[tuple[CostModel, float]]) -> None:
        if not parts:
            raise ConfigError("MaxRatioCost needs at least one (cost model, limit) pair")
        self.parts = list(parts)

    def ratios(self, layers: Sequence[LayerPlan]) -> dict[str, float]:
        out = {}
        for cost, limit in self.parts:
            value = cost(layers)
            if limit > 0:
                out[cost.kind] = value / limit
            else:
                out[cost.kind] = 0.0 if value <= 0 else math.inf
        return out

    def __call__(self, layers: Sequence[LayerPlan]) -> float:
        return max(self.ratios(layers).values())

    def __repr__(self) -> str:
        return "MaxRatioCost(" + ", ".join(f"{c.kind}≤{lim:g}" for c, lim in self.parts) + ")"
