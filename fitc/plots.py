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
    "combined": "fast estimate / budget, worst resource (1 = every budget met)",
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
    """The search path: the budget's cost after each move against the Fisher distance travelled
    from the float model (the search's g), with the budget line and the chosen plan marked. The
    cost axis is logarithmic when the path spans more than a factor of 8."""
    plan = _plan(plan)
    fig = _figure()
    ax = fig.add_subplot()
    kind = plan.budget.kind
    if plan.path:
        gs = [s.g for s in plan.path]
        costs = [s.cost for s in plan.path]
        ax.plot(gs, costs, "-o", ms=3.5, color=COLORS[0], label="one point per move")
        ax.annotate(
            "start (no move yet)" if plan.path[0].move == "start" else "first move",
            (gs[0], costs[0]),
            textcoords="offset points",
            xytext=(8, 2),
            fontsize=8,
        )
        inside = next((i for i, c in enumerate(costs) if c <= plan.budget.limit), None)
        if inside is not None and inside != len(costs) - 1:
            ax.scatter(
                [gs[inside]],
                [costs[inside]],
                s=50,
                facecolor="none",
                edgecolor="black",
                zorder=3,
                label=f"first within the budget (move {inside})",
            )
        ax.scatter(
            [gs[-1]],
            [costs[-1]],
            s=90,
            color=FRONT_COLOR,
            zorder=4,
            edgecolor="black",
            label=f"chosen plan: cost {_cost_text(kind, costs[-1])}, predicted FIT "
            f"{plan.predicted_fit:.3g}",
        )
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        scale = 100.0 if kind in ("size", "bops") else 1.0
        unit = " %" if kind in ("size", "bops") else ""
        positive = [c for c in costs + [plan.budget.limit] if c > 0]
        if positive and max(positive) / min(positive) > 8:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{scale * v:,.4g}{unit}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.text(
            0.5, 0.5, "the plan records no path", ha="center", va="center", transform=ax.transAxes
        )
    ax.axhline(
        plan.budget.limit,
        color="black",
        ls="--",
        lw=1,
        label="budget: each resource at its limit"
        if kind == "combined"
        else f"budget: {_cost_text(kind, plan.budget.limit)}",
    )
    ax.margins(x=0.04, y=0.08)
    ax.set_xlabel("Fisher distance from the float model, summed over the moves (g)")
    ax.set_ylabel(_COST_AXIS.get(kind, LABELS.get(kind, kind)))
    ax.grid(True, alpha=0.3, which="major")
    ax.legend(fontsize=8, loc="upper right")
    budget = "several budgets at once" if kind == "combined" else f"budget {plan.budget}"
    ax.set_title(
        title or f"{plan.model}: search path, {len(plan.path)} moves ({budget})", fontsize=11
    )
    return _save(fig, out)


#: The search path's cost axis, by budget kind.
_COST_AXIS = {
    "size": "weight bits (% of the float model's)",
    "bops": "bit operations (% of the float model's)",
    "lut": "LUTs, fast estimate (count)",
    "ff": "flip-flops, fast estimate (count)",
    "dsp": "DSP slices, fast estimate (count)",
    "bram": "BRAM 18K blocks, fast estimate (count)",
    "latency": "latency, fast estimate (clock cycles)",
    "combined": "fast estimate / budget of the worst resource (1 = all met)",
}


def _cost_text(kind: str, v: float) -> str:
    if kind in ("size", "bops"):
        return f"{100 * v:.3g} %"
    if kind == "combined":
        return f"{v:.3g} × budget"
    return f"{v:,.0f}"


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
    zero = [
        k
        for k in kinds
        if its and all(not _num(i.get(f, {}).get(k)) for i in its for f in ("fast", "accurate"))
    ]
    if len(zero) < len(kinds):  # a panel of zeros says less than one line in the title
        kinds = [k for k in kinds if k not in zero]
    else:
        zero = []
    fig = _figure(max(7.5, 3.6 * len(kinds)), 4.4)
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
                targets[kind],
                color=FRONT_COLOR,
                ls=":",
                lw=1.5,
                label=f"budget {targets[kind]:,.0f}",
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
            f": the last design is at {100 * overshoot(its[-1].get('accurate', {}), targets):.3g} % "
            "of its budget (worst resource)"
        )
    names = {"bram": "BRAM 18K"}
    none = (
        f"\n({', '.join(names.get(k, k.upper()) for k in zero)}: 0 in every iteration, not drawn)"
        if zero
        else ""
    )
    fig.suptitle(
        title or f"closed loop, {len(its)} iteration{'s' if len(its) != 1 else ''}{fits}{none}",
        fontsize=11,
    )
    return _save(fig, out)


def layer_resources_plot(
    resources: ResourceReport | Mapping[str, Any],
    out: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Per layer: LUTs and flip-flops, and — when any layer uses them — DSP slices and BRAM 18K
    blocks in a second panel (a panel of zeros is left out; the title says so)."""
    rep = _resources(resources)
    names = [lr.name for lr in rep.layers]
    y = list(range(len(names)))
    hard = any(lr.dsp or lr.bram_18k for lr in rep.layers)
    fig = _figure(10.0 if hard else 7.5, max(3.2, 0.55 * len(names) + 2.0))
    panels = fig.subplots(1, 2 if hard else 1, sharey=True, squeeze=False)[0]
    groups = [(("lut", "LUT"), ("ff", "FF"))]
    if hard:
        groups.append((("dsp", "DSP"), ("bram_18k", "BRAM 18K")))
    h = 0.38
    for n, (ax, pairs) in enumerate(zip(panels, groups, strict=True)):
        for j, (field, label) in enumerate(pairs):
            vals = [float(getattr(lr, field)) for lr in rep.layers]
            bars = ax.barh(
                [i + (j - 0.5) * h for i in y],
                vals,
                h,
                color=COLORS[j + 2 * n],
                label=f"{label} (total {_count(getattr(rep, field))})",
            )
            ax.bar_label(bars, labels=[_count(v) for v in vals], fontsize=7, padding=2)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.18)
    panels[0].set_xlabel("count (LUTs, flip-flops)")
    if hard:
        panels[1].xaxis.get_major_locator().set_params(integer=True)
        panels[1].set_xlabel("count (DSP slices, BRAM 18K blocks)")
    panels[0].set_yticks(y, names)
    panels[0].invert_yaxis()
    panels[0].set_ylabel("layer (torch module name)")
    if not names:
        panels[0].text(
            0.5,
            0.5,
            "the report has no per-layer figures",
            ha="center",
            va="center",
            transform=panels[0].transAxes,
        )
    hw = rep.hardware
    none = "" if hard else "\nno layer uses DSP slices or BRAM (0 of each)"
    fig.suptitle(
        title
        or f"resources per layer — {rep.source} model, {hw.strategy}, reuse factor "
        f"{hw.reuse_factor}; latency {rep.latency_cycles:g} cycles ({rep.latency_ns:g} ns){none}",
        fontsize=10,
    )
    return _save(fig, out)


def _resources(resources: ResourceReport | Mapping[str, Any]) -> ResourceReport:
    if isinstance(resources, ResourceReport):
        return resources
    return ResourceReport.from_dict(dict(resources))


#: The resources a part has a count of: budget kind, report field, label.
_PART_RESOURCES = (
    ("lut", "lut", "LUT"),
    ("ff", "ff", "FF"),
    ("dsp", "dsp", "DSP"),
    ("bram", "bram_18k", "BRAM 18K"),
)


def utilisation_plot(
    resources: ResourceReport | Mapping[str, Any],
    out: str | os.PathLike,
    *,
    device: Mapping[str, Any],
    targets: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """The design against the part: one bar per resource (LUT, FF, DSP, BRAM 18K) as a share of
    the part's count, the budget of each resource when there is one, and the whole part (100 %).

    ``device`` is ``{"name": "xc7z020", "totals": {"lut": 53200, "ff": …, "dsp": …, "bram": …}}``
    (optionally ``"fraction"``: the device budget's share); ``targets`` the budget kind → limit.
    """
    rep = _resources(resources)
    totals = device["totals"]
    targets = dict(targets or {})
    rows = [(k, f, label) for k, f, label in _PART_RESOURCES if totals.get(k)]
    used = [float(getattr(rep, f)) / totals[k] for k, f, _ in rows]
    fig = _figure(7.5, 1.2 + 0.75 * len(rows))
    ax = fig.add_subplot()
    y = list(range(len(rows)))
    ax.barh(y, [100 * u for u in used], 0.55, color=COLORS[0], label="used", zorder=2)
    first = True
    for i, ((k, _, _), u) in enumerate(zip(rows, used, strict=True)):
        text, right = f"{100 * u:.3g} %", 100 * u
        if k in targets:
            share = 100 * targets[k] / totals[k]
            ax.plot(
                [share, share],
                [i - 0.4, i + 0.4],
                color=FRONT_COLOR,
                lw=2.5,
                zorder=3,
                label="budget" if first else None,
            )
            first = False
            text += f" — budget {targets[k]:,.0f} ({share:.3g} %)"
            right = max(right, share)
        ax.text(right + 1.5, i, text, va="center", fontsize=8)
    ax.axvline(100, color="black", lw=1, ls="--", label="the whole part")
    ax.set_yticks(
        y,
        [f"{label}\n{getattr(rep, f):,.0f} / {totals[k]:,}" for k, f, label in rows],
        fontsize=9,
    )
    ax.invert_yaxis()
    top = max([100.0] + [100 * u for u in used])
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel(f"share of the {device['name']}'s resources (%)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    share = (
        f", budget {100 * device['fraction']:g} % of each"
        if device.get("fraction") is not None
        else ""
        if any(k in targets for k, _, _ in rows)
        else " (no resource budget)"
    )
    ax.set_title(
        title
        or f"{rep.source} estimate against {device['name']}{share}: latency "
        f"{rep.latency_cycles:g} cycles ({rep.latency_ns:g} ns)",
        fontsize=10,
    )
    return _save(fig, out)


def constant_axis(rows: Sequence[Mapping[str, Any]], cost: str) -> float | None:
    """The one value every finished row has for ``cost`` (a Pareto plot along it says nothing),
    or None when the values differ or no row has one."""
    values = {
        _num(r.get(cost))
        for r in rows
        if r.get("status", "COMPLETE") == "COMPLETE" and _num(r.get(cost)) is not None
    }
    return values.pop() if len(values) == 1 else None


__all__ = [
    "LABELS",
    "constant_axis",
    "layer_plan_plot",
    "layer_resources_plot",
    "loop_plot",
    "pareto_plot",
    "search_path_plot",
    "utilisation_plot",
]
