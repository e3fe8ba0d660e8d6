"""Design sweeps: a grid of pipeline runs, recorded in an Optuna study, and their Pareto fronts.

Contract: this package's names are the sweep API (everything below is re-exported here, so import
from ``fitc.sweep``), split by job into modules that depend only downwards: :mod:`.paths` (every
path built from a point key or model is checked to stay inside the sweep directory) → :mod:`.grid`
(the grid, :class:`SweepSpec` → :class:`SweepPoint`\\ s) → :mod:`.ledger` (the Optuna study every
worker shares: one enqueued trial per point, heartbeats, requeue of a dead worker's point,
create/resume) → :mod:`.worker` (the loop that pops and runs points) and :mod:`.point` (the real
point: one pipeline run sharing the float model) and :mod:`.results` (``results.csv``,
``pareto.csv``) → :mod:`.runner` (:func:`run_sweep`: the whole sweep on this machine) →
:mod:`.cli` (``fitc sweep`` options and ``python -m fitc.sweep worker``). A killed worker's point
is retried exactly once per death; re-running a sweep resumes it (complete points are kept,
missing ones enqueued). Storage: a journal file in the sweep directory by default
(``ledger.journal``), or any Optuna RDB URL (``sqlite:///…``, ``postgresql+psycopg2://…`` with
the ``postgres`` extra) shared by workers on several machines.

Trust: the ledger says what every worker runs — whoever can write the ledger (or a model file it
names) controls the code workers import and run, so keep its storage (and its password) as
private as the machines themselves. What validation does guarantee: a point key or model read from
the ledger never makes a worker write or delete outside the sweep directory (:mod:`.paths`).
"""

from __future__ import annotations

from fitc.sweep.cli import add_sweep_arguments, format_summary, main, spec_from_args, sweep_command
from fitc.sweep.grid import (
    STRATEGIES,
    BudgetChoice,
    SweepPoint,
    SweepSpec,
    expand_points,
    parse_budget_axis,
    parse_strategy,
)
from fitc.sweep.ledger import (
    JOURNAL_FILE,
    SWEEP_JSON,
    SweepError,
    create_sweep,
    default_storage_url,
    open_storage,
    redact,
    requeue,
)
from fitc.sweep.paths import (
    KEY_PATTERN,
    check_key,
    check_model_ref,
    check_sweep_dir,
    inside,
    model_label,
    point_dir,
    shared_dir,
)
from fitc.sweep.point import point_metrics, run_point
from fitc.sweep.results import (
    FRONTS,
    METRIC_COLUMNS,
    PARAM_COLUMNS,
    PARETO_CSV,
    RESULTS_CSV,
    SweepResult,
    collect_results,
    pareto_front,
    read_csv,
)
from fitc.sweep.runner import run_sweep
from fitc.sweep.worker import (
    DEFAULT_POINT_FN,
    PointFn,
    WorkerStats,
    dotted_name,
    resolve_point_fn,
    run_worker,
)

__all__ = [
    "DEFAULT_POINT_FN",
    "FRONTS",
    "JOURNAL_FILE",
    "KEY_PATTERN",
    "METRIC_COLUMNS",
    "PARAM_COLUMNS",
    "PARETO_CSV",
    "RESULTS_CSV",
    "STRATEGIES",
    "SWEEP_JSON",
    "BudgetChoice",
    "PointFn",
    "SweepError",
    "SweepPoint",
    "SweepResult",
    "SweepSpec",
    "WorkerStats",
    "add_sweep_arguments",
    "check_key",
    "check_model_ref",
    "check_sweep_dir",
    "collect_results",
    "create_sweep",
    "default_storage_url",
    "dotted_name",
    "expand_points",
    "format_summary",
    "inside",
    "main",
    "model_label",
    "open_storage",
    "pareto_front",
    "parse_budget_axis",
    "parse_strategy",
    "point_dir",
    "point_metrics",
    "read_csv",
    "redact",
    "requeue",
    "resolve_point_fn",
    "run_point",
    "run_sweep",
    "run_worker",
    "shared_dir",
    "spec_from_args",
    "sweep_command",
]
