"""fitc synth: a clear message without vendor tools; report parsing on real Vivado files; the tool
is run in the project directory when it is on PATH (a stand-in script plays the vendor tool)."""

from __future__ import annotations

import shutil
import stat
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from fitc.artifacts import HardwareConfig
from fitc.backends.hls import lower
from fitc.backends.synth import parse_reports, synthesize
from fitc.errors import ArtifactError, ToolNotFoundError

ROOT = Path(__file__).resolve().parents[2]
_FIXTURE_DIRS = (
    ROOT / "tests" / "fixtures" / "vivado-report",
    ROOT.parent / "shared" / "fixtures" / "vivado-report",
)
FIXTURES = next((d for d in _FIXTURE_DIRS if (d / "myproject_csynth.xml").is_file()), None)
needs_fixtures = pytest.mark.skipif(FIXTURES is None, reason="real Vivado report files not found")


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory) -> Path:
    """A small lowered (not compiled) hls4ml project."""
    from fitc.build import apply_plan, calibrate, make_plan
    from fitc.export import export_qonnx

    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(fc1=nn.Linear(8, 8), relu1=nn.ReLU(), fc2=nn.Linear(8, 3))
    ).eval()
    plan = make_plan(model, model_name="t", input_shape=(8,), weight_bits=6, act_bits=6)
    qmodel = calibrate(apply_plan(model, plan, None), torch.randn(64, 8))
    tmp = tmp_path_factory.mktemp("synth")
    exported = export_qonnx(qmodel, (8,), tmp, plan=plan)
    out = tmp / "hls4ml"
    lower(
        exported.qonnx_path,
        out,
        HardwareConfig(),
        plan=plan,
        layer_map=exported.layer_map,
        compile=False,
    )
    return out


@pytest.fixture
def empty_path(tmp_path, monkeypatch) -> Path:
    """PATH with nothing on it but a directory we control."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


@pytest.mark.parametrize(("backend", "tool"), [("Vitis", "vitis-run"), ("Vivado", "vivado_hls")])
def test_synthesize_without_tools_says_what_is_missing(project_dir, empty_path, backend, tool):
    with pytest.raises(ToolNotFoundError) as err:
        synthesize(project_dir, HardwareConfig(backend=backend), vsynth=False)
    msg = str(err.value)
    assert f"{tool} not found on PATH" in msg
    assert str(project_dir) in msg and "fitc synth" in msg
    assert "vivado " not in msg.split("needs")[1].split("(")[0]  # only the missing tool is named


def test_synthesize_names_vivado_when_logic_synthesis_is_asked_for(project_dir, empty_path):
    with pytest.raises(ToolNotFoundError, match="vitis-run and vivado not found"):
        synthesize(project_dir, vsynth=True)  # hardware read from the project


def test_synthesize_accepts_a_run_directory(project_dir, empty_path):
    with pytest.raises(ToolNotFoundError, match=str(project_dir)):
        synthesize(project_dir.parent, vsynth=False)  # the run directory holds hls4ml/


def test_synthesize_needs_a_project(tmp_path):
    with pytest.raises(ArtifactError, match="no hls4ml project"):
        synthesize(tmp_path, HardwareConfig())


def _place_reports(project: Path) -> None:
    """Put the real report files where a Vivado HLS build leaves them."""
    sln = project / "myproject_prj"
    (sln / "solution1" / "syn" / "report").mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "vivado_hls.app", sln / "vivado_hls.app")
    for name in ("myproject_csynth.xml", "myproject_csynth.rpt"):
        shutil.copy(FIXTURES / name, sln / "solution1" / "syn" / "report" / name)
    shutil.copy(FIXTURES / "vivado_synth.rpt", project / "vivado_synth.rpt")


@needs_fixtures
def test_parse_reports_reads_real_vivado_files(tmp_path):
    (tmp_path / "project.tcl").write_text('set project_name "myproject"\nset backend "vivado"\n')
    _place_reports(tmp_path)
    hw = HardwareConfig(backend="Vivado")
    r = parse_reports(tmp_path, hw)
    assert r.source == "vivado_synth"
    assert (r.lut, r.ff, r.dsp, r.bram_18k) == (1526, 2428, 66, 0)
    assert (r.latency_cycles, r.initiation_interval_cycles, r.latency_ns) == (10, 8, 50.0)
    (tmp_path / "vivado_synth.rpt").unlink()
    r = parse_reports(tmp_path, hw)  # C synthesis estimates only
    assert r.source == "csynth"
    assert (r.lut, r.ff, r.dsp, r.bram_18k) == (2532, 7969, 73, 0)


@needs_fixtures
def test_synthesize_runs_the_tool_in_the_project_and_parses_its_reports(
    project_dir, tmp_path, empty_path
):
    """A stand-in ``vivado_hls`` records its arguments and working directory and leaves the real
    report files behind, as the vendor tool would."""
    project = tmp_path / "prj"
    shutil.copytree(project_dir, project)
    script = empty_path / "vivado_hls"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, shutil, sys\n"
        "from pathlib import Path\n"
        "Path('called.txt').write_text(os.getcwd() + '\\n' + ' '.join(sys.argv[1:]))\n"
        f"fx = Path({str(FIXTURES)!r})\n"
        "rep = Path('myproject_prj/solution1/syn/report')\n"
        "rep.mkdir(parents=True)\n"
        "shutil.copy(fx / 'vivado_hls.app', 'myproject_prj/vivado_hls.app')\n"
        "shutil.copy(fx / 'myproject_csynth.xml', rep / 'myproject_csynth.xml')\n"
        "shutil.copy(fx / 'vivado_synth.rpt', 'vivado_synth.rpt')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    r = synthesize(project, HardwareConfig(backend="Vivado"), vsynth=False)
    cwd, args = (project / "called.txt").read_text().splitlines()
    assert Path(cwd) == project and args.startswith("-f build_prj.tcl") and "synth=1" in args
    assert r.source == "vivado_synth" and r.lut == 1526
