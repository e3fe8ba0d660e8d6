"""A run directory loses nothing and mixes nothing (issue 14): one writer at a time, one run per
directory, every artifact checked before reuse, byte-reproducible artifacts, umask permissions, and
a failed command that leaves the run as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fitc.api import load_run
from fitc.config import RunConfig
from fitc.errors import ArtifactError, BudgetInfeasibleError, RunDirError
from fitc.pipeline import run_pipeline
from fitc.rundir import (
    HOLDER_FILE,
    KILL_ENV,
    LOCK_FILE,
    RUN_JSON,
    WIPE_MARKER,
    RunDir,
    building_dir,
    check_not_busy,
    copy_file,
    save_torch,
    write_json,
    write_text,
)

LOCK_FILES = {LOCK_FILE, HOLDER_FILE}
QUICK = {"train_epochs": 3, "finetune_epochs": 1, "progress": False}


def fitc(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "fitc.cli", *args, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file of a directory (lock files aside), by relative path."""
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name not in LOCK_FILES
    }


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> Path:
    """A small finished run (train → search → fine-tune); tests work on copies of it."""
    out = tmp_path_factory.mktemp("finetuned") / "run"
    run_pipeline(RunConfig(out=str(out), **QUICK), until="finetune")
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# One writer


HOLD = """
import sys, time
from fitc.rundir import RunDir
rd = RunDir(sys.argv[1])
rd.claim()
print("held", flush=True)
time.sleep(60)
"""


def test_a_held_directory_is_refused_naming_the_holder_and_stays_readable(finetuned, tmp_path):
    out = copy_run(finetuned, tmp_path / "run")
    before = snapshot(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for attempt in (
            lambda: check_not_busy(out),
            lambda: RunDir(out).claim(),
            lambda: run_pipeline(RunConfig(out=str(out), **QUICK), until="finetune"),
        ):
            t0 = time.perf_counter()
            with pytest.raises(RunDirError, match=f"being written by PID {holder.pid} ") as e:
                attempt()
            assert time.perf_counter() - t0 < 5  # refused at once: nobody waits for the lock
            assert "\n" not in str(e.value)
        # Reading takes no lock.
        run = load_run(out)
        assert run.plan.layers and run.metrics["finetuned_test_accuracy"] > 0
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(out) == before
    # The holder is gone: the directory is free again, and resuming reuses every stage.
    assert run_pipeline(RunConfig(out=str(out), **QUICK), until="finetune").dir.stages
    assert snapshot(out) == before


REFUSED = """
import sys
from fitc.cli import main
code = main(sys.argv[1:])
print("torch imported" if "torch" in sys.modules else "torch not imported")
sys.exit(code)
"""


def test_a_refused_command_does_not_import_torch(finetuned, tmp_path):
    """Refused at once: before torch (seconds to import on a busy machine) is loaded."""
    out = copy_run(finetuned, tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for cmd in (
            ["run", "--train-epochs", "3", "--out", out],
            ["train", "--train-epochs", "3", "--out", out],
            ["export", out],
            ["sensitivity", out],
        ):
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", REFUSED, *map(str, cmd), "--no-progress"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            wall = time.perf_counter() - t0
            assert done.returncode == 2, done.stderr[-2000:]
            assert f"being written by PID {holder.pid} " in done.stderr, done.stderr[-2000:]
            assert done.stdout.strip() == "torch not imported", (cmd, wall)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_processes_into_one_out(tmp_path):
    """Two `fitc run`s into one --out, started together: one refuses at once naming the other's
    PID and command; the other finishes and its run is intact."""
    out = tmp_path / "run"
    cmd = ("run", "--train-epochs", "20", "--finetune-epochs", "3", "--until", "finetune")
    procs = [fitc(*cmd, "--out", str(out)) for _ in range(2)]
    deadline = time.monotonic() + 600
    while all(p.poll() is None for p in procs):  # the first to end is the one refused
        assert time.monotonic() < deadline
        time.sleep(0.05)
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    assert winner.poll() is None, "the refused run did not end before the other finished"
    _, err = loser.communicate()
    assert loser.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("fitc")]
    assert len(lines) == 1 and f"is being written by PID {winner.pid} (" in lines[0], err
    assert "--out" in lines[0] and "run --train-epochs 20" in lines[0]

    _, err = winner.communicate(timeout=600)
    assert winner.returncode == 0, err[-3000:]
    rd = RunDir(out)
    assert list(rd.stages) == ["train", "search", "finetune"]
    assert all(rd.is_done(name, rec["fingerprint"]) for name, rec in rd.stages.items())
    assert not (out / HOLDER_FILE).exists()


# ---------------------------------------------------------------------------------------------
# One run per directory


def test_another_seed_or_model_is_refused_and_force_starts_over(finetuned, tmp_path):
    from fitc.cli import main

    out = copy_run(finetuned, tmp_path / "run")
    before = snapshot(out)
    for other in ({"seed": 1}, {"model": "digits-cnn"}, {"data": "wine", "model": "mlp"}):
        cfg = RunConfig(out=str(out), **{**QUICK, **other})
        with pytest.raises(RunDirError, match="holds another run") as e:
            run_pipeline(cfg, until="train")
        assert "--force" in str(e.value)
    assert snapshot(out) == before

    # Files of the old run that no stage records go too: nothing of it is left to mix in.
    write_text(out / "model.qcdq.onnx", "stale twin")
    write_text(out / "hls4ml" / "firmware" / "old.cpp", "stale project")
    write_text(out / "loop" / "iter1" / "plan.json", "{}")
    write_text(out / "notes.txt", "whatever was there")
    args = ["train", "--seed", "1", "--train-epochs", "3", "--out", str(out), "--no-progress"]
    assert main([*args, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([RUN_JSON, "float.pt", LOCK_FILE])
    record = json.loads((out / RUN_JSON).read_text())
    assert record["identity"]["seed"] == 1 and record["config"]["seed"] == 1
    assert list(record["stages"]) == ["train"]


def test_force_keeps_the_lock_and_the_new_runs_inputs_and_finishes_an_interrupted_wipe(tmp_path):
    out = tmp_path / "run"
    rd = RunDir(out, config={"seed": 0}, identity={"model": "m", "seed": 0})
    rd.run_stage("a", "fp", ["a.json"], lambda: write_json(out / "a.json", {}))
    rd.release()
    write_text(out / "inputs" / "data.npz", "the new run's data")
    write_text(out / "old" / "x.txt", "old")

    with pytest.raises(RunDirError, match="seed 0; this command: seed 1"):
        RunDir(out, identity={"model": "m", "seed": 1}).claim()
    new = RunDir(
        out, identity={"model": "m", "seed": 1}, force=True, keep=[out / "inputs/data.npz"]
    )
    new.claim()
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_FILE, HOLDER_FILE, "inputs"])
    assert not new.stages
    new.release()

    # A removal cut short (the marker is still there) is finished by the next writer.
    write_text(out / "left.txt", "left over")
    write_json(out / WIPE_MARKER, {"keep": [str((out / "inputs/data.npz").resolve())]})
    writer = RunDir(out)
    writer.claim()
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_FILE, HOLDER_FILE, "inputs"])
    writer.release()
    assert not (out / HOLDER_FILE).exists()


def test_a_run_inside_another_run_is_refused(tmp_path):
    outer = tmp_path / "outer"
    write_json(outer / RUN_JSON, {"config": {}, "stages": {}})
    for inner in (outer / "inner", outer / "a" / "b"):
        with pytest.raises(RunDirError, match=f"inside the run directory {outer}"):
            run_pipeline(RunConfig(out=str(inner), **QUICK), until="train")
        assert not inner.exists()
        with pytest.raises(RunDirError, match="inside the run directory"):
            RunDir(inner).claim()
        assert not inner.exists()


# ---------------------------------------------------------------------------------------------
# Every artifact checked before reuse


def test_changed_or_missing_outputs_are_redone_with_a_warning(finetuned, tmp_path, caplog):
    out = copy_run(finetuned, tmp_path / "run")
    before = snapshot(out)
    cfg = RunConfig(out=str(out), **QUICK)

    plan = json.loads((out / "plan.json").read_text())
    plan["layers"][0]["weight_bits"] = 8  # still a valid plan: only the checksum tells
    write_json(out / "plan.json", plan)
    with pytest.raises(ArtifactError, match="plan.json was changed since stage search wrote it"):
        _ = load_run(out).plan
    caplog.set_level("INFO")
    run_pipeline(cfg, until="finetune")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(out / "plan.json") in w and "redoing" in w for w in warnings), warnings
    assert "stage search: done" in caplog.text and "stage finetune: done" in caplog.text
    assert snapshot(out)["plan.json"] == before["plan.json"]  # the same search, the same bytes

    caplog.clear()
    (out / "float.pt").unlink()
    run_pipeline(cfg, until="train")
    assert f"{out / 'float.pt'} is missing" in caplog.text
    assert (out / "float.pt").read_bytes() == before["float.pt"]


@pytest.fixture(scope="module")
def same_seed_runs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("same_seed")
    outs = base / "a", base / "b"
    for out in outs:
        run_pipeline(RunConfig(out=str(out), **QUICK), until="export")
    return outs


@pytest.mark.slow
def test_same_inputs_and_seed_give_byte_identical_artifacts(same_seed_runs):
    a, b = same_seed_runs
    names = ["float.pt", "plan.json", "masks.pt", "model.pt", "model.qonnx.onnx"]
    names += ["model.qcdq.onnx"] if (a / "model.qcdq.onnx").is_file() else []
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    plan = json.loads((a / "plan.json").read_text())
    assert plan["fisher_time_s"] == 0 and plan["search_time_s"] == 0
    metrics = json.loads((a / RUN_JSON).read_text())["metrics"]
    assert metrics["fisher_time_s"] > 0 and metrics["search_time_s"] > 0


@pytest.mark.slow
def test_export_of_a_corrupted_model_redoes_the_finetune(same_seed_runs, tmp_path):
    a, _ = same_seed_runs
    out = copy_run(a, tmp_path / "run")
    with open(out / "model.pt", "ab") as f:
        f.write(b"garbage")
    proc = fitc("export", str(out))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"{out / 'model.pt'} was changed" in err and "stage finetune: done" in err
    assert (out / "model.pt").read_bytes() == (a / "model.pt").read_bytes()
    assert (out / "model.qonnx.onnx").read_bytes() == (a / "model.qonnx.onnx").read_bytes()


# ---------------------------------------------------------------------------------------------
# No crash window: directories built aside, a killed writer's temporaries cleaned


def test_a_directory_is_built_aside_and_renamed_into_place(tmp_path):
    out = tmp_path / "proj"
    with building_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert tmp.parent == tmp_path and not out.exists()
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError):  # a failed build leaves the old directory as it was
        with building_dir(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("tool failed")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with building_dir(out) as tmp:  # a finished one replaces it whole
        (tmp / "c.txt").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["proj"]  # no temporary left
    (tmp_path / "file").write_text("")
    with pytest.raises(ArtifactError, match="exists and is not a directory"):
        with building_dir(tmp_path / "file"):
            pass
    assert (tmp_path / "file").is_file()


def test_a_claim_deletes_what_a_killed_writer_left_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_files = [
            f".model.pt.{gone}-ab12cd_3.tmp",
            f".hls4ml.{gone}-x9y8z7w6.tmp/firmware/myproject.cpp",
            ".loop.k2j3h4g5/iter1/plan.json",
            ".export-q1w2e3r4/raw.qonnx.onnx",
        ]
        kept = [f".report.md.{live.pid}-ab12cd34.tmp", "notes.tmp", ".hidden", "plan.json"]
        for name in dead_files + kept:
            write_text(out / name, "x")
        rd = RunDir(out)
        rd.claim()
        rd.release()
        left = sorted(p.name for p in out.iterdir() if p.name not in LOCK_FILES)
        assert left == sorted(kept)
    finally:
        live.kill()
        live.wait()


def test_the_kill_hook_dies_at_the_nth_write_of_a_file_leaving_it_half_done(tmp_path):
    code = "import sys\nfrom fitc.rundir import write_text\nfor i in range(3): write_text(sys.argv[1], str(i))"
    target = tmp_path / "a.txt"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target)], env={**os.environ, KILL_ENV: "a.txt#2"}
    )
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "0"  # the first write; the second is complete but not in place
    (left,) = [p for p in tmp_path.iterdir() if p != target]
    assert left.read_text() == "1" and re.fullmatch(r"\.a\.txt\.\d+-[a-z0-9_]+\.tmp", left.name)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target)], env={**os.environ, KILL_ENV: "b.txt"}
    )
    assert proc.returncode == 0 and target.read_text() == "2"


# ---------------------------------------------------------------------------------------------
# Permissions, failed commands


@pytest.mark.parametrize("umask, mode", [(0o027, 0o640), (0o002, 0o664)], ids=["027", "002"])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    import torch

    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {})
        save_torch(tmp_path / "t.pt", {"w": torch.zeros(2)})
        copy_file(tmp_path / "a.json", tmp_path / "b.json")
        with building_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    for name in ("a.json", "t.pt", "b.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would


@pytest.mark.parametrize("until", ["search", "finetune"])  # plain search; the closed loop
def test_a_failed_command_changes_nothing(finetuned, tmp_path, until):
    out = copy_run(finetuned, tmp_path / "run")
    before = snapshot(out)
    # A hardware budget (the closed loop) no plan can meet: the size is below the smallest state.
    cfg = RunConfig(out=str(out), budget=("lut=10", "size=0.000001"), **QUICK)
    with pytest.raises(BudgetInfeasibleError):
        run_pipeline(cfg, until=until)
    assert snapshot(out) == before  # run.json (config, stages) byte for byte, and every artifact
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".loop.*"))
    assert set(RunDir(out).stages) == {"train", "search", "finetune"}
