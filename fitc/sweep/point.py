"""Point execution: what one sweep point is, run for real — one pipeline run.

Contract: :func:`run_point` (the default point function of every worker) runs the pipeline for a
:class:`~fitc.sweep.grid.SweepPoint` into ``<sweep dir>/points/<key>/`` and returns its flat
metrics. The float model of each model is trained once per sweep directory, under
``<sweep dir>/shared/<model label>/`` (:func:`~fitc.sweep.paths.model_label`) behind a file lock
(concurrent workers on one machine never train it twice), its Fisher estimated once there and
recomputed only when the float weights change; both are handed to every point through
``float_from`` / ``fisher_from``. Both directories are checked to lie inside the sweep directory
before anything is written (:mod:`.paths`). :func:`point_metrics` reads the metrics of any
finished run directory (accuracy, size, BOPs, resources, fits, loop summary). Knows nothing of
the ledger: a point function only gets the point and the sweep directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fitc.rundir import RUN_JSON, fingerprint, read_json, write_text
from fitc.sweep.grid import SweepPoint
from fitc.sweep.paths import inside, point_dir, shared_dir


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_point(point: SweepPoint, sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """Run the pipeline for one point into ``sweep_dir/points/<key>/``.

    The float model of each model is trained once, under ``sweep_dir/shared/<label>/`` (a file
    lock keeps concurrent workers on one machine from training it twice), and its Fisher estimated
    once there; both are handed to every point through ``float_from`` and ``fisher_from``. Returns
    the flattened metrics (:func:`point_metrics`).
    """
    from fitc.pipeline import run_pipeline

    run_dir = point_dir(sweep_dir, point.key)  # checked before anything is written
    cfg = point.run_config(progress=False)
    float_from, fisher_from = cfg.float_from, cfg.fisher_from
    if float_from is None:
        shared = shared_dir(sweep_dir, cfg.model)
        with _file_lock(inside(sweep_dir, "shared", f".{shared.name}.lock")):
            shared_run = run_pipeline(cfg.replace(out=str(shared)), until="train")
            # The Fisher belongs to these float weights: recompute it when they changed.
            fp = fingerprint(shared / "float.pt", cfg.fisher_method, cfg.fisher_max_batches)
            fp_file = shared / "fisher.fingerprint"
            if fisher_from is None and (
                not (shared / "fisher.pt").is_file()
                or not fp_file.is_file()
                or fp_file.read_text() != fp
            ):
                shared_run.save_fisher(shared / "fisher.pt")
                write_text(fp_file, fp)
        float_from = str(shared / "float.pt")
        fisher_from = fisher_from or str(shared / "fisher.pt")
    run = run_pipeline(
        cfg.replace(out=str(run_dir), float_from=float_from, fisher_from=fisher_from)
    )
    return point_metrics(run.dir.path)


def point_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The flat metrics of a finished run directory: accuracy, float_accuracy, size, bops, lut, ff,
    dsp, bram_18k, latency_cycles, latency_ns, fits (hardware budgets met), loop_iterations,
    loop_stop_reason, firmware_strategy (the strategy ``auto`` resolved to) (those that exist),
    run_dir."""
    run_dir = Path(run_dir)
    m = read_json(run_dir / RUN_JSON).get("metrics", {})
    out: dict[str, Any] = {}
    for key, names in (
        ("accuracy", ("finetuned_test_accuracy", "built_test_accuracy")),
        ("float_accuracy", ("float_test_accuracy",)),
        ("size", ("achieved_size",)),
        ("bops", ("achieved_bops",)),
    ):
        for name in names:
            if m.get(name) is not None:
                out[key] = m[name]
                break
    res = m.get("resources")
    if res is None and (run_dir / "resources.json").is_file():
        res = read_json(run_dir / "resources.json")
    if isinstance(res, Mapping):
        for k in ("lut", "ff", "dsp", "bram_18k", "latency_cycles", "latency_ns"):
            if res.get(k) is not None:
                out[k] = res[k]
        if res.get("source"):
            out["resource_source"] = res["source"]
    if m.get("fits") is not None:
        out["fits"] = bool(m["fits"])
    loop = m.get("loop")
    if isinstance(loop, Mapping):  # the closed loop's summary
        out["loop_iterations"] = loop.get("iterations")
        out["loop_stop_reason"] = loop.get("stop_reason")
    elif isinstance(loop, list):
        out["loop_iterations"] = len(loop)
    if m.get("strategy"):
        out["firmware_strategy"] = m["strategy"]
    out["run_dir"] = str(run_dir)
    return out
