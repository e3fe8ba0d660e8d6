"""The pipeline driver: train, reuse, resume."""

from __future__ import annotations

import json

import pytest

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


@pytest.mark.compile
def test_device_budget_closes_the_loop_until_the_design_fits(tmp_path):
    """Search against the fast model, measure with da4ml, recalibrate: the result fits the part."""
    from fitc.artifacts import CompressionPlan
    from fitc.backends.devices import device_budgets, get_device
    from fitc.loop import LoopIteration

    out = tmp_path / "run"
    cfg = RunConfig(
        out=str(out),
        progress=False,
        device="xc7z020",
        fraction=0.25,
        finetune_epochs=3,
    )
    run = run_pipeline(cfg)
    targets = {b.kind: b.limit for b in device_budgets(get_device("xc7z020"), 0.25)}
    loop = json.loads((out / "loop.json").read_text())
    history = [LoopIteration.from_dict(h) for h in loop["history"]]
    assert loop["targets"] == targets and loop["fits"] is True
    assert 1 <= len(history) <= cfg.max_loop_iterations
    chosen = history[loop["chosen_iteration"] - 1]
    assert chosen.accurate["lut"] <= targets["lut"] and chosen.accurate["dsp"] <= targets["dsp"]
    assert history[0].calibrated is False
    assert all(h.fast_layers_raw.keys() == h.accurate_layers.keys() for h in history)
    # The chosen iteration's plan is the run's plan, and run.json summarises the loop.
    chosen_plan = json.loads((out / "loop" / f"iter{chosen.iteration}" / "plan.json").read_text())
    assert CompressionPlan.from_dict(chosen_plan) == run.plan
    metrics = json.loads((out / "run.json").read_text())["metrics"]
    assert metrics["loop"]["iterations"] == len(history)
    assert metrics["finetuned_test_accuracy"] == chosen.accuracy
    assert "built_test_accuracy" in metrics
    # The design that fits is still exported and lowered bit for bit, and the final estimate agrees.
    assert metrics["emulation"]["max_abs_diff"] == 0 and metrics["emulation"]["identical_rows"] == 1
    assert all(h["max_abs_diff"] == 0 for h in metrics["equivalence"]["hops"])
    assert metrics["fits"] is True and metrics["resources"]["lut"] == chosen.accurate["lut"]


def test_finetune_epochs_double_where_activation_bits_are_searched(monkeypatch):
    """The model's own epochs under size budgets (8-bit activations), twice that under hardware
    budgets (activation bits searched), unless the config fixes them or the activation ladder."""
    from fitc.models import get_spec
    from fitc.pipeline import LOW_BIT_ACT_EPOCHS, Run, finetune_epochs

    monkeypatch.setattr(Run, "spec", property(lambda self: get_spec("digits-mlp")))
    base = get_spec("digits-mlp").finetune_epochs
    device = {"device": "xc7z020", "fraction": 0.1}
    for kwargs, expected in (
        ({}, base),
        ({"budget": ("size=1/64",)}, base),
        (device, base * LOW_BIT_ACT_EPOCHS),
        ({"budget": ("lut=5000",)}, base * LOW_BIT_ACT_EPOCHS),
        ({**device, "act_bits": (8,)}, base),
        ({**device, "finetune_epochs": 7}, 7),
    ):
        run = Run(RunConfig(**kwargs), dir=None)  # type: ignore[arg-type]
        assert finetune_epochs(run) == expected, kwargs
