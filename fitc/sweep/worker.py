"""The worker loop: take points from the ledger one at a time, run them, record the outcome.

Contract: :func:`run_worker` pops a ``WAITING`` trial by the storage's atomic ``WAITING → RUNNING``
transition (so no point runs twice), runs the point function (:data:`PointFn`, given as a callable
or by its importable name, :func:`resolve_point_fn` / :func:`dotted_name`) while a heartbeat
thread keeps the trial alive, and finishes the trial ``COMPLETE`` (metrics as user attributes,
value = accuracy) or ``FAIL`` (the error message as a user attribute; not retried). A trial whose
key or model fails the checks of :mod:`.paths` is failed without running, and a sweep directory
recorded in the ledger is used only if it is a plain absolute path. Before each pop it fails
stale trials of dead workers, whose points the ledger enqueues again; a trial that duplicates
another of the same point is pruned. On Ctrl-C the running point is handed back at
once. With ``wait`` a worker returns only when every point of the sweep is finished. What a point
*does* is not this module's business: the default, :data:`DEFAULT_POINT_FN`, is resolved by name.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitc.errors import ConfigError
from fitc.sweep.grid import SweepPoint
from fitc.sweep.ledger import (
    CONFIG_ATTR,
    KEY_ATTR,
    PARAMS_ATTR,
    jsonable,
    load_study,
    open_storage,
    points_by_key,
    progress_counts,
    quiet_optuna,
    requeue,
)
from fitc.sweep.paths import check_sweep_dir
from fitc.threads import pin_threads, worker_threads

log = logging.getLogger("fitc.sweep")  # one logger for the whole package

#: The point function workers run unless told otherwise (one pipeline run, :func:`run_point`).
DEFAULT_POINT_FN = "fitc.sweep:run_point"

PointFn = Callable[[SweepPoint, Path], Mapping[str, Any]]


def resolve_point_fn(fn: PointFn | str) -> PointFn:
    """A point function, or its dotted name ``package.module:function`` (or ``package.module.function``)."""
    if callable(fn):
        return fn
    module, sep, name = str(fn).partition(":")
    if not sep:
        module, _, name = str(fn).rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"point function {fn!r} cannot be imported ({e})") from None
    return obj


def dotted_name(fn: PointFn | str) -> str:
    """The importable name of ``fn`` (so spawned workers can find it)."""
    if isinstance(fn, str):
        resolve_point_fn(fn)
        return fn
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in name or resolve_point_fn(name) is not fn:
        raise ConfigError(
            f"point function {name} is not importable by name; define it at module level in an "
            "importable module to use several workers"
        )
    return name


class _Heartbeat:
    """Beats ``storage.record_heartbeat(trial_id)`` every ``interval`` seconds while a point runs."""

    def __init__(self, storage, trial_id: int, interval: int | None) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="fitc-heartbeat")

    def _beat(self) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except UpdateFinishedTrialError:
                self.lost = True  # failed as stale by another worker; the point was re-enqueued
                return
            except Exception as e:  # a storage hiccup must not kill the point
                log.warning("heartbeat of trial %d failed: %s", self.trial_id, e)

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _pop(storage, study_id: int) -> int | None:
    """Atomically take one WAITING trial (WAITING → RUNNING); None if none is left.

    Not ``Study.ask()``: in Optuna 5.0.0 it creates a *new* trial when no ``WAITING`` one is left,
    which would race with other workers and add empty trials to the ledger. This is the atomic
    call ``ask()`` uses internally, ``storage.set_trial_state_values(id, RUNNING)`` (returns False
    or raises ``UpdateFinishedTrialError`` when another worker won). Atomic on SQLite only
    because :func:`open_storage` begins its transactions IMMEDIATE (SQLite ignores FOR UPDATE).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


def _duplicate_of(study, trial) -> int | None:
    """Another trial that owns this point: a complete one, or an earlier waiting/running one
    (possible only if two `fitc sweep` commands enqueued the same grid at the same moment)."""
    key = trial.user_attrs.get(KEY_ATTR)
    for t in points_by_key(study.get_trials(deepcopy=False)).get(key, []):
        if t.number == trial.number:
            continue
        if t.state.name == "COMPLETE":
            return t.number
        if t.state.name in ("WAITING", "RUNNING") and t.number < trial.number:
            return t.number
    return None


@dataclass
class WorkerStats:
    complete: int = 0
    failed: int = 0
    duplicates: int = 0
    lost: int = 0


def run_worker(
    storage_url: str,
    study_name: str,
    *,
    point_fn: PointFn | str = DEFAULT_POINT_FN,
    sweep_dir: str | os.PathLike | None = None,
    max_points: int | None = None,
    progress: bool = True,
    wait: bool = True,
) -> WorkerStats:
    """Take points from the ledger and run them until none is left.

    With ``wait`` the worker also waits while other workers still run points (a point whose
    worker dies becomes stale after the grace period and is taken again), so it returns only when
    every point is finished. ``max_points`` bounds the points this worker runs. Torch runs on
    :func:`fitc.threads.worker_threads` intra-op threads meanwhile (1 unless ``OMP_NUM_THREADS``
    says otherwise).
    """
    fn = resolve_point_fn(point_fn)
    stats = WorkerStats()
    # One intra-op thread per worker (OMP_NUM_THREADS if set): workers share the cores without
    # oversubscribing them; restored when this worker returns (it may run in the caller's process).
    import torch

    saved_threads = torch.get_num_threads()
    pin_threads(worker_threads())
    try:
        return _work(fn, stats, storage_url, study_name, sweep_dir, max_points, progress, wait)
    finally:
        torch.set_num_threads(saved_threads)


def _work(fn, stats, storage_url, study_name, sweep_dir, max_points, progress, wait) -> WorkerStats:
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    from tqdm import tqdm

    with quiet_optuna():
        attrs = load_study(open_storage(storage_url), study_name).user_attrs
        interval = int(attrs.get("fitc_heartbeat_interval_s", 30))
        grace = int(attrs.get("fitc_grace_period_s", 4 * interval))
        storage = open_storage(
            storage_url,
            heartbeat_interval=interval,
            grace_period=grace,
            max_retry=attrs.get("fitc_max_retry", 3),
        )
        study = load_study(storage, study_name)
        study_id = storage.get_study_id_from_name(study_name)
        if sweep_dir is None:  # the ledger's word for it: checked like any ledger value
            sweep_dir = check_sweep_dir(attrs.get("fitc_sweep_dir"), f"sweep {study_name!r}")
        sweep_dir = Path(sweep_dir)
        done, total, _ = progress_counts(study)
        bar = tqdm(
            total=total,
            initial=done,
            desc=f"sweep {study_name}",
            unit="point",
            disable=not progress,
        )
        ran = 0
        try:
            while max_points is None or ran < max_points:
                optuna.storages.fail_stale_trials(study)
                trial_id = _pop(storage, study_id)
                if trial_id is None:
                    done, total, running = progress_counts(study)
                    bar.total, bar.n = total, done
                    bar.refresh()
                    if not wait or running == 0:
                        break
                    log.debug("waiting for %d running point(s) of other workers", running)
                    time.sleep(min(interval, 5))
                    continue
                trial = storage.get_trial(trial_id)
                key = trial.user_attrs.get(KEY_ATTR)
                if not isinstance(key, str):
                    storage.set_trial_user_attr(trial_id, "error", "not a fitc sweep point")
                    study.tell(trial.number, state=TrialState.FAIL)
                    continue
                dup = _duplicate_of(study, trial)
                if dup is not None:
                    log.warning(
                        "point %s: trial %d duplicates trial %d; skipped", key, trial.number, dup
                    )
                    storage.set_trial_user_attr(trial_id, "fitc_duplicate_of", dup)
                    study.tell(trial.number, state=TrialState.PRUNED)
                    stats.duplicates += 1
                    continue
                try:  # the ledger is input: a point that is not safe to run is failed, not run
                    point = SweepPoint(
                        key,
                        trial.user_attrs.get(PARAMS_ATTR, {}),
                        trial.user_attrs.get(CONFIG_ATTR, {}),
                    )
                except ConfigError as e:
                    log.error("trial %d: refused: %s", trial.number, e)
                    storage.set_trial_user_attr(trial_id, "error", f"refused: {e}")
                    study.tell(trial.number, state=TrialState.FAIL)
                    stats.failed += 1
                    continue
                bar.set_postfix_str(key)
                ran += 1
                metrics, error = _run_one(fn, point, sweep_dir, storage, study, trial_id, interval)
                try:
                    if error is None:
                        for k, v in metrics.items():
                            storage.set_trial_user_attr(trial_id, k, jsonable(v))
                        study.tell(trial.number, _objective(metrics), state=TrialState.COMPLETE)
                        stats.complete += 1
                    else:
                        for k, v in error.items():
                            storage.set_trial_user_attr(trial_id, k, v)
                        study.tell(trial.number, state=TrialState.FAIL)
                        stats.failed += 1
                except (UpdateFinishedTrialError, ValueError) as e:
                    # Declared stale while it ran (heartbeats stopped for longer than the grace
                    # period): the point was enqueued again and its retry's result counts.
                    log.warning("point %s: result discarded, the ledger gave it up (%s)", key, e)
                    stats.lost += 1
                done, total, _ = progress_counts(study)
                bar.total, bar.n = total, done
                bar.refresh()
        finally:
            bar.close()
    return stats


def _objective(metrics: Mapping[str, Any]) -> float:
    for k in ("accuracy", "finetuned_test_accuracy", "float_accuracy"):
        v = metrics.get(k)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return 0.0


def _run_one(fn, point, sweep_dir, storage, study, trial_id, interval):
    """Run one point under a heartbeat; (metrics, None) or (None, error attributes). On
    KeyboardInterrupt the trial is failed and its point enqueued again at once (instead of
    waiting to become stale) before the interrupt propagates."""
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    try:
        with _Heartbeat(storage, trial_id, interval):
            metrics = dict(fn(point, sweep_dir))
    except Exception as e:
        log.error("point %s failed: %s: %s", point.key, e.__class__.__name__, e)
        return None, {
            "error": f"{e.__class__.__name__}: {e}",
            "traceback": "".join(traceback.format_exception(e))[-4000:],
            "wall_time_s": round(time.perf_counter() - t0, 3),
        }
    except BaseException:
        with contextlib.suppress(Exception):
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            requeue(study, storage.get_trial(trial_id))
        raise
    metrics.setdefault("wall_time_s", round(time.perf_counter() - t0, 3))
    return metrics, None
