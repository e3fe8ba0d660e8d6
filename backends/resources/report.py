"""The vendor-report resource model (``"report"``): :class:`VendorReportModel` reads the real
numbers of a built design instead of estimating them — hls4ml/Vivado HLS ``<top>_csynth.xml``
(latency, interval, clock, HLS resource estimate) and ``vivado_synth.rpt`` (post-synthesis LUT, FF,
DSP, BRAM) from an hls4ml project or a folder holding those files, optionally per layer from the
csynth instance table (:func:`read_vendor_report`); it needs ``report_dir=`` and ignores the plan,
and a missing or malformed file raises :class:`VendorReportError`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fitc.artifacts import CompressionPlan, HardwareConfig, LayerResources, ResourceReport
from fitc.errors import ArtifactError, ConfigError

from .base import firmware_label


class VendorReportError(ArtifactError):
    """A vendor report file is missing, unreadable or lacks a field fitc needs."""


def _xml_text(root: ET.Element, path: str, where: Path) -> str:
    node = root.find(path)
    if node is None or node.text is None:
        raise VendorReportError(f"{where}: no <{path}> element")
    return node.text.strip()


def parse_csynth_xml(path: str | Path) -> dict[str, Any]:
    """Vivado/Vitis HLS ``<top>_csynth.xml``: part, target and estimated clock (ns), best/worst
    latency (cycles), interval min/max, and the HLS resource estimate (BRAM_18K, DSP, FF, LUT,
    URAM) with the part's available resources."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise VendorReportError(f"cannot read csynth report {path}: {e}") from None
    out: dict[str, Any] = {
        "part": _xml_text(root, "UserAssignments/Part", path),
        "top": (root.findtext("UserAssignments/TopModelName") or "").strip(),
        "target_clock_ns": float(_xml_text(root, "UserAssignments/TargetClockPeriod", path)),
        "estimated_clock_ns": float(
            _xml_text(
                root, "PerformanceEstimates/SummaryOfTimingAnalysis/EstimatedClockPeriod", path
            )
        ),
    }
    lat = "PerformanceEstimates/SummaryOfOverallLatency/"
    for key, tag in (
        ("best_latency", "Best-caseLatency"),
        ("worst_latency", "Worst-caseLatency"),
        ("interval_min", "Interval-min"),
        ("interval_max", "Interval-max"),
    ):
        text = _xml_text(root, lat + tag, path)
        out[key] = (
            float(text) if re.fullmatch(r"[0-9.]+", text) else None
        )  # "undef" for unbounded loops
    for section, prefix in (("Resources", ""), ("AvailableResources", "available_")):
        node = root.find(f"AreaEstimates/{section}")
        if node is None:
            raise VendorReportError(f"{path}: no <AreaEstimates/{section}> element")
        for child in node:
            tag = "DSP" if child.tag.startswith("DSP") else child.tag
            out[prefix + tag] = float(child.text)
    return out


def parse_vivado_synth_rpt(path: str | Path) -> dict[str, float]:
    """Vivado ``report_utilization`` output (``vivado_synth.rpt``): LUT, FF, DSP, BRAM_18K (RAMB36 × 2
    + RAMB18) and URAM of the synthesized design, plus ``device``."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise VendorReportError(f"cannot read Vivado synthesis report {path}: {e}") from None
    out: dict[str, Any] = {}
    m = re.search(r"^\|\s*Device\s*:\s*(\S+)", text, re.M)
    if m:
        out["device"] = m.group(1)

    def used(label: str) -> float | None:
        m = re.search(rf"^\|\s*{label}\s*\|\s*([0-9.]+)\s*\|", text, re.M)
        return float(m.group(1)) if m else None

    out["LUT"] = used(r"(?:Slice|CLB) LUTs\*?")
    out["FF"] = used(r"(?:Slice|CLB) Registers")
    out["DSP"] = used(r"DSPs")
    ramb36, ramb18 = used(r"RAMB36/FIFO\*?"), used(r"RAMB18")
    tile = used(r"Block RAM Tile")
    if ramb36 is not None and ramb18 is not None:
        out["BRAM_18K"] = 2 * ramb36 + ramb18
    elif tile is not None:
        out["BRAM_18K"] = 2 * tile
    else:
        out["BRAM_18K"] = None
    out["URAM"] = used(r"URAM") or 0.0
    missing = [k for k in ("LUT", "FF", "DSP", "BRAM_18K") if out[k] is None]
    if missing:
        raise VendorReportError(f"{path}: could not find {missing} in the utilization tables")
    return out


def _leading_number(cell: str) -> float | None:
    """``"7"`` → 7.0, ``"35.000 ns"`` → 35.0, ``"-"``/``""`` → 0.0, anything else → None."""
    if cell in ("-", ""):
        return 0.0
    m = re.match(r"[0-9]+(?:\.[0-9]*)?", cell)
    return float(m.group(0)) if m else None


def parse_csynth_rpt_instances(path: str | Path) -> list[dict[str, Any]]:
    """The per-instance rows of ``<top>_csynth.rpt``: name, module, BRAM_18K, DSP, FF, LUT and,
    where the latency table has them, latency and interval (cycles)."""
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        raise VendorReportError(f"cannot read csynth report {path}: {e}") from None
    rows: dict[str, dict[str, Any]] = {}
    section = None
    in_instances = False  # inside an "Instance | Module | ..." table
    for line in lines:
        s = line.strip()
        if s.startswith("== "):
            section = s.strip("= ").lower()
            in_instances = False
        if not s.startswith("|"):
            if s.startswith("*"):
                in_instances = False
            continue
        cells = [c.strip() for c in s.strip("|").split("|")]
        if cells[0] == "Instance":
            in_instances = len(cells) > 1 and cells[1] == "Module"
            continue
        if not in_instances or cells[0] in ("", "Total"):
            continue
        nums = [_leading_number(c) for c in cells[2:8]]
        if any(x is None for x in nums):
            continue
        row = rows.setdefault(cells[0], {"name": cells[0], "module": cells[1]})
        if section == "utilization estimates" and len(cells) >= 6:
            row.update(bram_18k=nums[0], dsp=nums[1], ff=nums[2], lut=nums[3])
        elif section == "performance estimates" and len(cells) >= 8:
            row.update(latency_cycles=nums[1], ii_cycles=nums[5])
    return [r for r in rows.values() if "lut" in r]


def _find(root: Path, pattern: str) -> Path | None:
    if root.is_file():
        return root if root.match(pattern) else None
    hits = sorted(root.rglob(pattern), key=lambda p: (len(p.parts), str(p)))
    return hits[0] if hits else None


def _project_top(root: Path) -> str | None:
    """The top function of an hls4ml project (``set project_name "..."`` in project.tcl)."""
    tcl = root / "project.tcl"
    if root.is_dir() and tcl.is_file():
        m = re.search(r'set\s+project_name\s+"([^"]+)"', tcl.read_text(errors="replace"))
        if m:
            return m.group(1)
    return None


def _find_csynth_xml(root: Path, top: str | None) -> Path | None:
    """The top-level csynth XML: ``<top>_csynth.xml`` when the top is known, otherwise the largest
    design among the ``*_csynth.xml`` files (HLS also writes one per sub-module)."""
    if root.is_file():
        return root if root.name.endswith("_csynth.xml") else None
    cands = sorted(root.rglob("*_csynth.xml"), key=lambda p: (len(p.parts), str(p)))
    top = top or _project_top(root)
    if top:
        named = [p for p in cands if p.name in (f"{top}_csynth.xml", f"{top}_axi_csynth.xml")]
        if named:
            return named[0]
    if len(cands) <= 1:
        return cands[0] if cands else None

    def size(p: Path) -> float:
        try:
            r = parse_csynth_xml(p)
        except VendorReportError:
            return -1.0
        return r.get("LUT", 0.0) + r.get("FF", 0.0)

    return max(cands, key=size)


def read_vendor_report(
    report_dir: str | Path,
    hw: HardwareConfig | None = None,
    *,
    layer_index: Mapping[str, int | Sequence[int]] | None = None,
    prefer: str = "vivado_synth",
    top: str | None = None,
    expect: Mapping[str, Any] | None = None,
) -> ResourceReport:
    """Read the vendor reports under ``report_dir`` (an hls4ml project or a folder of files) into a
    :class:`ResourceReport`.

    Latency, interval and clock come from ``*_csynth.xml``; LUT, FF, DSP and BRAM_18K from
    ``vivado_synth.rpt`` when present and ``prefer == "vivado_synth"`` (``source="vivado_synth"``),
    else from the HLS estimate (``source="csynth"``). ``hw`` fills the fields the reports do not
    hold (backend, io type, strategy, reuse factor); part and clock are taken from the report.
    ``layer_index`` (torch name → hls4ml layer index, or several: the layer and its activation)
    turns the csynth instance rows whose module name contains ``config<index>`` into per-layer
    entries (HLS estimates, summed over the indices; latency is the largest). ``top`` names the
    top function (default: from ``project.tcl``, else the largest ``*_csynth.xml``).
    ``expect`` (``top``, ``part``, ``layers``: the design's top function, part and number of
    weight layers) is checked against the reports (:func:`check_report_matches`): a report of
    another design is refused.
    """
    root = Path(report_dir)
    if not root.exists():
        raise VendorReportError(f"report path {root} does not exist")
    if prefer not in ("vivado_synth", "csynth"):
        raise ConfigError(f"prefer must be 'vivado_synth' or 'csynth', got {prefer!r}")
    xml = _find_csynth_xml(root, top)
    if xml is None:
        raise VendorReportError(
            f"no *_csynth.xml under {root}: run `fitc synth RUN_DIR` first (Vitis HLS or Vivado HLS on PATH)"
        )
    cs = parse_csynth_xml(xml)
    if expect:
        check_report_matches(xml, cs, expect)
    synth_path = _find(root, "vivado_synth.rpt")
    if prefer == "vivado_synth" and synth_path is not None:
        res, source = parse_vivado_synth_rpt(synth_path), "vivado_synth"
    else:
        res, source = cs, "csynth"
    hw = hw or HardwareConfig()
    hw = replace(hw, part=cs["part"], clock_period_ns=cs["target_clock_ns"])
    layers: tuple[LayerResources, ...] = ()
    rpt = xml.with_suffix(".rpt")
    if layer_index and rpt.exists():
        inst = parse_csynth_rpt_instances(rpt)
        found = []
        for name, idx in layer_index.items():
            idxs = (idx,) if isinstance(idx, int) else tuple(idx)
            pat = re.compile(rf"config(?:{'|'.join(str(int(i)) for i in idxs)})(?:_|$)")
            rows = [r for r in inst if pat.search(r["module"]) or pat.search(r["name"])]
            if rows:
                found.append(
                    LayerResources(
                        name=name,
                        lut=sum(r["lut"] for r in rows),
                        ff=sum(r["ff"] for r in rows),
                        dsp=sum(r["dsp"] for r in rows),
                        bram_18k=sum(r["bram_18k"] for r in rows),
                        latency_cycles=max(r.get("latency_cycles", 0.0) for r in rows),
                    )
                )
        layers = tuple(found)
    latency = cs["worst_latency"] if cs["worst_latency"] is not None else float("nan")
    ii = cs["interval_max"] if cs["interval_max"] is not None else float("nan")
    return ResourceReport(
        source=source,
        hardware=hw,
        lut=float(res["LUT"]),
        ff=float(res["FF"]),
        dsp=float(res["DSP"]),
        bram_18k=float(res["BRAM_18K"]),
        latency_cycles=float(latency),
        latency_ns=float(latency) * cs["target_clock_ns"],
        initiation_interval_cycles=float(ii),
        layers=layers,
        firmware=firmware_label(hw),
        basis=f"{'Vivado post-synthesis utilisation' if source == 'vivado_synth' else 'the HLS estimate'} "
        f"read from {synth_path.name if source == 'vivado_synth' else xml.name}",
        note="vendor numbers of the synthesized project"
        + ("" if source == "vivado_synth" else " (C synthesis estimate, before logic synthesis)"),
    )


def _part_key(part: str) -> str:
    """A part number without separators or case: xc7z020-clg400-1 ≡ xc7z020clg400-1."""
    return re.sub(r"[^a-z0-9]", "", part.lower())


# hls4ml's weight-layer kernels, as their HLS modules are named (dense_latency…, conv_2d_cl…).
_WEIGHT_MODULE = re.compile(r"^(dense|conv|pointwise|depthwise)[a-z0-9_]*?config(\d+)(?:_|$)")


def check_report_matches(xml: Path, cs: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    """Refuse a vendor report of another design: its top function, part, and (when the report
    has an instance table: hls4ml's Latency strategy may inline every layer) its number of
    weight-layer kernels must be the design's (``expect``: ``top``, ``part``, ``layers``)."""
    problems = []
    top = expect.get("top")
    if top and cs.get("top") and cs["top"] not in (top, f"{top}_axi"):
        problems.append(f"top function {cs['top']!r}, the design's is {top!r}")
    part = expect.get("part")
    if part and _part_key(cs["part"]) != _part_key(part):
        problems.append(f"part {cs['part']}, the design's is {part}")
    n = expect.get("layers")
    rpt = xml.with_suffix(".rpt")
    if n and rpt.is_file():
        found = {
            m.group(2)
            for r in parse_csynth_rpt_instances(rpt)
            if (m := _WEIGHT_MODULE.match(r["module"].lower()))
        }
        if found and len(found) != n:
            problems.append(
                f"{len(found)} weight layer{'s' if len(found) != 1 else ''} "
                f"(hls4ml configs {', '.join(sorted(found, key=int))}), the design has {n}"
            )
    if problems:
        raise VendorReportError(
            f"{xml} is a report of another design: {'; '.join(problems)}. Synthesize this run's "
            "project (fitc synth RUN_DIR) or estimate without --model report"
        )


@dataclass(frozen=True)
class VendorReportModel:
    """Resources from real vendor reports: ``estimate(plan, hw, report_dir=..., layer_index=None)``."""

    prefer: str = "vivado_synth"
    name: str = "report"

    def estimate(
        self,
        plan: CompressionPlan | None,
        hw: HardwareConfig,
        *,
        report_dir: str | Path | None = None,
        layer_index: Mapping[str, int | Sequence[int]] | None = None,
        expect: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> ResourceReport:
        if report_dir is None:
            raise ConfigError(
                "the report model needs report_dir=: an hls4ml project or a folder with *_csynth.xml"
            )
        return read_vendor_report(
            report_dir, hw, layer_index=layer_index, prefer=self.prefer, expect=expect
        )


__all__ = [
    "VendorReportError",
    "VendorReportModel",
    "check_report_matches",
    "parse_csynth_rpt_instances",
    "parse_csynth_xml",
    "parse_vivado_synth_rpt",
    "read_vendor_report",
]
