"""Plots: each function writes a PNG of reasonable size from plain data, including edge cases
(empty path, no finished point, dicts instead of dataclasses)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from fitc import plots
from fitc.artifacts import (
    Budget,
    CompressionPlan,
    HardwareConfig,
    LayerPlan,
    LayerResources,
    PathStep,
    ResourceReport,
)
from fitc.loop import LoopIteration


def make_plan(path: bool = True) -> CompressionPlan:
    layers = (
        LayerPlan("fc1", "linear", 4, 8, 4096, 700, 64),
        LayerPlan("fc2", "linear", 3, 6, 2048, 250, 64),
        LayerPlan("fc3", "linear", 3, 6, 1024, 160, 32),
        LayerPlan("fc4", "linear", 5, 6, 320, 120, 32),
    )
    steps, g, cost = [], 0.0, 1.0
    for i, move in enumerate(["prune:0.2", "fc1:w8->w6", "prune:0.5", "fc2:w8->w4", "prune:0.8"]):
        g += 0.1 * (i + 1)
        cost *= 0.55
        steps.append(PathStep(move, g, cost, g + cost, cost))
    return CompressionPlan(
        "digits-mlp", layers, Budget("size", 1 / 16), 0.05, 0.01, tuple(steps) if path else ()
    )


def make_resources() -> ResourceReport:
    layers = tuple(
        LayerResources(n, lut, lut / 3, dsp, 0, 3)
        for n, lut, dsp in (("fc1", 5200, 0), ("fc2", 1900, 0), ("fc3", 1100, 2), ("fc4", 700, 0))
    )
    return ResourceReport("da4ml", HardwareConfig(), 8900, 2967, 2, 0, 12, 60.0, 1, layers)


def make_loop() -> list[LoopIteration]:
    t = {"lut": 13300.0, "dsp": 55.0}
    return [
        LoopIteration(0, dict(t), False, {"lut": 9000, "dsp": 0}, {"lut": 16000, "dsp": 2}),
        LoopIteration(1, dict(t), True, {"lut": 13000, "dsp": 0}, {"lut": 14500, "dsp": 2}),
        LoopIteration(2, {"lut": 11800.0, "dsp": 55.0}, True, {"lut": 11700}, {"lut": 12400}),
    ]


def make_rows(n: int = 12) -> list[dict]:
    rnd = random.Random(0)
    rows = [
        {
            "key": f"p{i}",
            "status": "COMPLETE",
            "model": "digits-mlp",
            "budget": f"size=1/{2 ** (i % 4 + 3)}",
            "strategy": ["Latency", "distributed_arithmetic"][i % 2],
            "reuse_factor": 1,
            "accuracy": rnd.uniform(0.8, 0.97),
            "lut": rnd.randint(1000, 20000),
            "dsp": rnd.randint(0, 20),
        }
        for i in range(n)
    ]
    rows.append({"key": "bad", "status": "FAIL", "error": "x"})
    return rows


def assert_png(path: Path, min_bytes: int = 10_000) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) >= min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"
    width, height = struct.unpack(">II", data[16:24])
    assert 500 <= width <= 2000 and 300 <= height <= 1500, (width, height)
    return width, height


def test_pareto_plot(tmp_path):
    out = plots.pareto_plot(make_rows(), tmp_path / "p.png", cost="lut")
    assert out == tmp_path / "p.png"
    assert_png(out)
    assert_png(plots.pareto_plot(make_rows(), tmp_path / "d.png", cost="dsp"))


def test_pareto_plot_without_usable_points(tmp_path):
    assert_png(plots.pareto_plot([{"key": "a", "status": "FAIL"}], tmp_path / "e.png"), 5_000)


@pytest.mark.parametrize("as_dict", [False, True])
def test_run_plots(tmp_path, as_dict):
    plan = make_plan().to_dict() if as_dict else make_plan()
    res = make_resources().to_dict() if as_dict else make_resources()
    loop = [i.to_dict() for i in make_loop()] if as_dict else make_loop()
    assert_png(plots.layer_plan_plot(plan, tmp_path / "plan.png"))
    assert_png(plots.search_path_plot(plan, tmp_path / "path.png"))
    assert_png(plots.loop_plot(loop, tmp_path / "loop.png"))
    assert_png(plots.layer_resources_plot(res, tmp_path / "res.png"))


def test_plots_of_sparse_artifacts(tmp_path):
    assert_png(plots.search_path_plot(make_plan(path=False), tmp_path / "nopath.png"), 5_000)
    assert_png(plots.loop_plot([], tmp_path / "noloop.png"), 5_000)
    empty = ResourceReport("analytical", HardwareConfig(), 0, 0, 0, 0, 0, 0, 0)
    assert_png(plots.layer_resources_plot(empty, tmp_path / "nores.png"), 5_000)


def test_plotting_leaves_pyplot_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    plots.layer_plan_plot(make_plan(), tmp_path / "x.png")
    assert matplotlib.get_backend() == before
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file
