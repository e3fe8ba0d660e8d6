"""The command line's shared plumbing: options from flags and a run's record, what a run
directory must hold for a command, and what the CLI prints (tables, JSON, the run summary, the
``verify`` command's hops). Only :mod:`fitc.cli` and this module print.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from fitc.errors import FitcError

_NOT_CONFIG = {
    "command",
    "config",
    "debug",
    "quiet",
    "json",
    "force",
    "dir",
    "func",
    "onnx",
    "inputs",
    "reference",
    "labels",
    "resource_model_cli",
    "replan",
    "output",
    "firmware",
    "tool",
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
    config_file = getattr(args, "config", None)
    if run_dir is not None:
        if not (run_dir / RUN_JSON).is_file():
            raise FitcError(
                f"{run_dir} is not a fitc run directory (no {RUN_JSON}); run "
                f"`fitc run --out {run_dir}` first"
            )
        recorded = read_json(run_dir / RUN_JSON).get("config", {})
        return load_config(config_file, base=recorded, **{**flags, "out": str(run_dir)})
    return load_config(config_file, **flags)


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


def _need(run_dir: Path, artifact: str, what: str, command: str) -> None:
    """Refuse a run-directory command whose input artifact is missing, naming what makes it."""
    from fitc.rundir import RUN_JSON

    if (run_dir / RUN_JSON).is_file() and not (run_dir / artifact).exists():
        raise FitcError(f"{run_dir} has no {what} yet ({artifact}); run `{command}` first")


def _continue_command(run_dir: Path) -> str:
    """``fitc run`` with the run's recorded options: continues it (finished stages are reused)."""
    from fitc.rundir import RUN_JSON, read_json
    from fitc.summary import rerun_command

    return rerun_command(read_json(run_dir / RUN_JSON).get("config", {}), run_dir)


def _need_model(run_dir: Path) -> None:
    from fitc.rundir import RUN_JSON

    if (run_dir / RUN_JSON).is_file() and not (run_dir / "model.pt").exists():
        _need(run_dir, "model.pt", "fine-tuned model", _continue_command(run_dir))


def cmd_verify(args: argparse.Namespace) -> int:
    if args.onnx is not None and args.dir is not None:
        raise FitcError("give either a run directory or --onnx FILE, not both")
    if args.onnx is None:
        if args.dir is None:
            raise FitcError(
                "give a run directory (fitc verify DIR) or a graph (--onnx FILE --inputs X.npy)"
            )
        given = [f"--{k}" for k in ("inputs", "reference", "labels") if getattr(args, k)]
        if given:
            raise FitcError(
                f"{', '.join(given)} go with --onnx FILE; a run directory is checked on its own "
                "test split"
            )
        return _verify_run(args)
    from fitc.export import verify_onnx_file

    if args.inputs is None:
        raise FitcError("--onnx needs --inputs X.npy (the inputs to run the graph on)")
    X = _load_npy(args.inputs, "--inputs")
    ref = _load_npy(args.reference, "--reference") if args.reference else None
    y = _load_npy(args.labels, "--labels") if args.labels else None
    report = verify_onnx_file(args.onnx, X, reference=ref, y=y)
    if args.json:
        print(_dumps({**report.to_dict(), "exact": report.exact}))
    else:
        print(f"{report.path} ({report.graph_format}), {report.n_samples} samples")
        _print_hops(report.hops)
        for why in report.skipped:
            print(f"skipped: {why}")
    if not report.exact:
        raise FitcError("the graph's outputs are not bit-identical across the hops above")
    return 0


def _verify_run(args: argparse.Namespace) -> int:
    """Run the test split through the run's Brevitas model, its QONNX graph, its QCDQ twin and
    (when compiled) its hls4ml emulation again, and compare — reading the run, writing nothing."""
    from fitc.errors import EquivalenceError
    from fitc.export import check_equivalence, verify_chain
    from fitc.pipeline import open_run

    run_dir = Path(args.dir)
    _need_model(run_dir)
    _need(run_dir, "export.json", "exported graph", f"fitc export {run_dir}")
    run = open_run(_config(args, run_dir))
    X, y = run.data.X_test, run.data.y_test
    report = verify_chain(run.qmodel, run.exported, X, y, plan=run.plan, masks=run.masks)
    hops, skipped = list(report.hops), []
    if run.exported.qcdq_path is None:
        skipped.append(f"onnxruntime: no QCDQ twin ({run.exported.qcdq_skipped_reason})")
    emulation = _emulation_hop(run_dir, run.exported.qonnx_path, X, y)
    if isinstance(emulation, str):
        skipped.append(emulation)
    else:
        hops.append(emulation)
    exact = all(h.exact for h in hops) and all(c.get("ok") for c in report.layer_checks)
    if args.json:
        print(
            _dumps(
                {
                    "run_dir": str(run_dir),
                    "n_samples": len(X),
                    "hops": [h.to_dict() for h in hops],
                    "layer_checks": list(report.layer_checks),
                    "skipped": skipped,
                    "exact": exact,
                }
            )
        )
    else:
        print(f"{run_dir}: recomputed on the test split ({len(X)} samples)")
        _print_hops(hops)
        for c in report.layer_checks:
            if not c.get("ok"):
                print(f"layer {c['name']}: {'; '.join(c.get('problems', []))}")
        for why in skipped:
            print(f"skipped: {why}")
    check_equivalence(report)
    if not exact:
        raise EquivalenceError(
            "the hls4ml emulation differs from the QONNX graph; run `fitc lower "
            f"{run_dir}` to rebuild the project"
        )
    return 0


def _emulation_hop(run_dir: Path, qonnx_path: str, X, y):
    """The hls4ml emulation against the qonnx executor, or why it was not checked (a string):
    only a project whose C++ emulation is already compiled is run, so nothing is written."""
    hls_dir = run_dir / "hls4ml"
    if not (run_dir / "hls4ml.json").is_file():
        return f"hls4ml emulation: not lowered yet (`fitc lower {run_dir}`)"
    from fitc.backends.hls import emulation_check, load_project

    project = load_project(hls_dir)
    if not any((hls_dir / "firmware").glob(f"{project.project_name}-*.so")):
        return f"hls4ml emulation: not compiled (`fitc lower {run_dir}` compiles it)"
    return emulation_check(project, qonnx_path, X, y)


def _print_hops(hops) -> None:
    """One row per hop; accuracies when the hops have labels."""
    import math

    rows = []
    for h in hops:
        row = {
            "hop": f"{h.a} → {h.b}",
            "samples": h.n_samples,
            "max |diff|": h.max_abs_diff,
            "identical rows": f"{h.identical_rows:.1%}",
            "argmax agreement": f"{h.argmax_agreement:.1%}",
            "bit-exact": "yes" if h.exact else "NO",
        }
        if not math.isnan(h.accuracy_a):
            row["accuracy"] = f"{h.accuracy_a:.2%} → {h.accuracy_b:.2%}"
        rows.append(row)
    _print_table(rows)
    accuracy: dict[str, float] = {}
    for h in hops:
        for engine, acc in ((h.a, h.accuracy_a), (h.b, h.accuracy_b)):
            if not math.isnan(acc):
                accuracy.setdefault(engine, acc)
    if accuracy:
        print("accuracy: " + ", ".join(f"{e} {a:.2%}" for e, a in accuracy.items()))


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
    cols = list(dict.fromkeys(c for r in rows for c in r))
    width = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).ljust(width[c]) for c in cols).rstrip())


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _dumps(obj: Any) -> str:
    """Strict JSON (no NaN or Infinity: those become null)."""
    import math

    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(obj), indent=2, allow_nan=False)


def _print_summary(run, args: argparse.Namespace) -> None:
    from fitc.summary import run_summary, summary_lines

    s = run_summary(run.dir.path, run.targets)
    if getattr(args, "json", False):
        print(_dumps(s))
        return
    if s.get("plan"):
        print("plan, per layer:")
        _print_table(summary_rows(s["plan"]["layers"]))
        print()
    for line in summary_lines(s):
        print(line)


def summary_rows(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-layer rows of the plan for the CLI's summary table."""
    return [
        {
            "layer": lp["layer"],
            "weight bits": lp["weight_bits"],
            "input bits": lp["act_bits"],
            "weights": f"{lp['weights']:,}",
            "non-zero": f"{lp['nonzero']:,}",
            "pruned": f"{lp['sparsity']:.1%}",
        }
        for lp in layers
    ]
