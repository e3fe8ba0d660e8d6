"""Commands on a finished run: ``fitc lower``, ``fitc synth --tool yosys``, ``fitc estimate``.

They work on what the run holds: the stages that made its plan and graph are checked (files
against their sha256), never redone; their own options (another strategy, backend or resource
model) are not persisted as the run's config. They run the pipeline's own stage functions
(:func:`fitc.pipeline.lower`, :func:`~fitc.pipeline.synth_yosys`, :func:`~fitc.pipeline.estimate`),
chained to the recorded stages, so ``fitc run`` on the same directory later sees their results.
"""

from __future__ import annotations

from pathlib import Path

from fitc.artifacts import ResourceReport
from fitc.config import RunConfig
from fitc.errors import ArtifactError
from fitc.pipeline import (
    Run,
    estimate,
    lower,
    open_run,
    run_pipeline,
    synth_yosys,
)
from fitc.rundir import check_not_busy, read_json

_PLAN_STAGES = ("train", "search", "finetune", "loop", "export", "verify")


def open_finished(cfg: RunConfig, needs: str) -> Run:
    """The finished run in ``cfg.run_dir()`` for a command that works on what it holds.

    Stage ``needs`` and the stages that made the plan and its graph must be recorded with their
    files intact: they are never redone here (a missing or changed file is an error naming it).
    The run's recorded config stays as it is: this command's options are not persisted."""
    run_dir = cfg.run_dir()
    check_not_busy(run_dir)
    recorded = read_json(run_dir / "run.json").get("config", {})
    run = open_run(cfg, record=recorded)
    stages = run.dir.stages
    if needs not in stages:
        what = {
            "verify": "exported and verified graph",
            "rtl": "RTL (fitc lower DIR --backend rtl)",
        }
        raise ArtifactError(
            f"{run_dir} has no {what.get(needs, needs + ' stage')} yet: finish it first, e.g. "
            f"`fitc run --out {run_dir}`"
        )
    for name in (*_PLAN_STAGES, needs):
        problem = run.dir.output_problem(stages[name]) if name in stages else None
        if problem:
            raise ArtifactError(
                f"{problem} (an output of stage {name}); `fitc run --out {run_dir}` redoes the "
                "stage, this command only works on finished ones"
            )
    run.fps = {name: rec["fingerprint"] for name, rec in stages.items()}
    run.last_stage = needs
    return run


def lower_existing(cfg: RunConfig, *, replan: bool = False) -> Run:
    """``fitc lower``: lower the plan the run holds for ``cfg``'s backend and hardware (another
    strategy, reuse factor, io type or backend does not change the plan: it is said when the plan
    no longer fits the budget under it). ``replan``: search and fine-tune again for this
    hardware first, and record it as the run's config."""
    if replan:
        return run_pipeline(cfg, until="lower")
    run = open_finished(cfg, "verify")
    with run.dir.writing():
        lower(run)
    return run


def synth_existing(cfg: RunConfig) -> Run:
    """``fitc synth --tool yosys``: synthesize the run's RTL for the part's family."""
    run = open_finished(cfg, "rtl")
    with run.dir.writing():
        synth_yosys(run)
    return run


def estimate_existing(
    cfg: RunConfig,
    model: str | None = None,
    *,
    backend: str | None = None,
    output: Path | None = None,
) -> tuple[Run, ResourceReport]:
    """``fitc estimate``: cost the firmware the run holds with ``model`` (default the run's).

    The firmware: the netlist for ``yosys``, the hls4ml project for ``report``, else the one of
    ``backend`` (``"hls4ml"``/``"rtl"``), else the last one lowered, else the plan for the run's
    hardware. The report goes to ``resources.json`` (or only to ``output``), on success only."""
    name = model or cfg.resource_model
    run = open_finished(cfg, "verify")
    stages = run.dir.stages
    if name == "yosys":
        needs = "synth"
    elif name == "report":
        needs = "lower"
    elif backend is not None:
        needs = "rtl" if backend == "rtl" else "lower"
    else:
        lowered = [n for n in stages if n in ("lower", "rtl")]
        needs = lowered[-1] if lowered else None
    if needs is not None and needs not in stages:
        make = {
            "synth": f"fitc lower {run.dir.path} --backend rtl, then fitc synth {run.dir.path} "
            "--tool yosys",
            "lower": f"fitc lower {run.dir.path}",
            "rtl": f"fitc lower {run.dir.path} --backend rtl",
        }[needs]
        raise ArtifactError(
            f"{run.dir.path} has no {needs} stage for the {name} estimate: run {make}"
        )
    if needs is not None:
        problem = run.dir.output_problem(stages[needs])
        if problem:
            raise ArtifactError(f"{problem} (an output of stage {needs}); lower it again")
    with run.dir.writing():
        report = estimate(run, name, firmware=needs, output=output)
    return run, report
