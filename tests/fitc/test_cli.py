"""The `fitc` command line: help on every subcommand, one-line errors, nothing left behind."""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from fitc.cli import (
    BACKENDS,
    EXAMPLES,
    IO_TYPES,
    _config,
    _setup_logging,
    build_parser,
    device_names,
    main,
    strategies,
)

ROOT = Path(__file__).resolve().parents[2]

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


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(capsys, *args) -> Result:
    """``fitc ARGS`` in this process (the imports are paid once: fast); output from capsys."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


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


def test_wrong_model_name(tmp_path, capsys):
    res = cli(capsys, "train", "--model", "digits-mpl", "--out", str(tmp_path / "run"))
    _assert_one_line_error(res, "digits-mlp")
    assert not (tmp_path / "run").exists()


def test_bad_npz(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((10, 16), np.float32))  # no labels
    res = cli(capsys, "train", "--model", "jet-mlp", "--data", bad, "--out", tmp_path / "run")
    _assert_one_line_error(res, "bad.npz")
    assert not (tmp_path / "run").exists()


def test_debug_shows_traceback(tmp_path):
    from fitc.errors import FitcError

    with pytest.raises(FitcError):  # re-raised: Python prints the traceback
        main(["train", "--model", "nope", "--out", str(tmp_path / "run"), "--debug"])


def test_stage_command_on_a_non_run_directory(tmp_path, capsys):
    res = cli(capsys, "export", tmp_path)
    _assert_one_line_error(res, "not a fitc run directory")


@pytest.mark.slow
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
    assert "pruned" in res.stdout and (out / "plan.json").is_file() and (out / "masks.pt").is_file()
    assert f"--budget size=1/16 --out {out}" in res.stdout  # the next command continues the run

    res = fitc("sensitivity", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0].split()[0] == "name" and len(lines) == 5  # header + 4 layers
    sens = [float(line.split()[-1]) for line in lines[1:]]
    assert sens == sorted(sens, reverse=True)

    res = fitc("export", str(out))  # searched but not fine-tuned: says what to do
    _assert_one_line_error(res, "no fine-tuned model yet")
    assert f"fitc run --budget size=1/16 --out {out}" in res.stderr


def test_out_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    res = cli(capsys, "train", "--out", f)
    _assert_one_line_error(res, "exists")


def test_internal_budget_kind_is_refused(tmp_path, capsys):
    res = cli(capsys, "run", "--budget", "combined=1", "--out", tmp_path / "run")
    _assert_one_line_error(res, "'combined' is internal")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Help made of the code's own tables


def parse(command: str) -> argparse.Namespace:
    words = shlex.split(command)
    assert words[0] == "fitc", command
    return build_parser().parse_args(words[1:])


@pytest.mark.parametrize("example", [e for sub in EXAMPLES.values() for e in sub])
def test_every_help_example_parses_and_builds_its_config(example):
    args = parse(example)
    if args.command in ("train", "search", "run"):
        _config(args)  # names, budgets, devices and strategies are valid together


def test_examples_are_in_the_help(capsys):
    for sub, examples in EXAMPLES.items():
        with pytest.raises(SystemExit):
            main([sub, "--help"])
        out = capsys.readouterr().out
        for e in examples:
            assert e in out, (sub, e)


def test_help_lists_the_codes_presets_and_strategies(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in device_names():
        assert name in out
    assert "{auto,Latency,Resource,distributed_arithmetic}" in out
    assert "train → search → fine-tune → export → verify → lower → estimate" in out


def test_cli_tables_are_the_ones_hardware_config_accepts():
    from fitc.artifacts import HardwareConfig
    from fitc.errors import ConfigError

    for backend in BACKENDS:
        if backend == "rtl":  # da4ml's adder graphs: the config picks their strategy
            from fitc.config import RunConfig

            assert RunConfig(backend="rtl").hardware().strategy == "distributed_arithmetic"
            with pytest.raises(ConfigError, match="distributed_arithmetic"):
                HardwareConfig(backend=backend)
        else:
            HardwareConfig(backend=backend)
    for io_type in IO_TYPES:
        if io_type == "auto":  # resolved per network by the run (fitc.backends.hls.io_rule)
            from fitc.config import RunConfig

            assert RunConfig(io_type="auto").hardware().io_type == "io_parallel"
        else:
            HardwareConfig(io_type=io_type)
    for strategy in strategies():
        HardwareConfig(strategy=strategy)
    for bad in ({"backend": "Quartus"}, {"io_type": "io_serial"}, {"strategy": "Fast"}):
        with pytest.raises(ConfigError):
            HardwareConfig(**bad)


@pytest.mark.parametrize(
    ("flags", "key", "value"),
    [
        (["--strategy", "latency"], "strategy", "Latency"),
        (["--strategy", "RESOURCE"], "strategy", "Resource"),
        (["--strategy", "da"], "strategy", "distributed_arithmetic"),
        (["--strategy", "Distributed-Arithmetic"], "strategy", "distributed_arithmetic"),
        (["--io-type", "IO_Stream"], "io_type", "io_stream"),
        (["--backend", "vivado"], "backend", "Vivado"),
        (["--until", "Export"], "until", "export"),
        (["--resource-model", "DA4ML"], "resource_model", "da4ml"),
        (["--algorithm", "AStar"], "algorithm", "astar"),
    ],
)
def test_names_in_any_case_become_the_canonical_spelling(flags, key, value):
    args = build_parser().parse_args(["run", *flags])
    assert getattr(args, key) == value
    assert getattr(_config(args), key) == value


def test_an_unknown_name_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--strategy", "fastest"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'fastest' is not one of auto, Latency, Resource, distributed_arithmetic" in err


def _options(sub: str) -> set[str]:
    parser = build_parser()
    sp = parser._subparsers._group_actions[0].choices[sub]  # type: ignore[union-attr]
    return {o for a in sp._actions for o in a.option_strings}


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_out_only_where_it_means_something(sub):
    takes_a_run_dir = sub in (
        "sensitivity",
        "export",
        "verify",
        "lower",
        "estimate",
        "synth",
        "report",
    )
    assert ("--out" in _options(sub)) == (not takes_a_run_dir), sub
    if takes_a_run_dir:
        assert "--seed" not in _options(sub)  # the run's recorded seed is the one


def test_json_where_there_is_a_summary():
    for sub in ("run", "search", "export", "verify", "lower", "estimate"):
        assert "--json" in _options(sub), sub


# ---------------------------------------------------------------------------------------------
# The README says what the code does


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_readme_lists_are_the_codes_lists():
    section = " ".join(_readme_section("Command line").split())
    presets = re.search(r"presets: ([a-z0-9, ]+?);", section)
    assert presets, "the README's Command line section lists the device presets"
    assert tuple(presets.group(1).split(", ")) == device_names()
    strategy_list = re.search(r"hls4ml strategies: ([A-Za-z_, ]+) \(", section)
    assert strategy_list, "the README's Command line section lists the strategies"
    assert tuple(strategy_list.group(1).split(", ")) == strategies()


def test_every_fitc_command_in_the_readme_parses():
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split(" # ")[0].strip()
                if part.startswith("fitc "):
                    commands.append(part.replace("$URL", "sqlite:///ledger.db"))
    assert len(commands) > 15
    for command in commands:
        args = parse(command)
        assert args.command, command


# ---------------------------------------------------------------------------------------------
# Quiet by default


def test_logging_shows_fitc_info_and_only_warnings_from_other_libraries():
    root = logging.getLogger()
    saved = root.level, logging.getLogger("fitc").level
    try:
        _setup_logging(argparse.Namespace(debug=False, quiet=False))
        assert logging.getLogger("fitc.pipeline").isEnabledFor(logging.INFO)
        for name in ("onnxscript", "qonnx", "hls4ml", "torch.onnx", "brevitas"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
            assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
        _setup_logging(argparse.Namespace(debug=False, quiet=True))
        assert not logging.getLogger("fitc.pipeline").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(saved[0])
        logging.getLogger("fitc").setLevel(saved[1])


def test_the_fast_hadamard_transform_warning_is_filtered():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _setup_logging(argparse.Namespace(debug=False, quiet=False))
        warnings.warn(
            "fast_hadamard_transform package not found, using standard pytorch kernels",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]
