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
