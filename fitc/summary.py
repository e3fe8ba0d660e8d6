"""The summary of a run for people: budgets and results in words and units, and what to do next.

Contract:
- :func:`run_summary` reads a run directory's artifacts (``run.json``, ``plan.json``,
  ``loop.json``) and returns plain JSON types (``fitc … --json`` prints it as is); it runs no
  pipeline code and never writes. ``targets`` (budget kind → limit) is the run's resolved budget
  (``Run.targets``); without it the budget is read back from the recorded config and metrics.
- :func:`summary_lines` renders that dict as the lines the CLI prints: the budget, each resource as
  used / limit and as a share of the whole part, the closed loop one iteration a line, accuracy
  float → built → fine-tuned, bit-exactness of each hop, and the next commands.
- Resource kinds are the budget kinds (``lut``, ``ff``, ``dsp``, ``bram`` in 18 Kb blocks,
  ``latency`` in clock cycles); fractions are fractions (0.25), rendered as percentages.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from fitc.errors import ArtifactError
from fitc.rundir import RUN_JSON, read_json

#: How each budget kind is named for people.
KIND_NAMES = {
    "lut": "LUT",
    "ff": "FF",
    "dsp": "DSP",
    "bram": "BRAM 18K",
    "latency": "latency",
    "size": "weight size",
    "bops": "BOPs",
}
_PART_KINDS = ("lut", "ff", "dsp", "bram")  # what a part has a count of
_REPORT_FIELD = {"lut": "lut", "ff": "ff", "dsp": "dsp", "bram": "bram_18k"}
_STAGE_ORDER = (
    "train", "search", "loop", "finetune", "export", "verify", "lower", "rtl", "synth", "estimate"
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Numbers in words


def count(v: float) -> str:
    """``13267.4`` → ``13,267``."""
    return f"{v:,.0f}"


def percent(fraction: float) -> str:
    """``0.2494`` → ``24.9 %``: three significant digits (``6.25 %``, ``127 %``, ``0.0425 %``)."""
    p = 100 * fraction
    if p == 0 or not math.isfinite(p):
        return f"{p:g} %"
    return f"{p:.3g} %" if abs(p) < 1000 else f"{p:,.0f} %"


def accuracy(fraction: float) -> str:
    """``0.9443`` → ``94.4 %`` (one decimal: 0.1 % is finer than most test splits resolve)."""
    return f"{100 * fraction:.1f} %"


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None:
        return None
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


# ---------------------------------------------------------------------------------------------
# The summary as data


def run_summary(run_dir: str | Path, targets: dict[str, float] | None = None) -> dict[str, Any]:
    """Everything :func:`summary_lines` prints, as JSON-able data (see the module docstring)."""
    d = Path(run_dir)
    if not (d / RUN_JSON).is_file():
        raise ArtifactError(f"{d} is not a fitc run directory (no {RUN_JSON})")
    record = read_json(d / RUN_JSON)
    cfg = record.get("config", {}) or {}
    m = record.get("metrics", {}) or {}
    stages = [s for s in _STAGE_ORDER if s in (record.get("stages") or {})]
    targets = dict(targets) if targets is not None else recorded_targets(cfg, m)
    res = m.get("resources") if isinstance(m.get("resources"), dict) else None
    hw = (res or {}).get("hardware") or {}
    device = device_info(cfg, hw.get("part") or cfg.get("part"))

    out: dict[str, Any] = {
        "run_dir": str(d),
        "model": cfg.get("model"),
        "stages": stages,
        "budget": _budget(targets, device),
    }
    plan = _plan(d)
    if plan is not None:
        out["plan"] = plan
    achieved = {
        k: m[f"achieved_{k}"] for k in ("size", "bops") if m.get(f"achieved_{k}") is not None
    }
    if achieved:
        out["achieved"] = achieved
    if res is not None:
        out["resources"] = resource_shares(res, targets, device)
    if isinstance(m.get("loop"), dict):
        out["loop"] = _loop(d, m["loop"], targets)
    out["fits"] = _fits(targets, achieved, out.get("resources"))
    acc = {
        k: m[f"{k}_test_accuracy"]
        for k in ("float", "built", "finetuned")
        if m.get(f"{k}_test_accuracy") is not None
    }
    hops = _hops(m)
    if acc and hops:
        acc["n_test_samples"] = hops[0]["n_samples"]
    if acc:
        out["accuracy"] = acc
    if hops:
        out["equivalence"] = hops
    if "lower" in stages and m.get("io_type"):
        out["firmware"] = {"io_type": m["io_type"], "why": m.get("io_type_reason", "")}
        if m.get("strategy"):
            out["firmware"].update(
                strategy=m["strategy"], strategy_why=m.get("strategy_reason", "")
            )
    out["next"] = _next_commands(d, cfg, stages, hw.get("backend") or cfg.get("backend"))
    return out


def recorded_targets(cfg: dict[str, Any], m: dict[str, Any]) -> dict[str, float]:
    """The budget as the pipeline resolved it (``Run.targets``), read back from the record."""
    from fitc.artifacts import Budget

    loop = m.get("loop")
    if isinstance(loop, dict) and isinstance(loop.get("targets"), dict):
        return {k: float(v) for k, v in loop["targets"].items()}
    if isinstance(m.get("budget"), dict):
        return {k: float(v) for k, v in m["budget"].items()}
    budgets = [Budget.parse(b) for b in cfg.get("budget") or []]
    if cfg.get("device") and cfg.get("fraction"):
        from fitc.backends.devices import device_budgets

        budgets += device_budgets(cfg["device"], cfg["fraction"])
    targets: dict[str, float] = {}
    for b in budgets or [Budget.parse("size=1/16")]:
        targets[b.kind] = min(b.limit, targets.get(b.kind, b.limit))
    return targets


def device_info(cfg: dict[str, Any], part: str | None) -> dict[str, Any] | None:
    """The device preset of the run (``--device``, else the part's), with its counts."""
    from fitc.backends.devices import UnknownDeviceError, get_device

    name = cfg.get("device") or part
    if not name:
        return None
    try:
        dev = get_device(name)
    except UnknownDeviceError:
        return None
    return {
        "name": dev.name,
        "part": part or dev.part,
        "family": dev.family,
        "fraction": cfg.get("fraction") if cfg.get("device") else None,
        "totals": {k: dev.resource(k) for k in _PART_KINDS},
    }


def _budget(targets: dict[str, float], device: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"targets": targets}
    if device is not None and device.get("fraction") is not None:
        out["device"] = device["name"]
        out["family"] = device["family"]
        out["part"] = device["part"]
        out["fraction"] = device["fraction"]
    return out


def _plan(d: Path) -> dict[str, Any] | None:
    try:
        p = read_json(d / "plan.json")
    except ArtifactError:
        return None
    return {
        "budget": p.get("budget"),
        "cost": p.get("achieved_cost"),
        "predicted_fit": p.get("predicted_fit"),
        "layers": [
            {
                "layer": lp["name"],
                "weight_bits": lp["weight_bits"],
                "act_bits": lp["act_bits"],
                "weights": lp["n_weights"],
                "nonzero": lp["n_nonzero"],
                "sparsity": 1 - lp["n_nonzero"] / lp["n_weights"],
            }
            for lp in p.get("layers", [])
        ],
    }


def resource_shares(
    res: dict[str, Any], targets: dict[str, float], device: dict[str, Any] | None
) -> dict[str, Any]:
    """A resource report (``ResourceReport.to_dict()``) against the budget and the part: per
    kind the count used, the limit, the share of the limit, the part's count, the share of it."""
    totals = (device or {}).get("totals", {})
    kinds = []
    for kind, field in _REPORT_FIELD.items():
        used = float(res.get(field, 0.0))
        limit = targets.get(kind)
        kinds.append(
            {
                "kind": kind,
                "used": used,
                "limit": limit,
                "of_limit": _ratio(used, limit),
                "part_total": totals.get(kind),
                "of_part": _ratio(used, totals.get(kind)),
            }
        )
    hw = res.get("hardware") or {}
    return {
        "source": res.get("source"),
        "part": hw.get("part"),
        "device": (device or {}).get("name"),
        "strategy": hw.get("strategy"),
        "backend": hw.get("backend"),
        "reuse_factor": hw.get("reuse_factor"),
        "clock_period_ns": hw.get("clock_period_ns"),
        "kinds": kinds,
        "latency_cycles": res.get("latency_cycles"),
        "latency_limit_cycles": targets.get("latency"),
        "latency_ns": res.get("latency_ns"),
        "initiation_interval_cycles": res.get("initiation_interval_cycles"),
    }


def _loop(d: Path, summary: dict[str, Any], targets: dict[str, float]) -> dict[str, Any]:
    try:
        history = read_json(d / "loop.json").get("history", [])
    except (ArtifactError, AttributeError):
        history = []
    rows = []
    for it in history:
        accurate = it.get("accurate", {}) or {}
        worst, ratio = None, -1.0
        for kind, limit in targets.items():
            r = _ratio(accurate.get(kind), limit)
            if r is not None and r > ratio:
                worst, ratio = kind, r
        rows.append(
            {
                "iteration": it.get("iteration"),
                "calibrated": bool(it.get("calibrated")),
                "tightened": {
                    k: v for k, v in (it.get("limits") or {}).items() if v < targets.get(k, v)
                },
                "fast": it.get("fast", {}),
                "accurate": accurate,
                "worst_kind": worst,
                "worst_of_limit": ratio if worst is not None else None,
                "accuracy": it.get("accuracy"),
            }
        )
    return {
        "iterations": summary.get("iterations", len(rows)),
        "stop_reason": summary.get("stop_reason"),
        "chosen_iteration": summary.get("chosen_iteration"),
        "accurate_model": summary.get("accurate_model"),
        "fits": summary.get("fits"),
        "history": rows,
    }


def _fits(
    targets: dict[str, float], achieved: dict[str, float], resources: dict[str, Any] | None
) -> bool | None:
    """Whether every budget is met by what was measured (None: nothing measured yet), decided
    by :func:`fitc.loop.fits`, as the estimate stage decides it for ``run.json``."""
    from fitc.loop import fits

    measured = dict(achieved)
    if resources is not None:
        measured.update({k["kind"]: k["used"] for k in resources["kinds"]})
        measured["latency"] = float(resources["latency_cycles"])
    return fits(measured, targets)


_EDGE = " (range-edge rows)"


def _hops(m: dict[str, Any]) -> list[dict[str, Any]]:
    hops = [(h, "") for h in (m.get("equivalence") or {}).get("hops", [])]
    for key in ("emulation", "rtl_emulation"):  # hls4ml's C++ emulation, the RTL's Verilator
        if isinstance(m.get(key), dict):
            hops.append((m[key], ""))
    edges = [(h, _EDGE) for h in (m.get("equivalence_range_edge") or {}).get("hops", [])]
    if isinstance(m.get("emulation_range_edge"), dict):
        edges.append((m["emulation_range_edge"], _EDGE))
    return [
        {
            "hop": f"{h['a']} → {h['b']}{where}",
            "exact": h["max_abs_diff"] == 0 and h["identical_rows"] == 1,
            "max_abs_diff": h["max_abs_diff"],
            "identical_rows": h["identical_rows"],
            "n_samples": h["n_samples"],
        }
        for h, where in hops + edges
    ]


def _next_commands(
    d: Path, cfg: dict[str, Any], stages: list[str], backend: str | None
) -> list[dict[str, str]]:
    q = shlex.quote(str(d))
    if "estimate" in stages:
        synth = (
            {"command": f"fitc synth {q} --tool yosys", "why": "open-source synthesis of the RTL"}
            if "rtl" in stages and "synth" not in stages
            else {
                "command": f"fitc synth {q}",
                "why": f"vendor synthesis (needs {backend or 'Vitis'} HLS on PATH)",
            }
            if "lower" in stages
            else None
        )
        return [
            {"command": f"fitc report {q}", "why": "report.md and plots/"},
            *filter(None, [synth]),
        ]
    if "synth" in stages:
        return [{"command": f"fitc estimate {q} --model yosys", "why": "the netlist's counts"}]
    if "rtl" in stages:
        return [
            {"command": f"fitc synth {q} --tool yosys", "why": "Yosys netlist of the RTL"},
            {"command": f"fitc estimate {q}", "why": "FPGA resources of the design"},
        ]
    if "lower" in stages:
        return [{"command": f"fitc estimate {q}", "why": "FPGA resources of the design"}]
    if "verify" in stages:
        return [{"command": f"fitc lower {q}", "why": "hls4ml project and its C++ emulation"}]
    if "finetune" in stages or "loop" in stages:
        return [{"command": f"fitc export {q}", "why": "QONNX graph, checked bit for bit"}]
    if "search" in stages:
        return [
            {
                "command": rerun_command(cfg, d),
                "why": "fine-tune, export, lower and estimate this plan (the search is reused)",
            }
        ]
    return [{"command": rerun_command(cfg, d), "why": "the whole pipeline"}]


def rerun_command(cfg: dict[str, Any], run_dir: str | Path) -> str:
    """``fitc run …`` with the recorded options that differ from the defaults: it continues the
    run in ``run_dir`` (finished stages are reused)."""
    import dataclasses

    from fitc.config import RunConfig

    skip = {"out", "progress", "until", "train_module", "float_from", "fisher_from"}
    skip |= {"fisher_max_batches"}  # no flag: set in a --config file
    defaults = RunConfig().to_dict()
    words = ["fitc", "run"]
    for f in dataclasses.fields(RunConfig):
        key = f.name
        if key in skip or key not in cfg or cfg[key] == defaults.get(key) or cfg[key] is None:
            continue
        flag = "--" + key.replace("_", "-")
        value = cfg[key]
        if key == "model_args":
            for k, v in value.items():  # values are read back as YAML, of which JSON is a part
                words += ["--model-arg", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
        elif key == "budget":
            for b in value:
                words += ["--budget", str(b)]
        elif isinstance(value, bool):
            if value:
                words.append(flag)
        elif isinstance(value, list):
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    words += ["--out", str(run_dir)]
    return " ".join(shlex.quote(w) for w in words)


# ---------------------------------------------------------------------------------------------
# The summary in words


def budget_text(s: dict[str, Any]) -> str:
    """``25 % of xc7z020 (…): LUT ≤ 13,300, …`` or ``weight size ≤ 1/16 of the float model``."""
    b = s["budget"]
    parts = []
    for kind, limit in b["targets"].items():
        if kind in ("size", "bops"):
            what = "weight bits" if kind == "size" else "bit operations"
            parts.append(f"{KIND_NAMES[kind]} ≤ {_fraction(limit)} of the float model's {what}")
        elif kind == "latency":
            parts.append(f"latency ≤ {count(limit)} clock cycles")
        else:
            parts.append(f"{KIND_NAMES.get(kind, kind)} ≤ {count(limit)}")
    text = ", ".join(parts)
    if b.get("device"):
        where = ", ".join(x for x in (b.get("family"), b.get("part")) if x)
        text = f"{percent(b['fraction'])} of {b['device']} ({where}): {text}"
    return text


def _fraction(v: float) -> str:
    inv = 1 / v if v else math.inf
    if math.isfinite(inv) and abs(inv - round(inv)) < 1e-9 and round(inv) > 1:
        return f"1/{round(inv)} ({percent(v)})"
    return percent(v)


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The summary as the lines the CLI prints (labels in a column of 11)."""
    lines: list[str] = []

    def add(label: str, text: str) -> None:
        lines.append(f"{label:<11}{text}")

    add("run", f"{s['run_dir']} ({s.get('model')})")
    add("budget", budget_text(s))

    if s.get("achieved"):
        words = {
            "size": "weights {} of the float model's bits",
            "bops": "BOPs {} of the float model's",
        }
        add("size", ", ".join(words[k].format(percent(v)) for k, v in s["achieved"].items()))
    elif s.get("plan") and s["plan"].get("cost") is not None:
        add("planned", _planned_text(s["plan"]))

    if s.get("firmware"):
        fw = s["firmware"]
        add(
            "firmware",
            f"hls4ml project, {fw['io_type']}" + (f" ({fw['why']})" if fw["why"] else ""),
        )
        if fw.get("strategy"):
            why = fw.get("strategy_why", "")
            add("strategy", fw["strategy"] + (f" ({why})" if why else ""))
    res = s.get("resources")
    if res is not None:
        on = f"{res['device']} ({res['part']})" if res.get("device") else res["part"]
        if res["source"] == "yosys":
            what = "Yosys netlist of the RTL (open-source synthesis, before place and route)"
        elif res.get("backend") == "rtl":
            what = f"{res['source']} estimate of the RTL (da4ml adder graphs)"
        else:
            what = (
                f"{res['source']} estimate: {res['strategy']}, reuse factor {res['reuse_factor']}"
            )
        add("resources", f"{what}, on {on}")
        lines.extend(_resource_lines(res, s["budget"]))
    if s.get("fits") is not None:
        add("fits", "yes: every budget is met" if s["fits"] else "NO: " + _misses(s))

    loop = s.get("loop")
    if loop:
        n = loop["iterations"]
        add(
            "loop",
            f"{n} iteration{'s' if n != 1 else ''}, stopped: {loop['stop_reason']}; kept "
            f"iteration {loop['chosen_iteration']}",
        )
        for it in loop["history"]:
            lines.append(
                _loop_line(it, loop["chosen_iteration"], loop.get("accurate_model") or "measured")
            )

    acc = s.get("accuracy")
    if acc:
        steps = [
            f"{label} {accuracy(acc[k])}"
            for k, label in (("float", "float"), ("built", "built"), ("finetuned", "fine-tuned"))
            if k in acc
        ]
        n = acc.get("n_test_samples")
        add("accuracy", " → ".join(steps) + (f" ({n} test samples)" if n else " (test split)"))
    hops = s.get("equivalence", [])
    edges = [h for h in hops if h["hop"].endswith(_EDGE)]
    if edges and all(h["exact"] for h in edges):  # one line for them
        hops = [h for h in hops if h not in edges]
        n = edges[0]["n_samples"]
    for i, h in enumerate(hops):
        verdict = (
            "bit-exact"
            if h["exact"]
            else f"DIFFERENT: max |diff| {h['max_abs_diff']:g}, identical rows "
            f"{percent(h['identical_rows'])}"
        )
        add("bit-exact" if i == 0 else "", f"{h['hop']}: {verdict}")
    if edges and all(h["exact"] for h in edges):
        add("", f"the same {len(edges)} hops on {n} range-edge rows: bit-exact")
    width = max((len(n["command"]) for n in s.get("next", [])), default=0)
    for i, n in enumerate(s.get("next", [])):
        add("next" if i == 0 else "", f"{n['command']:<{width}}  # {n['why']}")
    return lines


def _planned_text(plan: dict[str, Any]) -> str:
    kind = (plan.get("budget") or {}).get("kind")
    cost = plan["cost"]
    if kind in ("size", "bops"):
        return (
            f"{KIND_NAMES[kind]} {percent(cost)} of the float model's (search, before fine-tuning)"
        )
    if kind == "combined":
        return f"fast analytical estimate at {percent(cost)} of the budget (its worst resource)"
    if kind == "latency":
        return f"fast analytical estimate: {count(cost)} clock cycles"
    return f"fast analytical estimate: {KIND_NAMES.get(kind, kind)} {count(cost)}"


def _resource_lines(res: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    share = f" of the {percent(budget['fraction'])} share" if budget.get("device") else ""
    rows = []
    for k in res["kinds"]:
        text = f"  {KIND_NAMES[k['kind']]:<9}{count(k['used']):>9}"
        if k["limit"] is not None:
            text += f" / {count(k['limit'])} ({percent(k['of_limit'])}{share})"
        if k["part_total"]:
            sep = ";" if k["limit"] is not None else " ="
            text += f"{sep} {percent(k['of_part'])} of the part ({count(k['part_total'])})"
        rows.append(text)
    if res.get("device") is None and res.get("part"):
        rows.append(f"  (part {res['part']} is not a device preset: no share of the part)")
    lat = res.get("latency_cycles")
    if lat is not None:
        text = f"  {'latency':<9}{count(lat):>9}"
        if res.get("latency_limit_cycles") is not None:
            text += f" / {count(res['latency_limit_cycles'])}"
        text += " clock cycles"
        if res.get("latency_ns") is not None:
            text += f" = {res['latency_ns']:g} ns at {res.get('clock_period_ns', 0):g} ns"
        ii = res.get("initiation_interval_cycles")
        if ii is not None:
            text += f", a new input every {count(ii)} cycle{'s' if ii != 1 else ''}"
        rows.append(text)
    return rows


def _misses(s: dict[str, Any]) -> str:
    misses = []
    for kind, limit in s["budget"]["targets"].items():
        if kind in s.get("achieved", {}):
            if s["achieved"][kind] > limit:
                misses.append(
                    f"{KIND_NAMES[kind]} {percent(s['achieved'][kind])} > {percent(limit)}"
                )
        elif s.get("resources") and kind in _REPORT_FIELD:
            k = next(k for k in s["resources"]["kinds"] if k["kind"] == kind)
            if k["used"] > limit:
                misses.append(f"{KIND_NAMES[kind]} {count(k['used'])} > {count(limit)}")
        elif s.get("resources") and kind == "latency":
            if s["resources"]["latency_cycles"] > limit:
                misses.append(f"latency {count(s['resources']['latency_cycles'])} > {count(limit)}")
    hint = (
        "; the closest design is kept — loosen the budget or give the loop more iterations "
        "(--max-loop-iterations)"
        if s.get("loop")
        else ""
    )
    return ", ".join(misses) + hint


def _loop_line(it: dict[str, Any], chosen: int | None, measured_by: str) -> str:
    what = ["recalibrated" if it["calibrated"] else "fast model as is"]
    if it["tightened"]:
        what.append(
            "search limit tightened to "
            + ", ".join(f"{KIND_NAMES.get(k, k)} {count(v)}" for k, v in it["tightened"].items())
        )
    parts = [", ".join(what)]
    kind = it.get("worst_kind")
    fast, acc = it["fast"].get(kind), it["accurate"].get(kind)
    if kind is not None and fast is not None and acc is not None:
        parts.append(
            f"{KIND_NAMES.get(kind, kind)} fast {count(fast)}, {measured_by} {count(acc)} = "
            f"{percent(it['worst_of_limit'])} of the budget"
        )
    if it.get("accuracy") is not None:
        parts.append(f"accuracy {accuracy(it['accuracy'])}")
    mark = "  ← kept" if it.get("iteration") == chosen else ""
    return f"  {it.get('iteration')}. " + "; ".join(parts) + mark


__all__ = [
    "KIND_NAMES",
    "accuracy",
    "budget_text",
    "count",
    "percent",
    "device_info",
    "recorded_targets",
    "rerun_command",
    "resource_shares",
    "run_summary",
    "summary_lines",
]
