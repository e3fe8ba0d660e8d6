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


# ---------------------------------------------------------------------------------------------
# What the pictures show (the figure is caught before it is saved)


@pytest.fixture
def figures(monkeypatch):
    caught = []

    def save(fig, out):
        caught.append(fig)
        return Path(out)

    monkeypatch.setattr(plots, "_save", save)
    return caught


XC7Z020 = {"name": "xc7z020", "totals": {"lut": 53200, "ff": 106400, "dsp": 220, "bram": 280}}


def test_utilisation_plot_draws_the_design_against_the_part(tmp_path):
    targets = {"lut": 13300.0, "ff": 26600.0, "dsp": 55.0, "bram": 70.0}
    device = {**XC7Z020, "fraction": 0.25}
    width, height = assert_png(
        plots.utilisation_plot(make_resources(), tmp_path / "u.png", device=device, targets=targets)
    )
    assert width < 1000 and height < 700  # a picture that fits a report page


def test_utilisation_plot_bars_are_shares_of_the_part_with_budget_marks(figures, tmp_path):
    targets = {"lut": 13300.0, "dsp": 55.0}
    plots.utilisation_plot(make_resources(), tmp_path / "u.png", device=XC7Z020, targets=targets)
    (ax,) = figures[0].axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "LUT\n8,900 / 53,200" and labels[-1].startswith("BRAM 18K")
    widths = [p.get_width() for p in ax.patches]
    assert widths[0] == pytest.approx(100 * 8900 / 53200)
    texts = [t.get_text() for t in ax.texts]
    assert "16.7 % — budget 13,300 (25 %)" in texts  # used share, then the budget
    assert any(line.get_xdata()[0] == 100 for line in ax.get_lines())  # the whole part
    assert ax.get_xlim()[1] > 100


def test_layer_resources_plot_leaves_out_an_empty_dsp_bram_panel(figures, tmp_path):
    plots.layer_resources_plot(make_resources(), tmp_path / "a.png")  # fc3 uses 2 DSPs
    assert len(figures[0].axes) == 2
    rep = make_resources().to_dict()
    for layer in rep["layers"]:
        layer["dsp"] = 0
    rep["dsp"] = 0
    plots.layer_resources_plot(rep, tmp_path / "b.png")
    assert len(figures[1].axes) == 1
    assert "no layer uses DSP slices or BRAM" in figures[1]._suptitle.get_text()


def test_loop_plot_leaves_out_panels_of_zeros(figures, tmp_path):
    loop = [i.to_dict() for i in make_loop()]
    for it in loop:
        it["accurate"]["dsp"] = it["fast"]["dsp"] = 0
    plots.loop_plot(loop, tmp_path / "l.png", targets={"lut": 13300.0, "dsp": 55.0})
    assert [ax.get_title() for ax in figures[0].axes] == ["LUT"]
    assert "DSP: 0 in every iteration" in figures[0]._suptitle.get_text()


@pytest.mark.parametrize(
    ("budget", "ylabel"),
    [
        (Budget("size", 1 / 16), "weight bits (% of the float model's)"),
        (Budget("bops", 0.02), "bit operations (% of the float model's)"),
        (Budget("lut", 6000), "LUTs, fast estimate (count)"),
        (Budget("latency", 20), "latency, fast estimate (clock cycles)"),
        (Budget("combined", 1.0), "fast estimate / budget of the worst resource (1 = all met)"),
    ],
)
def test_search_path_is_cost_against_fisher_distance(figures, tmp_path, budget, ylabel):
    plan = make_plan()
    plan = CompressionPlan(plan.model, plan.layers, budget, 0.05, 0.01, plan.path)
    plots.search_path_plot(plan, tmp_path / "p.png")
    (ax,) = figures[0].axes
    assert ax.get_ylabel() == ylabel
    assert ax.get_xlabel().startswith("Fisher distance from the float model")
    path, budget_line = ax.get_lines()[0], ax.get_lines()[-1]
    assert list(path.get_xdata()) == [s.g for s in plan.path]  # x: distance, y: cost
    assert list(path.get_ydata()) == [s.cost for s in plan.path]
    assert set(budget_line.get_ydata()) == {budget.limit}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("chosen plan: cost") for t in legend)


def test_constant_axis():
    rows = make_rows()
    assert plots.constant_axis(rows, "lut") is None
    for r in rows:
        r["dsp"] = 0
    assert plots.constant_axis(rows, "dsp") == 0.0
    assert plots.constant_axis([{"status": "FAIL"}], "dsp") is None
