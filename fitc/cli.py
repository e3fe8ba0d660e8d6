"""The ``fitc`` command line.

Every subcommand takes ``--config FILE`` (YAML) and flags; flags win over the file, the file over the
defaults. Errors a user can act on (:class:`FitcError`) print one line and exit with code 2;
``--debug`` shows the traceback. This module is the only place that prints.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fitc.errors import FitcError

log = logging.getLogger("fitc")


# ---------------------------------------------------------------------------------------------
# Argument groups, shared by the subcommands that need them


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("general")
    g.add_argument("--config", metavar="FILE", help="YAML file of options (flags win over it)")
    g.add_argument("--out", metavar="DIR", help="run directory (default: runs/<model>_<budget>)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        help="hide progress bars",
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
        help="size=1/16 (default), bops=0.02, lut=20000, dsp=0 …; repeat for several",
    )
    g.add_argument("--device", help="device preset (xc7z020, xczu9eg, xcu250, xcvu9p, xcku115)")
    g.add_argument("--fraction", type=float, help="fraction of every device resource to fit in")
    g.add_argument("--weight-bits", help="weight bit-width ladder, e.g. 8,6,4,3,2")
    g.add_argument("--act-bits", help="activation bit-width ladder (default 8: not searched)")
    g.add_argument(
        "--per-layer-prune",
        action="store_const",
        const=True,
        help="search per-layer pruning levels instead of one global level",
    )
    g.add_argument(
        "--fisher-method",
        choices=("per_sample", "batch"),
        help="exact per-sample empirical Fisher (default) or the mini-batch approximation",
    )
    g.add_argument("--algorithm", choices=("greedy", "astar"), help="path search (default greedy)")
    g.add_argument("--lam", type=float, help="weight λ of the heuristic in f = g + λ·h")
    g.add_argument(
        "--refresh-every", type=int, help="re-estimate the Fisher every k expansions (0: never)"
    )


def _finetune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--finetune-epochs", type=int, help="quantization-aware fine-tuning epochs")
    g.add_argument("--finetune-lr", type=float, help="fine-tuning learning rate")
    g.add_argument("--optimizer", choices=("adam", "sgd"))
    g.add_argument("--schedule", choices=("cosine", "none"))


def _hw_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hardware (hls4ml)")
    g.add_argument("--backend", choices=("Vitis", "Vivado"), help="hls4ml backend (default Vitis)")
    g.add_argument("--part", help="FPGA part (default xc7z020clg400-1)")
    g.add_argument("--clock-ns", type=float, help="clock period in ns (default 5)")
    g.add_argument("--io-type", choices=("io_parallel", "io_stream"))
    g.add_argument("--strategy", choices=("Latency", "Resource", "distributed_arithmetic"))
    g.add_argument("--reuse-factor", type=int)


_NOT_CONFIG = {
    "command",
    "config",
    "debug",
    "quiet",
    "dir",
    "func",
    "onnx",
    "inputs",
    "reference",
    "labels",
    "resource_model_cli",
}


def _config(args: argparse.Namespace, run_dir: Path | None = None):
    """Defaults < the run directory's recorded config < --config FILE < flags."""
    from fitc.config import load_config
    from fitc.rundir import RUN_JSON, read_json

    flags = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG and v is not None}
    if "model_args" in flags:
        flags["model_args"] = _model_args_flags(flags["model_args"])
    if "budget" in flags:
        # Within one run every budget applies at once: "lut=20000,dsp=0" = "lut=20000+dsp=0".
        flags["budget"] = [b for item in flags["budget"] for b in re.split(r"[,+]", item) if b]
    if run_dir is not None:
        if not (run_dir / RUN_JSON).is_file():
            raise FitcError(
                f"{run_dir} is not a fitc run directory (no {RUN_JSON}); run `fitc run --out {run_dir}` first"
            )
        recorded = read_json(run_dir / RUN_JSON).get("config", {})
        return load_config(args.config, base=recorded, **{**flags, "out": str(run_dir)})
    return load_config(args.config, **flags)


def _model_args_flags(items: list[str]) -> dict[str, Any]:
    """``--model-arg key=value`` flags as keyword arguments (values read with yaml.safe_load)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise FitcError(f"--model-arg {item!r}: expected KEY=VALUE with KEY a Python name")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


# ---------------------------------------------------------------------------------------------
# Subcommands


def cmd_train(args: argparse.Namespace) -> int:
    from fitc.pipeline import run_pipeline

    run = run_pipeline(_config(args), until="train")
    m = run.dir.metrics
    print(
        f"float model {run.cfg.model}: test accuracy {m['float_test_accuracy']:.4f}  →  {run.dir.path}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fitc.pipeline import run_pipeline

    run = run_pipeline(_config(args))
    _print_summary(run)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from fitc.pipeline import run_pipeline

    run = run_pipeline(_config(args), until="search")
    _print_summary(run)
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
        if not (run_dir / "model.pt").is_file() and (run_dir / "run.json").is_file():
            raise FitcError(
                f"{run_dir} has no fine-tuned model yet (model.pt); run `fitc run --out {run_dir}` "
                f"(or `fitc run --until finetune`) first"
            )
        run = run_pipeline(_config(args, run_dir), until=stage)
        _print_summary(run)
        return 0

    return cmd


def cmd_synth(args: argparse.Namespace) -> int:
    from fitc.backends.synth import synthesize
    from fitc.pipeline import open_run

    run = open_run(_config(args, Path(args.dir)))
    report = synthesize(run.dir / "hls4ml", run.hardware)
    from fitc.rundir import write_json

    write_json(run.dir / "resources_synth.json", report.to_dict())
    print(
        f"{report.source}: LUT {report.lut:.0f}, FF {report.ff:.0f}, DSP {report.dsp:.0f}, "
        f"BRAM_18K {report.bram_18k:.0f}, latency {report.latency_cycles:.0f} cycles "
        f"({report.latency_ns:.1f} ns) → {run.dir / 'resources_synth.json'}"
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


def cmd_verify(args: argparse.Namespace) -> int:
    if args.onnx is not None and args.dir is not None:
        raise FitcError("give either a run directory or --onnx FILE, not both")
    if args.onnx is None:
        if args.dir is None:
            raise FitcError(
                "give a run directory (fitc verify DIR) or a graph (--onnx FILE --inputs X.npy)"
            )
        return cmd_stage("verify")(args)
    from fitc.export import verify_onnx_file

    if args.inputs is None:
        raise FitcError("--onnx needs --inputs X.npy (the inputs to run the graph on)")
    X = _load_npy(args.inputs, "--inputs")
    ref = _load_npy(args.reference, "--reference") if args.reference else None
    y = _load_npy(args.labels, "--labels") if args.labels else None
    report = verify_onnx_file(args.onnx, X, reference=ref, y=y)
    print(f"{report.path} ({report.graph_format}), {report.n_samples} samples")
    _print_table(
        [
            {
                "hop": f"{h.a} → {h.b}",
                "max |diff|": h.max_abs_diff,
                "identical rows": f"{h.identical_rows:.1%}",
                "argmax agreement": f"{h.argmax_agreement:.1%}",
            }
            for h in report.hops
        ]
    )
    for why in report.skipped:
        print(f"skipped: {why}")
    if not report.exact:
        raise FitcError("the graph's outputs are not bit-identical across the hops above")
    return 0


def _load_npy(path: str, flag: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FitcError(f"{flag} {path}: file not found") from None
    except (ValueError, OSError) as e:
        raise FitcError(f"{flag} {path}: not a .npy array file ({e})") from None


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    width = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(width[c]) for c in cols))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_summary(run) -> None:
    m = run.dir.metrics
    if (run.dir / "plan.json").is_file():
        _print_table(summary_rows(run))
    keys = [
        ("float_test_accuracy", "float accuracy"),
        ("built_test_accuracy", "accuracy after build"),
        ("finetuned_test_accuracy", "accuracy after fine-tuning"),
        ("budget", "budget"),
        ("planned_cost", "planned cost"),
        ("achieved_size", "achieved size"),
        ("achieved_bops", "achieved BOPs"),
        ("hls_compile_time_s", "hls4ml compile time [s]"),
    ]
    print()
    for key, label in keys:
        if key in m:
            print(f"{label:>28}: {_fmt(m[key])}")
    if "equivalence" in m:
        hops = m["equivalence"]["hops"]
        ok = all(h["max_abs_diff"] == 0 and h["identical_rows"] == 1 for h in hops)
        print(f"{'Brevitas ≡ qonnx ≡ ORT':>28}: {'bit-exact' if ok else 'DIFFERENT'}")
    if "emulation" in m:
        e = m["emulation"]
        ok = e["max_abs_diff"] == 0 and e["identical_rows"] == 1
        print(f"{'hls4ml emulation ≡ qonnx':>28}: {'bit-exact' if ok else 'DIFFERENT'}")
    if "resources" in m:
        r = m["resources"]
        print(
            f"{'resources (' + r['source'] + ')':>28}: LUT {r['lut']:.0f}, FF {r['ff']:.0f}, "
            f"DSP {r['dsp']:.0f}, BRAM_18K {r['bram_18k']:.0f}, latency {r['latency_cycles']:.0f} cycles"
        )
    if "loop" in m:
        lp = m["loop"]
        print(
            f"{'closed loop':>28}: {lp['iterations']} iteration(s), {lp['stop_reason']}, "
            f"{'fits' if lp['fits'] else 'DOES NOT FIT'} {lp['targets']}"
        )
    print(f"{'run directory':>28}: {run.dir.path}")


def summary_rows(run) -> list[dict[str, Any]]:
    """Per-layer rows for the CLI's summary table."""
    return [
        {
            "layer": lp.name,
            "w_bits": lp.weight_bits,
            "a_bits": lp.act_bits,
            "weights": lp.n_weights,
            "nonzero": lp.n_nonzero,
            "sparsity": f"{lp.sparsity:.1%}",
        }
        for lp in run.plan.layers
    ]


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitc",
        description="Compress a PyTorch model for an FPGA (FITCompress: Fisher-guided pruning + "
        "mixed precision), export it to QONNX, lower it through hls4ml, verified bit for bit.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train (or reuse) the float model")
    _model_args(p), _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("search", help="train if needed, estimate the Fisher and search a plan")
    _model_args(p), _search_args(p), _common(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("sensitivity", help="per-layer FIT sensitivity table of a run's float model")
    p.add_argument("dir", help="run directory")
    _common(p)
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser(
        "run", help="the whole pipeline: train → search → fine-tune → export → verify → lower"
    )
    _model_args(p), _search_args(p), _finetune_args(p), _hw_args(p), _common(p)
    p.add_argument(
        "--until",
        choices=("train", "search", "finetune", "export", "lower", "estimate"),
        help="stop after this stage (default estimate: the whole pipeline)",
    )
    p.add_argument(
        "--resource-model",
        choices=("analytical", "da4ml"),
        help="accurate resource model for the estimate and the loop (default da4ml)",
    )
    p.add_argument(
        "--max-loop-iterations",
        type=int,
        help="closed loop (hardware budgets): iterations at most (default 4)",
    )
    p.set_defaults(func=cmd_run)

    for name, stage, helptext in (
        ("export", "export", "export a run's fine-tuned model to QONNX (+ QCDQ twin)"),
        ("verify", "verify", "check Brevitas ≡ qonnx ≡ onnxruntime bit for bit on the test set"),
        ("lower", "lower", "lower a run's QONNX graph through hls4ml and check its C++ emulation"),
        ("estimate", "estimate", "estimate a run's FPGA resources (LUT, FF, DSP, BRAM, latency)"),
    ):
        p = sub.add_parser(name, help=helptext)
        if name == "verify":
            p.add_argument("dir", nargs="?", help="run directory")
            g = p.add_argument_group("a graph made elsewhere")
            g.add_argument(
                "--onnx", metavar="FILE", help="QONNX or QCDQ file to check instead of a run"
            )
            g.add_argument("--inputs", metavar="X.npy", help="inputs, shaped (N, *input shape)")
            g.add_argument(
                "--reference", metavar="R.npy", help="expected outputs to compare against"
            )
            g.add_argument("--labels", metavar="Y.npy", help="labels, to report accuracies")
        else:
            p.add_argument("dir", help="run directory")
        if name == "lower":
            _hw_args(p)
        if name == "estimate":
            p.add_argument(
                "--model",
                dest="resource_model",
                choices=("analytical", "da4ml", "report"),
                help="resource model: analytical (fast), da4ml (adder graphs, default), "
                "report (vendor synthesis reports in DIR/hls4ml)",
            )
        _common(p)
        p.set_defaults(func=cmd_verify if name == "verify" else cmd_stage(stage))
    from fitc.report import add_report_arguments
    from fitc.sweep import add_sweep_arguments

    p = sub.add_parser(
        "sweep",
        help="a grid of runs in a crash-safe Optuna ledger; Pareto fronts of "
        "accuracy against FPGA resources (`fitc sweep worker` joins from another machine)",
    )
    add_sweep_arguments(p)
    _finetune_args(p)
    _common(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="write report.md and plots/ for a run or a sweep directory")
    add_report_arguments(p)
    _common(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "synth", help="synthesize a run's hls4ml project with Vitis/Vivado HLS (if installed)"
    )
    p.add_argument("dir", help="run directory")
    _common(p)
    p.set_defaults(func=cmd_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        for noisy in ("hls4ml", "qonnx", "brevitas", "torch", "onnx", "onnxruntime", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except FitcError as e:
        if args.debug:
            raise
        print(f"fitc {args.command}: error: {e}", file=sys.stderr)
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
