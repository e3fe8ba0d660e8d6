"""The closed loop's policy, on hand-written reports."""

from __future__ import annotations

import dataclasses
import math

from fitc.loop import LoopIteration, keep, next_step, overshoot

TARGETS = {"lut": 10_000.0, "dsp": 0.0}


def it(i, lut, *, calibrated, limits=None, fast_layers=None, acc_layers=None):
    return LoopIteration(
        iteration=i,
        limits=limits or dict(TARGETS),
        calibrated=calibrated,
        fast={"lut": 9000.0, "dsp": 0.0},
        accurate={"lut": lut, "dsp": 0.0},
        fast_layers_raw=fast_layers or {"fc1": 6000.0, "fc2": 3000.0},
        accurate_layers=acc_layers or {"fc1": lut * 0.75, "fc2": lut * 0.25},
        accuracy=0.9,
    )


def test_empty_history_starts_with_the_targets():
    d = next_step([], TARGETS)
    assert not d.stop and d.limits == TARGETS


def test_fitting_design_stops():
    d = next_step([it(1, 9_500.0, calibrated=False)], TARGETS)
    assert d.stop and d.reason == "fits"


def test_underfilled_first_design_is_filled_once_with_the_calibrated_model():
    d = next_step([it(1, 8_000.0, calibrated=False)], TARGETS)  # 80 % of the binding budget
    assert not d.stop and d.reason == "fill"
    assert d.limits == TARGETS
    assert d.calibration == {"fc1": 6000.0 / 6000.0, "fc2": 2000.0 / 3000.0}
    # once calibrated, a fitting design stops however full it is; so does the last iteration
    h = [it(1, 8_000.0, calibrated=False), it(2, 8_500.0, calibrated=True)]
    assert next_step(h, TARGETS).reason == "fits"
    assert next_step([it(1, 8_000.0, calibrated=False)], TARGETS, max_iterations=1).stop
    # a design over the fill line stops at once
    assert next_step([it(1, 9_100.0, calibrated=False)], TARGETS).reason == "fits"


def test_first_miss_recalibrates_per_layer_without_tightening():
    d = next_step([it(1, 12_000.0, calibrated=False)], TARGETS)
    assert not d.stop and d.reason == "recalibrate"
    assert d.limits == TARGETS
    assert d.calibration == {"fc1": 9000.0 / 6000.0, "fc2": 3000.0 / 3000.0}


def test_miss_after_calibration_tightens_in_proportion():
    h = [it(1, 14_000.0, calibrated=False), it(2, 11_000.0, calibrated=True)]
    d = next_step(h, TARGETS, margin=0.97)
    assert not d.stop and d.reason == "tighten"
    assert math.isclose(d.limits["lut"], 10_000.0 * 10_000.0 / 11_000.0 * 0.97)
    assert d.limits["dsp"] == 0.0


def test_no_improvement_stops():
    h = [it(1, 12_000.0, calibrated=False), it(2, 12_050.0, calibrated=True)]
    d = next_step(h, TARGETS)
    assert d.stop and d.reason == "stalled"


def test_a_fill_that_overshoots_is_tightened_not_stalled():
    """A fill from 70 % to 113 % of the budget (the calibrated model misjudged the fuller design)
    is tightened in proportion; the under-filled design stays a candidate."""
    h = [it(1, 7_000.0, calibrated=False), it(2, 11_300.0, calibrated=True)]
    d = next_step(h, TARGETS, margin=0.97)
    assert not d.stop and d.reason == "tighten"
    assert math.isclose(d.limits["lut"], 10_000.0 * 10_000.0 / 11_300.0 * 0.97)


def test_kept_design_is_the_best_fitting_on_validation_ties_to_the_fuller():
    def acc(x, val):
        return dataclasses.replace(x, val_accuracy=val)

    small, full, over = (
        acc(it(1, 8_000.0, calibrated=False), 0.97),
        acc(it(2, 9_800.0, calibrated=True), 0.97),
        acc(it(3, 10_200.0, calibrated=True), 0.99),
    )
    assert keep([small, full, over], TARGETS) is full  # a tie: the fuller design
    assert keep([acc(small, 0.98), full], TARGETS).iteration == 1  # validation decides first
    assert keep([over, acc(it(4, 12_000.0, calibrated=True), 1.0)], TARGETS) is over  # closest


def test_iteration_limit_stops():
    h = [
        it(1, 20_000.0, calibrated=False),
        it(2, 15_000.0, calibrated=True),
        it(3, 12_000.0, calibrated=True),
    ]
    assert next_step(h, TARGETS, max_iterations=3).reason == "max_iterations"
    assert not next_step(h, TARGETS, max_iterations=4).stop


def test_overshoot_handles_zero_targets():
    assert overshoot({"dsp": 0.0, "lut": 5.0}, {"dsp": 0.0, "lut": 10.0}) == 0.5
    assert overshoot({"dsp": 2.0}, {"dsp": 0.0}) == math.inf


def test_iteration_round_trips_to_json():
    x = it(1, 12_000.0, calibrated=True)
    assert LoopIteration.from_dict(x.to_dict()) == x
