"""Thread pinning: idle OpenMP threads sleep, sweep workers run one intra-op thread each."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fitc.sweep import SweepSpec, create_sweep, run_worker
from fitc.threads import OPENMP_ENV, pin_threads, quiet_openmp_env, thread_info, worker_threads


def test_import_fitc_sets_a_passive_wait_policy_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_ENV}
    code = (
        "import os, sys, fitc; "
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('KMP_BLOCKTIME'), "
        "'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PASSIVE", "0", "False"]


def test_a_user_s_openmp_setting_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    quiet_openmp_env()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert os.environ["KMP_BLOCKTIME"] == "0"


@pytest.mark.parametrize(
    "value, expected", [(None, 1), ("1", 1), ("2", 2), ("0", 1), ("two", 1), ("", 1)]
)
def test_worker_threads_is_one_unless_omp_num_threads_says_otherwise(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert worker_threads() == expected


def test_pin_threads_sets_torch_and_reports_it():
    before = torch.get_num_threads()
    try:
        info = pin_threads(1)
        assert torch.get_num_threads() == 1
        assert info["intra_op"] == 1 and info == thread_info()
        assert info["cores"] >= 1
        with pytest.raises(ValueError):
            pin_threads(0)
    finally:
        torch.set_num_threads(before)


POINTS = """
import torch

def threads(point, sweep_dir):
    return {"accuracy": 0.5, "threads": torch.get_num_threads()}
"""


def test_a_sweep_worker_runs_points_on_one_thread_and_restores_the_caller_s(tmp_path, monkeypatch):
    (tmp_path / "fitc_thread_points.py").write_text(POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spec = SweepSpec.from_grid(models="digits-mlp", budgets=["size=1/8,1/16"])
    url, name = create_sweep(spec, tmp_path / "sweep")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stats = run_worker(url, name, point_fn="fitc_thread_points:threads", progress=False)
        assert stats.complete == 2
        assert torch.get_num_threads() == 2  # the caller's setting is back
    finally:
        torch.set_num_threads(before)
    import optuna

    study = optuna.load_study(study_name=name, storage=_storage(url))
    assert [t.user_attrs["threads"] for t in study.trials] == [1, 1]


def _storage(url: str):
    from fitc.sweep.ledger import open_storage

    return open_storage(url)
