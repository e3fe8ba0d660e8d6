"""Sweeps: the grid, the Optuna ledger (no point lost or run twice, failures recorded, killed
workers retried, resume), results and Pareto fronts. Point functions are cheap fakes that leave a
marker file per execution, so executions can be counted across processes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitc.errors import ConfigError
from fitc.sweep import (
    BudgetChoice,
    SweepError,
    SweepSpec,
    add_sweep_arguments,
    collect_results,
    create_sweep,
    expand_points,
    format_summary,
    pareto_front,
    parse_budget_axis,
    read_csv,
    run_sweep,
    run_worker,
    spec_from_args,
)

FAKE = '''
"""Fake point functions for the sweep tests (importable by spawned workers)."""
import os, time, uuid
from pathlib import Path


def _mark(point, sweep_dir):
    d = Path(sweep_dir) / "markers"
    d.mkdir(parents=True, exist_ok=True)
    before = len(list(d.glob(point.key + ".*")))
    (d / f"{point.key}.{os.getpid()}.{uuid.uuid4().hex[:8]}").touch()
    return d, before


def _metrics(point, sweep_dir):
    n = sum(map(ord, point.key))
    return {"accuracy": 0.5 + (n % 37) / 100, "lut": 1000 + n % 101, "dsp": n % 7,
            "bops": (n % 13) / 100, "size": (n % 11) / 100, "run_dir": str(sweep_dir)}


def quick(point, sweep_dir):
    _mark(point, sweep_dir)
    return _metrics(point, sweep_dir)


def together(point, sweep_dir):
    """Wait (up to 30 s) until two processes have started points: proves both took part."""
    d, _ = _mark(point, sweep_dir)
    t0 = time.time()
    while len({p.name.split(".")[-2] for p in d.iterdir()}) < 2 and time.time() - t0 < 30:
        time.sleep(0.05)
    time.sleep(0.2)
    return _metrics(point, sweep_dir)


def flaky(point, sweep_dir):
    _mark(point, sweep_dir)
    if "1-32" in point.key:
        raise RuntimeError(f"no plan for {point.key}")
    return _metrics(point, sweep_dir)


def hangs_once(point, sweep_dir):
    """The size=1/32 Latency point hangs on its first execution (the test kills the worker)."""
    _, before = _mark(point, sweep_dir)
    if "1-32__Latency" in point.key and before == 0:
        time.sleep(120)
    return _metrics(point, sweep_dir)


def interrupted_once(point, sweep_dir):
    _, before = _mark(point, sweep_dir)
    if "1-32__Latency" in point.key and before == 0:
        raise KeyboardInterrupt
    return _metrics(point, sweep_dir)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Write the fake point module and make it importable here and in child processes."""
    mod_dir = tmp_path / "fakemod"
    mod_dir.mkdir()
    (mod_dir / "fitc_fake_points.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(mod_dir))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(mod_dir), os.environ.get("PYTHONPATH", "")])
    )
    return "fitc_fake_points"


def markers(sweep_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in (sweep_dir / "markers").iterdir():
        key = p.name.rsplit(".", 2)[0]
        out[key] = out.get(key, 0) + 1
    return out


def pids(sweep_dir: Path) -> set[str]:
    return {p.name.rsplit(".", 2)[1] for p in (sweep_dir / "markers").iterdir()}


SPEC = SweepSpec.from_grid(
    models="digits-mlp", budgets=["size=1/8,1/16,1/32"], strategies="latency,da"
)  # 6 points
# A point is requeued only after `grace_period` seconds without a heartbeat: well above what a
# busy 2-core machine can delay a heartbeat thread (3 s gave rare duplicates under load 5).
FAST = {"heartbeat_interval": 1, "grace_period": 10}


# ---------------------------------------------------------------------------------------------
# Grid


def test_budget_axis_syntax():
    assert parse_budget_axis("size=1/16,1/32") == [
        BudgetChoice(("size=1/16",)),
        BudgetChoice(("size=1/32",)),
    ]
    assert parse_budget_axis("device=xc7z020:0.1,0.25") == [
        BudgetChoice(device="xc7z020", fraction=0.1),
        BudgetChoice(device="xc7z020", fraction=0.25),
    ]
    assert parse_budget_axis("lut=20000+dsp=0") == [BudgetChoice(("lut=20000", "dsp=0"))]
    assert parse_budget_axis("size=0.0625,lut=2e4") == [
        BudgetChoice(("size=1/16",)),
        BudgetChoice(("lut=20000",)),
    ]
    for bad in (
        "1/16",
        "device=xc7z020",
        "device=xc7z020:1.5",
        "device=xc7z020:1e400",
        "device=nonsense:0.5",
        "size=2",
        "foo=1",
        "lut=20000+dsp=0,3",
        "lut=1.5",
        "dsp=1.5",
        "lut=1e400",
    ):
        with pytest.raises(ConfigError):
            parse_budget_axis(bad)


def test_expand_points_is_the_union_of_budget_flags_times_the_other_axes():
    spec = SweepSpec.from_grid(
        models="digits-mlp",
        budgets=["device=xc7z020:0.1,0.25,0.5", "size=1/16,1/32"],
        strategies=["Latency,DISTRIBUTED_ARITHMETIC"],
        reuse_factors="1",
        base={"finetune_epochs": 2, "out": "ignored"},
    )
    points = expand_points(spec)
    assert len(points) == 10
    assert len({p.key for p in points}) == 10
    assert points[0].key == "digits-mlp__device=xc7z020@0.1__Latency__rf1"
    assert points[-1].key == "digits-mlp__size=1-32__distributed_arithmetic__rf1"
    p = points[0]
    assert p.config["device"] == "xc7z020" and p.config["fraction"] == 0.1
    assert p.config["finetune_epochs"] == 2 and "out" not in p.config
    assert p.run_config().strategy == "Latency"
    assert {q.params["strategy"] for q in points} == {"Latency", "distributed_arithmetic"}
    # stable: same grid, same keys; duplicate alternatives collapse
    assert [q.key for q in expand_points(spec)] == [q.key for q in points]
    again = SweepSpec.from_grid(budgets=["size=1/16,0.0625"])
    assert len(expand_points(again)) == 1
    assert SweepSpec.from_dict(spec.to_dict()) == spec


def test_empty_axes_take_the_base_config():
    points = expand_points(SweepSpec(base={"budget": ["bops=1/50"], "strategy": "Resource"}))
    assert [p.key for p in points] == ["digits-mlp__bops=1-50__Resource__rf1"]
    assert [p.key for p in expand_points(SweepSpec())] == ["digits-mlp__default__auto__rf1"]
    device = expand_points(SweepSpec.from_grid(budgets="device=xc7z020:0.25"))[0]
    assert "budget" not in device.config and device.run_config().fraction == 0.25


def test_bad_grid_values_fail_early():
    with pytest.raises(ConfigError, match="strategy"):
        SweepSpec.from_grid(strategies="fastest")
    with pytest.raises(ConfigError):
        SweepSpec.from_grid(reuse_factors="0")
    with pytest.raises(ConfigError, match="finetune_epoch"):
        expand_points(SweepSpec(base={"finetune_epoch": 3}))


def test_spec_from_cli_arguments(tmp_path):
    p = argparse.ArgumentParser()
    add_sweep_arguments(p)
    p.add_argument("--out")
    p.add_argument("--config")
    p.add_argument("--finetune-epochs", type=int)
    (tmp_path / "c.yaml").write_text("train_epochs: 3\nseed: 1\n")
    args = p.parse_args(
        [
            "--budget",
            "device=xc7z020:0.1,0.25,0.5",
            "--budget",
            "size=1/16,1/32",
            "--strategy",
            "latency,distributed_arithmetic",
            "--config",
            str(tmp_path / "c.yaml"),
            "--finetune-epochs",
            "4",
            "--set",
            "seed=2",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    spec = spec_from_args(args)
    assert len(expand_points(spec)) == 10
    assert spec.base == {"train_epochs": 3, "seed": 2, "finetune_epochs": 4}
    assert p.parse_args(["worker", "--storage", "x.journal", "--study", "s"]).action == "worker"


# ---------------------------------------------------------------------------------------------
# Ledger


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_two_processes_share_one_storage_without_duplicates(tmp_path, fake, storage):
    sweep = tmp_path / "sweep"
    url = None if storage == "journal" else f"sqlite:///{tmp_path / 'ledger.db'}"
    result = run_sweep(
        SPEC, sweep, workers=2, storage=url, point_fn=f"{fake}:together", progress=False, **FAST
    )
    assert markers(sweep) == {r["key"]: 1 for r in result.rows}
    assert len(pids(sweep)) == 2  # both worker processes ran points
    assert [r["status"] for r in result.rows] == ["COMPLETE"] * 6
    assert len(read_csv(sweep / "results.csv")) == 6
    study = optuna.load_study(study_name=result.study_name, storage=url or _journal(sweep))
    assert len(study.trials) == 6  # no empty trials from racing pops


def test_sqlite_pop_is_atomic_between_connections(tmp_path, monkeypatch):
    """Two workers popping the same WAITING trial at once: exactly one gets it. SQLite ignores
    Optuna's SELECT … FOR UPDATE, so before fitc's BEGIN IMMEDIATE both saw it WAITING, both set
    it RUNNING and the point ran twice (the flaky two-process test above)."""
    import threading

    from optuna.storages import RDBStorage

    from fitc.sweep import open_storage
    from fitc.sweep.worker import _pop

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    study.enqueue_trial({"x": 0})
    trial_id = study.trials[0]._trial_id
    check = RDBStorage.check_trial_is_updatable

    def preempted(self, *args, **kwargs):  # a worker paused between reading and writing
        time.sleep(0.3)
        return check(self, *args, **kwargs)

    monkeypatch.setattr(RDBStorage, "check_trial_is_updatable", preempted)
    storages = [open_storage(url) for _ in range(2)]  # two engines: two connections, like workers
    barrier, popped = threading.Barrier(2), []

    def pop(storage) -> None:
        barrier.wait()
        popped.append(_pop(storage, study._study_id))

    threads = [threading.Thread(target=pop, args=(s,)) for s in storages]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(popped, key=str) == sorted([trial_id, None], key=str)  # one got it
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING


def _journal(sweep: Path):
    from fitc.sweep import open_storage

    return open_storage(f"journal://{sweep / 'ledger.journal'}")


def test_a_point_that_raises_is_recorded_failed_and_the_others_finish(tmp_path, fake):
    sweep = tmp_path / "sweep"
    result = run_sweep(SPEC, sweep, point_fn=f"{fake}:flaky", progress=False, **FAST)
    failed = [r for r in result.rows if r["status"] == "FAIL"]
    assert [r["key"] for r in failed] == [
        "digits-mlp__size=1-32__Latency__rf1",
        "digits-mlp__size=1-32__distributed_arithmetic__rf1",
    ]
    assert all("RuntimeError: no plan for" in r["error"] for r in failed)
    assert result.counts == {"COMPLETE": 4, "FAIL": 2}
    assert "failed digits-mlp__size=1-32__Latency__rf1" in format_summary(result)
    # re-running does not retry a point that raised …
    run_sweep(SPEC, sweep, point_fn=f"{fake}:flaky", progress=False, **FAST)
    assert set(markers(sweep).values()) == {1}
    # … unless asked to
    result = run_sweep(
        SPEC, sweep, point_fn=f"{fake}:quick", progress=False, retry_failed=True, **FAST
    )
    assert result.counts == {"COMPLETE": 6}
    assert markers(sweep)["digits-mlp__size=1-32__Latency__rf1"] == 2
    assert markers(sweep)["digits-mlp__size=1-16__Latency__rf1"] == 1


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_killed_worker_point_is_retried_and_rerun_completes_only_missing_points(
    tmp_path, fake, storage
):
    sweep = tmp_path / "sweep"
    url = None if storage == "journal" else f"sqlite:///{tmp_path / 'ledger.db'}"
    url, name = create_sweep(SPEC, sweep, url, **FAST)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fitc.sweep",
            "worker",
            "--storage",
            url,
            "--study",
            name,
            "--point-fn",
            f"{fake}:hangs_once",
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    hang = "digits-mlp__size=1-32__Latency__rf1"
    t0 = time.time()
    while not (sweep / "markers").is_dir() or hang not in markers(sweep):
        assert worker.poll() is None, worker.stderr.read().decode()
        assert time.time() - t0 < 60
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    worker.stderr.close()
    before = markers(sweep)
    assert before == {k: 1 for k in list(before)} and len(before) == 5  # 4 done + the hung one
    status = {r["key"]: r["status"] for r in collect_results(url, name, sweep).rows}
    assert status[hang] == "RUNNING"
    assert status["digits-mlp__size=1-32__distributed_arithmetic__rf1"] == "WAITING"

    result = run_sweep(
        SPEC, sweep, storage=url, point_fn=f"{fake}:hangs_once", progress=False, **FAST
    )
    assert result.counts == {"COMPLETE": 6}
    after = markers(sweep)
    assert after[hang] == 2  # started twice (killed once), completed once
    assert all(n == 1 for k, n in after.items() if k != hang)
    row = next(r for r in result.rows if r["key"] == hang)
    assert row["attempts"] == 2


def test_interrupted_point_goes_back_to_the_queue_at_once(tmp_path, fake):
    sweep = tmp_path / "sweep"
    url, name = create_sweep(SPEC, sweep, heartbeat_interval=30, grace_period=600)
    with pytest.raises(KeyboardInterrupt):
        run_worker(url, name, point_fn=f"{fake}:interrupted_once", progress=False)
    # no waiting for the 600 s grace period: the point was handed back
    result = run_sweep(SPEC, sweep, point_fn=f"{fake}:interrupted_once", progress=False)
    assert result.counts == {"COMPLETE": 6}
    assert markers(sweep)["digits-mlp__size=1-32__Latency__rf1"] == 2


def test_points_enqueued_twice_are_computed_once(tmp_path, fake):
    sweep = tmp_path / "sweep"
    url, name = create_sweep(SPEC, sweep, **FAST)
    # what two `fitc sweep` commands starting at the same moment could do: enqueue again
    study = optuna.load_study(study_name=name, storage=_journal(sweep))
    for t in list(study.trials):
        study.enqueue_trial({"point": t.user_attrs["fitc_key"]}, user_attrs=t.user_attrs)
    result = run_sweep(SPEC, sweep, point_fn=f"{fake}:quick", progress=False)
    assert set(markers(sweep).values()) == {1}
    assert len(result.rows) == 6 and result.counts == {"COMPLETE": 6}


def test_resume_with_a_different_base_config_is_refused(tmp_path):
    create_sweep(SPEC, tmp_path / "s")
    changed = SweepSpec.from_grid(budgets=["size=1/8"], base={"finetune_epochs": 1})
    with pytest.raises(SweepError, match="base config"):
        create_sweep(changed, tmp_path / "s")


def test_worker_on_unknown_study_says_what_to_do(tmp_path):
    url, _ = create_sweep(SPEC, tmp_path / "s")
    with pytest.raises(SweepError, match="no sweep named 'nope'"):
        run_worker(url, "nope", progress=False)


# ---------------------------------------------------------------------------------------------
# The ledger is input: what a worker builds paths from is checked first


def test_ledger_keys_that_leave_the_sweep_are_refused_not_run(tmp_path, fake):
    sweep = tmp_path / "sweep"
    url, name = create_sweep(SPEC, sweep, **FAST)
    study = optuna.load_study(study_name=name, storage=_journal(sweep))
    # whoever can write the ledger adds points of their own
    evil = {
        "../../ESCAPED_RUN": {},
        "..": {},
        "points/../../x": {},
        "ok-key-bad-model": {"model": "../evil.py:build\n"},
        "ok-key-not-a-config": "model: digits-mlp",
    }
    for key, config in evil.items():
        study.enqueue_trial(
            {"point": key},
            user_attrs={"fitc_key": key, "fitc_params": {}, "fitc_config": config},
        )
    study.enqueue_trial({"point": "x"}, user_attrs={"fitc_key": ["not", "a", "key"]})
    result = run_sweep(SPEC, sweep, point_fn=f"{fake}:quick", progress=False)
    assert [
        t.state.name for t in study.get_trials() if t.user_attrs["fitc_key"] == ["not", "a", "key"]
    ] == ["FAIL"]
    status = {r["key"]: (r["status"], r["error"]) for r in result.rows}
    for key in evil:
        assert status[key][0] == "FAIL" and status[key][1].startswith("refused: "), status[key]
    assert [s for k, (s, _) in status.items() if k not in evil] == ["COMPLETE"] * 6
    assert set(markers(sweep)) == {p.key for p in expand_points(SPEC)}  # the refused never ran
    assert not [p for p in tmp_path.rglob("*") if "ESCAPED" in p.name or p.name == "x"]


def test_paths_are_checked_after_resolving_symlinks(tmp_path):
    from fitc.sweep import check_sweep_dir, inside, point_dir, shared_dir

    sweep, outside = tmp_path / "sweep", tmp_path / "outside"
    (sweep / "points").mkdir(parents=True)
    outside.mkdir()
    (sweep / "points" / "linked").symlink_to(outside)
    assert point_dir(sweep, "digits-mlp__size=1-16__Latency__rf1").parent == sweep / "points"
    with pytest.raises(ConfigError, match="outside the sweep directory"):
        point_dir(sweep, "linked")
    (sweep / "shared").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the sweep directory"):
        shared_dir(sweep, "digits-mlp")
    for bad in ("..", ".", "a/b", "", "a\x00"):
        with pytest.raises(ConfigError):
            inside(sweep, bad)
    for bad in ("relative/dir", "/abs/../up", None, 3, "/a\nb"):
        with pytest.raises(ConfigError, match="pass --out"):
            check_sweep_dir(bad)
    assert check_sweep_dir(str(sweep)) == sweep


def test_model_labels_are_slugs_unique_per_reference():
    from fitc.sweep import check_model_ref, model_label

    assert model_label("digits-mlp") == "digits-mlp" and model_label("mlp") == "mlp"
    a, b = model_label("a/nets.py:build"), model_label("b/nets.py:build")
    assert a.startswith("nets-build-") and b.startswith("nets-build-") and a != b
    assert model_label("pkg.nets:Net.build").startswith("pkg-Net-build-")
    for ref in ("../evil.py:build\n", "nets.py:not a name", ":build", "../x", "a\x00", ""):
        with pytest.raises(ConfigError, match="not a model reference"):
            check_model_ref(ref)
    spec = SweepSpec.from_grid(budgets=["size=1/8"], base={"model": "digits-mlp"})
    assert [p.key for p in expand_points(spec)] == ["digits-mlp__size=1-8__auto__rf1"]


def test_a_ledger_sweep_directory_must_be_absolute(tmp_path):
    url, name = create_sweep(SPEC, tmp_path / "s")
    study = optuna.load_study(study_name=name, storage=_journal(tmp_path / "s"))
    study.set_user_attr("fitc_sweep_dir", "../../elsewhere")
    with pytest.raises(ConfigError, match="not a plain absolute path"):
        run_worker(url, name, progress=False)
    with pytest.raises(ConfigError, match="not a plain absolute path"):
        collect_results(url, name)


# ---------------------------------------------------------------------------------------------
# Results


def brute_front(rows, a="accuracy", c="lut"):
    ok = [
        r
        for r in rows
        if r.get("status", "COMPLETE") == "COMPLETE"
        and r.get(a) is not None
        and r.get(c) is not None
    ]
    return [
        r
        for r in ok
        if not any(s[a] >= r[a] and s[c] <= r[c] and (s[a] > r[a] or s[c] < r[c]) for s in ok)
    ]


row_st = st.fixed_dictionaries(
    {
        "accuracy": st.one_of(st.none(), st.integers(0, 6).map(lambda x: x / 6)),
        "lut": st.one_of(st.none(), st.integers(0, 8)),
        "status": st.sampled_from(["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.lists(row_st, max_size=25))
def test_pareto_front_equals_brute_force(rows):
    rows = [dict(r, key=i) for i, r in enumerate(rows)]
    got = pareto_front(rows)
    want = brute_front(rows)
    assert sorted(r["key"] for r in got) == sorted(r["key"] for r in want)
    costs = [r["lut"] for r in got]
    assert costs == sorted(costs)


def test_results_csv_and_pareto_csv(tmp_path, fake):
    sweep = tmp_path / "sweep"
    result = run_sweep(SPEC, sweep, point_fn=f"{fake}:quick", progress=False)
    rows = read_csv(sweep / "results.csv")
    assert [r["key"] for r in rows] == [p.key for p in expand_points(SPEC)]
    assert {
        "key",
        "status",
        "model",
        "budget",
        "strategy",
        "reuse_factor",
        "accuracy",
        "lut",
        "error",
        "run_dir",
    } <= set(rows[0])
    assert isinstance(rows[0]["lut"], int) and isinstance(rows[0]["accuracy"], float)
    pareto = read_csv(sweep / "pareto.csv")
    assert {r["front"] for r in pareto} == {"lut", "dsp", "bops", "size"}
    for front in ("lut", "dsp", "bops", "size"):
        got = sorted(r["key"] for r in pareto if r["front"] == front)
        assert got == sorted(r["key"] for r in brute_front(rows, c=front))
    assert result.fronts["lut"][0]["key"] in {r["key"] for r in rows}


# ---------------------------------------------------------------------------------------------
# The real pipeline


@pytest.mark.slow
def test_real_sweep_shares_the_float_model_and_reports(tmp_path):
    """Two real pipeline points (to fine-tuning, tiny epochs) on two worker processes."""
    from fitc.report import write_report

    spec = SweepSpec.from_grid(
        models="digits-mlp",
        budgets=["size=1/8,1/16"],
        base={"train_epochs": 3, "finetune_epochs": 1, "until": "finetune"},
    )
    sweep = tmp_path / "sweep"
    result = run_sweep(spec, sweep, workers=2, progress=False)
    assert result.counts == {"COMPLETE": 2}, [r["error"] for r in result.rows]
    rows = read_csv(sweep / "results.csv")
    assert len({r["float_accuracy"] for r in rows}) == 1  # one shared float model
    assert (sweep / "shared" / "digits-mlp" / "float.pt").is_file()
    shared_fisher = sweep / "shared" / "digits-mlp" / "fisher.pt"  # one Fisher for every point
    assert shared_fisher.is_file()
    for r in rows:
        recorded = json.loads((Path(r["run_dir"]) / "run.json").read_text())["config"]
        assert recorded["fisher_from"] == str(shared_fisher)
        assert 0 < r["accuracy"] <= 1 and 0 < r["size"] <= 1 / 8 + 1e-9
        assert Path(r["run_dir"]) == sweep / "points" / r["key"]
        assert (Path(r["run_dir"]) / "plan.json").is_file()
    assert rows[1]["size"] <= 1 / 16 + 1e-9
    md = write_report(sweep).read_text()
    assert "**2 points: 2 complete**" in md and "plots/pareto_bops.png" in md


def test_cli_resume_collect_and_worker_commands(tmp_path, fake):
    from fitc.sweep import sweep_command

    p = argparse.ArgumentParser()
    add_sweep_arguments(p)
    p.add_argument("--out")
    p.add_argument("--config")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    out = str(tmp_path / "s")
    fn = ["--point-fn", f"{fake}:quick", "--no-progress"]
    first = sweep_command(p.parse_args(["--budget", "size=1/8,1/16", "--out", out, *fn]))
    assert first.counts == {"COMPLETE": 2}
    # `fitc sweep --out DIR` with no grid resumes the recorded grid (adds no default point)
    again = sweep_command(p.parse_args(["--out", out, *fn]))
    assert [r["key"] for r in again.rows] == [r["key"] for r in first.rows]
    assert set(markers(Path(out)).values()) == {1}
    # a grown grid enqueues only the new point; a worker joins by storage URL and study name
    create_sweep(SweepSpec.from_grid(budgets=["size=1/8,1/16,1/32"]), out)
    url, name = first.storage_url, first.study_name
    joined = sweep_command(p.parse_args(["worker", "--storage", url, "--study", name, *fn]))
    assert joined.counts == {"COMPLETE": 3} and set(markers(Path(out)).values()) == {1}
    collected = sweep_command(p.parse_args(["collect", "--out", out]))
    assert len(collected.rows) == 3 and (Path(out) / "pareto.csv").is_file()
    with pytest.raises(ConfigError, match="--storage URL and --study NAME"):
        sweep_command(p.parse_args(["worker"]))
    # resuming keeps the recorded options: an option flag that would be dropped is refused
    p.add_argument("--finetune-epochs", type=int)
    with pytest.raises(ConfigError, match="--finetune-epochs would be ignored"):
        sweep_command(p.parse_args(["--out", out, "--finetune-epochs", "5", *fn]))


def test_point_metrics_flattens_a_finished_run(tmp_path):
    from fitc.rundir import write_json
    from fitc.sweep import point_metrics

    res = {
        "source": "da4ml",
        "lut": 5100.0,
        "ff": 900.0,
        "dsp": 0.0,
        "bram_18k": 0.0,
        "latency_cycles": 9.0,
        "latency_ns": 45.0,
    }
    write_json(
        tmp_path / "run.json",
        {
            "metrics": {
                "float_test_accuracy": 0.96,
                "finetuned_test_accuracy": 0.94,
                "achieved_size": 0.06,
                "achieved_bops": 0.02,
                "resources": res,
                "fits": True,
                "loop": {"iterations": 2, "stop_reason": "fits", "fits": True},
                "strategy": "distributed_arithmetic",
            }
        },
    )
    m = point_metrics(tmp_path)
    assert m == {
        "accuracy": 0.94,
        "float_accuracy": 0.96,
        "size": 0.06,
        "bops": 0.02,
        "lut": 5100.0,
        "ff": 900.0,
        "dsp": 0.0,
        "bram_18k": 0.0,
        "latency_cycles": 9.0,
        "latency_ns": 45.0,
        "resource_source": "da4ml",
        "fits": True,
        "loop_iterations": 2,
        "loop_stop_reason": "fits",
        "firmware_strategy": "distributed_arithmetic",  # what strategy auto resolved to
        "run_dir": str(tmp_path),
    }
