"""`fitc synth` hints: the command a user is told to run takes the run directory, not the hls4ml
project inside it."""

from __future__ import annotations

import pytest

from fitc.artifacts import HardwareConfig
from fitc.backends.synth import check_tools
from fitc.errors import ToolNotFoundError


@pytest.fixture
def no_tools(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))


def test_a_project_in_a_run_directory_names_the_run_directory(tmp_path, no_tools):
    run_dir = tmp_path / "runs" / "cnn32"
    (run_dir / "hls4ml").mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    with pytest.raises(ToolNotFoundError) as e:
        check_tools(run_dir / "hls4ml", HardwareConfig())
    msg = str(e.value)
    assert f"`fitc synth {run_dir}`" in msg
    assert f"fitc synth {run_dir / 'hls4ml'}" not in msg
    assert f"cd {run_dir / 'hls4ml'} && vitis-run" in msg


def test_a_bare_project_gets_the_vendor_command(tmp_path, no_tools):
    project = tmp_path / "prj"
    project.mkdir()
    with pytest.raises(ToolNotFoundError) as e:
        check_tools(project, HardwareConfig(backend="Vivado"))
    msg = str(e.value)
    assert f"`cd {project} && vivado_hls -f build_prj.tcl`" in msg
    assert f"fitc synth {project}" not in msg
