"""The pipeline driver: train, reuse, resume."""

from __future__ import annotations

import json

from fitc.config import RunConfig
from fitc.pipeline import run_pipeline


def test_train_then_reuse_without_retraining(tmp_path, caplog):
    cfg = RunConfig(out=str(tmp_path / "run"), progress=False)
    run = run_pipeline(cfg, until="train")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["metrics"]["float_test_accuracy"] >= 0.95
    assert record["config"]["model"] == "digits-mlp"
    assert set(record["stages"]) == {"train"}
    assert (tmp_path / "run" / "float.pt").is_file()
    mtime = (tmp_path / "run" / "float.pt").stat().st_mtime_ns
    first = run.float_model.state_dict()

    caplog.set_level("INFO")
    again = run_pipeline(cfg, until="train")
    assert "stage train: reusing" in caplog.text
    assert (tmp_path / "run" / "float.pt").stat().st_mtime_ns == mtime
    for k, v in again.float_model.state_dict().items():
        assert v.equal(first[k])


def test_changed_training_input_retrains(tmp_path, caplog):
    out = str(tmp_path / "run")
    run_pipeline(RunConfig(out=out, progress=False, train_epochs=2), until="train")
    caplog.set_level("INFO")
    run_pipeline(RunConfig(out=out, progress=False, train_epochs=3), until="train")
    assert "stage train: done" in caplog.text
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["train_epochs"] == 3
