"""The Yosys resource model (``"yosys"``): :class:`YosysModel` reads the cell counts that
:func:`fitc.backends.yosys.synthesize_yosys` saved (``yosys_stat.json``) in an RTL project and
reports them as a :class:`~fitc.artifacts.ResourceReport` with ``source="yosys"``. It never runs
Yosys itself (an estimate reads; ``fitc synth DIR --tool yosys`` writes).

These numbers are open-source synthesis before place and route (:data:`fitc.backends.yosys.NOTE`):
LUT = every LUT cell (LUT1–LUT6 and INV), FF = flip-flops, DSP, BRAM in 18 Kb units; latency in
cycles is the RTL pipeline's depth (0 for combinational logic: the result is ready in the same
cycle, within the clock period only if the design meets timing, which synthesis does not tell).
A flattened netlist has no per-layer numbers: ``layers`` is empty, unless ``split_layers=True``,
which splits the totals in proportion to da4ml's per-layer cost of the traced network
(``RTLProject.da4ml_stage_costs``, activation and pooling logic counted with the layer that feeds
them) — an apportionment, not a measurement, logged as such.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from fitc.artifacts import CompressionPlan, HardwareConfig, LayerResources, ResourceReport
from fitc.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class YosysModel:
    """``estimate(plan, hw, rtl_dir=...)``: the Yosys cell counts saved in ``rtl_dir`` (an RTL
    project, or a run directory holding one in ``rtl/``). See the module docstring."""

    split_layers: bool = False
    name: str = "yosys"

    def estimate(
        self,
        plan: CompressionPlan,
        hw: HardwareConfig,
        *,
        rtl_dir: str | os.PathLike | None = None,
        **kw: Any,
    ) -> ResourceReport:
        from fitc.backends.rtl import load_rtl_project
        from fitc.backends.yosys import NOTE, load_yosys_report, rtl_project_dir, xilinx_family

        if rtl_dir is None:
            raise ConfigError(
                "the yosys model reads yosys_stat.json from an RTL project: pass rtl_dir= (write "
                "it with `fitc lower DIR --backend rtl`, then `fitc synth DIR --tool yosys`)"
            )
        root = rtl_project_dir(rtl_dir)
        rep = load_yosys_report(root)
        project = load_rtl_project(root)
        try:
            family = xilinx_family(hw.part)
        except ConfigError:
            family = None
        if family != rep.family:
            log.warning(
                "Yosys counts are for %s (%s family), the hardware is %s: re-run synthesis for it",
                rep.part,
                rep.family,
                hw.part,
            )
        latency = float(project.latency_cycles)
        layers: tuple[LayerResources, ...] = ()
        if self.split_layers:
            layers = _split(plan, project, rep.lut, rep.ff, rep.dsp, rep.bram_18k, latency)
        return ResourceReport(
            source=self.name,
            hardware=hw,
            lut=float(rep.lut),
            ff=float(rep.ff),
            dsp=float(rep.dsp),
            bram_18k=float(rep.bram_18k),
            latency_cycles=latency,
            latency_ns=latency * hw.clock_period_ns,
            initiation_interval_cycles=1.0,
            layers=layers,
            firmware="rtl",
            basis=f"Yosys {rep.yosys_version} synth_xilinx -family {rep.family} netlist "
            f"({rep.mapper} LUT mapping) of the RTL",
            note=NOTE
            + (" (layers: the totals split by da4ml's per-layer costs)" if layers else ""),
        )


def _split(
    plan: CompressionPlan,
    project: Any,
    lut: float,
    ff: float,
    dsp: float,
    bram: float,
    latency: float,
) -> tuple[LayerResources, ...]:
    """Totals apportioned to the plan's layers by da4ml's per-node cost; a node that is not a
    layer (activation, pool) is counted with the most recent layer before it."""
    names = [lp.name for lp in plan.layers]
    share = dict.fromkeys(names, 0.0)
    current = None
    for node, cost in project.da4ml_stage_costs.items():
        if node in share:
            current = node
        target = current or (names[0] if names else None)
        if target is not None:
            share[target] += float(cost)
    total = sum(share.values()) or 1.0
    log.info("yosys: per-layer numbers are apportioned by da4ml's cost, not measured")
    return tuple(
        LayerResources(
            name=n,
            lut=lut * share[n] / total,
            ff=ff * share[n] / total,
            dsp=dsp * share[n] / total,
            bram_18k=bram * share[n] / total,
            latency_cycles=latency * share[n] / total,
        )
        for n in names
    )


__all__ = ["YosysModel"]
