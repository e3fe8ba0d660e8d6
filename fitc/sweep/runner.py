"""The whole sweep on this machine: create or resume it, run its workers, collect its results.

Contract: :func:`run_sweep` creates or resumes the sweep's ledger (:func:`create_sweep`), runs it
with ``workers`` local workers — in this process for one, else as that many fresh
``python -m fitc.sweep worker`` processes (so the point function must be importable by name, and
they inherit this process's ``sys.path``) while a progress bar follows the ledger — waits until
every point is finished, and writes ``results.csv`` and ``pareto.csv`` (:func:`collect_results`).
It raises :class:`SweepError` if points are left unfinished because every worker stopped early;
re-running the same call resumes. On Ctrl-C the worker processes get time to hand their points
back before they are terminated.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from fitc.errors import ConfigError
from fitc.sweep.grid import SweepSpec
from fitc.sweep.ledger import (
    SweepError,
    create_sweep,
    load_study,
    open_storage,
    progress_counts,
    quiet_optuna,
)
from fitc.sweep.results import SweepResult, collect_results
from fitc.sweep.worker import DEFAULT_POINT_FN, PointFn, dotted_name, run_worker

log = logging.getLogger("fitc.sweep")  # one logger for the whole package

#: Local worker processes at most: each is a Python process with its own copy of torch.
MAX_WORKERS = 256


def run_sweep(
    spec: SweepSpec,
    sweep_dir: str | os.PathLike,
    workers: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    point_fn: PointFn | str = DEFAULT_POINT_FN,
    *,
    progress: bool = True,
    heartbeat_interval: int = 30,
    grace_period: int = 120,
    retry_failed: bool = False,
) -> SweepResult:
    """Create or resume the sweep, run it with ``workers`` local processes (1: in this process),
    wait until every point is finished, and collect the results.

    With several workers each is a fresh ``python -m fitc.sweep worker`` process, so ``point_fn``
    must be importable by name (:func:`dotted_name`). Raises :class:`SweepError` if points are left unfinished because
    every worker died (re-run to resume).
    """
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be in 1..{MAX_WORKERS}, got {workers}")
    sweep_dir = Path(sweep_dir).resolve()
    url, name = create_sweep(
        spec,
        sweep_dir,
        storage,
        study_name,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        retry_failed=retry_failed,
    )
    if workers == 1:
        run_worker(url, name, point_fn=point_fn, sweep_dir=sweep_dir, progress=progress)
    else:
        _run_processes(url, name, dotted_name(point_fn), sweep_dir, workers, progress)
    result = collect_results(url, name, sweep_dir)
    unfinished = [r["key"] for r in result.rows if r["status"] in ("WAITING", "RUNNING")]
    if unfinished:
        raise SweepError(
            f"{len(unfinished)} point(s) unfinished ({', '.join(unfinished[:5])}); every worker "
            f"stopped early. Re-run the same command to resume."
        )
    return result


def _run_processes(
    url: str, name: str, point_fn: str, sweep_dir: Path, workers: int, progress: bool
) -> None:
    """Run ``workers`` processes of ``python -m fitc.sweep worker`` and show the ledger's progress.

    Fresh interpreters (not multiprocessing) so that nothing depends on how the parent was
    started; they get the parent's ``sys.path`` so a point function importable here is there too,
    and, unless ``OMP_NUM_THREADS`` is set, an equal share of the CPU cores for torch's threads.
    """
    from tqdm import tqdm

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in sys.path if p] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    if "OMP_NUM_THREADS" not in env:
        # torch gives every process a thread per core: N workers would oversubscribe the cores
        # N times over (two workers on two cores ran twice as slow). Share them out instead.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    cmd = [
        sys.executable,
        "-m",
        "fitc.sweep",
        "worker",
        "--storage",
        url,
        "--study",
        name,
        "--point-fn",
        point_fn,
        "--out",
        str(sweep_dir),
        "--no-progress",
        "--quiet",
    ]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(workers)]
    with quiet_optuna():
        study = load_study(open_storage(url), name)
        done, total, _ = progress_counts(study)
    bar = tqdm(total=total, initial=done, desc=f"sweep {name}", unit="point", disable=not progress)

    def refresh() -> None:
        with quiet_optuna():
            done, total, _ = progress_counts(study)
        if (done, total) != (bar.n, bar.total):  # redraw on change only: quiet in log files
            bar.total, bar.n = total, done
            bar.refresh()

    try:
        while any(p.poll() is None for p in procs):
            refresh()
            time.sleep(1.0)
        refresh()
    except BaseException:
        # On Ctrl-C the workers got the same SIGINT: give them time to hand their points back.
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.terminate()
        raise
    finally:
        bar.close()
    for i, p in enumerate(procs):
        if p.returncode:
            log.warning("worker %d (pid %d) exited with code %s", i, p.pid, p.returncode)
