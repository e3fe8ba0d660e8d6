"""Sweep results: one row per point from the ledger, and the Pareto fronts between them.

Contract: :func:`collect_results` reads a sweep's ledger and writes ``results.csv`` (one row per
point in grid order: key, status, the :data:`PARAM_COLUMNS`, the :data:`METRIC_COLUMNS`, error,
run directory, then any other scalar metric) and ``pareto.csv`` (column ``front`` = one of
:data:`FRONTS`: the points on the front of accuracy, maximised, against that cost, minimised),
and returns them as a :class:`SweepResult`. A point with several trials is represented by its
latest complete one, else a running or waiting one, else its latest failure.
:func:`pareto_front` is the front of any rows; :func:`read_csv` reads either CSV back with
numbers parsed. Reading results never changes the ledger.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitc.rundir import read_json, write_text
from fitc.sweep.ledger import (
    CONFIG_ATTR,
    KEY_ATTR,
    PARAMS_ATTR,
    SWEEP_JSON,
    load_study,
    open_storage,
    points_by_key,
    quiet_optuna,
)
from fitc.sweep.paths import check_sweep_dir

RESULTS_CSV = "results.csv"
PARETO_CSV = "pareto.csv"

#: The fronts written to pareto.csv: accuracy (maximised) against each of these (minimised).
FRONTS = ("lut", "dsp", "bops", "size")
#: Metric columns of results.csv, in order (a point function may return more; they follow).
METRIC_COLUMNS = (
    "accuracy",
    "float_accuracy",
    "size",
    "bops",
    "lut",
    "ff",
    "dsp",
    "bram_18k",
    "latency_cycles",
    "latency_ns",
    "fits",
)
PARAM_COLUMNS = ("model", "budget", "strategy", "reuse_factor")


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str) and v.strip():
        try:
            f = float(v)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def pareto_front(
    rows: Sequence[Mapping[str, Any]], maximize: str = "accuracy", minimize: str = "lut"
) -> list[Mapping[str, Any]]:
    """The rows no other row dominates (higher-or-equal ``maximize`` and lower-or-equal
    ``minimize``, strictly better in one), in increasing ``minimize`` order. Rows missing either
    value (or with a status other than COMPLETE) are left out; exact ties are all kept."""
    usable = []
    for r in rows:
        if r.get("status", "COMPLETE") != "COMPLETE":
            continue
        a, c = _num(r.get(maximize)), _num(r.get(minimize))
        if a is not None and c is not None:
            usable.append((c, a, r))
    usable.sort(key=lambda t: (t[0], -t[1]))
    front: list[Mapping[str, Any]] = []
    best = -math.inf  # best `maximize` among rows of strictly smaller cost
    i = 0
    while i < len(usable):
        j = i
        while j < len(usable) and usable[j][0] == usable[i][0]:
            j += 1
        top = usable[i][1]  # group sorted by decreasing `maximize`
        if top > best:
            front.extend(r for _, a, r in usable[i:j] if a == top)
            best = top
        i = j
    return front


def _representative(trials):
    """The trial that stands for a point: its latest COMPLETE one, else a running/waiting one,
    else its latest failure."""
    order = {"COMPLETE": 0, "RUNNING": 1, "WAITING": 2, "FAIL": 3, "PRUNED": 4}
    return sorted(trials, key=lambda t: (order.get(t.state.name, 5), -t.number))[0]


@dataclass
class SweepResult:
    storage_url: str
    study_name: str
    results_csv: Path
    pareto_csv: Path
    rows: list[dict[str, Any]]
    fronts: dict[str, list[dict[str, Any]]]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out


def _row(key: str, trials) -> dict[str, Any]:
    t = _representative(trials)
    ua = t.user_attrs
    params = ua.get(PARAMS_ATTR, {})
    row: dict[str, Any] = {"key": key, "status": t.state.name}
    for p in PARAM_COLUMNS:
        row[p] = params.get(p)
    for m in METRIC_COLUMNS:
        row[m] = ua.get(m)
    error = ua.get("error")
    if t.state.name == "FAIL" and error is None:
        error = "worker lost (no heartbeat within the grace period); re-run the sweep to retry"
    row["error"] = error
    row["run_dir"] = ua.get("run_dir")
    row["trial"] = t.number
    row["attempts"] = sum(1 for x in trials if x.state.name != "WAITING")
    row["wall_time_s"] = ua.get("wall_time_s")
    skip = {KEY_ATTR, PARAMS_ATTR, CONFIG_ATTR, "traceback", *row}
    for k, v in sorted(ua.items()):
        if k not in skip and (v is None or isinstance(v, (int, float, str, bool))):
            row[k] = v
    return row


def _csv_text(rows: Sequence[Mapping[str, Any]], first: Sequence[str] = ()) -> str:
    cols = list(first)
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a results/pareto CSV with numbers parsed back (empty cells → None)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    out[k] = None
                elif k in (
                    "key",
                    "status",
                    "budget",
                    "model",
                    "strategy",
                    "error",
                    "run_dir",
                    "front",
                ):
                    out[k] = v
                else:
                    n = _num(v)
                    out[k] = (
                        (int(n) if n is not None and n.is_integer() and "." not in v else n)
                        if n is not None
                        else v
                    )
            rows.append(out)
    return rows


def collect_results(
    storage_url: str, study_name: str, sweep_dir: str | os.PathLike | None = None
) -> SweepResult:
    """Write ``results.csv`` (one row per point, in grid order) and ``pareto.csv`` (column ``front``
    = lut | dsp | bops | size: the points on the front of accuracy against that cost)."""
    with quiet_optuna():
        study = load_study(open_storage(storage_url), study_name)
        if sweep_dir is None:  # the ledger's word for it: checked like any ledger value
            sweep_dir = check_sweep_dir(study.user_attrs.get("fitc_sweep_dir"), study_name)
        sweep_dir = Path(sweep_dir)
        by_key = points_by_key(study.get_trials(deepcopy=False))
    order = {}
    if (sweep_dir / SWEEP_JSON).is_file():
        order = {k: i for i, k in enumerate(read_json(sweep_dir / SWEEP_JSON).get("points", []))}
    keys = sorted(
        by_key, key=lambda k: (order.get(k, len(order)), min(t.number for t in by_key[k]))
    )
    rows = [_row(k, by_key[k]) for k in keys]
    first = ("key", "status", *PARAM_COLUMNS, *METRIC_COLUMNS, "error", "run_dir")
    results_csv = sweep_dir / RESULTS_CSV
    write_text(results_csv, _csv_text(rows, first))
    fronts: dict[str, list[dict[str, Any]]] = {}
    pareto_rows = []
    for cost in FRONTS:
        front = [dict(r) for r in pareto_front(rows, "accuracy", cost)]
        if front:
            fronts[cost] = front
            pareto_rows.extend({"front": cost, **r} for r in front)
    pareto_csv = sweep_dir / PARETO_CSV
    write_text(pareto_csv, _csv_text(pareto_rows, ("front", *first)))
    return SweepResult(storage_url, study_name, results_csv, pareto_csv, rows, fronts)
