"""Design sweeps: a grid of pipeline runs, recorded in an Optuna study, and their Pareto fronts.

Contract:

- :class:`SweepSpec` is the grid (models × budget alternatives × strategies × reuse factors, plus
  base config keys shared by every point); :func:`expand_points` turns it into :class:`SweepPoint`\\ s,
  each with a stable ``key`` (also its run directory name) and the full ``RunConfig`` mapping.
- The **ledger** is an Optuna study. Every point is one enqueued trial (``WAITING``) carrying its key
  and config as user attributes; a worker pops a ``WAITING`` trial by the storage's atomic
  ``WAITING → RUNNING`` transition, runs the point and finishes the trial ``COMPLETE`` (metrics as user
  attributes, value = accuracy) or ``FAIL`` (the error message as a user attribute; not retried).
- A worker beats a heartbeat while it runs a point. A ``RUNNING`` trial whose heartbeat is older than
  the grace period is failed by Optuna's ``fail_stale_trials`` and its point is enqueued again, so a
  killed worker's point is retried exactly once per death; re-running the sweep resumes (complete
  points are kept, missing ones enqueued). Storage: a journal file in the sweep directory by default
  (``ledger.journal``), or any Optuna RDB URL (``sqlite:///…``, ``postgresql://…``) shared by workers
  on several machines.
- :func:`collect_results` writes ``results.csv`` (one row per point) and ``pareto.csv`` (the points on
  the accuracy-vs-LUT, -DSP, -BOPs and -size fronts).

Optuna 5.0.0 facts this module relies on (read from its source): only ``RDBStorage`` implements the
heartbeat protocol (``optuna.storages._heartbeat.BaseHeartbeat``); ``JournalStorage`` does not, so
:class:`_JournalLedger` adds it (heartbeat = a trial system attribute) and Optuna's own
``fail_stale_trials`` then works for both. ``Study.ask()`` creates a *new* trial when no ``WAITING``
one is left, which would race with other workers and add empty trials to the ledger, so workers pop
with the same atomic call ``ask()`` uses internally, ``storage.set_trial_state_values(id, RUNNING)``
(returns False / raises ``UpdateFinishedTrialError`` when another worker won).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from fitc.artifacts import Budget
from fitc.errors import ConfigError, FitcError
from fitc.rundir import RUN_JSON, fingerprint, read_json, write_json, write_text

log = logging.getLogger(__name__)

JOURNAL_FILE = "ledger.journal"
SWEEP_JSON = "sweep.json"
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

STRATEGIES = {
    "latency": "Latency",
    "resource": "Resource",
    "distributed_arithmetic": "distributed_arithmetic",
    "da": "distributed_arithmetic",
}

# Trial user attributes that define a point (copied when a point is enqueued again).
_KEY, _PARAMS, _CONFIG = "fitc_key", "fitc_params", "fitc_config"
_HEARTBEAT = "fitc_heartbeat_unix_s"  # trial system attribute (journal storage only)
_RETRIES = "fitc_retry_of"  # trial system attribute: numbers of the trials this one retries
# RunConfig keys a sweep sets itself for every point (its run directory; no progress bars).
_NOT_BASE = ("out", "progress")


class SweepError(FitcError):
    """A sweep cannot be created, resumed or completed (the message says which and what to do)."""


# ---------------------------------------------------------------------------------------------
# The grid


@dataclass(frozen=True)
class BudgetChoice:
    """One alternative of the budget axis: budgets that apply together (``lut=20000+dsp=0``), or a
    device preset and the fraction of it to fit in (``device=xc7z020:0.25``)."""

    budget: tuple[str, ...] = ()
    device: str | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.device is None) != (self.fraction is None):
            raise ConfigError("a device budget needs a fraction, e.g. device=xc7z020:0.25")
        if self.fraction is not None and not (0 < self.fraction <= 1):
            raise ConfigError(
                f"device={self.device}: fraction must be in (0, 1], got {self.fraction}"
            )
        if not self.budget and self.device is None:
            raise ConfigError("empty budget alternative")
        # Normalise so that size=0.0625 and size=1/16 are the same point.
        object.__setattr__(self, "budget", tuple(str(Budget.parse(b)) for b in self.budget))

    @property
    def label(self) -> str:
        parts = list(self.budget)
        if self.device is not None:
            parts.insert(0, f"device={self.device}@{self.fraction:g}")
        return "+".join(parts)

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.budget:
            out["budget"] = list(self.budget)
        if self.device is not None:
            out["device"], out["fraction"] = self.device, self.fraction
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"budget": list(self.budget), "device": self.device, "fraction": self.fraction}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BudgetChoice:
        return cls(tuple(d.get("budget", ())), d.get("device"), d.get("fraction"))


def parse_budget_axis(text: str) -> list[BudgetChoice]:
    """Parse one ``--budget`` flag into its alternatives.

    ``size=1/16,1/32`` → two alternatives (a bare value repeats the previous kind);
    ``device=xc7z020:0.1,0.25`` → the part at two fractions; ``lut=20000+dsp=0`` → one alternative
    with two budgets at once; ``size=1/16,lut=20000`` → two alternatives of different kinds.
    """
    choices: list[BudgetChoice] = []
    prefix: str | None = None
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if "=" not in item:
            if prefix is None:
                raise ConfigError(
                    f"--budget {text!r}: {item!r} has no KIND= before it; write e.g. size=1/16,1/32"
                )
            item = prefix + item
        kind, value = (s.strip() for s in item.split("=", 1))
        kind = kind.lower()
        if kind == "device":
            part, sep, frac = value.partition(":")
            if not sep or not part or not frac:
                raise ConfigError(
                    f"--budget {text!r}: write a device budget as device=PART:FRACTION[,FRACTION…], "
                    "e.g. device=xc7z020:0.1,0.25"
                )
            try:
                fraction = float(Fraction(frac))
            except (ValueError, ZeroDivisionError):
                raise ConfigError(f"--budget {text!r}: fraction {frac!r} is not a number") from None
            choices.append(BudgetChoice(device=part, fraction=fraction))
            prefix = f"device={part}:"
        else:
            parts = tuple(p for p in item.split("+") if p.strip())
            choices.append(BudgetChoice(budget=parts))
            prefix = f"{kind}=" if len(parts) == 1 else None
    if not choices:
        raise ConfigError(f"--budget {text!r} names no budget")
    return choices


def parse_strategy(name: str) -> str:
    """``latency`` / ``Resource`` / ``distributed_arithmetic`` (or ``da``), case-insensitive."""
    try:
        return STRATEGIES[name.strip().lower().replace("-", "_")]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose latency, resource or distributed_arithmetic"
        ) from None


def _split(values: Sequence[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [s.strip() for v in values for s in str(v).split(",") if s.strip()]


def _dedupe(items: Sequence[Any]) -> tuple:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class SweepSpec:
    """The grid of a sweep. An empty axis means "the base config's value" (one alternative).

    ``budgets`` is the union of every ``--budget`` flag's alternatives; ``base`` holds RunConfig keys
    applied to every point (e.g. ``finetune_epochs``). Points run to the last pipeline stage unless
    ``base`` sets ``until``.
    """

    models: tuple[str, ...] = ()
    budgets: tuple[BudgetChoice, ...] = ()
    strategies: tuple[str, ...] = ()
    reuse_factors: tuple[int, ...] = ()
    base: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", _dedupe(self.models))
        object.__setattr__(self, "budgets", _dedupe(self.budgets))
        object.__setattr__(self, "strategies", _dedupe(parse_strategy(s) for s in self.strategies))
        rfs = []
        for rf in self.reuse_factors:
            if isinstance(rf, bool) or not isinstance(rf, int) or rf < 1:
                raise ConfigError(f"reuse factor must be an integer ≥ 1, got {rf!r}")
            rfs.append(rf)
        object.__setattr__(self, "reuse_factors", _dedupe(rfs))
        base = {str(k).replace("-", "_"): v for k, v in dict(self.base).items()}
        for key in _NOT_BASE:  # the sweep decides these per point
            if base.pop(key, None) is not None:
                log.debug("sweep base config: ignoring %r (set per point)", key)
        object.__setattr__(self, "base", base)

    @classmethod
    def from_grid(
        cls,
        models: Sequence[str] | str | None = None,
        budgets: Sequence[str] | str | None = None,
        strategies: Sequence[str] | str | None = None,
        reuse_factors: Sequence[str | int] | str | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> SweepSpec:
        """Build a spec from command-line style values (each may be repeated and comma separated;
        every string in ``budgets`` is one ``--budget`` flag)."""
        if isinstance(budgets, str):
            budgets = [budgets]
        choices = [c for text in (budgets or []) for c in parse_budget_axis(text)]
        rfs = []
        for s in _split([str(r) for r in reuse_factors] if reuse_factors is not None else None):
            try:
                rfs.append(int(s))
            except ValueError:
                raise ConfigError(f"--reuse-factor {s!r} is not an integer") from None
        return cls(
            models=tuple(_split(models)),
            budgets=tuple(choices),
            strategies=tuple(_split(strategies)),
            reuse_factors=tuple(rfs),
            base=dict(base or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "budgets": [b.to_dict() for b in self.budgets],
            "strategies": list(self.strategies),
            "reuse_factors": list(self.reuse_factors),
            "base": dict(self.base),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepSpec:
        return cls(
            models=tuple(d.get("models", ())),
            budgets=tuple(BudgetChoice.from_dict(b) for b in d.get("budgets", ())),
            strategies=tuple(d.get("strategies", ())),
            reuse_factors=tuple(d.get("reuse_factors", ())),
            base=dict(d.get("base", {})),
        )


@dataclass(frozen=True)
class SweepPoint:
    """One point of the grid: its key (stable across runs; its run directory name), the axis values
    for tables (``params``) and the full RunConfig mapping (``config``: base + axis values)."""

    key: str
    params: Mapping[str, Any]
    config: Mapping[str, Any]

    def run_config(self, **overrides: Any):
        from fitc.config import from_mapping

        return from_mapping({**self.config, **overrides}, source=f"sweep point {self.key}")


def _key(*parts: str) -> str:
    return "__".join(re.sub(r"[^A-Za-z0-9._=@+-]+", "-", p).strip("-") for p in parts)


def expand_points(spec: SweepSpec) -> list[SweepPoint]:
    """The grid's points in a stable order (model, budget, strategy, reuse factor), each validated
    as a RunConfig, duplicates (same key) dropped."""
    from fitc.config import from_mapping

    base = dict(spec.base)
    base.setdefault("until", "estimate")  # sweeps want resources: run every stage there is
    points: dict[str, SweepPoint] = {}
    for model in spec.models or (None,):
        for choice in spec.budgets or (None,):
            for strategy in spec.strategies or (None,):
                for rf in spec.reuse_factors or (None,):
                    cfg_map = dict(base)
                    if model is not None:
                        cfg_map["model"] = model
                    if choice is not None:
                        cfg_map.update(choice.overrides())
                    if strategy is not None:
                        cfg_map["strategy"] = strategy
                    if rf is not None:
                        cfg_map["reuse_factor"] = rf
                    cfg = from_mapping(cfg_map, source="sweep point")
                    if choice is not None:
                        label = choice.label
                    elif cfg.budget or cfg.device:
                        label = BudgetChoice(cfg.budget, cfg.device, cfg.fraction).label
                    else:
                        label = "default"  # the pipeline's default budget
                    params = {
                        "model": cfg.model,
                        "budget": label,
                        "strategy": cfg.strategy,
                        "reuse_factor": cfg.reuse_factor,
                    }
                    key = _key(cfg.model, label, cfg.strategy, f"rf{cfg.reuse_factor}")
                    if key not in points:
                        points[key] = SweepPoint(key, params, cfg_map)
    return list(points.values())


# ---------------------------------------------------------------------------------------------
# Storage (the ledger)


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
    if url.startswith("sqlite:"):
        # Several local processes write the same file: wait for the lock instead of failing.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    try:
        return RDBStorage(
            url,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
            **kwargs,
        )
    except Exception as e:
        raise SweepError(f"cannot open storage {redact(url)}: {e.__class__.__name__}: {e}") from e


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
    key = trial.user_attrs.get(_KEY)
    if max_retry is not None and len(history) > max_retry:
        log.error("point %s: its worker was lost %d times; not retrying again", key, len(history))
        return False
    log.warning("point %s (trial %d) lost its worker; enqueued again", key, trial.number)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            user_attrs={
                k: trial.user_attrs[k] for k in (_KEY, _PARAMS, _CONFIG) if k in trial.user_attrs
            },
            system_attrs={"fixed_params": {"point": key}, _RETRIES: history},
        )
    )
    return True


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def _load_study(storage, study_name: str):
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


def _points_by_key(trials) -> dict[str, list]:
    by_key: dict[str, list] = {}
    for t in trials:
        key = t.user_attrs.get(_KEY)
        if key is not None and "fitc_duplicate_of" not in t.user_attrs:
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

    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    points = expand_points(spec)
    recorded = read_json(sweep_dir / SWEEP_JSON) if (sweep_dir / SWEEP_JSON).is_file() else {}
    if storage is None and recorded.get("storage_url") and "***" in recorded["storage_url"]:
        raise SweepError(
            f"{sweep_dir / SWEEP_JSON} records a storage URL with a password; pass it again with "
            "--storage URL"
        )
    storage_url = storage or recorded.get("storage_url") or default_storage_url(sweep_dir)
    study_name = study_name or recorded.get("study_name") or f"fitc-{sweep_dir.name}"
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise ConfigError(
            f"need heartbeat interval ≥ 1 s and grace period > interval, got "
            f"{heartbeat_interval} s and {grace_period} s"
        )

    with _quiet_optuna():
        st = open_storage(storage_url)
        study = optuna.create_study(
            storage=st,
            study_name=study_name,
            direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.RandomSampler(seed=0),
        )
        attrs = study.user_attrs
        if "fitc_base" in attrs and attrs["fitc_base"] != _jsonable(dict(spec.base)):
            raise SweepError(
                f"sweep {study_name!r} was created with base config {attrs['fitc_base']}, now "
                f"{dict(spec.base)}; use the same options, or a new --study / --out"
            )
        if "fitc_base" not in attrs:
            study.set_user_attr("fitc_base", _jsonable(dict(spec.base)))
            study.set_user_attr("fitc_sweep_dir", str(sweep_dir))
            study.set_user_attr("fitc_heartbeat_interval_s", heartbeat_interval)
            study.set_user_attr("fitc_grace_period_s", grace_period)
            study.set_user_attr("fitc_max_retry", max_retry)
        by_key = _points_by_key(study.get_trials(deepcopy=False))
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
                    _KEY: p.key,
                    _PARAMS: _jsonable(dict(p.params)),
                    _CONFIG: _jsonable(dict(p.config)),
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


# ---------------------------------------------------------------------------------------------
# Workers


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
    """Atomically take one WAITING trial (WAITING → RUNNING); None if none is left."""
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
    key = trial.user_attrs.get(_KEY)
    for t in _points_by_key(study.get_trials(deepcopy=False)).get(key, []):
        if t.number == trial.number:
            continue
        if t.state.name == "COMPLETE":
            return t.number
        if t.state.name in ("WAITING", "RUNNING") and t.number < trial.number:
            return t.number
    return None


def _progress_counts(study) -> tuple[int, int, int]:
    """(finished points, points, running trials)."""
    by_key = _points_by_key(study.get_trials(deepcopy=False))
    states = {k: {t.state.name for t in ts} for k, ts in by_key.items()}
    done = sum(1 for s in states.values() if not s & {"WAITING", "RUNNING"})
    running = sum(1 for ts in by_key.values() for t in ts if t.state.name == "RUNNING")
    return done, len(by_key), running


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
    point_fn: PointFn | str = "fitc.sweep:run_point",
    sweep_dir: str | os.PathLike | None = None,
    max_points: int | None = None,
    progress: bool = True,
    wait: bool = True,
) -> WorkerStats:
    """Take points from the ledger and run them until none is left.

    With ``wait`` the worker also waits while other workers still run points (a point whose
    worker dies becomes stale after the grace period and is taken again), so it returns only when
    every point is finished. ``max_points`` bounds the points this worker runs.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    from tqdm import tqdm

    fn = resolve_point_fn(point_fn)
    stats = WorkerStats()
    with _quiet_optuna():
        attrs = _load_study(open_storage(storage_url), study_name).user_attrs
        interval = int(attrs.get("fitc_heartbeat_interval_s", 30))
        grace = int(attrs.get("fitc_grace_period_s", 4 * interval))
        storage = open_storage(
            storage_url,
            heartbeat_interval=interval,
            grace_period=grace,
            max_retry=attrs.get("fitc_max_retry", 3),
        )
        study = _load_study(storage, study_name)
        study_id = storage.get_study_id_from_name(study_name)
        sweep_dir = Path(sweep_dir or attrs.get("fitc_sweep_dir") or ".")
        done, total, _ = _progress_counts(study)
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
                    done, total, running = _progress_counts(study)
                    bar.total, bar.n = total, done
                    bar.refresh()
                    if not wait or running == 0:
                        break
                    log.debug("waiting for %d running point(s) of other workers", running)
                    time.sleep(min(interval, 5))
                    continue
                trial = storage.get_trial(trial_id)
                key = trial.user_attrs.get(_KEY)
                if key is None:
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
                point = SweepPoint(
                    key, trial.user_attrs.get(_PARAMS, {}), trial.user_attrs.get(_CONFIG, {})
                )
                bar.set_postfix_str(key)
                ran += 1
                metrics, error = _run_one(fn, point, sweep_dir, storage, study, trial_id, interval)
                try:
                    if error is None:
                        for k, v in metrics.items():
                            storage.set_trial_user_attr(trial_id, k, _jsonable(v))
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
                done, total, _ = _progress_counts(study)
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


def _jsonable(v: Any) -> Any:
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


# ---------------------------------------------------------------------------------------------
# The real point: one pipeline run sharing the float model


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

    The float model of each model is trained once, under ``sweep_dir/shared/<model>/`` (a file lock
    keeps concurrent workers on one machine from training it twice), and its Fisher estimated once
    there; both are handed to every point through ``float_from`` and ``fisher_from``. Returns the flattened metrics (:func:`point_metrics`).
    """
    from fitc.pipeline import run_pipeline

    sweep_dir = Path(sweep_dir)
    cfg = point.run_config(progress=False)
    float_from, fisher_from = cfg.float_from, cfg.fisher_from
    if float_from is None:
        shared = sweep_dir / "shared" / cfg.model
        with _file_lock(sweep_dir / "shared" / f".{cfg.model}.lock"):
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
    run_dir = sweep_dir / "points" / point.key
    run = run_pipeline(
        cfg.replace(out=str(run_dir), float_from=float_from, fisher_from=fisher_from)
    )
    return point_metrics(run.dir.path)


def point_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The flat metrics of a finished run directory: accuracy, float_accuracy, size, bops, lut, ff,
    dsp, bram_18k, latency_cycles, latency_ns, fits (hardware budgets met), loop_iterations,
    loop_stop_reason (those that exist), run_dir."""
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
    out["run_dir"] = str(run_dir)
    return out


# ---------------------------------------------------------------------------------------------
# Results


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
    params = ua.get(_PARAMS, {})
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
    skip = {_KEY, _PARAMS, _CONFIG, "traceback", *row}
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
    with _quiet_optuna():
        study = _load_study(open_storage(storage_url), study_name)
        sweep_dir = Path(sweep_dir or study.user_attrs.get("fitc_sweep_dir") or ".")
        by_key = _points_by_key(study.get_trials(deepcopy=False))
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


# ---------------------------------------------------------------------------------------------
# The whole sweep on this machine


def run_sweep(
    spec: SweepSpec,
    sweep_dir: str | os.PathLike,
    workers: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    point_fn: PointFn | str = "fitc.sweep:run_point",
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
    if workers < 1:
        raise ConfigError(f"--workers must be ≥ 1, got {workers}")
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
    started; they get the parent's ``sys.path`` so a point function importable here is there too.
    """
    from tqdm import tqdm

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in sys.path if p] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
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
    with _quiet_optuna():
        study = _load_study(open_storage(url), name)
        done, total, _ = _progress_counts(study)
    bar = tqdm(total=total, initial=done, desc=f"sweep {name}", unit="point", disable=not progress)

    def refresh() -> None:
        with _quiet_optuna():
            done, total, _ = _progress_counts(study)
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


# ---------------------------------------------------------------------------------------------
# Command-line helpers (wired into `fitc sweep` by fitc/cli.py)


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
        "postgresql://USER@HOST/DB, or a journal file path "
        "(default: <out>/ledger.journal)",
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
    g.add_argument("--point-fn", default="fitc.sweep:run_point", help=argparse.SUPPRESS)


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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
