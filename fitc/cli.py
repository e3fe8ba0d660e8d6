"""The ``fitc`` command line.

Options come from defaults < a run directory's recorded config < ``--config FILE`` (YAML) < flags.
Each subcommand takes only the options that mean something for it (``--out`` where a run directory
is made, not where one is given). Names are case-insensitive and become their canonical spelling
before the config is built (``--strategy latency`` → ``Latency``); the help is made of the tables
the code checks against (device presets, strategies, stages, resource models), with examples.
Commands that finish a stage print the run summary of :mod:`fitc.summary` (``--json`` for
scripts). Errors a user can act on (:class:`FitcError`) print one line and exit with code 2;
``--debug`` shows the traceback and other libraries' logs. This module is the only place that
prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fitc.cli_common import (
    _config,
    _continue_command,
    _need,
    _need_model,
    _print_summary,
    _print_table,
    cmd_verify,
)
from fitc.errors import FitcError

log = logging.getLogger("fitc")


# ---------------------------------------------------------------------------------------------
# The tables the help and the checks are made of (the code's own, so they cannot disagree)

#: Firmware backends (hls4ml's two, and da4ml's RTL) and io types ``HardwareConfig`` accepts.
BACKENDS = ("Vitis", "Vivado", "rtl")
IO_TYPES = ("auto", "io_parallel", "io_stream")


def strategies() -> tuple[str, ...]:
    """The hls4ml strategies, canonical spelling (the sweep's table: ``latency`` → ``Latency``)."""
    from fitc.sweep.grid import STRATEGIES

    return tuple(dict.fromkeys(STRATEGIES.values()))


def config_choices(key: str) -> tuple[str, ...]:
    """The values :class:`~fitc.config.RunConfig` accepts for ``key`` (``until``, …)."""
    from fitc.config import _CHOICES

    return tuple(_CHOICES[key])


def device_names() -> tuple[str, ...]:
    """The device presets, in the order of the table in :mod:`fitc.backends.devices`."""
    from fitc.backends.devices import PRESETS

    return tuple(d.name for d in PRESETS)


class _Later:
    """A help parameter computed when argparse formats the help (``%(name)s``), not before."""

    def __init__(self, make) -> None:
        self.make = make

    def __str__(self) -> str:
        return self.make()


def _canonical(choices: Sequence[str], aliases: dict[str, str] | None = None):
    """An argparse ``type``: a name in any case (``latency``) → its canonical spelling."""
    table = {c.lower(): c for c in choices}
    table.update({k.lower(): v for k, v in (aliases or {}).items()})

    def convert(text: str) -> str:
        try:
            return table[text.strip().lower().replace("-", "_")]
        except KeyError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not one of {', '.join(choices)} (any case)"
            ) from None

    return convert


def _strategy_type():
    from fitc.sweep.grid import STRATEGIES

    return _canonical(("auto", *strategies()), STRATEGIES)


# ---------------------------------------------------------------------------------------------
# Argument groups, shared by the subcommands that need them

RUN_DIR = "run directory (default: runs/<model>_<budget>)"
SWEEP_DIR = "sweep directory: a run directory per point in points/, results.csv, the ledger"


def _general(
    p: argparse.ArgumentParser,
    *,
    out: str | None = None,
    config: bool = False,
    seed: bool = False,
    json_out: bool = False,
    force: bool = False,
) -> None:
    """The general options; each subcommand takes only those that mean something for it
    (``out``: the help of ``--out``, for the commands that make a directory)."""
    g = p.add_argument_group("general")
    if config:
        g.add_argument("--config", metavar="FILE", help="YAML file of options (flags win over it)")
    if out:
        g.add_argument("--out", metavar="DIR", help=out)
    if seed:
        g.add_argument("--seed", type=int, help="random seed (default 0)")
    if force:
        g.add_argument(
            "--force",
            action="store_true",
            help="if --out holds another run (other model, data or seed), delete all its files "
            "and start over (default: refuse)",
        )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        help="hide progress bars",
    )
    if json_out:
        g.add_argument(
            "--json", action="store_true", help="print the summary as JSON (for scripts)"
        )
    g.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    g.add_argument("-q", "--quiet", action="store_true", help="log warnings only")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model",
        help="your network: path/to/file.py:factory or package.module:factory (a function or "
        "class returning an nn.Module); or mlp (sized by the data, see --hidden); or from the "
        "zoo: digits-mlp (default), digits-cnn, jet-mlp, resnet8",
    )
    g.add_argument(
        "--model-arg",
        dest="model_args",
        action="append",
        metavar="KEY=VALUE",
        help="keyword argument for the model factory (repeat; VALUE is read as YAML: 32, 0.1, "
        "[8, 16], true, text)",
    )
    g.add_argument(
        "--weights",
        metavar="FILE",
        help="trained float weights of your network (torch.save(model.state_dict(), FILE), or a "
        "checkpoint dict with state_dict/model_state_dict): skips float training",
    )
    g.add_argument("--hidden", help="hidden widths of --model mlp (default 64,32,32)")
    g.add_argument(
        "--data",
        help="built-in dataset (digits, wine, breast-cancer) or your .npz file "
        "with X, y (optional X_test, y_test)",
    )
    g.add_argument("--train-epochs", type=int, help="float training epochs")
    g.add_argument("--train-lr", type=float, help="float training learning rate")
    g.add_argument("--batch-size", type=int, help="mini-batch size for training and fine-tuning")


def _search_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search (FITCompress)")
    g.add_argument(
        "--budget",
        action="append",
        metavar="KIND=VALUE",
        help="size=1/16 (default: weight bits relative to the float model), bops=0.02, and "
        "hardware budgets lut=20000, ff=…, dsp=0, bram=… (18 Kb blocks), latency=… (cycles); "
        "repeat for several",
    )
    device = g.add_argument(
        "--device",
        help="device preset: %(presets)s; or an alias (pynq-z2, zcu102, u250, …) or a full part "
        "number; with --fraction",
    )
    # Filled in only when the help is shown: the device table's package loads hls4ml (seconds).
    device.presets = _Later(lambda: ", ".join(device_names()))
    g.add_argument(
        "--fraction",
        type=float,
        help="fraction of every resource of --device to fit in (LUT, FF, DSP, BRAM), e.g. 0.25",
    )
    g.add_argument("--weight-bits", help="weight bit-width ladder, e.g. 8,6,4,3,2")
    g.add_argument(
        "--act-bits",
        help="activation bit-width ladder, the input's included (default: 8…2 searched under "
        "hardware budgets, 8 under size/BOPs budgets)",
    )
    g.add_argument(
        "--global-prune",
        dest="per_layer_prune",
        action="store_const",
        const=False,
        help="one global pruning ladder for every layer (default: each layer its own, ranked by "
        "Fisher importance)",
    )
    methods = config_choices("fisher_method")
    g.add_argument(
        "--fisher-method",
        type=_canonical(methods),
        choices=methods,
        help="exact per-sample empirical Fisher (default) or the mini-batch approximation",
    )
    algorithms = config_choices("algorithm")
    g.add_argument(
        "--algorithm",
        type=_canonical(algorithms),
        choices=algorithms,
        help="path search (default greedy)",
    )
    g.add_argument("--lam", type=float, help="weight λ of the heuristic in f = g + λ·h")
    g.add_argument(
        "--refresh-every", type=int, help="re-estimate the Fisher every k expansions (0: never)"
    )


def _finetune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fine-tuning")
    g.add_argument(
        "--finetune-epochs",
        type=int,
        help="quantization-aware fine-tuning epochs (default: the model's own, 30 for the digits "
        "models, twice that when activation bits are searched, as under hardware budgets)",
    )
    g.add_argument("--finetune-lr", type=float, help="fine-tuning learning rate")
    g.add_argument(
        "--regrow",
        type=float,
        metavar="FRACTION",
        help="prune and regrow while fine-tuning a sparse plan (pruned layers keeping ≤ 20 %% "
        "of their weights): the fraction of each layer's non-zero weights moved to better "
        "places at first (same count per layer, so the same size); 0 keeps the searched "
        "support (default 0.3)",
    )
    g.add_argument(
        "--distill",
        type=float,
        metavar="WEIGHT",
        help="knowledge distillation from the float model while fine-tuning a plan that is not "
        "sparse (sparse ones regrow instead): the weight of the soft-target loss (temperature 4) "
        "against cross-entropy, in [0, 1] (default 0.15; 0: cross-entropy only)",
    )
    for key in ("optimizer", "schedule"):
        names = config_choices(key)
        g.add_argument(
            f"--{key}", type=_canonical(names), choices=names, help=f"default {names[0]}"
        )


def _hw_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hardware (names in any case)")
    g.add_argument(
        "--backend",
        type=_canonical(BACKENDS),
        choices=BACKENDS,
        help=f"firmware: an hls4ml project for Vitis or Vivado HLS (default {BACKENDS[0]}), or "
        "rtl: Verilog from da4ml's adder graphs, simulated with Verilator",
    )
    g.add_argument("--part", help="FPGA part (default: the --device's, else xc7z020clg400-1)")
    g.add_argument(
        "--clock-ns", "--clock-period", dest="clock_ns", type=float,
        help="clock period in ns (default 5)",
    )  # fmt: skip
    g.add_argument(
        "--latency-cutoff",
        type=float,
        help="rtl: pipeline the Verilog with at most this much of da4ml's estimated delay per "
        "stage (default -1: combinational)",
    )
    g.add_argument(
        "--io-type",
        type=_canonical(IO_TYPES),
        choices=IO_TYPES,
        help="default auto: io_stream for a CNN whose largest feature map holds over 1024 "
        "values (as hls4ml users stream CNNs), else io_parallel",
    )
    names = ("auto", *strategies())
    g.add_argument(
        "--strategy",
        type=_strategy_type(),
        choices=names,
        help="default auto: distributed_arithmetic under a hardware budget (LUT, FF, DSP, BRAM, "
        "latency or --device) at io_parallel and reuse factor 1, else Latency "
        "(latency, resource, da are accepted too)",
    )
    g.add_argument("--reuse-factor", type=int, help="default 1")


# ---------------------------------------------------------------------------------------------
# Subcommands


def cmd_train(args: argparse.Namespace) -> int:
    from fitc.pipeline import run_pipeline

    run = run_pipeline(_config(args), until="train", force=args.force)
    m = run.dir.metrics
    print(
        f"float model {run.cfg.model}: test accuracy {m['float_test_accuracy']:.4f}  →  {run.dir.path}"
    )
    print(f"next: {_continue_command(run.dir.path)}   # search, fine-tune, export, lower, estimate")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fitc.pipeline import run_pipeline

    run = run_pipeline(_config(args), force=args.force)
    _print_summary(run, args)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from fitc.pipeline import run_pipeline

    run = run_pipeline(_config(args), until="search", force=args.force)
    _print_summary(run, args)
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from fitc.pipeline import sensitivity

    rows = sensitivity(_config(args, Path(args.dir)))
    _print_table(rows)
    return 0


def cmd_stage(stage: str):
    def cmd(args: argparse.Namespace) -> int:
        from fitc.pipeline import run_pipeline

        run_dir = Path(args.dir)
        _need_model(run_dir)
        run = run_pipeline(_config(args, run_dir), until=stage)
        _print_summary(run, args)
        return 0

    return cmd


def cmd_lower(args: argparse.Namespace) -> int:
    from fitc.followup import lower_existing

    run_dir = Path(args.dir)
    _need_model(run_dir)
    _need(run_dir, "export.json", "exported graph", f"fitc export {run_dir}")
    run = lower_existing(_config(args, run_dir), replan=args.replan)
    _print_summary(run, args)
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from fitc.followup import estimate_existing

    run_dir = Path(args.dir)
    _need_model(run_dir)
    if args.resource_model == "report":
        _need_vendor_reports(run_dir)
    output = Path(args.output) if args.output else None
    run, report = estimate_existing(
        _config(args, run_dir), args.resource_model, backend=args.firmware, output=output
    )
    if output is not None:
        t = report.totals()
        print(
            f"{report.source}: LUT {t['lut']:,.0f}, FF {t['ff']:,.0f}, DSP {t['dsp']:,.0f}, "
            f"BRAM 18K {t['bram']:,.0f} → {output}"
        )
        return 0
    _print_summary(run, args)
    return 0


def _need_vendor_reports(run_dir: Path) -> None:
    _need(run_dir, "hls4ml.json", "hls4ml project", f"fitc lower {run_dir}")
    if not any((run_dir / "hls4ml").rglob("*_csynth.xml")):
        raise FitcError(
            f"no vendor synthesis report in {run_dir / 'hls4ml'} yet: run `fitc synth {run_dir}` "
            f"(needs Vitis HLS or Vivado HLS on PATH), then `fitc estimate {run_dir} --model report`"
        )


def cmd_synth(args: argparse.Namespace) -> int:
    import shutil

    from fitc.backends.synth import synthesize
    from fitc.pipeline import open_run
    from fitc.rundir import building_dir, write_json

    run_dir = Path(args.dir)
    tool = args.tool or ("yosys" if (run_dir / "rtl.json").is_file() else "hls")
    if tool == "yosys":
        return _synth_yosys(args, run_dir)
    _need(run_dir, "hls4ml.json", "hls4ml project", f"fitc lower {run_dir}")
    run = open_run(_config(args, run_dir))
    # One writer; the tools write their reports into a copy of the project, renamed into place
    # when they succeed: a killed or failed synthesis leaves the project as it was.
    with run.dir.writing():
        with building_dir(run.dir / "hls4ml") as work:
            shutil.copytree(run.dir / "hls4ml", work, symlinks=True, dirs_exist_ok=True)
            report = synthesize(work, run.hardware)
        write_json(run.dir / "resources_synth.json", report.to_dict())
    print(
        f"{report.source}: LUT {report.lut:,.0f}, FF {report.ff:,.0f}, DSP {report.dsp:,.0f}, "
        f"BRAM 18K {report.bram_18k:,.0f}, latency {report.latency_cycles:,.0f} cycles "
        f"({report.latency_ns:g} ns) → {run.dir / 'resources_synth.json'}"
    )
    print(
        f"next: fitc estimate {run_dir} --model report   # the vendor numbers as the run's resources"
    )
    print(f"      fitc report {run_dir}                    # report.md and plots/")
    return 0


def _synth_yosys(args: argparse.Namespace, run_dir: Path) -> int:
    from fitc.backends.yosys import load_yosys_report
    from fitc.followup import synth_existing

    _need_model(run_dir)
    _need(run_dir, "rtl.json", "RTL", f"fitc lower {run_dir} --backend rtl")
    run = synth_existing(_config(args, run_dir))
    rep = load_yosys_report(run.dir / "rtl")
    carry = ", ".join(f"{v:,} {k}" for k, v in rep.carry.items()) or "no carry cells"
    print(
        f"Yosys ({rep.family}, before place and route): LUT {rep.lut:,}, FF {rep.ff:,}, {carry}, "
        f"DSP {rep.dsp:,}, BRAM 18K {rep.bram_18k:,} in {rep.wall_time_s:.0f} s "
        f"→ {run.dir / 'rtl' / 'yosys_stat.json'}"
    )
    print(
        f"next: fitc estimate {run_dir} --model yosys   # the netlist's counts as the run's resources"
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fitc.sweep import format_summary, sweep_command

    result = sweep_command(args)
    print(format_summary(result))
    return 1 if result is not None and getattr(result, "counts", {}).get("FAIL") else 0


def cmd_report(args: argparse.Namespace) -> int:
    from fitc.report import report_command

    print(f"report: {report_command(args)}")
    return 0


# ---------------------------------------------------------------------------------------------
# The parser. Every example below is run (or at least parsed) by tests/fitc/test_cli.py.

EXAMPLES = {
    "train": ["fitc train --model digits-mlp --out runs/mlp"],
    "search": ["fitc search --model digits-mlp --budget size=1/32 --out runs/mlp"],
    "sensitivity": ["fitc sensitivity runs/mlp"],
    "run": [
        "fitc run --model digits-mlp --budget size=1/32 --out runs/mlp",
        "fitc run --model digits-mlp --device xc7z020 --fraction 0.25 --out runs/pynq25",
        "fitc run --model digits-cnn --budget lut=20000 --budget dsp=0 --strategy latency "
        "--out runs/cnn",
    ],
    "export": ["fitc export runs/mlp"],
    "verify": [
        "fitc verify runs/mlp",
        "fitc verify --onnx runs/mlp/model.qonnx.onnx --inputs X.npy --labels y.npy",
    ],
    "lower": [
        "fitc lower runs/mlp --io-type io_stream --strategy resource --reuse-factor 4",
        "fitc lower runs/mlp --backend rtl --latency-cutoff 5",
    ],
    "estimate": [
        "fitc estimate runs/mlp --model analytical",
        "fitc estimate runs/mlp --model yosys",
    ],
    "synth": ["fitc synth runs/mlp", "fitc synth runs/mlp --tool yosys"],
    "report": ["fitc report runs/mlp"],
    "sweep": [
        "fitc sweep --model digits-mlp --budget size=1/16,1/32 --strategy latency,da "
        "--workers 2 --out sweeps/digits",
        "fitc sweep --out sweeps/digits",
    ],
}


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps the description; keeps the examples' lines as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _sub(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    examples = "\n".join(f"  {e}" for e in EXAMPLES.get(name, []))
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"examples:\n{examples}" if examples else None,
        formatter_class=_HelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    stages = " → ".join(("train", "search", "fine-tune", "export", "verify", "lower", "estimate"))
    parser = argparse.ArgumentParser(
        prog="fitc",
        description="Compress a PyTorch model for an FPGA (FITCompress: Fisher-guided pruning + "
        "mixed precision), export it to QONNX, lower it through hls4ml, verified bit for bit.",
        epilog="`fitc COMMAND --help` shows each command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _sub(sub, "train", "train (or reuse) the float model")
    _model_args(p), _general(p, out=RUN_DIR, config=True, seed=True, force=True)
    p.set_defaults(func=cmd_train)

    p = _sub(sub, "search", "train if needed, estimate the Fisher and search a plan")
    _model_args(p), _search_args(p)
    _general(p, out=RUN_DIR, config=True, seed=True, json_out=RUN_DIR, force=True)
    p.set_defaults(func=cmd_search)

    p = _sub(sub, "sensitivity", "per-layer FIT sensitivity table of a run's float model")
    p.add_argument("dir", help="run directory")
    _general(p)
    p.set_defaults(func=cmd_sensitivity)

    p = _sub(sub, "run", f"the whole pipeline: {stages}")
    _model_args(p), _search_args(p), _finetune_args(p), _hw_args(p)
    _general(p, out=RUN_DIR, config=True, seed=True, json_out=RUN_DIR, force=True)
    until = config_choices("until")
    p.add_argument(
        "--until",
        type=_canonical(until),
        choices=until,
        help=f"stop after this stage (default {until[-1]}: the whole pipeline)",
    )
    loop_models = tuple(m for m in config_choices("resource_model") if m != "report")
    p.add_argument(
        "--resource-model",
        type=_canonical(loop_models),
        choices=loop_models,
        help="accurate resource model for the estimate and the closed loop (default da4ml)",
    )
    p.add_argument(
        "--max-loop-iterations",
        type=int,
        help="closed loop (hardware budgets): iterations at most (default 4)",
    )
    p.set_defaults(func=cmd_run)

    p = _sub(sub, "export", "export a run's fine-tuned model to QONNX (+ QCDQ twin) and verify it")
    p.add_argument("dir", help="run directory")
    _general(p, json_out=True)
    p.set_defaults(func=cmd_stage("export"))

    p = _sub(
        sub,
        "verify",
        "check Brevitas ≡ qonnx ≡ onnxruntime (≡ hls4ml emulation) bit for bit",
        "Run a run directory's test split through its Brevitas model, QONNX graph, QCDQ twin "
        "and compiled hls4ml emulation again and compare them bit for bit (nothing is written); "
        "or check a graph made elsewhere (--onnx).",
    )
    p.add_argument("dir", nargs="?", help="run directory")
    g = p.add_argument_group("a graph made elsewhere")
    g.add_argument("--onnx", metavar="FILE", help="QONNX or QCDQ file to check instead of a run")
    g.add_argument("--inputs", metavar="X.npy", help="inputs, shaped (N, *input shape)")
    g.add_argument("--reference", metavar="R.npy", help="expected outputs to compare against")
    g.add_argument("--labels", metavar="Y.npy", help="labels (N,): prints each engine's accuracy")
    _general(p, json_out=True)
    p.set_defaults(func=cmd_verify)

    p = _sub(
        sub,
        "lower",
        "lower a run's plan to firmware (hls4ml project or RTL) and check its emulation",
        "Lower the plan the run holds through hls4ml (C++ emulation) or to Verilog (--backend "
        "rtl, simulated with Verilator), checked bit for bit against the QONNX graph. Other "
        "hardware options lower the same plan (it is said when the plan no longer fits the "
        "budget under them) and are not recorded as the run's config; --replan searches and "
        "fine-tunes a plan for them instead.",
    )
    p.add_argument("dir", help="run directory")
    _hw_args(p)
    p.add_argument(
        "--replan",
        action="store_true",
        help="search and fine-tune again for these hardware options (recorded as the run's)",
    )
    _general(p, config=True, json_out=True)
    p.set_defaults(func=cmd_lower)

    models = config_choices("resource_model")
    p = _sub(
        sub,
        "estimate",
        "estimate a run's FPGA resources (LUT, FF, DSP, BRAM, latency)",
        "Cost the firmware the run holds (never re-runs a stage, never changes the run's "
        "config); the report goes to resources.json, labelled with its model, only on success.",
    )
    p.add_argument("dir", help="run directory")
    p.add_argument(
        "--model",
        dest="resource_model",
        type=_canonical(models),
        choices=models,
        help="resource model: analytical (fast), da4ml (adder graphs, default), report (the "
        "vendor reports `fitc synth DIR` writes), yosys (the netlist of `fitc synth DIR --tool "
        "yosys`: open-source synthesis before place and route)",
    )
    p.add_argument(
        "--firmware",
        choices=("hls4ml", "rtl"),
        help="which lowered firmware to cost (default: the one lowered last)",
    )
    p.add_argument(
        "--output", metavar="FILE", help="write the report to FILE only (run directory untouched)"
    )
    _general(p, json_out=True)
    p.set_defaults(func=cmd_estimate)

    from fitc.report import add_report_arguments
    from fitc.sweep import add_sweep_arguments

    p = _sub(
        sub,
        "sweep",
        "a grid of runs in a crash-safe Optuna ledger; Pareto fronts of accuracy against FPGA "
        "resources (`fitc sweep worker` joins from another machine)",
    )
    add_sweep_arguments(p)
    _finetune_args(p)
    _general(p, out=SWEEP_DIR, config=True, seed=True)
    p.set_defaults(func=cmd_sweep)

    p = _sub(sub, "report", "write report.md and plots/ for a run or a sweep directory")
    add_report_arguments(p)
    _general(p)
    p.set_defaults(func=cmd_report)

    p = _sub(
        sub,
        "synth",
        "synthesize a run's firmware: the hls4ml project with Vitis/Vivado HLS (vendor tools), "
        "or the RTL with Yosys (open source, installed with fitc)",
    )
    p.add_argument("dir", help="run directory")
    p.add_argument(
        "--tool",
        choices=("hls", "yosys"),
        help="hls: Vitis/Vivado HLS on the hls4ml project; yosys: synth_xilinx on the RTL for "
        "the part's family (default: yosys if the run has RTL, else hls)",
    )
    _general(p)
    p.set_defaults(func=cmd_synth)
    return parser


# Third-party warnings that say nothing a fitc user can act on.
_QUIET_WARNINGS = (
    # brevitas.graph.equalize, on import: an optional CUDA kernel package, irrelevant on a CPU
    r"fast_hadamard_transform package not found",
)


def _setup_logging(args: argparse.Namespace) -> None:
    """fitc's own INFO lines (WARNING with -q); other libraries' warnings only; all with
    --debug."""
    import warnings

    debug, quiet = getattr(args, "debug", False), getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("fitc").setLevel(
        logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    )
    if not debug:
        for message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _setup_logging(args)
    try:
        return args.func(args)
    except FitcError as e:
        if args.debug:
            raise
        msg = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
        print(f"fitc {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or directory the user named: missing, not writable, …
        if args.debug:
            raise
        print(f"fitc {args.command}: error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fitc: interrupted; finished stages are kept in the run directory", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
