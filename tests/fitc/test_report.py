"""`fitc report`: report.md for a hand-made run directory (full and bare) and for a sweep directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fitc.artifacts import (
    Budget,
    CompressionPlan,
    HardwareConfig,
    LayerPlan,
    LayerResources,
    PathStep,
    ResourceReport,
)
from fitc.errors import ArtifactError
from fitc.report import table, write_report
from fitc.rundir import write_json
from fitc.sweep import SweepSpec, collect_results, create_sweep, run_sweep


def plan() -> CompressionPlan:
    layers = (
        LayerPlan("fc1", "linear", 4, 8, 4096, 700, 64),
        LayerPlan("fc2", "linear", 3, 6, 2048, 250, 64),
        LayerPlan("fc4", "linear", 5, 6, 320, 120, 32),
    )
    path = tuple(
        PathStep(f"prune:{i / 10}", 0.1 * i, 1 - 0.15 * i, 1.0, 1 - 0.15 * i) for i in range(1, 7)
    )
    return CompressionPlan("digits-mlp", layers, Budget("size", 1 / 16), 0.06, 0.01, path)


def resources() -> dict:
    layers = (LayerResources("fc1", 5200, 1800, 0, 0, 4), LayerResources("fc2", 1900, 900, 2, 0, 3))
    return ResourceReport("da4ml", HardwareConfig(), 7100, 2700, 2, 0, 7, 35.0, 1, layers).to_dict()


HOP = {
    "a": "brevitas",
    "b": "qonnx",
    "n_samples": 360,
    "max_abs_diff": 0.0,
    "identical_rows": 1.0,
    "argmax_agreement": 1.0,
    "accuracy_a": 0.9472,
    "accuracy_b": 0.9472,
}


# what fitc.pipeline.closed_loop records: a summary in run.json, the history in loop.json
LOOP_SUMMARY = {
    "targets": {"lut": 6000.0},
    "iterations": 2,
    "stop_reason": "fits",
    "chosen_iteration": 2,
    "fits": True,
    "accurate": {"lut": 5900},
    "accuracy": 0.947,
}
HISTORY = [
    {
        "iteration": 1,
        "limits": {"lut": 6000.0},
        "fast": {"lut": 5000},
        "accurate": {"lut": 7100},
        "accuracy": 0.95,
        "wall_time_s": 3.0,
    },
    {
        "iteration": 2,
        "limits": {"lut": 6000.0},
        "calibrated": True,
        "fast": {"lut": 5800},
        "accurate": {"lut": 5900},
        "accuracy": 0.947,
        "wall_time_s": 3.1,
    },
]


def make_run(d: Path, full: bool = True) -> Path:
    metrics = {"float_test_accuracy": 0.9611}
    if full:
        metrics.update(
            {
                "finetuned_test_accuracy": 0.9472,
                "achieved_size": 0.0612,
                "achieved_bops": 0.021,
                "resources": resources(),
                "emulation": {**HOP, "a": "qonnx", "b": "hls4ml"},
                "loop": LOOP_SUMMARY,
                "fits": True,
            }
        )
        write_json(d / "loop.json", {**LOOP_SUMMARY, "history": HISTORY})
        write_json(d / "plan.json", plan().to_dict())
        write_json(
            d / "equivalence.json", {"hops": [HOP], "layer_checks": [{"name": "fc1", "ok": True}]}
        )
    write_json(
        d / "run.json",
        {
            "config": {"model": "digits-mlp", "budget": ["size=1/16"], "strategy": "Latency"},
            "versions": {"fitc": "0.1.0"},
            "stages": {"train": {"fingerprint": "a", "wall_time_s": 2.5, "outputs": ["float.pt"]}},
            "metrics": metrics,
        },
    )
    return d


def links(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def test_report_on_a_full_run(tmp_path):
    d = make_run(tmp_path / "run")
    out = write_report(d)
    assert out == d / "report.md"
    md = out.read_text()
    for section in (
        "## Metrics",
        "## Compression plan",
        "## Equivalence",
        "## Resources",
        "## Closed loop",
        "## Configuration",
        "### Search path",
    ):
        assert section in md
    assert "| fc2 | linear | 3 | 6 | 2048 | 250 | 87.8 % | 64 |" in md
    assert "brevitas → qonnx" in md and "qonnx → hls4ml" in md
    assert "compressed accuracy 94.72 %" in md
    assert "Not available" not in md
    assert "| stop_reason | fits |" in md and "| 2 | lut=6000 | yes |" in md
    assert "Against the xc7z020 (Zynq-7000, xc7z020clg400-1):" in md
    assert "| LUT | 7,100 | 6,000 | 118 % | 53,200 | 13.3 % |" in md
    assert "| DSP | 2 | – | – | 220 | 0.909 % |" in md
    pictures = links(md)
    assert sorted(pictures) == [
        "plots/loop.png",
        "plots/plan_layers.png",
        "plots/resources_layers.png",
        "plots/search_path.png",
        "plots/utilisation.png",  # the default part is a preset: the design against it
    ]
    for p in pictures:
        assert (d / p).read_bytes()[:4] == b"\x89PNG"


def test_report_on_a_bare_run_says_what_is_missing(tmp_path):
    d = make_run(tmp_path / "run", full=False)
    md = write_report(d).read_text()
    assert "_Not available: the plan (no plan.json in the run directory)._" in md
    assert "Not available: equivalence results" in md
    assert "Not available: resource estimates" in md
    assert "Not available: the closed loop" in md
    assert links(md) == []


def test_report_survives_a_corrupt_artifact(tmp_path):
    d = make_run(tmp_path / "run")
    (d / "plan.json").write_text("{not json")
    md = write_report(d).read_text()
    assert "Not available: the plan" in md and "not valid JSON" in md
    assert "## Resources" in md


def test_report_on_a_sweep(tmp_path, monkeypatch):
    spec = SweepSpec.from_grid(budgets=["size=1/8,1/16,1/32"], strategies="latency,da")
    sweep = tmp_path / "sweep"
    # a point function defined here runs in-process (one worker)
    run_sweep(spec, sweep, point_fn=_fake_point, progress=False)
    md = write_report(sweep).read_text()
    assert "**6 points: 5 complete, 1 fail**" in md
    assert "### Failed points" in md and "ValueError: infeasible" in md
    assert "### Accuracy against LUTs" in md
    assert "Not available: a bops front" in md  # the fake reports no BOPs
    for p in links(md):
        assert (sweep / p).is_file()
    assert "plots/pareto_lut.png" in links(md) and "plots/pareto_dsp.png" in links(md)
    # point keys link to their run directories under the sweep
    assert "](points/digits-mlp__size=1-8__Latency__rf1)" in md


def test_a_pareto_plot_along_a_constant_axis_is_left_out(tmp_path):
    spec = SweepSpec.from_grid(budgets=["size=1/8,1/16"], strategies="latency")
    sweep = tmp_path / "sweep"
    run_sweep(spec, sweep, point_fn=_fake_point_without_dsp, progress=False)
    md = write_report(sweep).read_text()
    assert "plots/pareto_lut.png" in links(md) and "plots/pareto_dsp.png" not in links(md)
    assert "_Every finished point has 0 DSP slices: no trade-off to plot" in md


def test_report_on_a_sweep_without_results_csv_collects_them(tmp_path):
    spec = SweepSpec.from_grid(budgets=["size=1/8"])
    url, name = create_sweep(spec, tmp_path / "s")
    md = write_report(tmp_path / "s").read_text()
    assert "**1 points: 1 waiting**" in md
    collect_results(url, name)


def test_report_on_something_else_fails_clearly(tmp_path):
    with pytest.raises(ArtifactError, match="neither a run directory"):
        write_report(tmp_path)


def test_table_escapes_pipes():
    assert table([{"a": "x|y", "b": 1.5}]) == "| a | b |\n|---|---|\n| x\\|y | 1.5 |\n"


def _fake_point(point, sweep_dir):
    if "1-32__Latency" in point.key:
        raise ValueError("infeasible")
    run_dir = Path(sweep_dir) / "points" / point.key
    run_dir.mkdir(parents=True)
    n = sum(map(ord, point.key))
    return {
        "accuracy": 0.8 + (n % 17) / 100,
        "lut": 1000 + n % 97,
        "dsp": n % 3,
        "run_dir": str(run_dir),
    }


def _fake_point_without_dsp(point, sweep_dir):
    out = _fake_point(point, sweep_dir)
    return {**out, "dsp": 0}
