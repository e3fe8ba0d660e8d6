"""The closed loop's policy: given the history of iterations, decide what the search does next.

Each iteration searches against the fast (analytical) resource model, builds and fine-tunes the plan,
and measures it with the accurate model (da4ml or a vendor report). :func:`next_step` is a pure
function of that history and the user's targets:

- the design fits every target → stop ("fits"), unless it came from the uncalibrated fast model
  and uses less than ``fill_below`` of its binding budget: then recalibrate and search once more
  ("fill": the calibrated search spends the budget the fast model's caution left unused);
- the iteration limit is reached → stop ("max_iterations");
- the worst overshoot did not shrink by at least ``min_improvement`` since the previous iteration,
  which missed too → stop ("stalled"); a fill that overshoots is tightened like any calibrated
  miss (the design it filled stays a candidate);
- otherwise → recalibrate the fast model per layer (factor = accurate / raw fast estimate of the
  last design), and for every target still missed after a calibrated search, tighten the limit the
  search sees in proportion to the miss (``limit · target / measured · margin``).

The pipeline keeps the design that fits with the highest validation accuracy, a tie going to the
design that uses more of the budget (:func:`keep`); when none fits it keeps the one closest to
the targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fitc.artifacts import _Json


@dataclass(frozen=True)
class LoopIteration(_Json):
    """One pass of the loop. ``limits`` are what the search was given (kind → limit);
    ``fast``/``accurate`` are totals (kind → value); ``fast_layers_raw``/``accurate_layers`` are
    per-layer LUT (torch name → LUT) of the uncalibrated fast model and of the accurate model."""

    iteration: int
    limits: dict = field(default_factory=dict)
    calibrated: bool = False
    fast: dict = field(default_factory=dict)
    accurate: dict = field(default_factory=dict)
    fast_layers_raw: dict = field(default_factory=dict)
    accurate_layers: dict = field(default_factory=dict)
    accuracy: float = 0.0  # test accuracy after fine-tuning (reported)
    val_accuracy: float = 0.0  # validation accuracy after fine-tuning (what the loop selects on)
    wall_time_s: float = 0.0


@dataclass(frozen=True)
class LoopDecision:
    stop: bool
    reason: str
    limits: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)  # torch name → LUT scale of the fast model


def fits(measured: dict[str, float], targets: dict[str, float]) -> bool | None:
    """Whether ``measured`` meets every target it measures (None: it measures none).

    The one place fit/no-fit is decided: the closed loop, the estimate stage (``run.json``'s
    ``fits``) and the summary all call it. ``measured`` maps budget kinds (``lut``, ``ff``,
    ``dsp``, ``bram``, ``latency``, ``size``, ``bops``) to values; a target of a kind it does not
    hold is not judged here."""
    judged = {k: v for k, v in targets.items() if k in measured}
    if not judged:
        return None
    return all(float(measured[k]) <= v + (1e-12 if k in ("size", "bops") else 0.0)
               for k, v in judged.items())  # fmt: skip


def overshoot(measured: dict[str, float], targets: dict[str, float]) -> float:
    """The worst measured/target ratio over the targets (≤ 1 means the design fits).

    A zero target (``dsp=0``) counts as fitting only when the measurement is zero too.
    """
    worst = 0.0
    for kind, target in targets.items():
        value = float(measured.get(kind, 0.0))
        ratio = (0.0 if value <= 0 else float("inf")) if target <= 0 else value / target
        worst = max(worst, ratio)
    return worst


def next_step(
    history: list[LoopIteration],
    targets: dict[str, float],
    *,
    max_iterations: int = 4,
    margin: float = 0.97,
    min_improvement: float = 0.01,
    fill_below: float = 0.9,
) -> LoopDecision:
    """Decide the next loop step from the history (pure: no I/O, no state)."""
    if not history:
        return LoopDecision(False, "start", limits=dict(targets))
    last = history[-1]
    worst = overshoot(last.accurate, targets)
    calibration = {  # a layer the accurate model found free (all its logic dead) keeps its cost
        name: lut / last.fast_layers_raw[name]
        for name, lut in last.accurate_layers.items()
        if last.fast_layers_raw.get(name, 0) > 0 and lut > 0
    }
    if worst <= 1.0:
        if worst < fill_below and not last.calibrated and len(history) < max_iterations:
            return LoopDecision(False, "fill", dict(last.limits), calibration)
        return LoopDecision(True, "fits")
    if len(history) >= max_iterations:
        return LoopDecision(True, "max_iterations")
    if len(history) >= 2:
        before = overshoot(history[-2].accurate, targets)
        if before > 1.0 and worst > before * (1.0 - min_improvement):
            return LoopDecision(True, "stalled")

    limits = dict(last.limits)
    if last.calibrated:
        # The fast model was already calibrated and still missed: tighten what the search sees.
        for kind, target in targets.items():
            value = float(last.accurate.get(kind, 0.0))
            if value > target and target > 0:
                limits[kind] = last.limits.get(kind, target) * target / value * margin
    return LoopDecision(
        False, "recalibrate" if not last.calibrated else "tighten", limits, calibration
    )


def keep(history: list[LoopIteration], targets: dict[str, float]) -> LoopIteration:
    """The design the loop keeps: among those that fit, the highest validation accuracy, a tie
    going to the one that uses more of its binding budget (more bits and weights for the same
    evidence); when none fits, the one closest to the targets."""
    fitting = [h for h in history if overshoot(h.accurate, targets) <= 1.0]
    if not fitting:
        return min(history, key=lambda h: overshoot(h.accurate, targets))
    return max(fitting, key=lambda h: (h.val_accuracy, overshoot(h.accurate, targets)))


def record_iteration(k, decision, calibration, plan, hw, accurate, metrics, wall) -> LoopIteration:
    """The record of loop iteration ``k``: the limits searched, the fast model's totals (as
    calibrated) and raw per-layer LUTs, the accurate report, accuracies and wall time."""
    from fitc.backends.resources import AnalyticalModel

    raw = AnalyticalModel().layer_numbers(plan.layers, hw, calibrated=False)
    fast = AnalyticalModel().calibrated(calibration).estimate(plan, hw)
    return LoopIteration(
        iteration=k,
        limits=dict(decision.limits),
        calibrated=bool(calibration),
        fast=fast.totals(),
        accurate=accurate.totals(),
        fast_layers_raw={lp.name: float(x.lut) for lp, x in zip(plan.layers, raw, strict=True)},
        accurate_layers={lr.name: float(lr.lut) for lr in accurate.layers},
        accuracy=float(metrics["finetuned_test_accuracy"]),
        val_accuracy=float(metrics.get("finetune_val_accuracy", 0.0)),
        wall_time_s=round(wall, 3),
    )
