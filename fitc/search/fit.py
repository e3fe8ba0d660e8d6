"""FIT (Zandonati et al.) of a per-layer bit configuration and the per-layer sensitivity table.

Contract: ``FIT = Σ_l Tr(F_w,l)·Δ_w,l² + Σ_l Tr(F_a,l)·Δ_a,l²`` with ``Δ = range / (2^b − 1)``;
a layer missing from a bit mapping contributes nothing (float).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fitc.errors import ConfigError
from fitc.fisher import Fisher
from fitc.space import SearchSpace

__all__ = ["DEFAULT_SPACE", "delta", "fit_value", "sensitivity_table"]

DEFAULT_SPACE = SearchSpace()


def delta(value_range: float, bits: int) -> float:
    """The uniform quantizer's step over ``value_range`` at ``bits``."""
    return value_range / (2.0**bits - 1.0)


def _check_names(fisher: Fisher, mapping: Mapping[str, int], what: str) -> None:
    unknown = sorted(set(mapping) - set(fisher.weight))
    if unknown:
        raise ConfigError(f"{what}: unknown layers {unknown}; layers are {fisher.layers}")


def fit_value(fisher: Fisher, weight_bits: Mapping[str, int], act_bits: Mapping[str, int]) -> float:
    """FIT of a per-layer bit configuration (layers absent from a mapping stay float)."""
    _check_names(fisher, weight_bits, "fit_value weight_bits")
    _check_names(fisher, act_bits, "fit_value act_bits")
    total = 0.0
    for name, b in weight_bits.items():
        total += fisher.weight_trace[name] * delta(fisher.weight_range[name], int(b)) ** 2
    for name, b in act_bits.items():
        total += fisher.act_trace[name] * delta(fisher.act_range[name], int(b)) ** 2
    return total


def sensitivity_table(
    fisher: Fisher, space: SearchSpace = DEFAULT_SPACE, bits: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Per-layer FIT terms, most sensitive first.

    Each row: ``name``, ``n_weights``, ``weight_trace``, ``act_trace``, ``weight_range``,
    ``act_range``, ``fit_w{b}`` (weight term at ``b`` bits) for ``bits`` (default: the weight
    ladder's highest, middle and lowest rung), ``fit_a{b}`` for each activation rung, and
    ``sensitivity``: the layer's FIT at the lowest weight and activation rungs (the sort key).
    """
    ladder = space.weight_bits
    if bits is None:
        bits = sorted({ladder[0], ladder[len(ladder) // 2], ladder[-1]}, reverse=True)
    rows = []
    for name in fisher.layers:
        row: dict[str, Any] = {
            "name": name,
            "n_weights": int(fisher.weight[name].numel()),
            "weight_trace": fisher.weight_trace[name],
            "act_trace": fisher.act_trace[name],
            "weight_range": fisher.weight_range[name],
            "act_range": fisher.act_range[name],
        }
        for b in bits:
            row[f"fit_w{b}"] = fit_value(fisher, {name: b}, {})
        for b in space.act_bits:
            row[f"fit_a{b}"] = fit_value(fisher, {}, {name: b})
        row["sensitivity"] = fit_value(
            fisher, {name: space.min_weight_bits}, {name: space.act_bits[-1]}
        )
        rows.append(row)
    rows.sort(key=lambda r: -r["sensitivity"])
    return rows
