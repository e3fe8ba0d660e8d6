"""Pictures of runs and sweeps (matplotlib, PNG).

Contract: every function takes plain data (artifact dataclasses or their ``to_dict()`` form, or
rows of ``results.csv``) and an output path, writes one titled PNG whose axes say their units, and
returns the path. Figures are drawn on matplotlib's object API with the Agg canvas, so importing
this module never changes the caller's pyplot backend. Files are written atomically.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fitc.artifacts import CompressionPlan, ResourceReport
from fitc.rundir import atomic_path

log = logging.getLogger(__name__)

#: Axis labels of the costs, with units.
LABELS = {
    "accuracy": "test accuracy (%)",
    "lut": "LUTs (count)",
    "ff": "flip-flops (count)",
    "dsp": "DSP slices (count)",
    "bram_18k": "BRAM 18K blocks (count)",
    "bram": "BRAM 18K blocks (count)",
    "bops": "BOPs (fraction of the float model)",
    "size": "weight size (fraction of the float model)",
    "latency": "latency (clock cycles)",
    "latency_cycles": "latency (clock cycles)",
    "latency_ns": "latency (ns)",
}
FRONT_COLOR = "#d62728"
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")


def _figure(width: float = 7.5, height: float = 4.8):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out: str | os.PathLike) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    log.debug("wrote %s", out)
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _count(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:g}"


def _short(row: Mapping[str, Any], multi_model: bool) -> str:
    """A short label of a sweep point: budget, strategy, reuse factor (and model if several)."""
    if row.get("budget") is None:
        return str(row.get("key", "?"))
    strategy = {"distributed_arithmetic": "DA"}.get(str(row.get("strategy")), row.get("strategy"))
    parts = [str(row["budget"]).replace("device=", ""), str(strategy)]
    if _num(row.get("reuse_factor")) not in (None, 1.0):
        parts.append(f"rf{int(_num(row['reuse_factor']))}")
    if multi_model:
        parts.insert(0, str(row.get("model")))
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Sweeps


def pareto_plot(
    rows: Sequence[Mapping[str, Any]],
    out: str | os.PathLike,
    *,
    cost: str = "lut",
    maximize: str = "accuracy",
    title: str | None = None,
) -> Path:
    """Accuracy against ``cost`` for every finished point: dominated points grey, the Pareto front
    in colour joined by its staircase and labelled."""
    from fitc.sweep import pareto_front

    front = pareto_front(rows, maximize, cost)
    front_ids = {id(r) for r in front}
    usable = [
        r
        for r in rows
        if r.get("status", "COMPLETE") == "COMPLETE"
        and _num(r.get(cost)) is not None
        and _num(r.get(maximize)) is not None
    ]
    n_missing = len(rows) - len(usable)
    scale = 100.0 if maximize == "accuracy" else 1.0
    multi_model = len({r.get("model") for r in rows}) > 1

    fig = _figure()
    ax = fig.add_subplot()
    dominated = [r for r in usable if id(r) not in front_ids]
    if dominated:
        ax.scatter(
            [_num(r[cost]) for r in dominated],
            [_num(r[maximize]) * scale for r in dominated],
            s=36,
            color="0.6",
            alpha=0.8,
            label=f"dominated ({len(dominated)})",
            zorder=2,
        )
    if front:
        xs = [_num(r[cost]) for r in front]
        ys = [_num(r[maximize]) * scale for r in front]
        ax.plot(xs, ys, drawstyle="steps-post", color=FRONT_COLOR, lw=1.5, alpha=0.7, zorder=3)
        ax.scatter(
            xs,
            ys,
            s=64,
            color=FRONT_COLOR,
            edgecolor="black",
            zorder=4,
            label=f"Pareto front ({len(front)})",
        )
        labels: dict[tuple[float, float], list[str]] = {}  # equal designs share one label
        for x, y, r in zip(xs, ys, front, strict=True):
            labels.setdefault((x, y), []).append(_short(r, multi_model))
        mid = (min(xs) + max(xs)) / 2
        for (x, y), names in labels.items():
            right_half = len(labels) > 1 and x > mid  # label towards the inside of the axes
            ax.annotate(
                " / ".join(names),
                (x, y),
                textcoords="offset points",
                xytext=(-6 if right_half else 6, -12),
                ha="right" if right_half else "left",
                fontsize=8,
                color="0.15",
            )
    xs_all = [_num(r[cost]) for r in usable]
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 50:
        ax.set_xscale("log")
    ax.margins(x=0.1, y=0.08)
    ax.set_xlabel(LABELS.get(cost, cost))
    ax.set_ylabel(LABELS.get(maximize, maximize))
    ax.grid(True, alpha=0.3)
    if usable:
        ax.legend(loc="lower right", fontsize=9)
    else:
        ax.text(
            0.5,
            0.5,
            f"no finished point has {maximize} and {cost}",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    sub = f"\n({n_missing} failed point(s) or without {cost} not shown)" if n_missing else ""
    ax.set_title(title or f"Pareto front: {maximize} against {cost.upper()}{sub}", fontsize=11)
    return _save(fig, out)


# ---------------------------------------------------------------------------------------------
# Runs


def _plan(plan: CompressionPlan | Mapping[str, Any]) -> CompressionPlan:
    return plan if isinstance(plan, CompressionPlan) else CompressionPlan.from_dict(dict(plan))


def layer_plan_plot(
    plan: CompressionPlan | Mapping[str, Any], out: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Per layer: weight and activation bit widths (top) and weight sparsity (bottom)."""
    plan = _plan(plan)
    names = [lp.name for lp in plan.layers]
    x = list(range(len(names)))
    fig = _figure(max(6.0, 1.1 * len(names) + 2.5), 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1.2, 1))
    w = 0.38
    wb = top.bar(
        [i - w / 2 for i in x],
        [lp.weight_bits for lp in plan.layers],
        w,
        color=COLORS[0],
        label="weight bits",
    )
    ab = top.bar(
        [i + w / 2 for i in x],
        [lp.act_bits for lp in plan.layers],
        w,
        color=COLORS[1],
        label="input activation bits",
    )
    top.bar_label(wb, fontsize=8)
    top.bar_label(ab, fontsize=8)
    top.set_ylabel("bit width (bits)")
    top.set_ylim(0, max(lp.act_bits for lp in plan.layers) * 1.25 + 1)
    top.yaxis.get_major_locator().set_params(integer=True)
    top.legend(loc="upper right", fontsize=8, ncols=2)
    top.grid(True, axis="y", alpha=0.3)
    sp = bottom.bar(x, [100 * lp.sparsity for lp in plan.layers], 0.6, color=COLORS[2])
    bottom.bar_label(
        sp,
        labels=[f"{100 * lp.sparsity:.0f} %\n{lp.n_nonzero}/{lp.n_weights}" for lp in plan.layers],
        fontsize=7,
    )
    bottom.set_ylim(0, 119)
    bottom.set_ylabel("pruned weights (%)")
    bottom.set_xticks(
        x, names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center"
    )
    bottom.set_xlabel("layer (torch module name)")
    bottom.grid(True, axis="y", alpha=0.3)
    fig.suptitle(
        title or f"{plan.model}: bits and sparsity per layer (budget {plan.budget})", fontsize=11
    )
    return _save(fig, out)


def search_path_plot(
    plan: CompressionPlan | Mapping[str, Any], out: str | os.PathLike, *, title: str | None = None
) -> Path:
    """The search path: cumulative Fisher distance g against the budget's cost after each move,
    with the budget limit."""
    plan = _plan(plan)
    fig = _figure()
    ax = fig.add_subplot()
    kind = plan.budget.kind
    if plan.path:
        costs = [s.cost for s in plan.path]
        gs = [s.g for s in plan.path]
        ax.plot(costs, gs, "-o", ms=3.5, color=COLORS[0], label="path (one point per move)")
        ax.annotate(
            "first move",
            (costs[0], gs[0]),
            textcoords="offset points",
            xytext=(-10, 8),
            fontsize=8,
            ha="right",
        )
        ax.scatter(
            [costs[-1]],
            [gs[-1]],
            s=80,
            color=FRONT_COLOR,
            zorder=3,
            edgecolor="black",
            label=f"plan: cost {costs[-1]:.4g}, g {gs[-1]:.4g}",
        )
    else:
        ax.text(
            0.5, 0.5, "the plan records no path", ha="center", va="center", transform=ax.transAxes
        )
    ax.axvline(plan.budget.limit, color="black", ls="--", lw=1, label=f"budget {plan.budget}")
    ax.margins(x=0.06, y=0.06)
    ax.set_xlabel(f"cost after the move: {LABELS.get(kind, kind)}")
    ax.set_ylabel("cumulative Fisher distance g (√(Σ F·δθ²), summed)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{plan.model}: search path ({len(plan.path)} moves)", fontsize=11)
    return _save(fig, out)


def loop_plot(
    iterations: Sequence[Mapping[str, Any]],
    out: str | os.PathLike,
    *,
    targets: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """The closed loop: per resource, the fast and the accurate estimate of each iteration's
    design against the limit the search was given and the user's target."""
    its = [i.to_dict() if hasattr(i, "to_dict") else dict(i) for i in iterations]
    targets = dict(targets or (its[0].get("limits", {}) if its else {}))
    kinds: list[str] = []
    for src in (targets, *(i.get("limits", {}) for i in its)):
        kinds.extend(k for k in src if k not in kinds)
    if not kinds:
        for i in its:
            kinds.extend(k for k in i.get("accurate", {}) if k not in kinds)
    kinds = kinds or ["lut"]
    fig = _figure(max(5.0, 4.2 * len(kinds)), 4.4)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    xs = [int(i.get("iteration", n)) for n, i in enumerate(its)]
    for ax, kind in zip(axes, kinds, strict=True):

        def series(field: str, kind: str = kind) -> list[float]:
            return [_num(i.get(field, {}).get(kind)) for i in its]

        ax.plot(xs, series("fast"), "--o", color=COLORS[0], label="fast estimate")
        ax.plot(xs, series("accurate"), "-s", color=COLORS[1], label="accurate estimate")
        ax.plot(
            xs,
            series("limits"),
            ls="none",
            marker="_",
            ms=22,
            mew=2.5,
            color="0.45",
            label="limit given to the search",
        )
        if kind in targets:
            ax.axhline(
                targets[kind], color=FRONT_COLOR, ls=":", lw=1.5, label=f"target {targets[kind]:g}"
            )
        ax.set_xticks(xs)
        ax.set_xlabel("loop iteration")
        ax.set_ylabel(LABELS.get(kind, kind))
        ax.set_title(kind.upper(), fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fits = ""
    if its and targets:
        from fitc.loop import overshoot

        fits = (
            f" — last design at {100 * overshoot(its[-1].get('accurate', {}), targets):.0f} % "
            "of its worst budget"
        )
    fig.suptitle(
        title or f"closed loop: estimates against the budget ({len(its)} iterations){fits}",
        fontsize=11,
    )
    return _save(fig, out)


def layer_resources_plot(
    resources: ResourceReport | Mapping[str, Any],
    out: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Per layer: LUTs and flip-flops (left), DSP slices and BRAM 18K blocks (right)."""
    rep = (
        resources
        if isinstance(resources, ResourceReport)
        else ResourceReport.from_dict(dict(resources))
    )
    names = [lr.name for lr in rep.layers]
    y = list(range(len(names)))
    fig = _figure(10.0, max(3.2, 0.55 * len(names) + 2.0))
    left, right = fig.subplots(1, 2, sharey=True)
    h = 0.38
    for ax, pairs in (
        (left, (("lut", "LUT"), ("ff", "FF"))),
        (right, (("dsp", "DSP"), ("bram_18k", "BRAM 18K"))),
    ):
        for j, (field, label) in enumerate(pairs):
            vals = [float(getattr(lr, field)) for lr in rep.layers]
            bars = ax.barh(
                [i + (j - 0.5) * h for i in y],
                vals,
                h,
                color=COLORS[j + (2 if ax is right else 0)],
                label=f"{label} (total {_count(getattr(rep, field))})",
            )
            ax.bar_label(bars, labels=[_count(v) for v in vals], fontsize=7, padding=2)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.18)
    right.xaxis.get_major_locator().set_params(integer=True)
    if not any(lr.dsp or lr.bram_18k for lr in rep.layers):
        right.set_xlim(0, 1)  # all zero: show an honest empty axis from 0
    left.set_xlabel("count (LUTs, flip-flops)")
    right.set_xlabel("count (DSP slices, BRAM 18K blocks)")
    left.set_yticks(y, names)
    left.invert_yaxis()
    left.set_ylabel("layer (torch module name)")
    if not names:
        left.text(
            0.5,
            0.5,
            "the report has no per-layer figures",
            ha="center",
            va="center",
            transform=left.transAxes,
        )
    hw = rep.hardware
    fig.suptitle(
        title
        or f"resources per layer — {rep.source} model, {hw.strategy}, reuse "
        f"factor {hw.reuse_factor}, {hw.part}; latency {rep.latency_cycles:g} cycles "
        f"({rep.latency_ns:g} ns)",
        fontsize=10,
    )
    return _save(fig, out)


__all__ = [
    "LABELS",
    "layer_plan_plot",
    "layer_resources_plot",
    "loop_plot",
    "pareto_plot",
    "search_path_plot",
]
