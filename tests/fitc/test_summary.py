"""The run summary for people: budgets and results in words and units, read from hand-made run
directories shaped like the pipeline's (a size budget, a device budget with its closed loop, a
design that does not fit, a run stopped after the search)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from fitc.cli import _config, build_parser
from fitc.cli_common import _dumps
from fitc.rundir import write_json
from fitc.summary import run_summary, summary_lines

HW = {
    "part": "xc7z020clg400-1",
    "clock_period_ns": 5.0,
    "backend": "Vitis",
    "io_type": "io_parallel",
    "strategy": "Latency",
    "reuse_factor": 1,
}
STAGES = ("train", "search", "finetune", "export", "verify", "lower", "estimate")


def hop(a: str, b: str, acc: float, exact: bool = True) -> dict:
    return {
        "a": a,
        "b": b,
        "n_samples": 359,
        "max_abs_diff": 0.0 if exact else 0.125,
        "identical_rows": 1.0 if exact else 0.9,
        "argmax_agreement": 1.0,
        "accuracy_a": acc,
        "accuracy_b": acc,
    }


def resources(lut: float, ff: float, dsp: float = 0.0, part: str = HW["part"]) -> dict:
    return {
        "source": "da4ml",
        "hardware": {**HW, "part": part},
        "lut": lut,
        "ff": ff,
        "dsp": dsp,
        "bram_18k": 0.0,
        "latency_cycles": 16.0,
        "latency_ns": 80.0,
        "initiation_interval_cycles": 1.0,
        "layers": [],
    }


def plan(kind: str, limit: float, cost: float) -> dict:
    return {
        "model": "digits-mlp",
        "layers": [
            {
                "name": "fc1",
                "kind": "linear",
                "weight_bits": 4,
                "act_bits": 8,
                "n_weights": 4096,
                "n_nonzero": 1703,
                "fan_in": 64,
                "out_positions": 1,
            }
        ],
        "budget": {"kind": kind, "limit": limit},
        "achieved_cost": cost,
        "predicted_fit": 0.0034,
        "path": [],
    }


def make_run(d: Path, config: dict, metrics: dict, stages=STAGES, plan_d=None, loop=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    base = {"model": "digits-mlp", "budget": [], "device": None, "fraction": None, "out": str(d)}
    write_json(
        d / "run.json",
        {
            "config": {**base, **config},
            "stages": {s: {"fingerprint": "x", "outputs": []} for s in stages},
            "metrics": metrics,
        },
    )
    if plan_d is not None:
        write_json(d / "plan.json", plan_d)
    if loop is not None:
        write_json(d / "loop.json", loop)
    return d


def size_run(d: Path, lut: float = 29509.0) -> Path:
    metrics = {
        "float_test_accuracy": 0.9749,
        "built_test_accuracy": 0.9638,
        "finetuned_test_accuracy": 0.9721,
        "budget": "size=1/16",
        "planned_cost": 0.06243,
        "achieved_size": 0.06243,
        "achieved_bops": 0.03094,
        "equivalence": {
            "hops": [hop("brevitas", "qonnx", 0.9721), hop("brevitas", "onnxruntime", 0.9721)]
        },
        "emulation": hop("qonnx", "hls4ml", 0.9721),
        "resources": resources(lut, 12653.0),
    }
    return make_run(d, {"budget": ["size=1/16"]}, metrics, plan_d=plan("size", 0.0625, 0.06243))


TARGETS = {"lut": 13300.0, "ff": 26600.0, "dsp": 55.0, "bram": 70.0}


def device_run(d: Path, last_lut: float = 13267.0) -> Path:
    history = [
        {
            "iteration": k,
            "limits": {**TARGETS, "lut": limit},
            "calibrated": k > 1,
            "fast": {"lut": fast, "ff": 7000.0, "dsp": 0.0, "bram": 0.0},
            "accurate": {"lut": acc, "ff": 9000.0, "dsp": 0.0, "bram": 0.0},
            "accuracy": a,
        }
        for k, limit, fast, acc, a in (
            (1, 13300.0, 13058.0, 16918.0, 0.9499),
            (2, 13300.0, 13008.0, 13524.0, 0.9471),
            (3, 12687.3, 12668.0, last_lut, 0.9443),
        )
    ]
    fits = last_lut <= TARGETS["lut"]
    summary = {
        "targets": TARGETS,
        "accurate_model": "da4ml",
        "iterations": 3,
        "stop_reason": "fits" if fits else "max_iterations",
        "chosen_iteration": 3,
        "fits": fits,
    }
    metrics = {
        "float_test_accuracy": 0.9749,
        "built_test_accuracy": 0.727,
        "finetuned_test_accuracy": 0.9443,
        "achieved_size": 0.0184,
        "achieved_bops": 0.0198,
        "loop": summary,
        "budget": TARGETS,
        "equivalence": {"hops": [hop("brevitas", "qonnx", 0.9443)]},
        "emulation": hop("qonnx", "hls4ml", 0.9443),
        "resources": resources(last_lut, 9862.45),
    }
    return make_run(
        d,
        {"device": "xc7z020", "fraction": 0.25},
        metrics,
        stages=("train", "loop", "export", "verify", "lower", "estimate"),
        plan_d=plan("combined", 1.0, 0.998),
        loop={**summary, "history": history},
    )


def lines_of(d: Path, targets=None) -> list[str]:
    return summary_lines(run_summary(d, targets))


def test_size_budget_in_words_and_units(tmp_path):
    d = size_run(tmp_path / "run")
    lines = lines_of(d, {"size": 0.0625})
    text = "\n".join(lines)
    assert "budget     weight size ≤ 1/16 (6.25 %) of the float model's weight bits" in lines
    assert (
        "size       weights 6.24 % of the float model's bits, BOPs 3.09 % of the float model's"
        in lines
    )
    # no resource budget: the design against the whole part (the default part is a preset)
    assert "  LUT         29,509 = 55.5 % of the part (53,200)" in lines
    assert "  DSP              0 = 0 % of the part (220)" in lines
    assert "latency         16 clock cycles = 80 ns at 5 ns, a new input every 1 cycle" in text
    assert "fits       yes: every budget is met" in lines
    assert "accuracy   float 97.5 % → built 96.4 % → fine-tuned 97.2 % (359 test samples)" in lines
    assert "bit-exact  brevitas → qonnx: bit-exact" in lines
    assert "           qonnx → hls4ml: bit-exact" in lines
    assert f"next       fitc report {d}  # report.md and plots/" in lines
    assert any(line.strip().startswith(f"fitc synth {d}") for line in lines)
    assert "{" not in text and "planned cost" not in text  # no Python dicts, no internal numbers


def test_device_budget_shows_the_share_and_the_whole_part(tmp_path):
    d = device_run(tmp_path / "run")
    lines = lines_of(d)  # targets read back from the record, as `fitc report` does
    text = "\n".join(lines)
    assert lines[1] == (
        "budget     25 % of xc7z020 (Zynq-7000, xc7z020clg400-1): LUT ≤ 13,300, FF ≤ 26,600, "
        "DSP ≤ 55, BRAM 18K ≤ 70"
    )
    assert (
        "  LUT         13,267 / 13,300 (99.8 % of the 25 % share); 24.9 % of the part (53,200)"
        in lines
    )
    assert "  DSP              0 / 55 (0 % of the 25 % share); 0 % of the part (220)" in lines
    assert "  BRAM 18K         0 / 70 (0 % of the 25 % share); 0 % of the part (280)" in lines
    assert "loop       3 iterations, stopped: fits; kept iteration 3" in lines
    loop = [line for line in lines if line.startswith(("  1. ", "  2. ", "  3. "))]
    assert len(loop) == 3  # one line per iteration
    assert "LUT fast 13,058, da4ml 16,918 = 127 % of the budget" in loop[0]
    assert "search limit tightened to LUT 12,687" in loop[2] and loop[2].endswith("← kept")
    assert "accuracy   float 97.5 % → built 72.7 % → fine-tuned 94.4 % (359 test samples)" in lines
    assert "{" not in text


def test_a_design_that_does_not_fit_says_what_misses(tmp_path):
    d = device_run(tmp_path / "run", last_lut=14100.0)
    lines = lines_of(d)
    (fits,) = [line for line in lines if line.startswith("fits")]
    assert fits.startswith("fits       NO: LUT 14,100 > 13,300; the closest design is kept")
    assert "--max-loop-iterations" in fits


def test_a_part_that_is_no_preset_gets_no_share(tmp_path):
    d = size_run(tmp_path / "run")
    rec = json.loads((d / "run.json").read_text())
    rec["metrics"]["resources"] = resources(29509.0, 12653.0, part="xc7s25csga324-1")
    write_json(d / "run.json", rec)
    text = "\n".join(lines_of(d))
    assert "  LUT         29,509\n" in text + "\n"
    assert "(part xc7s25csga324-1 is not a device preset: no share of the part)" in text


def test_after_the_search_the_next_command_continues_the_run(tmp_path):
    d = make_run(
        tmp_path / "run",
        {"budget": ["size=1/32"], "strategy": "Resource", "reuse_factor": 2, "model_args": {}},
        {"float_test_accuracy": 0.97, "planned_cost": 0.031},
        stages=("train", "search"),
        plan_d=plan("size", 1 / 32, 0.031),
    )
    s = run_summary(d)
    lines = summary_lines(s)
    assert "planned    weight size 3.1 % of the float model's (search, before fine-tuning)" in lines
    (command,) = [n["command"] for n in s["next"]]
    assert command.startswith("fitc run ") and f"--out {d}" in command
    # the command, parsed as the CLI parses it, gives back the recorded options
    args = build_parser().parse_args(shlex.split(command)[1:])
    cfg = _config(args)
    assert cfg.budget == ("size=1/32",) and cfg.strategy == "Resource" and cfg.reuse_factor == 2


def test_the_summary_is_strict_json(tmp_path):
    for d in (size_run(tmp_path / "a"), device_run(tmp_path / "b")):
        s = run_summary(d)
        back = json.loads(_dumps(s))
        assert back["budget"]["targets"] and back["next"][0]["command"].startswith("fitc report")
        kinds = {k["kind"]: k for k in back["resources"]["kinds"]}
        assert kinds["lut"]["part_total"] == 53200 and 0 < kinds["lut"]["of_part"] < 1
