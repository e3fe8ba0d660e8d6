"""Vendor synthesis of a lowered hls4ml project, and its reports as a ResourceReport.

Contract:

- :func:`synthesize` builds the project in ``project_dir`` (written by
  :func:`fitc.backends.hls.lower`) with the vendor tool of its backend — ``vitis-run`` for Vitis,
  ``vivado_hls`` for Vivado, plus ``vivado`` when Vivado logic synthesis (``vsynth``) is asked
  for — then parses the reports with ``hls4ml.report.parse_vivado_report`` and returns a
  :class:`~fitc.artifacts.ResourceReport`. When a tool is not on PATH it raises
  :class:`~fitc.errors.ToolNotFoundError` naming the tool, before anything runs: the project
  directory is complete and can be synthesized as is on a machine that has it.
- Vitis builds go through hls4ml's build API (it runs ``vitis-run`` in the project directory and
  writes the logs there). hls4ml's Vivado build changes the process's working directory and uses
  ``os.system``; fitc runs the same ``vivado_hls -f build_prj.tcl`` command with
  ``subprocess.run(cwd=...)`` instead, logging to ``build_stdout.log`` in the project.
- :func:`resource_report` turns the dict of ``parse_vivado_report`` into a ResourceReport:
  ``source="vivado_synth"`` when a Vivado synthesis report is present (LUT/FF/DSP/BRAM from it;
  its "Block RAM Tile" count is in 36 Kb tiles, reported here as 18 Kb units, ×2), otherwise
  ``source="csynth"`` (HLS estimates). Latency and interval always come from csynth (worst case).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fitc.artifacts import HardwareConfig, ResourceReport
from fitc.errors import ArtifactError, FitcError, ToolNotFoundError

log = logging.getLogger(__name__)

_HLS_TOOL = {"Vitis": "vitis-run", "Vivado": "vivado_hls"}
_BUILD_CMD = {
    "Vitis": "vitis-run --tcl build_prj.tcl --mode hls",
    "Vivado": "vivado_hls -f build_prj.tcl",
}


class SynthesisError(FitcError):
    """The vendor tool ran but failed, or left no report; the message names the log to read."""


def required_tools(hw: HardwareConfig, *, vsynth: bool = False) -> list[str]:
    """The executables a build of a ``hw.backend`` project needs on PATH."""
    tools = [_HLS_TOOL[hw.backend]]
    if vsynth:
        tools.append("vivado")
    return tools


def check_tools(project_dir: str | Path, hw: HardwareConfig, *, vsynth: bool = False) -> None:
    """Raise :class:`ToolNotFoundError` unless every tool :func:`required_tools` names is on PATH."""
    missing = [t for t in required_tools(hw, vsynth=vsynth) if shutil.which(t) is None]
    if missing:
        build = f"cd {project_dir} && {_BUILD_CMD[hw.backend]}"
        run_dir = Path(project_dir).parent
        how = (
            f"`fitc synth {run_dir}` (or `{build}`)"
            if (run_dir / "run.json").is_file()
            else f"`{build}` (for a fitc run, `fitc synth RUN_DIR`)"
        )
        raise ToolNotFoundError(
            f"{' and '.join(missing)} not found on PATH: synthesizing a {hw.backend} project needs "
            f"{' and '.join(missing)} ({hw.backend} installation). The hls4ml project in "
            f"{project_dir} is complete; synthesize it on a machine with {hw.backend}: {how}."
        )


def _project_hardware(project_dir: Path) -> HardwareConfig:
    from fitc.backends.hls import load_project

    return load_project(project_dir).hardware


def synthesize(
    project_dir: str | Path,
    hw: HardwareConfig | None = None,
    *,
    csim: bool = False,
    vsynth: bool | None = None,
    export: bool = False,
) -> ResourceReport:
    """Run the vendor HLS build of the project (C synthesis; Vivado logic synthesis with
    ``vsynth``, by default when ``vivado`` is on PATH) and return its resources. ``hw`` defaults
    to the hardware the project was lowered for (``fitc_hls_project.json``). ``project_dir`` may
    also be a run directory holding the project in ``hls4ml/``."""
    import hls4ml

    project_dir = Path(project_dir)
    if (project_dir / "hls4ml" / "hls4ml_config.yml").is_file():  # a run directory
        project_dir = project_dir / "hls4ml"
    if not (project_dir / "hls4ml_config.yml").is_file():
        raise ArtifactError(
            f"{project_dir}: no hls4ml project (hls4ml_config.yml missing); run "
            "`fitc lower RUN_DIR` first"
        )
    hw = hw if hw is not None else _project_hardware(project_dir)
    if vsynth is None:
        vsynth = shutil.which("vivado") is not None
    check_tools(project_dir, hw, vsynth=vsynth)
    log.info("synthesizing %s with %s (vsynth=%s)", project_dir, _HLS_TOOL[hw.backend], vsynth)
    if hw.backend == "Vitis":
        model = hls4ml.converters.link_existing_project(str(project_dir))
        try:
            model.build(csim=csim, synth=True, vsynth=vsynth, export=export, log_to_stdout=False)
        except Exception as e:
            raise SynthesisError(
                f"Vitis build of {project_dir} failed ({e}); see {project_dir}/build_stdout.log "
                "and build_stderr.log"
            ) from e
    else:
        opts = f"reset=0 csim={int(csim)} synth=1 cosim=0 validation=0 export={int(export)} " + (
            f"vsynth={int(vsynth)} fifo_opt=0"
        )
        log_path = project_dir / "build_stdout.log"
        with log_path.open("w") as out:
            proc = subprocess.run(
                ["vivado_hls", "-f", "build_prj.tcl", opts],
                cwd=project_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if proc.returncode != 0:
            raise SynthesisError(
                f"vivado_hls failed on {project_dir} (exit {proc.returncode}); see {log_path}"
            )
    return parse_reports(project_dir, hw)


def parse_reports(project_dir: str | Path, hw: HardwareConfig) -> ResourceReport:
    """The ResourceReport of a synthesized project's csynth / Vivado reports."""
    from hls4ml.report import parse_vivado_report

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # the parser prints what it does not find
        raw = parse_vivado_report(str(project_dir))
    log.debug("parse_vivado_report(%s):\n%s", project_dir, buf.getvalue())
    if not raw or "CSynthesisReport" not in raw:
        raise SynthesisError(
            f"{project_dir}: no C synthesis report found ({buf.getvalue().strip() or 'empty'}); "
            "did the build finish? See build_stdout.log in the project"
        )
    return resource_report(raw, hw)


def _num(d: Mapping[str, Any], key: str, where: str) -> float:
    try:
        return float(str(d[key]).split()[0].replace(",", ""))
    except (KeyError, ValueError, IndexError) as e:
        raise SynthesisError(
            f"{where}: field {key!r} missing or not a number ({d.get(key)!r})"
        ) from e


def resource_report(raw: Mapping[str, Any], hw: HardwareConfig) -> ResourceReport:
    """Convert ``hls4ml.report.parse_vivado_report``'s dict (see the module docstring)."""
    cs = raw["CSynthesisReport"]
    latency = _num(cs, "WorstLatency", "csynth report")
    interval = _num(cs, "IntervalMax", "csynth report")
    try:
        clock = float(cs.get("TargetClockPeriod", hw.clock_period_ns))
    except ValueError:
        clock = hw.clock_period_ns
    vs = raw.get("VivadoSynthReport") or {}
    if "LUT" in vs:
        source = "vivado_synth"
        lut = _num(vs, "LUT", "Vivado synthesis report")
        ff = _num(vs, "FF", "Vivado synthesis report")
        dsp = _num(vs, "DSP48E", "Vivado synthesis report") if "DSP48E" in vs else 0.0
        bram = 2 * _num(vs, "BRAM_18K", "Vivado synthesis report") if "BRAM_18K" in vs else 0.0
    else:
        source = "csynth"
        lut = _num(cs, "LUT", "csynth report")
        ff = _num(cs, "FF", "csynth report")
        dsp = _num(cs, "DSP", "csynth report")
        bram = _num(cs, "BRAM_18K", "csynth report")
    return ResourceReport(
        source=source,
        hardware=hw,
        lut=lut,
        ff=ff,
        dsp=dsp,
        bram_18k=bram,
        latency_cycles=latency,
        latency_ns=latency * clock,
        initiation_interval_cycles=interval,
    )


__all__ = [
    "SynthesisError",
    "check_tools",
    "parse_reports",
    "required_tools",
    "resource_report",
    "synthesize",
]
