"""How fitc's stages scale with model size, and how fine-tuning holds up with concurrent workers.

Scaling (default): for generic MLPs from 10 k to 1 M weights at depth 4 and 16 (uniform hidden
width, 64 inputs, 10 classes, generated data) and for zoo CNNs, run the real pipeline
(``fitc.pipeline.run_pipeline``: train → search → fine-tune → export → verify → lower) and read
the stage times from ``run.json``: Fisher + search, fine-tune per epoch, export (+ verify), lower
(hls4ml convert) and the g++ compile of the C++ emulation. Networks above ``--compile-max``
weights are converted but not compiled (an io_parallel MLP of 1 M weights takes g++ hours); the
table says so. It prints a table, fits ``time ∝ size^k`` on the MLPs (log-log least squares) and
draws a log-log plot (``--plot``, matplotlib). The search's cost is fitted against
weights × layers too: it must grow no faster than linearly (k ≤ 1).

Concurrency (``--concurrency RUN_DIR``, a run with plan.json/masks.pt, e.g. resnet8): fine-tune
epochs in fresh processes, one alone and then two at once, each pinned like a sweep worker
(``OMP_NUM_THREADS=1``, ``OMP_WAIT_POLICY=PASSIVE``), and, for comparison, two at once as they
ran before (2 threads each, ``OMP_WAIT_POLICY=ACTIVE``). Prints seconds per epoch and the ratio.

Every figure is printed with the load average, before and after: the machine may be shared.

    python bench/scaling.py --plot bench/scaling.png
    python bench/scaling.py --weights 10000 100000 --depths 4 --zoo digits-cnn
    python bench/scaling.py --concurrency runs/resnet8_size-1-16 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_IN, N_CLASSES = 64, 10


def load() -> str:
    return "{:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def mlp_width(weights: int, depth: int) -> int:
    """Uniform hidden width of a depth-``depth`` MLP (Linear layers) 64 → … → 10 with about
    ``weights`` weights."""
    # 64·w + (depth − 2)·w² + 10·w = weights
    a, b = depth - 2, N_IN + N_CLASSES
    w = (-b + math.sqrt(b * b + 4 * a * weights)) / (2 * a) if a else weights / b
    return max(2, round(w))


def make_data(path: Path, n: int = 1200, seed: int = 0) -> Path:
    """Generated classification data: 64 features, labels from a random two-layer teacher."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_IN)).astype(np.float32)
    h = np.maximum(X @ rng.normal(size=(N_IN, 32)), 0)
    logits = h @ rng.normal(size=(32, N_CLASSES))
    y = ((logits - logits.mean(0)) / logits.std(0)).argmax(1).astype(np.int64)  # balanced-ish
    np.savez(path, X=X, y=y)
    return path


def stage_times(run_dir: Path) -> dict:
    rec = json.loads((run_dir / "run.json").read_text())
    stages = rec.get("stages", {})

    def wall(name: str) -> float | None:
        s = stages.get(name) or {}
        return s.get("wall_time_s", s.get("time_s"))

    def metric(name: str, key: str):
        return ((stages.get(name) or {}).get("metrics") or {}).get(key)

    epochs = rec.get("config", {}).get("finetune_epochs") or 1
    ft = metric("finetune", "finetune_time_s")
    out = {
        "fisher_s": metric("search", "fisher_time_s"),
        "search_s": metric("search", "search_time_s"),
        "finetune_epoch_s": None if ft is None else ft / epochs,
        "export_s": (wall("export") or 0) + (wall("verify") or 0) or None,
        "lower_s": wall("lower"),
        "compile_s": metric("lower", "hls_compile_time_s"),
        "io_type": metric("lower", "io_type"),
    }
    hls = run_dir / "hls4ml.json"
    if hls.is_file():
        out["convert_s"] = json.loads(hls.read_text())["project"].get("convert_time_s")
    return out


def run_point(label: str, cfg_kw: dict, compile_: bool, work: Path) -> dict:
    from fitc.config import RunConfig
    from fitc.pipeline import run_pipeline

    out = work / label
    cfg = RunConfig(out=str(out), progress=False, train_epochs=1, **cfg_kw)
    t0 = time.perf_counter()
    run = run_pipeline(cfg, until="lower" if compile_ else "export", force=True)
    row = stage_times(out)
    if not compile_:  # convert only: hls4ml's project without the g++ compile
        from fitc.backends.hls import lower

        t1 = time.perf_counter()
        lower(
            run.exported.qonnx_path, out / "hls4ml", run.hardware, plan=run.plan,
            layer_map=run.exported.layer_map, compile=False,
        )  # fmt: skip
        row["lower_s"] = row["convert_s"] = time.perf_counter() - t1
        row["io_type"] = run.hardware.io_type
    plan = json.loads((out / "plan.json").read_text())
    row["weights"] = sum(lp["n_weights"] for lp in plan["layers"])
    row["layers"] = len(plan["layers"])
    row["total_s"] = time.perf_counter() - t0
    row["label"] = label
    row["compiled"] = compile_
    return row


def fit_exponent(x, y) -> float | None:
    pts = [(a, b) for a, b in zip(x, y, strict=True) if a and b and a > 0 and b > 0]
    if len(pts) < 2 or max(p[0] for p in pts) < 3 * min(p[0] for p in pts):
        return None  # sizes too close together for a slope
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


COLUMNS = [
    ("fisher_s", "Fisher s"),
    ("search_s", "search s"),
    ("finetune_epoch_s", "fine-tune s/epoch"),
    ("export_s", "export+verify s"),
    ("convert_s", "hls4ml convert s"),
    ("compile_s", "g++ compile s"),
]


def scaling(args: argparse.Namespace) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="fitc-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work / "data.npz")
    rows = []
    points = []
    for depth in args.depths:
        for weights in args.weights:
            w = mlp_width(weights, depth)
            kw = {"model": "mlp", "hidden": (w,) * (depth - 1), "data": str(data),
                  "finetune_epochs": args.epochs}  # fmt: skip
            points.append((f"mlp-d{depth}-w{w}", kw, weights <= args.compile_max))
    for name in args.zoo:
        points.append((name, {"model": name, "finetune_epochs": args.epochs}, True))
    for f in args.rows:  # rows of an earlier scaling.json
        rows.extend(json.loads(Path(f).read_text())["rows"])
    for ref in args.runs:  # finished runs measured elsewhere (e.g. a full `fitc run`)
        label, _, path = ref.rpartition("=")
        row = stage_times(Path(path))
        plan = json.loads((Path(path) / "plan.json").read_text())
        row.update(weights=sum(lp["n_weights"] for lp in plan["layers"]),
                   layers=len(plan["layers"]), label=label or Path(path).name,
                   compiled=row.get("compile_s") is not None, load="(its own run)")  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    for label, kw, compile_ in points:
        before = load()
        try:
            row = run_point(label, kw, compile_, work)
        except Exception as e:  # a point that fails is reported, the others still run
            print(f"{label}: FAILED {e.__class__.__name__}: {e}", flush=True)
            continue
        row["load"] = f"{before} → {load()}"
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    head = ["network", "weights", "layers", "io", *(c[1] for c in COLUMNS), "load avg"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["label"], f"{r['weights']:,}", str(r["layers"]), str(r.get("io_type") or "")]
        for key, _ in COLUMNS:
            v = r.get(key)
            cells.append("not compiled" if key == "compile_s" and not r["compiled"]
                         else "-" if v is None else f"{v:.2f}")  # fmt: skip
        cells.append(r["load"])
        print("| " + " | ".join(cells) + " |")

    mlps = [r for r in rows if r["label"].startswith("mlp-")]
    print("\nfitted exponents k (time ∝ weights^k) over the MLPs:")
    fits = {}
    for key, name in COLUMNS:
        k = fit_exponent([r["weights"] for r in mlps], [r.get(key) for r in mlps])
        fits[key] = k
        print(f"  {name:22s} k = {'-' if k is None else f'{k:.2f}'}")
    for depth in sorted({r["layers"] for r in mlps}):
        same = [r for r in mlps if r["layers"] == depth]
        ks = {name: fit_exponent([r["weights"] for r in same], [r.get(key) for r in same])
              for key, name in COLUMNS}  # fmt: skip
        print(
            f"  depth {depth}: " + ", ".join(f"{n} {k:.2f}" for n, k in ks.items() if k is not None)
        )
    wl = [r["weights"] * r["layers"] for r in mlps]
    fs = [(r.get("fisher_s") or 0) + (r.get("search_s") or 0) for r in mlps]
    k_search = fit_exponent(wl, fs)
    verdict = ("n/a" if k_search is None else "no faster than linear" if k_search <= 1.0
               else "FASTER than linear")  # fmt: skip
    print(f"  Fisher+search vs weights×layers: k = {k_search if k_search is None else round(k_search, 2)}"
          f" ({verdict})")  # fmt: skip
    (work / "scaling.json").write_text(json.dumps({"rows": rows, "fits": fits,
                                                   "search_vs_weights_x_layers": k_search}))  # fmt: skip
    print(f"rows: {work / 'scaling.json'}")
    if args.plot:
        plot(rows, fits, k_search, Path(args.plot))


def plot(rows: list[dict], fits: dict, k_search: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    ax = axes[0]
    mlps = [r for r in rows if r["label"].startswith("mlp-")]
    others = [r for r in rows if not r["label"].startswith("mlp-")]
    styles = ["-", "--", ":", "-."]
    for i, (key, name) in enumerate(COLUMNS):
        color = f"C{i}"
        k = fits.get(key)
        label = f"{name} (MLP k={k:.2f})" if k is not None else name
        for j, depth in enumerate(sorted({r["layers"] for r in mlps})):
            pts = sorted(
                (r["weights"], r[key]) for r in mlps if r["layers"] == depth and r.get(key)
            )
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, "o" + styles[j % 4], color=color, label=label if j == 0 else None)
        for r in others:
            if r.get(key):
                ax.plot(r["weights"], r[key], "x", color=color, markersize=9)
                ax.annotate(r["label"], (r["weights"], r[key]), fontsize=6)
    ax.text(0.01, 0.01, "MLPs: solid depth 4, dashed depth 16; x: zoo CNNs", fontsize=7,
            transform=ax.transAxes)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weights")
    ax.set_ylabel("seconds")
    ax.set_title("stage time vs model size")
    ax.legend(fontsize=7)
    ax = axes[1]
    mlps = [r for r in rows if r["label"].startswith("mlp-")]
    pts = sorted((r["weights"] * r["layers"], (r.get("fisher_s") or 0) + (r.get("search_s") or 0))
                 for r in mlps)  # fmt: skip
    if pts:
        x, y = zip(*pts, strict=True)
        ax.plot(
            x,
            y,
            "o-",
            label=f"Fisher + search (k={k_search:.2f})" if k_search else "Fisher + search",
        )
        ref = np.array([x[0], x[-1]], dtype=float)
        ax.plot(ref, y[0] * ref / ref[0], "--", color="grey", label="linear")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weights × layers")
    ax.set_ylabel("seconds")
    ax.set_title("search cost vs weights × layers (MLPs)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


# --------------------------------------------------------------------------------------------
# Concurrency: fine-tune epochs alone and two at once


def epoch_worker(run_dir: str, epochs: int) -> None:
    """(In a fresh process.) Fine-tune the run's plan for ``epochs`` epochs; print s/epoch."""
    import torch

    from fitc.build import apply_plan, calibrate
    from fitc.config import FIELDS, from_mapping
    from fitc.finetune import finetune
    from fitc.pipeline import open_run
    from fitc.threads import pin_threads, worker_threads

    info = pin_threads(worker_threads())
    recorded = json.loads((Path(run_dir) / "run.json").read_text())["config"]
    known = {k: v for k, v in recorded.items() if k in FIELDS}  # runs made by older versions
    run = open_run(from_mapping({**known, "out": run_dir}, source=f"{run_dir}/run.json"))
    qmodel = apply_plan(run.float_model, run.plan, run.masks)
    calibrate(qmodel, torch.from_numpy(run.data.X_train))
    t0 = time.perf_counter()
    finetune(qmodel, run.masks, run.data, epochs=epochs, lr=1e-3, progress=False,
             num_threads=torch.get_num_threads())  # fmt: skip
    dt = (time.perf_counter() - t0) / epochs
    print(json.dumps({"s_per_epoch": dt, **info}), flush=True)


def concurrency(args: argparse.Namespace) -> None:
    def launch(n: int, env_over: dict) -> list[dict]:
        env = {**os.environ, **env_over}
        cmd = [sys.executable, __file__, "--_epoch-worker", args.concurrency,
               "--epochs", str(args.epochs)]  # fmt: skip
        procs = [
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(n)
        ]
        outs = [p.communicate()[0] for p in procs]
        return [json.loads(o.strip().splitlines()[-1]) for o in outs]

    pinned = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    legacy = {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}
    cases = [("1 worker, pinned (1 thread, passive)", 1, pinned),
             ("2 workers at once, pinned", 2, pinned),
             ("1 process, 2 threads, passive (fitc run alone)", 1,
              {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}),
             ("2 processes at once, 2 threads, spinning (before)", 2, legacy)]  # fmt: skip
    if args.skip_legacy:
        cases = cases[:3]
    results = {}
    for name, n, env in cases:
        before = load()
        res = launch(n, env)
        per = [r["s_per_epoch"] for r in res]
        results[name] = per
        print(f"{name}: " + ", ".join(f"{p:.2f}" for p in per)
              + f" s/epoch (threads {res[0]['intra_op']}; load {before} → {load()})", flush=True)  # fmt: skip
    one = results[cases[0][0]][0]
    two = max(results[cases[1][0]])
    print(f"two concurrent pinned workers vs one: {two / one:.2f}× per epoch (goal ≤ 2.5×)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--depths", type=int, nargs="*", default=[4, 16])
    p.add_argument("--zoo", nargs="*", default=["digits-cnn", "resnet8"])
    p.add_argument("--epochs", type=int, default=2, help="fine-tune epochs per point")
    p.add_argument(
        "--compile-max",
        type=int,
        default=30_000,
        help="compile the emulation only up to this many weights (MLPs)",
    )
    p.add_argument(
        "--runs",
        nargs="*",
        default=[],
        metavar="LABEL=RUN_DIR",
        help="also tabulate finished runs (e.g. resnet8=runs/resnet8_size-1-16)",
    )
    p.add_argument(
        "--rows",
        nargs="*",
        default=[],
        metavar="SCALING_JSON",
        help="also tabulate the rows of an earlier run of this script",
    )
    p.add_argument("--work", help="where the runs go (default: a temp directory)")
    p.add_argument("--plot", help="save the log-log plot here (e.g. bench/scaling.png)")
    p.add_argument(
        "--concurrency", metavar="RUN_DIR", help="measure fine-tune epochs 1 vs 2 workers"
    )
    p.add_argument("--skip-legacy", action="store_true", help="concurrency: skip the 'before' case")
    p.add_argument("--_epoch-worker", dest="epoch_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epoch_worker:
        epoch_worker(args.epoch_worker, args.epochs)
    elif args.concurrency:
        concurrency(args)
    else:
        scaling(args)


if __name__ == "__main__":
    main()
