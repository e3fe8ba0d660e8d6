"""kill -9 inside every stage, then the same command: it completes, and its artifacts are byte for
byte those of an uninterrupted run (issue 14, "no crash window").

Where the process dies is chosen with fitc's test hook (``FITC_TEST_KILL_AT=FILE[#N]``, see
:func:`fitc.rundir.kill_point`): the process SIGKILLs itself when the atomic write of ``FILE`` is
complete under its temporary name, just before the rename — mid-stage, with the stage's earlier
outputs on disk and nothing recorded. The lowering is also killed from outside, while hls4ml
writes its project and g++ compiles it (the whole process group, as a crash would).

One run directory is killed at each stage in turn (each command resumes what the previous one
left and dies in the next stage), which costs one pipeline's work instead of one per stage. All
tests here are slow; the first compiles an hls4ml emulation (twice: reference and resumed run).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fitc.rundir import KILL_ENV, RUN_JSON

pytestmark = pytest.mark.slow

FAST = ["--train-epochs", "3", "--finetune-epochs", "1", "--no-progress"]
# The artifacts that must be byte-identical after any kill and resume.
SAME = ["float.pt", "plan.json", "masks.pt", "model.pt", "model.qonnx.onnx", "model.qcdq.onnx"]


def fitc(*args, kill_at: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "fitc.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


def stages(d: Path) -> list[str]:
    return (
        list(json.loads((d / RUN_JSON).read_text())["stages"]) if (d / RUN_JSON).is_file() else []
    )


def temporaries(d: Path) -> list[str]:
    """What a killed command leaves at the top of the run directory."""
    return sorted(
        p.name
        for p in d.iterdir()
        if p.name.endswith(".tmp") or p.name.startswith((".loop.", ".export-"))
    )


def assert_same(a: Path, b: Path, names=SAME) -> None:
    for name in names:
        if name == "model.qcdq.onnx" and not (a / name).is_file():
            assert not (b / name).exists()
            continue
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def kill_at(d: Path, args: list, point: str, stage: str) -> None:
    """Run ``fitc args`` until it dies at ``point`` inside ``stage``; check it left that stage
    unrecorded and its half-written file behind."""
    proc = fitc(*args, kill_at=point)
    assert killed(proc), f"not killed at {point} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert stage not in stages(d), (point, stages(d))
    name = point.partition("#")[0]
    left = temporaries(d)
    assert any(t.startswith(f".{name}.") or t.startswith(".loop.") for t in left), (point, left)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run: train → search → fine-tune → export → verify → lower → estimate."""
    d = tmp_path_factory.mktemp("ref") / "run"
    proc = fitc("run", *FAST, "--out", d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


@pytest.mark.compile
def test_kill_in_every_stage_then_resume_gives_the_same_bytes(reference, tmp_path):
    d = tmp_path / "run"
    args = ["run", *FAST, "--out", d]
    kill_at(d, args, "float.pt", "train")
    kill_at(d, args, "masks.pt", "search")  # plan.json written, masks.pt not yet in place
    kill_at(d, args, "model.pt", "finetune")
    kill_at(d, args, "export.json", "export")  # the ONNX files written, not recorded

    # The lowering, killed from outside while hls4ml writes the project (g++ too: the group).
    proc = subprocess.Popen(
        [sys.executable, "-m", "fitc.cli", *map(str, args)],
        env={k: v for k, v in os.environ.items() if k != KILL_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not any(d.glob(".hls4ml.*.tmp/firmware")):
        assert proc.poll() is None and time.monotonic() < deadline, "lowering never started"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "lower" not in stages(d) and not (d / "hls4ml").exists()
    assert any(t.startswith(".hls4ml.") for t in temporaries(d))

    kill_at(d, args, "resources.json", "estimate")  # lowers (and compiles) completely first
    assert (d / "hls4ml" / "hls4ml_config.yml").is_file()

    proc = fitc(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only the stage killed last is redone; every earlier one is reused as it was.
    assert re.findall(r"stage (\w+): done", proc.stderr) == ["estimate"], proc.stderr[-3000:]
    assert stages(d) == stages(reference)
    assert temporaries(d) == []
    assert_same(reference, d)
    for ref in sorted((reference / "hls4ml" / "firmware" / "weights").iterdir()):
        assert (d / "hls4ml" / "firmware" / "weights" / ref.name).read_bytes() == ref.read_bytes()
    metrics = json.loads((d / RUN_JSON).read_text())["metrics"]
    assert metrics["emulation"]["max_abs_diff"] == 0 and metrics["emulation"]["identical_rows"] == 1


def test_kill_inside_the_closed_loop_then_resume_gives_the_same_bytes(tmp_path):
    """A device budget: the loop killed in its first iteration's fine-tune, then at its very end
    (the chosen plan already copied into the run, loop/ renamed, loop.json not yet)."""
    loop = ["--device", "xc7z020", "--fraction", "0.25", "--max-loop-iterations", "2"]
    ref, d = tmp_path / "ref", tmp_path / "run"
    proc = fitc("run", *loop, *FAST, "--until", "export", "--out", ref)
    assert proc.returncode == 0, proc.stderr[-3000:]

    args = ["run", *loop, *FAST, "--until", "export", "--out", d]
    proc = fitc(*args, kill_at="model.pt")
    assert killed(proc), proc.stderr[-3000:]
    assert stages(d) == ["train"] and any(t.startswith(".loop.") for t in temporaries(d))
    kill_at(d, args, "loop.json", "loop")
    assert (d / "loop").is_dir()  # the killed loop's iterations, in place but not recorded

    proc = fitc(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert stages(d) == stages(ref) and temporaries(d) == []
    assert_same(ref, d)
    assert sorted(p.name for p in (d / "loop").iterdir()) == sorted(
        p.name for p in (ref / "loop").iterdir()
    )


def test_kill_inside_a_sweep_point_then_resume_gives_the_same_bytes(tmp_path):
    """The sweep's only worker (this process) dies inside a point's fine-tune; the same command
    again hands the point back after the grace period and finishes it."""
    grid = ["--model", "digits-mlp", "--budget", "size=1/16", "--no-progress"]
    grid += ["--set", "train_epochs=3", "--set", "finetune_epochs=1", "--set", "until=export"]
    grid += ["--heartbeat-interval", "1", "--grace-period", "3"]
    ref, s = tmp_path / "ref", tmp_path / "sweep"
    proc = fitc("sweep", *grid, "--out", ref)
    assert proc.returncode == 0, proc.stderr[-3000:]

    proc = fitc("sweep", *grid, "--out", s, kill_at="model.pt")
    assert killed(proc), proc.stderr[-3000:]
    (point,) = (s / "points").iterdir()
    assert "finetune" not in stages(point) and any(
        t.startswith(".model.pt.") for t in temporaries(point)
    )
    proc = fitc("sweep", *grid, "--out", s)
    assert proc.returncode == 0, proc.stderr[-3000:]

    (ref_point,) = (ref / "points").iterdir()
    assert point.name == ref_point.name
    assert_same(ref_point, point)
    assert (s / "shared" / "digits-mlp" / "float.pt").read_bytes() == (
        ref / "shared" / "digits-mlp" / "float.pt"
    ).read_bytes()
    assert stages(point) == stages(ref_point) and temporaries(point) == []
    with open(s / "results.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["COMPLETE"]
