"""The compression space of the search and the weight quantizer it simulates.

Contract:
- :func:`quantize_weight` is, bit for bit, the weight quantizer the built model uses: Brevitas
  ``Int8WeightPerTensorFixedPoint`` with ``weight_bit_width=bits`` (per tensor, symmetric, narrow
  range, power-of-two scale). Brevitas computes that scale as ``2^ceil(log2(max|w|)) / 2^(bits-1)``
  (a power-of-two *threshold* divided by the power-of-two integer scale ``2^(bits-1)``), clamps
  ``max|w|`` below at 1e-10, rounds half to even and clamps the integers to
  ``±(2^(bits-1) - 1)``. The test suite checks equality against ``brevitas.nn.QuantLinear``.
- A pruned weight is zero before quantization, so ``quantize_weight(w * mask, b)`` is the weight
  the built model sees; its non-zeros are the plan's ``n_nonzero``.
- :class:`SearchSpace` is the lattice the search walks: a weight-bit ladder per layer, an
  activation-bit ladder per layer (fixed at 8 by default) and a ladder of pruning fractions
  (global by default, per layer as an option). Ladders are normalised: bits descending, pruning
  levels ascending from 0.
- :func:`default_act_bits` is the activation ladder for a set of budget kinds: searched
  (:data:`SEARCHED_ACT_BITS`, 8 down to 2, every activation quantizer including the network
  input's) when a hardware budget (LUT, FF, DSP, BRAM, latency) is among them, whose cost
  depends on the activation widths; fixed at 8 otherwise (a size budget does not depend on them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from fitc.artifacts import HARDWARE_KINDS
from fitc.errors import ConfigError

__all__ = [
    "DEFAULT_ACT_BITS",
    "DEFAULT_PRUNE_LEVELS",
    "SCALE_MIN",
    "SEARCHED_ACT_BITS",
    "SearchSpace",
    "default_act_bits",
    "quantize_weight",
    "weight_scale",
]

# Brevitas' scaling_min_val for the fixed-point quantizers: an all-zero tensor gets this scale.
SCALE_MIN = 1e-10

DEFAULT_PRUNE_LEVELS: tuple[float, ...] = tuple(
    float(x) for x in (1.0 - np.logspace(0, -3, 40, base=10.0))
)


DEFAULT_ACT_BITS: tuple[int, ...] = (8,)
# Hardware budgets: activation widths are what LUT cost depends on most (adder and ReLU widths).
SEARCHED_ACT_BITS: tuple[int, ...] = (8, 7, 6, 5, 4, 3, 2)


def default_act_bits(kinds: Iterable[str]) -> tuple[int, ...]:
    """The activation-bit ladder for budgets of ``kinds`` (``size``, ``bops``, ``lut``, …):
    :data:`SEARCHED_ACT_BITS` if any is a hardware kind, else :data:`DEFAULT_ACT_BITS`."""
    return SEARCHED_ACT_BITS if set(kinds) & set(HARDWARE_KINDS) else DEFAULT_ACT_BITS


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 32:
        raise ConfigError(
            f"weight bit width must be an integer in 2..32 (narrow range needs ≥ 2), got {bits!r}"
        )
    return int(bits)


def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The power-of-two scale Brevitas' ``Int8WeightPerTensorFixedPoint`` gives ``w`` at ``bits``.

    A 0-d tensor of ``w``'s dtype: ``2^ceil(log2(max(max|w|, 1e-10))) / 2^(bits-1)``.
    """
    bits = _check_bits(bits)
    w = w.detach()
    stats = w.abs().max().clamp_min(SCALE_MIN)
    threshold = torch.exp2(torch.ceil(torch.log2(stats))).clamp_min(SCALE_MIN)
    return threshold / (2.0 ** (bits - 1))


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize ``w`` exactly as the built model will (see module docstring)."""
    bits = _check_bits(bits)
    w = w.detach()
    scale = weight_scale(w, bits)
    n = float(2 ** (bits - 1) - 1)
    return torch.clamp(torch.round(w / scale), -n, n) * scale


@dataclass(frozen=True)
class SearchSpace:
    """The lattice of compression states.

    ``weight_bits``: per-layer weight bit-width ladder (searched, from the first entry down).
    ``act_bits``: per-layer activation bit-width ladder; a single entry fixes it.
    ``prune_levels``: fractions of weights pruned, by Fisher importance F·θ²; global unless
    ``per_layer_prune`` (then each layer walks the ladder on its own).
    """

    weight_bits: tuple[int, ...] = (8, 7, 6, 5, 4, 3, 2)
    act_bits: tuple[int, ...] = DEFAULT_ACT_BITS
    prune_levels: tuple[float, ...] = field(default=DEFAULT_PRUNE_LEVELS)
    per_layer_prune: bool = False

    def __post_init__(self) -> None:
        for key in ("weight_bits", "act_bits"):
            raw = tuple(getattr(self, key))
            if not raw:
                raise ConfigError(f"search space: {key} must list at least one bit width")
            bits = sorted({_check_bits(b) for b in raw}, reverse=True)
            object.__setattr__(self, key, tuple(bits))
        levels = tuple(float(p) for p in self.prune_levels)
        bad = [p for p in levels if not (np.isfinite(p) and 0.0 <= p < 1.0)]
        if bad:
            raise ConfigError(
                f"search space: prune_levels must be fractions in [0, 1), got {bad[:3]}"
            )
        object.__setattr__(self, "prune_levels", tuple(sorted(set(levels) | {0.0})))
        object.__setattr__(self, "per_layer_prune", bool(self.per_layer_prune))

    @property
    def max_weight_bits(self) -> int:
        return self.weight_bits[0]

    @property
    def min_weight_bits(self) -> int:
        return self.weight_bits[-1]
