"""``report.md`` for a run or a sweep directory, with its pictures in ``plots/``.

Contract:
- :func:`write_report` takes a run directory (``run.json`` present) or a sweep directory
  (``results.csv`` present, or ``sweep.json`` whose ledger can be read) and writes ``report.md``
  plus the PNGs it links to in ``<dir>/plots/``; it returns the path of ``report.md``.
- Run reports: configuration, metrics, stage times, the per-layer plan (bits, sparsity) and its
  search path, equivalence results, resources per layer and the closed loop — each when its
  artifact exists; a missing or unreadable artifact makes its section say so, never a crash.
- Sweep reports: the points by status, the results table, the Pareto fronts (tables and plots).
- Files are written atomically; the report reads artifacts only (no pipeline code runs).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fitc.errors import ArtifactError, FitcError
from fitc.rundir import RUN_JSON, read_json, write_text

log = logging.getLogger(__name__)

REPORT_MD = "report.md"
PLOTS = "plots"


# ---------------------------------------------------------------------------------------------
# Markdown helpers


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v.is_integer():
            return str(int(v))
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def _cell(v: Any) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def table(
    rows: Sequence[Mapping[str, Any]],
    cols: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """A markdown table of ``rows`` (dicts) over ``cols`` (default: the first row's keys)."""
    if not rows:
        return "_(no rows)_\n"
    cols = list(cols or rows[0].keys())
    headers = headers or {}
    out = [
        "| " + " | ".join(headers.get(c, c) for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    out += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _kv(mapping: Mapping[str, Any]) -> str:
    return table([{"key": k, "value": v} for k, v in mapping.items()])


def _pct(v: Any) -> str:
    try:
        return f"{100 * float(v):.2f} %"
    except (TypeError, ValueError):
        return "–"


def _missing(what: str, why: str) -> str:
    return f"_Not available: {what} ({why})._\n"


class _Section:
    """Collects markdown; a failing part of a section becomes a note instead of an exception."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *text: str) -> None:
        self.lines.extend(text)

    def plot(self, fn: Callable[..., Path], data: Any, out: Path, caption: str, **kw: Any) -> None:
        try:
            path = fn(data, out, **kw)
        except Exception as e:  # a bad artifact must not stop the report
            log.warning("plot %s failed: %s: %s", out.name, e.__class__.__name__, e)
            self.add(f"_Plot {out.name} could not be drawn: {e.__class__.__name__}: {e}_\n")
            return
        self.add(f"![{caption}]({PLOTS}/{path.name})\n")

    def text(self) -> str:
        return "\n".join(self.lines)


def _find(d: Path, name: str) -> Path | None:
    """``name`` in ``d``, or a numbered variant (``03_plan.json``)."""
    if (d / name).is_file():
        return d / name
    numbered = sorted(d.glob(f"[0-9]*_{name}"))
    return numbered[0] if numbered else None


def _load(d: Path, name: str) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, why it is missing)."""
    path = _find(d, name)
    if path is None:
        return None, f"no {name} in the run directory"
    try:
        return read_json(path), None
    except ArtifactError as e:
        return None, str(e)


# ---------------------------------------------------------------------------------------------
# Run reports


_METRIC_ORDER = (
    "float_test_accuracy",
    "built_test_accuracy",
    "finetuned_test_accuracy",
    "budget",
    "planned_cost",
    "achieved_size",
    "achieved_bops",
)
_NESTED = ("equivalence", "emulation", "resources", "loop")
_CHECK_COLUMNS = (
    "name",
    "planned_weight_bits",
    "exported_weight_bits",
    "planned_act_bits",
    "exported_act_bits",
    "planned_n_nonzero",
    "exported_n_nonzero",
    "mask_respected",
    "ok",
    "problems",
)


def _utilisation(
    s: _Section, d: Path, cfg: dict[str, Any], metrics: dict[str, Any], res: dict[str, Any]
) -> None:
    """The design against the part's capacity and the budget, when the part is a preset."""
    from fitc import plots
    from fitc.summary import device_info, recorded_targets

    try:
        device = device_info(cfg, (res.get("hardware") or {}).get("part"))
        targets = recorded_targets(cfg, metrics)
    except FitcError as e:
        s.add(_missing("the share of the part", str(e)))
        return
    if device is None:
        s.add(_missing("the share of the part", "the part is not a device preset"))
        return
    from fitc.summary import KIND_NAMES, count, percent, resource_shares

    rows = []
    for k in resource_shares(res, targets, device)["kinds"]:
        rows.append(
            {
                "resource": KIND_NAMES[k["kind"]],
                "used": count(k["used"]),
                "budget": count(k["limit"]) if k["limit"] is not None else "–",
                "of the budget": percent(k["of_limit"]) if k["of_limit"] is not None else "–",
                f"{device['name']} has": count(k["part_total"]),
                "of the part": percent(k["of_part"]),
            }
        )
    s.add(f"Against the {device['name']} ({device['family']}, {device['part']}):\n", table(rows))
    s.plot(
        plots.utilisation_plot,
        res,
        d / PLOTS / "utilisation.png",
        f"resources against the {device['name']}'s capacity",
        device=device,
        targets=targets,
    )


def _run_report(d: Path) -> str:
    from fitc import plots

    record = read_json(d / RUN_JSON)
    cfg = record.get("config", {}) or {}
    metrics = record.get("metrics", {}) or {}
    plots_dir = d / PLOTS
    s = _Section()
    parts = list(cfg.get("budget", []) or [])
    if cfg.get("device"):
        parts.append(f"{cfg['device']} at {_fmt(cfg.get('fraction'))}")
    budget = " + ".join(parts) or (_fmt(metrics["budget"]) if metrics.get("budget") else "")
    s.add(
        f"# fitc run: {cfg.get('model', '?')} — {budget or 'no budget recorded'}\n",
        f"Run directory `{d}`.\n",
    )

    acc = metrics.get("finetuned_test_accuracy")
    headline = [f"float accuracy {_pct(metrics.get('float_test_accuracy'))}"]
    if acc is not None:
        headline.append(f"compressed accuracy {_pct(acc)}")
    for key, label in (("achieved_size", "size"), ("achieved_bops", "BOPs")):
        if metrics.get(key) is not None:
            headline.append(f"{label} {_fmt(metrics[key])} of the float model")
    s.add("**" + "; ".join(headline) + "**\n")

    # Metrics
    s.add("## Metrics\n")
    scalars = {k: metrics[k] for k in _METRIC_ORDER if k in metrics}
    scalars.update(
        {
            k: v
            for k, v in metrics.items()
            if k not in scalars and k not in _NESTED and not isinstance(v, (dict, list))
        }
    )
    s.add(_kv(scalars) if scalars else _missing("metrics", "run.json has none yet"))

    # Stages
    s.add("## Stages\n")
    stages = record.get("stages", {}) or {}
    if stages:
        s.add(
            table(
                [
                    {
                        "stage": k,
                        "wall time (s)": v.get("wall_time_s"),
                        "outputs": ", ".join(v.get("outputs", [])),
                    }
                    for k, v in stages.items()
                ]
            )
        )
    else:
        s.add(_missing("stages", "no stage has finished"))

    # Plan
    s.add("## Compression plan\n")
    plan_d, why = _load(d, "plan.json")
    plan = None
    if plan_d is not None:
        try:
            from fitc.artifacts import CompressionPlan

            plan = CompressionPlan.from_dict(plan_d)
        except Exception as e:
            why = f"plan.json is not a valid plan: {e}"
    if plan is None:
        s.add(_missing("the plan", why or "unknown"))
    else:
        s.add(
            f"Budget {plan.budget}; planned cost {_fmt(plan.achieved_cost)}; predicted FIT "
            f"{_fmt(plan.predicted_fit)}; Fisher {_fmt(plan.fisher_time_s)} s, search "
            f"{_fmt(plan.search_time_s)} s, {len(plan.path)} moves.\n"
        )
        s.add(
            table(
                [
                    {
                        "layer": lp.name,
                        "kind": lp.kind,
                        "weight bits": lp.weight_bits,
                        "act bits": lp.act_bits,
                        "weights": lp.n_weights,
                        "non-zero": lp.n_nonzero,
                        "sparsity": f"{100 * lp.sparsity:.1f} %",
                        "fan-in": lp.fan_in,
                    }
                    for lp in plan.layers
                ]
            )
        )
        s.plot(
            plots.layer_plan_plot,
            plan,
            plots_dir / "plan_layers.png",
            "bit widths and sparsity per layer",
        )
        s.add("### Search path\n")
        if plan.path:
            s.plot(
                plots.search_path_plot,
                plan,
                plots_dir / "search_path.png",
                "search path: Fisher distance against cost",
            )
        else:
            s.add(_missing("the search path", "the plan records no moves"))

    # Equivalence
    s.add("## Equivalence\n")
    eq, why = _load(d, "equivalence.json")
    eq = eq if eq is not None else metrics.get("equivalence")
    hops = list((eq or {}).get("hops", []))
    emulation = metrics.get("emulation")
    if emulation is None:
        hls, _ = _load(d, "hls4ml.json")
        emulation = (hls or {}).get("emulation") if isinstance(hls, dict) else None
    if emulation:
        hops.append(emulation)
    if hops:
        rows = []
        for h in hops:
            exact = h.get("max_abs_diff") == 0 and h.get("identical_rows") == 1
            rows.append(
                {
                    "hop": f"{h.get('a')} → {h.get('b')}",
                    "samples": h.get("n_samples"),
                    "max abs diff": h.get("max_abs_diff"),
                    "identical rows": _pct(h.get("identical_rows")),
                    "argmax agreement": _pct(h.get("argmax_agreement")),
                    "accuracy a": _pct(h.get("accuracy_a")),
                    "accuracy b": _pct(h.get("accuracy_b")),
                    "bit-exact": "yes" if exact else "**no**",
                }
            )
        s.add(table(rows))
        checks = (eq or {}).get("layer_checks", [])
        if checks:
            wanted = [c for c in _CHECK_COLUMNS if c in checks[0]] or None
            s.add(
                "Per-layer checks of the exported graph against the plan:\n", table(checks, wanted)
            )
    else:
        s.add(_missing("equivalence results", why or "the verify stage has not run"))

    # Resources
    s.add("## Resources\n")
    res, why = _load(d, "resources.json")
    res = res if isinstance(res, dict) and "lut" in res else metrics.get("resources")
    if isinstance(res, dict) and "lut" in res:
        hw = res.get("hardware", {}) or {}
        s.add(
            f"Estimated by the **{res.get('source', '?')}** model for {hw.get('part', '?')}, "
            f"strategy {hw.get('strategy', '?')}, reuse factor {hw.get('reuse_factor', '?')}, "
            f"clock {hw.get('clock_period_ns', '?')} ns.\n"
        )
        s.add(
            table(
                [
                    {
                        k: res.get(k)
                        for k in (
                            "lut",
                            "ff",
                            "dsp",
                            "bram_18k",
                            "latency_cycles",
                            "latency_ns",
                            "initiation_interval_cycles",
                        )
                    }
                ],
                headers={
                    "bram_18k": "BRAM 18K",
                    "latency_cycles": "latency (cycles)",
                    "latency_ns": "latency (ns)",
                    "initiation_interval_cycles": "II (cycles)",
                },
            )
        )
        if res.get("layers"):
            s.add(
                table(
                    res["layers"],
                    ("name", "lut", "ff", "dsp", "bram_18k", "latency_cycles"),
                    {"name": "layer", "latency_cycles": "latency (cycles)"},
                )
            )
            s.plot(
                plots.layer_resources_plot,
                res,
                plots_dir / "resources_layers.png",
                "resources per layer",
            )
        _utilisation(s, d, cfg, metrics, res)
    else:
        s.add(
            _missing("resource estimates", why if res is None else "the estimate stage has not run")
        )

    # Loop
    s.add("## Closed loop\n")
    loop, why = _load(d, "loop.json")
    summary: dict[str, Any] = {}
    if isinstance(loop, dict):  # {targets, iterations, stop_reason, …, history: [...]}
        summary = {k: v for k, v in loop.items() if k != "history"}
        loop = loop.get("history")
    if not isinstance(loop, list):
        m_loop = metrics.get("loop")
        loop = m_loop if isinstance(m_loop, list) else None
        if isinstance(m_loop, dict):
            summary = summary or m_loop
    if summary:
        s.add(_kv(summary))
    if isinstance(loop, list) and loop:
        s.add(
            table(
                [
                    {
                        "iteration": it.get("iteration"),
                        "limits": it.get("limits"),
                        "calibrated": it.get("calibrated"),
                        "fast": it.get("fast"),
                        "accurate": it.get("accurate"),
                        "accuracy": _pct(it.get("accuracy")),
                        "time (s)": it.get("wall_time_s"),
                    }
                    for it in loop
                ]
            )
        )
        targets = summary.get("targets") if isinstance(summary.get("targets"), dict) else None
        s.plot(
            plots.loop_plot, loop, plots_dir / "loop.png", "closed loop iterations", targets=targets
        )
    elif not summary:
        s.add(_missing("the closed loop", "no hardware budget in this run" if why else "empty"))

    # Config and versions last: long, and rarely what a reader looks for first
    s.add("## Configuration\n")
    s.add(
        "<details><summary>resolved configuration</summary>\n",
        _kv(cfg) if cfg else _missing("configuration", "run.json has none"),
        "</details>\n",
    )
    versions = record.get("versions", {})
    if versions:
        s.add("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".\n")
    return s.text()


# ---------------------------------------------------------------------------------------------
# Sweep reports


def _sweep_report(d: Path) -> str:
    from fitc import plots
    from fitc.sweep import FRONTS, PARETO_CSV, RESULTS_CSV, SWEEP_JSON, read_csv, redact

    rows = read_csv(d / RESULTS_CSV)
    info = read_json(d / SWEEP_JSON) if (d / SWEEP_JSON).is_file() else {}
    s = _Section()
    s.add(f"# fitc sweep: {info.get('study_name', d.name)}\n", f"Sweep directory `{d}`.\n")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    s.add(
        f"**{len(rows)} points: "
        + ", ".join(f"{n} {k.lower()}" for k, n in sorted(counts.items()))
        + "**\n"
    )
    if info.get("storage_url"):
        s.add(
            f"Ledger: `{redact(info['storage_url'])}`, study `{info.get('study_name')}` "
            "(add workers with `fitc sweep worker --storage URL --study NAME`).\n"
        )

    spec = info.get("spec")
    s.add("## Grid\n")
    if spec:
        s.add(
            _kv(
                {
                    "models": spec.get("models") or "(base config)",
                    "budgets": [_budget_label(b) for b in spec.get("budgets", [])]
                    or "(base config)",
                    "strategies": spec.get("strategies") or "(base config)",
                    "reuse factors": spec.get("reuse_factors") or "(base config)",
                    "base config": spec.get("base") or "(defaults)",
                }
            )
        )
    else:
        s.add(_missing("the grid", f"no {SWEEP_JSON}"))

    s.add("## Results\n")
    cols = [
        "key",
        "status",
        "budget",
        "strategy",
        "reuse_factor",
        "accuracy",
        "lut",
        "ff",
        "dsp",
        "bram_18k",
        "latency_cycles",
        "size",
        "bops",
    ]
    cols = [c for c in cols if any(r.get(c) is not None for r in rows) or c in ("key", "status")]
    if len({r.get("model") for r in rows}) > 1:
        cols.insert(2, "model")
    shown = []
    for r in rows:
        row = dict(r)
        row["accuracy"] = _pct(r.get("accuracy")) if r.get("accuracy") is not None else None
        row["key"] = _link(d, r)
        shown.append(row)
    s.add(
        table(
            shown,
            cols,
            {"reuse_factor": "rf", "latency_cycles": "latency (cycles)", "bram_18k": "BRAM 18K"},
        )
    )
    failed = [r for r in rows if r["status"] == "FAIL"]
    if failed:
        s.add("### Failed points\n", table(failed, ["key", "error"]))

    s.add("## Pareto fronts\n")
    s.add(
        "Accuracy (maximised) against each cost (minimised): a point is on the front when no "
        "other point is at least as accurate and at most as costly, and better in one.\n"
    )
    pareto = read_csv(d / PARETO_CSV) if (d / PARETO_CSV).is_file() else []
    names = {"lut": "LUTs", "dsp": "DSP slices", "bops": "BOPs", "size": "weight size"}
    for cost in FRONTS:
        s.add(f"### Accuracy against {names.get(cost, cost)}\n")
        front = [r for r in pareto if r.get("front") == cost]
        if not front:
            s.add(_missing(f"a {cost} front", f"no finished point reports {cost}"))
            continue
        same = plots.constant_axis(rows, cost)
        if same is not None:
            s.add(
                f"_Every finished point has {_fmt(same)} {names.get(cost, cost)}: no trade-off "
                "to plot; the most accurate point is below._\n"
            )
        else:
            s.plot(
                plots.pareto_plot,
                rows,
                d / PLOTS / f"pareto_{cost}.png",
                f"Pareto front: accuracy against {cost}",
                cost=cost,
            )
        s.add(
            table(
                [{**r, "accuracy": _pct(r.get("accuracy")), "key": _link(d, r)} for r in front],
                ["key", "accuracy", cost],
            )
        )
    return s.text()


def _budget_label(b: Mapping[str, Any]) -> str:
    parts = list(b.get("budget", []))
    if b.get("device"):
        parts.insert(0, f"{b['device']}@{_fmt(b.get('fraction'))}")
    return "+".join(parts)


def _link(d: Path, row: Mapping[str, Any]) -> str:
    """The point's key, linked to its run directory's report (or directory) when it is under ``d``."""
    run_dir = row.get("run_dir")
    if not run_dir:
        return str(row["key"])
    try:
        rel = Path(run_dir).resolve().relative_to(d.resolve())
    except ValueError:
        return str(row["key"])
    target = rel / REPORT_MD if (d / rel / REPORT_MD).is_file() else rel
    return f"[{row['key']}]({target.as_posix()})"


# ---------------------------------------------------------------------------------------------


def write_report(dir: str | os.PathLike) -> Path:
    """Write ``<dir>/report.md`` (and ``<dir>/plots/*.png``) for a run or a sweep directory."""
    d = Path(dir)
    if (d / RUN_JSON).is_file():
        text = _run_report(d)
    else:
        from fitc.sweep import RESULTS_CSV, SWEEP_JSON, collect_results

        if not (d / RESULTS_CSV).is_file() and (d / SWEEP_JSON).is_file():
            info = read_json(d / SWEEP_JSON)
            if "***" in str(info.get("storage_url")):
                raise FitcError(
                    f"{d}: no {RESULTS_CSV} yet and the ledger URL needs its password; "
                    f"run `fitc sweep collect --storage URL --study "
                    f"{info.get('study_name')} --out {d}` first"
                )
            collect_results(info["storage_url"], info["study_name"], d)
        if not (d / RESULTS_CSV).is_file():
            raise ArtifactError(
                f"{d} is neither a run directory ({RUN_JSON}) nor a sweep directory "
                f"({RESULTS_CSV} or {SWEEP_JSON}); pass the --out directory of `fitc run` or "
                "`fitc sweep`"
            )
        text = _sweep_report(d)
    out = d / REPORT_MD
    write_text(out, text)
    log.info("wrote %s", out)
    return out


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fitc report DIR``."""
    p.add_argument("dir", help="a run directory (run.json) or a sweep directory (results.csv)")


def report_command(args: argparse.Namespace) -> Path:
    return write_report(args.dir)


__all__ = ["REPORT_MD", "add_report_arguments", "report_command", "table", "write_report"]
