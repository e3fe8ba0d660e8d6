"""Command-line front of sweeps: the ``fitc sweep [worker|collect]`` options and what they run.

Contract: :func:`add_sweep_arguments` adds the grid, ledger and worker options to a parser (the
caller adds ``--config/--out/--seed/--no-progress`` and any RunConfig flag groups, whose values
become the sweep's base config, :func:`spec_from_args`). :func:`sweep_command` runs the parsed
arguments: no action creates or resumes a sweep and runs it here (``--out DIR`` alone resumes the
grid recorded there, and refuses options that would be ignored), ``worker`` joins a sweep by
storage URL and study name (or the ``sweep.json`` of ``--out``) and ``collect`` rewrites its CSVs;
each returns a :class:`SweepResult`, which :func:`format_summary` renders for the terminal with
the storage password redacted. :func:`main` is ``python -m fitc.sweep worker …``, the entry point
of spawned worker processes. ``fitc/cli.py`` wires these into ``fitc sweep``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fitc.errors import ConfigError
from fitc.rundir import read_json
from fitc.sweep.grid import SweepSpec
from fitc.sweep.ledger import SWEEP_JSON, redact
from fitc.sweep.results import SweepResult, collect_results
from fitc.sweep.runner import run_sweep
from fitc.sweep.worker import DEFAULT_POINT_FN, run_worker

log = logging.getLogger("fitc.sweep")  # one logger for the whole package


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fitc sweep [worker|collect]`` (add ``--config/--out/--seed/--no-progress``
    and any RunConfig flag groups separately: their values become the sweep's base config)."""
    p.add_argument(
        "action",
        nargs="?",
        choices=("worker", "collect"),
        help="omit to create/resume a sweep and run it here; `worker` joins a sweep "
        "(needs --storage and --study); `collect` rewrites results.csv and pareto.csv",
    )
    g = p.add_argument_group("sweep grid (each flag repeatable, values comma separated)")
    g.add_argument(
        "--model", action="append", metavar="NAMES", help="models, e.g. digits-mlp,digits-cnn"
    )
    g.add_argument(
        "--budget",
        action="append",
        metavar="ALTERNATIVES",
        help="budget alternatives: size=1/16,1/32 | bops=0.02 | lut=20000+dsp=0 | "
        "device=xc7z020:0.1,0.25,0.5; every flag's alternatives join one axis",
    )
    g.add_argument(
        "--strategy",
        action="append",
        metavar="NAMES",
        help="hls4ml strategies: latency, resource, distributed_arithmetic (da)",
    )
    g.add_argument(
        "--reuse-factor", action="append", metavar="INTS", help="reuse factors, e.g. 1,2,4"
    )
    g.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="set_",
        help="base config value for every point, e.g. --set finetune_epochs=5",
    )
    g = p.add_argument_group("ledger and workers")
    g.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    g.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage shared by the workers: sqlite:///FILE, "
        "postgresql+psycopg2://USER@HOST/DB (pip install 'fitc[postgres]'), or a journal file "
        "path (default: <out>/ledger.journal)",
    )
    g.add_argument(
        "--study", metavar="NAME", help="sweep name in the storage (default fitc-<out dir>)"
    )
    g.add_argument(
        "--retry-failed",
        action="store_true",
        help="on resume, run again the points that raised an error",
    )
    g.add_argument(
        "--heartbeat-interval",
        type=int,
        default=30,
        metavar="S",
        help="seconds between a worker's heartbeats (default 30)",
    )
    g.add_argument(
        "--grace-period",
        type=int,
        default=120,
        metavar="S",
        help="a running point without heartbeat for this long is retried (default 120)",
    )
    g.add_argument("--max-points", type=int, metavar="N", help="worker: stop after N points")
    g.add_argument("--point-fn", default=DEFAULT_POINT_FN, help=argparse.SUPPRESS)


_ARG_NOT_BASE = {
    "command",
    "action",
    "config",
    "debug",
    "quiet",
    "func",
    "model",
    "budget",
    "strategy",
    "reuse_factor",
    "set_",
    "workers",
    "storage",
    "study",
    "retry_failed",
    "heartbeat_interval",
    "grace_period",
    "max_points",
    "point_fn",
    "out",
    "progress",
    "dir",
}


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    """The spec of ``fitc sweep`` flags: grid axes, and as base config the ``--config`` YAML file,
    every other RunConfig flag that was given, and ``--set`` values (later wins)."""
    import yaml

    from fitc.config import FIELDS, from_mapping

    base: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        base.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    for k, v in vars(args).items():
        if k in FIELDS and k not in _ARG_NOT_BASE and v is not None:
            base[k] = v
    for item in getattr(args, "set_", None) or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. finetune_epochs=5")
        try:
            base[k.strip().replace("-", "_")] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: {v!r} is not a valid value") from None
    models = getattr(args, "model", None) or ([base.pop("model")] if "model" in base else None)
    strategies = getattr(args, "strategy", None) or (
        [base.pop("strategy")] if "strategy" in base else None
    )
    rfs = getattr(args, "reuse_factor", None) or (
        [base.pop("reuse_factor")] if "reuse_factor" in base else None
    )
    budgets = getattr(args, "budget", None)
    if budgets is None and "budget" in base:
        b = base.pop("budget")
        budgets = ["+".join(b) if isinstance(b, (list, tuple)) else str(b)]
    for k in ("model", "strategy", "reuse_factor", "budget"):
        base.pop(k, None)
    from_mapping(base, source="sweep base config")  # validate keys and types now
    return SweepSpec.from_grid(models, budgets, strategies, rfs, base)


def sweep_command(args: argparse.Namespace) -> SweepResult:
    """Run ``fitc sweep`` (create/resume + run + collect), ``fitc sweep worker`` (join + collect)
    or ``fitc sweep collect``, from parsed arguments."""
    progress = getattr(args, "progress", None) is not False
    out = getattr(args, "out", None)
    if args.max_points is not None and args.max_points < 1:
        raise ConfigError(f"--max-points must be ≥ 1, got {args.max_points}")
    if args.action in ("worker", "collect"):
        storage, study = args.storage, args.study
        if out and (Path(out) / SWEEP_JSON).is_file() and not (storage and study):
            rec = read_json(Path(out) / SWEEP_JSON)
            storage, study = storage or rec["storage_url"], study or rec["study_name"]
        if storage and "***" in storage:
            raise ConfigError(
                f"the storage URL of {out} is recorded without its password; pass --storage"
            )
        if not storage or not study:
            raise ConfigError(
                f"fitc sweep {args.action} needs --storage URL and --study NAME "
                "(or --out of a sweep directory)"
            )
        if args.action == "worker":
            run_worker(
                storage,
                study,
                point_fn=args.point_fn,
                sweep_dir=out,
                max_points=args.max_points,
                progress=progress,
            )
        return collect_results(storage, study, out)
    if not out:
        raise ConfigError("fitc sweep needs --out DIR (the sweep directory)")
    grid_given = any(
        getattr(args, k, None)
        for k in ("model", "budget", "strategy", "reuse_factor", "set_", "config")
    )
    recorded = Path(out) / SWEEP_JSON
    if not grid_given and recorded.is_file():
        from fitc.config import FIELDS

        options = sorted(
            k
            for k, v in vars(args).items()
            if k in FIELDS
            and k not in _ARG_NOT_BASE
            and v is not None
            and k not in ("out", "progress")
        )
        if options:
            raise ConfigError(
                f"{out} holds a recorded sweep; resuming it keeps its own options, so "
                f"{', '.join('--' + o.replace('_', '-') for o in options)} would be ignored. "
                f"Repeat the grid flags to check the options against the recorded ones, or use a "
                f"new --out"
            )
        spec = SweepSpec.from_dict(read_json(recorded)["spec"])  # `fitc sweep --out DIR` resumes
        log.info("resuming the sweep recorded in %s", recorded)
    else:
        spec = spec_from_args(args)
    return run_sweep(
        spec,
        out,
        workers=args.workers,
        storage=args.storage,
        study_name=args.study,
        point_fn=args.point_fn,
        progress=progress,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        retry_failed=args.retry_failed,
    )


def format_summary(result: SweepResult) -> str:
    """A few lines for the terminal: counts, the accuracy-vs-LUT front (or the first front there
    is), and where the files are."""
    lines = [
        f"sweep {result.study_name}: "
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.counts.items()))
    ]
    for r in result.rows:
        if r["status"] == "FAIL":
            lines.append(f"  failed {r['key']}: {r['error']}")
    name = "lut" if "lut" in result.fronts else next(iter(result.fronts), None)
    if name:
        lines.append(f"Pareto front, accuracy against {name}:")
        for r in result.fronts[name]:
            lines.append(f"  {r['key']:<48} accuracy {r['accuracy']:.4f}  {name} {r[name]:g}")
    lines.append(f"results: {result.results_csv}")
    lines.append(f"Pareto fronts: {result.pareto_csv}")
    lines.append(f"storage: {redact(result.storage_url)}  study: {result.study_name}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fitc.sweep worker --storage URL --study NAME`` (a worker without the full CLI)."""
    p = argparse.ArgumentParser(prog="python -m fitc.sweep")
    add_sweep_arguments(p)
    p.add_argument("--out")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.action != "worker":
        p.error("only `worker` is available here; use `fitc sweep` for the rest")
    sweep_command(args)
    return 0
