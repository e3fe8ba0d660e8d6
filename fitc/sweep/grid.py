"""The sweep's grid: what points a sweep has, and how the command line names them.

Contract: :class:`SweepSpec` is the grid (models × budget alternatives × strategies × reuse
factors, plus base RunConfig keys shared by every point; an empty axis means "the base config's
value"), built from command-line style values by :meth:`SweepSpec.from_grid` (budget alternatives
parsed by :func:`parse_budget_axis` into :class:`BudgetChoice`\\ s, strategy names by
:func:`parse_strategy`) and round-tripped through ``to_dict``/``from_dict`` for ``sweep.json``.
:func:`expand_points` turns a spec into :class:`SweepPoint`\\ s in a stable order, each validated
as a RunConfig, with a ``key`` that is stable across runs (it is also the point's run directory
name) and the full RunConfig mapping. This module knows nothing of storage, workers or results.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fitc.artifacts import Budget, exact_number
from fitc.errors import ConfigError
from fitc.sweep.paths import check_key, check_model_ref, model_label

log = logging.getLogger("fitc.sweep")  # one logger for the whole package

STRATEGIES = {
    "latency": "Latency",
    "resource": "Resource",
    "distributed_arithmetic": "distributed_arithmetic",
    "da": "distributed_arithmetic",
}

# RunConfig keys a sweep sets itself for every point (its run directory; no progress bars).
_NOT_BASE = ("out", "progress")


@dataclass(frozen=True)
class BudgetChoice:
    """One alternative of the budget axis: budgets that apply together (``lut=20000+dsp=0``), or a
    device preset and the fraction of it to fit in (``device=xc7z020:0.25``)."""

    budget: tuple[str, ...] = ()
    device: str | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.device is None) != (self.fraction is None):
            raise ConfigError("a device budget needs a fraction, e.g. device=xc7z020:0.25")
        if self.fraction is not None and not (0 < self.fraction <= 1):
            raise ConfigError(
                f"device={self.device}: fraction must be in (0, 1], got {self.fraction}"
            )
        if not self.budget and self.device is None:
            raise ConfigError("empty budget alternative")
        if self.device is not None:
            from fitc.backends.devices import get_device

            get_device(self.device)  # an unknown device fails here, not in every point
        # Normalise so that size=0.0625 and size=1/16 are the same point.
        object.__setattr__(self, "budget", tuple(str(Budget.parse(b)) for b in self.budget))

    @property
    def label(self) -> str:
        parts = list(self.budget)
        if self.device is not None:
            parts.insert(0, f"device={self.device}@{self.fraction:g}")
        return "+".join(parts)

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.budget:
            out["budget"] = list(self.budget)
        if self.device is not None:
            out["device"], out["fraction"] = self.device, self.fraction
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"budget": list(self.budget), "device": self.device, "fraction": self.fraction}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BudgetChoice:
        return cls(tuple(d.get("budget", ())), d.get("device"), d.get("fraction"))


def parse_budget_axis(text: str) -> list[BudgetChoice]:
    """Parse one ``--budget`` flag into its alternatives.

    ``size=1/16,1/32`` → two alternatives (a bare value repeats the previous kind);
    ``device=xc7z020:0.1,0.25`` → the part at two fractions; ``lut=20000+dsp=0`` → one alternative
    with two budgets at once; ``size=1/16,lut=20000`` → two alternatives of different kinds.
    """
    choices: list[BudgetChoice] = []
    prefix: str | None = None
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if "=" not in item:
            if prefix is None:
                raise ConfigError(
                    f"--budget {text!r}: {item!r} has no KIND= before it; write e.g. size=1/16,1/32"
                )
            item = prefix + item
        kind, value = (s.strip() for s in item.split("=", 1))
        kind = kind.lower()
        if kind == "device":
            part, sep, frac = value.partition(":")
            if not sep or not part or not frac:
                raise ConfigError(
                    f"--budget {text!r}: write a device budget as device=PART:FRACTION[,FRACTION…], "
                    "e.g. device=xc7z020:0.1,0.25"
                )
            exact = exact_number(frac, f"--budget {text!r}: fraction")
            if not (0 < exact <= 1):
                raise ConfigError(f"--budget {text!r}: fraction {frac} is not in (0, 1]")
            choices.append(BudgetChoice(device=part, fraction=float(exact)))
            prefix = f"device={part}:"
        else:
            parts = tuple(p for p in item.split("+") if p.strip())
            choices.append(BudgetChoice(budget=parts))
            prefix = f"{kind}=" if len(parts) == 1 else None
    if not choices:
        raise ConfigError(f"--budget {text!r} names no budget")
    return choices


def parse_strategy(name: str) -> str:
    """``latency`` / ``Resource`` / ``distributed_arithmetic`` (or ``da``), case-insensitive."""
    try:
        return STRATEGIES[name.strip().lower().replace("-", "_")]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose latency, resource or distributed_arithmetic"
        ) from None


def _split(values: Sequence[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [s.strip() for v in values for s in str(v).split(",") if s.strip()]


def _dedupe(items: Sequence[Any]) -> tuple:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class SweepSpec:
    """The grid of a sweep. An empty axis means "the base config's value" (one alternative).

    ``budgets`` is the union of every ``--budget`` flag's alternatives; ``base`` holds RunConfig keys
    applied to every point (e.g. ``finetune_epochs``). Points run to the last pipeline stage unless
    ``base`` sets ``until``.
    """

    models: tuple[str, ...] = ()
    budgets: tuple[BudgetChoice, ...] = ()
    strategies: tuple[str, ...] = ()
    reuse_factors: tuple[int, ...] = ()
    base: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", _dedupe(self.models))
        object.__setattr__(self, "budgets", _dedupe(self.budgets))
        object.__setattr__(self, "strategies", _dedupe(parse_strategy(s) for s in self.strategies))
        rfs = []
        for rf in self.reuse_factors:
            if isinstance(rf, bool) or not isinstance(rf, int) or rf < 1:
                raise ConfigError(f"reuse factor must be an integer ≥ 1, got {rf!r}")
            rfs.append(rf)
        object.__setattr__(self, "reuse_factors", _dedupe(rfs))
        base = {str(k).replace("-", "_"): v for k, v in dict(self.base).items()}
        for key in _NOT_BASE:  # the sweep decides these per point
            if base.pop(key, None) is not None:
                log.debug("sweep base config: ignoring %r (set per point)", key)
        object.__setattr__(self, "base", base)

    @classmethod
    def from_grid(
        cls,
        models: Sequence[str] | str | None = None,
        budgets: Sequence[str] | str | None = None,
        strategies: Sequence[str] | str | None = None,
        reuse_factors: Sequence[str | int] | str | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> SweepSpec:
        """Build a spec from command-line style values (each may be repeated and comma separated;
        every string in ``budgets`` is one ``--budget`` flag)."""
        if isinstance(budgets, str):
            budgets = [budgets]
        choices = [c for text in (budgets or []) for c in parse_budget_axis(text)]
        rfs = []
        for s in _split([str(r) for r in reuse_factors] if reuse_factors is not None else None):
            try:
                rfs.append(int(s))
            except ValueError:
                raise ConfigError(f"--reuse-factor {s!r} is not an integer") from None
        return cls(
            models=tuple(_split(models)),
            budgets=tuple(choices),
            strategies=tuple(_split(strategies)),
            reuse_factors=tuple(rfs),
            base=dict(base or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "budgets": [b.to_dict() for b in self.budgets],
            "strategies": list(self.strategies),
            "reuse_factors": list(self.reuse_factors),
            "base": dict(self.base),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepSpec:
        return cls(
            models=tuple(d.get("models", ())),
            budgets=tuple(BudgetChoice.from_dict(b) for b in d.get("budgets", ())),
            strategies=tuple(d.get("strategies", ())),
            reuse_factors=tuple(d.get("reuse_factors", ())),
            base=dict(d.get("base", {})),
        )


@dataclass(frozen=True)
class SweepPoint:
    """One point of the grid: its key (stable across runs; its run directory name), the axis values
    for tables (``params``) and the full RunConfig mapping (``config``: base + axis values)."""

    key: str
    params: Mapping[str, Any]
    config: Mapping[str, Any]

    def __post_init__(self) -> None:
        # A point may come from the ledger: check what paths are built from before any is.
        check_key(self.key)
        if not isinstance(self.params, Mapping) or not isinstance(self.config, Mapping):
            raise ConfigError(f"sweep point {self.key}: params and config must be mappings")
        if self.config.get("model") is not None:
            check_model_ref(self.config["model"])

    def run_config(self, **overrides: Any):
        from fitc.config import from_mapping

        return from_mapping({**self.config, **overrides}, source=f"sweep point {self.key}")


def _key(*parts: str) -> str:
    key = "__".join(re.sub(r"[^A-Za-z0-9._=@+-]+", "-", p).strip("-.") for p in parts)
    if len(key) > 200:  # one path component: shorten, and keep it unique with a hash
        key = f"{key[:187]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return key


def expand_points(spec: SweepSpec) -> list[SweepPoint]:
    """The grid's points in a stable order (model, budget, strategy, reuse factor), each validated
    as a RunConfig, duplicates (same key) dropped."""
    from fitc.config import from_mapping

    base = dict(spec.base)
    base.setdefault("until", "estimate")  # sweeps want resources: run every stage there is
    points: dict[str, SweepPoint] = {}
    for model in spec.models or (None,):
        for choice in spec.budgets or (None,):
            for strategy in spec.strategies or (None,):
                for rf in spec.reuse_factors or (None,):
                    cfg_map = dict(base)
                    if model is not None:
                        cfg_map["model"] = model
                    if choice is not None:
                        cfg_map.update(choice.overrides())
                    if strategy is not None:
                        cfg_map["strategy"] = strategy
                    if rf is not None:
                        cfg_map["reuse_factor"] = rf
                    cfg = from_mapping(cfg_map, source="sweep point")
                    if choice is not None:
                        label = choice.label
                    elif cfg.budget or cfg.device:
                        label = BudgetChoice(cfg.budget, cfg.device, cfg.fraction).label
                    else:
                        label = "default"  # the pipeline's default budget
                    params = {
                        "model": cfg.model,
                        "budget": label,
                        "strategy": cfg.strategy,
                        "reuse_factor": cfg.reuse_factor,
                    }
                    key = _key(model_label(cfg.model), label, cfg.strategy, f"rf{cfg.reuse_factor}")
                    if key not in points:
                        points[key] = SweepPoint(key, params, cfg_map)
    return list(points.values())
