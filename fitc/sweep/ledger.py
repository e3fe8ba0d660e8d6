"""The sweep's ledger: an Optuna study in a storage shared by every worker of a sweep.

Contract: every point is one enqueued trial (``WAITING``) carrying its key, params and config as
the user attributes named by :data:`KEY_ATTR`, :data:`PARAMS_ATTR` and :data:`CONFIG_ATTR`.
:func:`open_storage` opens a journal file (``ledger.journal`` in the sweep directory by default,
:func:`default_storage_url`) or any Optuna RDB URL (``sqlite:///…``, ``postgresql+psycopg2://…``
with the driver of fitc's ``postgres`` extra); with a heartbeat interval the heartbeat protocol is
on for both kinds (the journal storage gets it from this module), so Optuna's ``fail_stale_trials`` fails a ``RUNNING`` trial whose heartbeat is older
than the grace period and :func:`requeue` enqueues its point again, at most ``max_retry`` times.
:func:`create_sweep` creates or resumes a sweep (complete points are kept, missing ones enqueued,
points that raised are not retried unless asked) and records it in ``sweep.json``. Secrets never
leave this module unredacted (:func:`redact`). Depends on the grid only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fitc.errors import ConfigError, FitcError
from fitc.rundir import read_json, write_json
from fitc.sweep.grid import SweepSpec, expand_points

log = logging.getLogger("fitc.sweep")  # one logger for the whole package

JOURNAL_FILE = "ledger.journal"
SWEEP_JSON = "sweep.json"

# Trial user attributes that define a point (copied when a point is enqueued again).
KEY_ATTR, PARAMS_ATTR, CONFIG_ATTR = "fitc_key", "fitc_params", "fitc_config"
_HEARTBEAT = "fitc_heartbeat_unix_s"  # trial system attribute (journal storage only)
_RETRIES = "fitc_retry_of"  # trial system attribute: numbers of the trials this one retries


class SweepError(FitcError):
    """A sweep cannot be created, resumed or completed (the message says which and what to do)."""


# ---------------------------------------------------------------------------------------------
# Storage


def default_storage_url(sweep_dir: str | os.PathLike) -> str:
    return f"journal://{Path(sweep_dir).resolve() / JOURNAL_FILE}"


def _journal_path(url: str) -> Path | None:
    """The file of a journal storage URL (``journal:///abs/path``, ``journal:rel``, or a plain path),
    or None for an RDB URL."""
    if url.startswith("journal:"):
        rest = url[len("journal:") :]
        return Path(rest[2:] if rest.startswith("//") else rest)
    if "://" not in url:
        return Path(url)
    return None


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs, sweep.json and reports)."""
    if _journal_path(url) is not None:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _heartbeat_base():
    from optuna.storages._heartbeat import BaseHeartbeat  # the protocol fail_stale_trials checks

    return BaseHeartbeat


def _journal_ledger_class():
    """Optuna 5.0.0 (read from its source): only ``RDBStorage`` implements the heartbeat protocol
    (``optuna.storages._heartbeat.BaseHeartbeat``); ``JournalStorage`` does not, so this subclass
    adds it (heartbeat = a trial system attribute) and Optuna's own ``fail_stale_trials`` then
    works for both."""
    from optuna.storages.journal import JournalStorage
    from optuna.trial import TrialState

    class _JournalLedger(JournalStorage, _heartbeat_base()):
        """A journal storage with Optuna's heartbeat protocol: the heartbeat is a trial system
        attribute (wall-clock seconds of the worker); a RUNNING trial is stale when its last
        heartbeat — or its start, if later — is older than the grace period."""

        def __init__(self, backend, heartbeat_interval, grace_period, callback) -> None:
            super().__init__(backend)
            self.heartbeat_interval = heartbeat_interval
            self.grace_period = grace_period
            self.heartbeat_stale_trial_callback = callback

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, _HEARTBEAT, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
            now = time.time()
            stale = []
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                last = float(t.system_attrs.get(_HEARTBEAT, 0.0))
                if t.datetime_start is not None:  # a retried point inherits its old heartbeat
                    last = max(last, t.datetime_start.timestamp())
                if now - last > grace:
                    stale.append(t._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self):
            return self.heartbeat_stale_trial_callback

    return _JournalLedger


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = 3,
):
    """An Optuna storage for ``url``; with ``heartbeat_interval`` the heartbeat protocol is on and a
    stale point is enqueued again (at most ``max_retry`` times)."""
    callback = _Requeue(max_retry) if heartbeat_interval else None
    path = _journal_path(url)
    if path is not None:
        from optuna.storages.journal import JournalFileBackend

        path.parent.mkdir(parents=True, exist_ok=True)
        return _journal_ledger_class()(
            JournalFileBackend(str(path)), heartbeat_interval, grace_period, callback
        )
    from optuna.storages import RDBStorage

    kwargs: dict[str, Any] = {}
    sqlite = url.startswith("sqlite:")
    if sqlite:
        # Several local processes write the same file: wait for the lock (60 s) instead of
        # failing; no implicit transactions of the driver (see _serialize_sqlite).
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60, "isolation_level": None}}
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    try:
        storage = RDBStorage(
            url,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
            **kwargs,
        )
        if sqlite:
            _serialize_sqlite(storage.engine)
        return storage
    except ImportError as e:  # Optuna's message does not say which driver
        raise SweepError(
            f"cannot open storage {redact(url)}: its database driver is not installed "
            f"({e.__cause__ or e}); for PostgreSQL install fitc's extra `pip install "
            "'fitc[postgres]'` and name the driver: postgresql+psycopg2://USER@HOST/DB"
        ) from e
    except Exception as e:
        raise SweepError(f"cannot open storage {redact(url)}: {e.__class__.__name__}: {e}") from e


def _serialize_sqlite(engine) -> None:
    """Make every transaction on ``engine`` take SQLite's write lock when it begins.

    Optuna's RDB storage makes its read-check-write updates atomic by ``SELECT … FOR UPDATE``
    (e.g. ``set_trial_state_values``: WAITING → RUNNING only if still WAITING), which SQLite
    ignores; and Python's sqlite3 driver runs that SELECT outside any transaction (it begins one
    just before the first INSERT/UPDATE). So two workers could both see a trial WAITING and both
    set it RUNNING: one point, two executions (22 of 300 pops in a two-process test, unloaded).
    ``BEGIN IMMEDIATE`` serializes the transactions (other writers wait for the busy timeout;
    plain readers of the file are not blocked), which is what ``FOR UPDATE`` promises.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class _Requeue:
    """Heartbeat-stale callback: enqueue the stale trial's point again (only the attributes that
    define the point are copied), at most ``max_retry`` times per point."""

    def __init__(self, max_retry: int | None) -> None:
        self.max_retry = max_retry

    def __call__(self, study, trial) -> None:
        requeue(study, trial, self.max_retry)


def requeue(study, trial, max_retry: int | None = None) -> bool:
    """Enqueue ``trial``'s point again as a new WAITING trial; False if it was retried too often."""
    import optuna

    history = [*trial.system_attrs.get(_RETRIES, []), trial.number]
    key = trial.user_attrs.get(KEY_ATTR)
    if max_retry is not None and len(history) > max_retry:
        log.error("point %s: its worker was lost %d times; not retrying again", key, len(history))
        return False
    log.warning("point %s (trial %d) lost its worker; enqueued again", key, trial.number)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            user_attrs={
                k: trial.user_attrs[k]
                for k in (KEY_ATTR, PARAMS_ATTR, CONFIG_ATTR)
                if k in trial.user_attrs
            },
            system_attrs={"fixed_params": {"point": key}, _RETRIES: history},
        )
    )
    return True


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def load_study(storage, study_name: str):
    import optuna

    try:
        return optuna.load_study(
            study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
        )
    except KeyError:
        raise SweepError(
            f"no sweep named {study_name!r} in this storage; start it with `fitc sweep … --study "
            f"{study_name}` or check --study"
        ) from None


# ---------------------------------------------------------------------------------------------
# Creating / resuming a sweep


def points_by_key(trials) -> dict[str, list]:
    """The trials of each point key (trials marked as duplicates of another are left out)."""
    by_key: dict[str, list] = {}
    for t in trials:
        key = t.user_attrs.get(KEY_ATTR)
        if isinstance(key, str) and "fitc_duplicate_of" not in t.user_attrs:
            by_key.setdefault(key, []).append(t)
    return by_key


def create_sweep(
    spec: SweepSpec,
    sweep_dir: str | os.PathLike,
    storage: str | None = None,
    study_name: str | None = None,
    *,
    heartbeat_interval: int = 30,
    grace_period: int = 120,
    max_retry: int = 3,
    retry_failed: bool = False,
) -> tuple[str, str]:
    """Create the sweep's study, or resume it, and enqueue the points the ledger does not hold yet.

    On resume a point is enqueued again only if it has no trial that is waiting, running or
    complete, and its failures were lost workers (or ``retry_failed``). Returns
    ``(storage_url, study_name)``; writes ``sweep.json`` (storage URL without password, study name,
    spec) into ``sweep_dir``.
    """
    import optuna

    if not (1 <= heartbeat_interval <= 3600 and heartbeat_interval < grace_period <= 7 * 86400):
        raise ConfigError(
            f"need a heartbeat interval in 1..3600 s and a grace period above it, at most 7 days "
            f"(604800 s), got {heartbeat_interval} s and {grace_period} s"
        )
    points = expand_points(spec)  # every point valid before anything is written
    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    recorded = read_json(sweep_dir / SWEEP_JSON) if (sweep_dir / SWEEP_JSON).is_file() else {}
    if storage is None and recorded.get("storage_url") and "***" in recorded["storage_url"]:
        raise SweepError(
            f"{sweep_dir / SWEEP_JSON} records a storage URL with a password; pass it again with "
            "--storage URL"
        )
    storage_url = storage or recorded.get("storage_url") or default_storage_url(sweep_dir)
    study_name = study_name or recorded.get("study_name") or f"fitc-{sweep_dir.name}"

    with quiet_optuna():
        st = open_storage(storage_url)
        study = optuna.create_study(
            storage=st,
            study_name=study_name,
            direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.RandomSampler(seed=0),
        )
        attrs = study.user_attrs
        if "fitc_base" in attrs and attrs["fitc_base"] != jsonable(dict(spec.base)):
            raise SweepError(
                f"sweep {study_name!r} was created with base config {attrs['fitc_base']}, now "
                f"{dict(spec.base)}; use the same options, or a new --study / --out"
            )
        if "fitc_base" not in attrs:
            study.set_user_attr("fitc_base", jsonable(dict(spec.base)))
            study.set_user_attr("fitc_sweep_dir", str(sweep_dir))
            study.set_user_attr("fitc_heartbeat_interval_s", heartbeat_interval)
            study.set_user_attr("fitc_grace_period_s", grace_period)
            study.set_user_attr("fitc_max_retry", max_retry)
        by_key = points_by_key(study.get_trials(deepcopy=False))
        enqueued = 0
        for p in points:
            trials = by_key.get(p.key, [])
            if any(t.state.name in ("WAITING", "RUNNING", "COMPLETE") for t in trials):
                continue
            if trials and not retry_failed and any("error" in t.user_attrs for t in trials):
                continue  # the point itself raised: a rerun would raise again
            study.enqueue_trial(
                {"point": p.key},
                user_attrs={
                    KEY_ATTR: p.key,
                    PARAMS_ATTR: jsonable(dict(p.params)),
                    CONFIG_ATTR: jsonable(dict(p.config)),
                },
            )
            enqueued += 1
    log.info(
        "sweep %s: %d points, %d enqueued, storage %s",
        study_name,
        len(points),
        enqueued,
        redact(storage_url),
    )
    write_json(
        sweep_dir / SWEEP_JSON,
        {
            "storage_url": redact(storage_url),
            "study_name": study_name,
            "spec": spec.to_dict(),
            "points": [p.key for p in points],
        },
    )
    return storage_url, study_name


def progress_counts(study) -> tuple[int, int, int]:
    """(finished points, points, running trials)."""
    by_key = points_by_key(study.get_trials(deepcopy=False))
    states = {k: {t.state.name for t in ts} for k, ts in by_key.items()}
    done = sum(1 for s in states.values() if not s & {"WAITING", "RUNNING"})
    running = sum(1 for ts in by_key.values() for t in ts if t.state.name == "RUNNING")
    return done, len(by_key), running


def jsonable(v: Any) -> Any:
    try:
        return json.loads(json.dumps(v, default=_json_default))
    except (TypeError, ValueError):
        return str(v)


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
