"""The `fitc` command line: help on every subcommand, one-line errors, nothing left behind."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fitc.cli import build_parser, main

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def fitc(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fitc.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_on_every_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    assert "usage: fitc " + sub in capsys.readouterr().out


def test_required_subcommands_exist():
    assert {"train", "run", "search", "sensitivity", "export", "verify", "lower"} <= set(
        SUBCOMMANDS
    )


def _assert_one_line_error(res, match):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("fitc")]
    assert len(lines) == 1, res.stderr
    assert match in lines[0], lines[0]


def test_bad_config_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("modle: digits-mlp\n")
    res = fitc("train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    _assert_one_line_error(res, "did you mean 'model'")
    assert not (tmp_path / "run").exists()


def test_wrong_model_name(tmp_path):
    res = fitc("train", "--model", "digits-mpl", "--out", str(tmp_path / "run"))
    _assert_one_line_error(res, "digits-mlp")
    assert not (tmp_path / "run").exists()


def test_bad_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((10, 16), np.float32))  # no labels
    res = fitc("train", "--model", "jet-mlp", "--data", str(bad), "--out", str(tmp_path / "run"))
    _assert_one_line_error(res, "bad.npz")
    assert not (tmp_path / "run").exists()


def test_debug_shows_traceback(tmp_path):
    res = fitc("train", "--model", "nope", "--out", str(tmp_path / "run"), "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_stage_command_on_a_non_run_directory(tmp_path):
    res = fitc("export", str(tmp_path))
    _assert_one_line_error(res, "not a fitc run directory")


def test_train_search_sensitivity_as_a_user_runs_them(tmp_path):
    out = tmp_path / "run"
    res = fitc("train", "--model", "digits-mlp", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    acc = float(res.stdout.split("test accuracy")[1].split()[0])
    assert acc >= 0.95
    res = fitc("train", "--model", "digits-mlp", "--out", str(out), "--no-progress")
    assert "stage train: reusing float.pt" in res.stderr and "stage train: done" not in res.stderr

    res = fitc("search", "--budget", "size=1/16", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stage train: reusing" in res.stderr  # the float model is not retrained
    assert (
        "sparsity" in res.stdout and (out / "plan.json").is_file() and (out / "masks.pt").is_file()
    )

    res = fitc("sensitivity", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0].split()[0] == "name" and len(lines) == 5  # header + 4 layers
    sens = [float(line.split()[-1]) for line in lines[1:]]
    assert sens == sorted(sens, reverse=True)

    res = fitc("export", str(out))  # searched but not fine-tuned: says what to do
    _assert_one_line_error(res, "no fine-tuned model yet")


def test_out_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    res = fitc("train", "--out", str(f))
    _assert_one_line_error(res, "exists")


def test_internal_budget_kind_is_refused(tmp_path):
    res = fitc("run", "--budget", "combined=1", "--out", str(tmp_path / "run"))
    _assert_one_line_error(res, "'combined' is internal")
    assert not (tmp_path / "run").exists()
