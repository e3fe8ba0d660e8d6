"""Atomic writes and stage resume in the run directory."""

from __future__ import annotations

import json

import pytest
import torch

from fitc.errors import ArtifactError
from fitc.rundir import RunDir, atomic_path, fingerprint, load_torch, save_torch, write_json


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_save_torch_is_weights_only_loadable(tmp_path):
    save_torch(tmp_path / "m.pt", {"w": torch.arange(4.0), "mask": torch.tensor([True, False])})
    back = load_torch(tmp_path / "m.pt")
    assert torch.equal(back["w"], torch.arange(4.0))


def test_load_torch_corrupt_file(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="bad.pt"):
        load_torch(tmp_path / "bad.pt")


def test_stage_resume_and_invalidation(tmp_path):
    calls = []

    def make(name, value):
        def fn():
            calls.append(name)
            write_json(tmp_path / f"{name}.json", {"v": value})
            return {f"{name}_metric": value}

        return fn

    rd = RunDir(tmp_path, config={"a": 1})
    assert rd.run_stage("one", "fp1", ["one.json"], make("one", 1))
    assert rd.run_stage("two", "fp2", ["two.json"], make("two", 2))
    rd2 = RunDir(tmp_path)  # a new process: state comes from run.json
    assert not rd2.run_stage("one", "fp1", ["one.json"], make("one", 1))
    assert not rd2.run_stage("two", "fp2", ["two.json"], make("two", 2))
    assert calls == ["one", "two"]
    # A changed input reruns that stage and forgets the later ones.
    assert rd2.run_stage("one", "fp1b", ["one.json"], make("one", 3))
    assert "two" not in rd2.stages
    # A deleted output reruns the stage.
    (tmp_path / "one.json").unlink()
    assert rd2.run_stage("one", "fp1b", ["one.json"], make("one", 3))
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["metrics"]["one_metric"] == 3
    assert record["config"] == {"a": 1}
    assert "torch" in record["versions"]
    assert record["stages"]["one"]["wall_time_s"] >= 0


def test_stage_that_writes_nothing_is_an_error(tmp_path):
    rd = RunDir(tmp_path)
    with pytest.raises(ArtifactError, match="without writing"):
        rd.run_stage("x", "fp", ["x.json"], lambda: None)
    assert "x" not in rd.stages


def test_fingerprint_tracks_file_content(tmp_path):
    f = tmp_path / "d.npz"
    f.write_bytes(b"1")
    a = fingerprint("x", f)
    f.write_bytes(b"2")
    assert fingerprint("x", f) != a
    assert fingerprint({"b": 1, "a": 2}) == fingerprint({"a": 2, "b": 1})


def test_stage_writing_the_same_outputs_invalidates_the_other_mode(tmp_path):
    """A size-budget run (search) then a hardware-loop run (loop) into one directory: going back
    to the first must not reuse the second's plan, and the loop's stale files must go."""

    def writer(value, extra=()):
        def fn():
            write_json(tmp_path / "plan.json", {"v": value})
            for name in extra:
                write_json(tmp_path / name, {"v": value})
            return {"planned": value}

        return fn

    rd = RunDir(tmp_path)
    rd.run_stage("search", "fp-size", ["plan.json"], writer("size"))
    rd.run_stage(
        "export", "fp-exp", ["graph.json"], lambda: write_json(tmp_path / "graph.json", {})
    )
    rd.run_stage("loop", "fp-hw", ["plan.json", "loop.json"], writer("hw", ["loop.json"]))
    assert list(rd.stages) == ["loop"]  # search (same output) and export (after it) forgotten
    assert not (tmp_path / "graph.json").exists()
    assert rd.run_stage("search", "fp-size", ["plan.json"], writer("size"))  # redone, not reused
    assert json.loads((tmp_path / "plan.json").read_text()) == {"v": "size"}
    assert not (tmp_path / "loop.json").exists()
    assert RunDir(tmp_path).metrics == {"planned": "size"}


def test_failed_stage_keeps_earlier_files_and_records(tmp_path):
    """A failed stage records nothing; a file it overwrote fails its checksum: redone next time."""
    rd = RunDir(tmp_path)
    rd.run_stage("a", "1", ["a.json"], lambda: write_json(tmp_path / "a.json", {"v": 1}))
    before = (tmp_path / "run.json").read_bytes()

    def boom(overwrite=False):
        if overwrite:
            write_json(tmp_path / "a.json", {"v": "half"})
        raise RuntimeError("search failed")

    with pytest.raises(RuntimeError):
        rd.run_stage("a", "2", ["a.json"], boom)
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}
    assert (tmp_path / "run.json").read_bytes() == before
    assert RunDir(tmp_path).is_done("a", "1")

    with pytest.raises(RuntimeError):
        rd.run_stage("a", "2", ["a.json"], lambda: boom(overwrite=True))
    assert (tmp_path / "run.json").read_bytes() == before
    assert not RunDir(tmp_path).is_done("a", "1")  # a.json no longer what stage a wrote
