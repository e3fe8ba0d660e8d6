"""Accuracy of fitc's plans against three baselines at equal weight size, same fine-tuning.

For each model: train the float model once (seeded), estimate its Fisher once, then for each
size budget build, calibrate and fine-tune (identical settings for every method, except that
fitc fine-tunes as the pipeline does: a sparse plan's pruning support moves, --regrow, and a
denser plan learns from the float model too, --distill; the baselines fine-tune their fixed masks
on the labels, as those methods are defined):

  fitc      FITCompress search with the pipeline's defaults (fitc.config.RunConfig): mixed weight
            bits + Fisher-importance pruning (a ladder per layer; --global-prune: one global
            ladder), the Fisher re-estimated along the path on the training data
  uniform   (a) one bit width for every layer + global magnitude pruning tuned to the budget; the
            bit width is picked among --uniform-bits by validation accuracy of the calibrated
            model before fine-tuning, so it gets the same single fine-tuning run as the others
  fit-mp    (b) FIT-guided mixed precision without pruning (the same search, pruning disabled);
            unreachable below 2 bits per weight (size 1/16)
  mag-8b    (c) 8-bit weights + global magnitude pruning tuned to the budget

Size = Σ non-zero quantized weights × bits / (Σ weights × 32), measured on the built model.
Accuracy is on the held-out test split (mean ± sample standard deviation over --seeds: float
training, Fisher, search and fine-tuning all re-seeded); activations are 8-bit everywhere. "zeros"
counts pruned weights and weights that quantize to zero. Fine-tuning (every method, the
pipeline's defaults unless overridden): --epochs, --lr, --optimizer, --schedule.

Device rows (``--device xc7z020 --fractions 0.1 0.25``) run the pipeline itself up to the
fine-tuning (:func:`fitc.pipeline.run_pipeline`, ``until="finetune"``) with the same settings:
the closed loop searches against the analytical resource model (activation bits searched, the
input's included: ``fitc.space.default_act_bits``; ``--fixed-act`` keeps them at 8), fine-tunes
and measures every design with da4ml (no hls4ml compile). They report fitc's test accuracy and
the measured LUT of the design kept.

    python bench/quality.py                       # digits-mlp and digits-cnn, 1/8 … 1/64
    python bench/quality.py --seeds 0 1 2         # mean ± std of three seeds
    python bench/quality.py --models digits-mlp --budgets 1/16 --epochs 15
    python bench/quality.py --model mlp --data wine       # any data: wine, breast-cancer, X.npz
    python bench/quality.py --models digits-mlp --budgets --device xc7z020 --fractions 0.1 0.25
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from fitc.artifacts import Budget, CompressionPlan
from fitc.build import (
    apply_plan,
    calibrate,
    evaluate_quant,
    float_layers,
    magnitude_masks,
    make_plan,
    measure_layers,
)
from fitc.config import RunConfig
from fitc.cost import SizeCost
from fitc.errors import BudgetInfeasibleError
from fitc.finetune import finetune
from fitc.fisher import estimate_fisher
from fitc.models import evaluate, open_network, resolve_model, train_float
from fitc.models.zoo import ModelSpec
from fitc.search import search_plan
from fitc.space import SearchSpace


@dataclass
class Result:
    test_acc: float | None
    val_acc: float | None
    size: float | None
    note: str = ""
    seconds: float = 0.0
    accs: list[float] = field(default_factory=list)  # per seed (averaged rows)
    exact: bool | None = None  # --verify: exported and checked bit for bit (fitc's designs)


def _finetuned(
    model,
    plan: CompressionPlan,
    masks,
    data,
    args,
    regrow: float = 0.0,
    distill: float = 0.0,
    verify: bool = False,
) -> Result:
    """Build, calibrate and fine-tune one plan; ``regrow``: fitc's pruning support moves (its
    default), the baselines keep theirs (fixed magnitude masks, as those methods are defined).
    ``verify``: export the fine-tuned model to QONNX (and QCDQ) and check Brevitas ≡ qonnx ≡
    onnxruntime bit for bit on the test split, and the graph's bits and non-zeros against the plan
    (raises :class:`fitc.errors.EquivalenceError` otherwise)."""
    t0 = time.perf_counter()
    qmodel = apply_plan(model, plan, masks)
    calibrate(qmodel, data.X_train)
    metrics = finetune(
        qmodel,
        masks,
        data,
        epochs=args.epochs or ModelSpec.finetune_epochs,  # the zoo's default (digits: 30)
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=False,
        regrow=regrow,
        teacher=model,
        distill=distill,
    )
    size = SizeCost()(measure_layers(qmodel, plan))
    return Result(
        test_acc=evaluate_quant(qmodel, data.X_test, data.y_test),
        val_acc=metrics["finetune_val_accuracy"],
        size=size,
        seconds=time.perf_counter() - t0,
        exact=_verified(qmodel, plan, data) if verify else None,
    )


def _verified(qmodel, plan: CompressionPlan, data) -> bool:
    from fitc.export import check_equivalence, export_qonnx, verify_chain

    shape = tuple(data.X_test.shape[1:])
    with tempfile.TemporaryDirectory(prefix="fitc-quality-verify-") as tmp:
        exported = export_qonnx(qmodel, shape, tmp, plan=plan)
        check_equivalence(verify_chain(qmodel, exported, data.X_test, data.y_test, plan=plan))
    return True


def _pruned(plan: CompressionPlan) -> float:
    return 1 - sum(lp.n_nonzero for lp in plan.layers) / sum(lp.n_weights for lp in plan.layers)


def magnitude_plan(model, name, spec, bits: int, limit: float):
    """Uniform ``bits`` + the least global magnitude pruning whose measured size is ≤ ``limit``."""
    n = sum(m.weight.numel() for m in float_layers(model).values())

    def plan_for(k: int):
        masks = magnitude_masks(model, k / n)
        return make_plan(
            model,
            model_name=name,
            input_shape=spec.input_shape,
            weight_bits=bits,
            act_bits=8,
            masks=masks,
        ), masks

    lo, hi = 0, n - 1  # the size is non-increasing in the number of pruned weights
    plan, masks = plan_for(lo)
    if plan.achieved_cost <= limit:
        return plan, masks
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if plan_for(mid)[0].achieved_cost <= limit:
            hi = mid
        else:
            lo = mid
    return plan_for(hi)


def run_model(name: str, budgets: list[Budget], args) -> list[dict]:
    # Any --model a user gives fitc (zoo, mlp, file.py:factory) on any --data, compiled as the
    # pipeline compiles it (batch norm folded, …).
    net, data = open_network(resolve_model(name), args.data, seed=args.seed)
    spec = net.spec
    model = net.trainable(args.seed)
    print(f"\n[seed {args.seed}]", end="")
    t0 = time.perf_counter()
    fm = train_float(
        model, net.user_view(data), epochs=args.train_epochs, seed=args.seed, progress=False
    )
    model = net.compile(model).eval()
    fm["float_test_accuracy"] = evaluate(model, data.X_test, data.y_test)
    print(
        f"\n{name}: float test accuracy {fm['float_test_accuracy']:.4f} "
        f"(trained in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    X, y = torch.from_numpy(data.X_train), torch.from_numpy(data.y_train)
    t0 = time.perf_counter()
    fisher = estimate_fisher(model, X, y, max_batches=20, seed=args.seed)
    # the pipeline's search: the Fisher refreshed on the training data along the path
    refresh = {"refresh_data": (X, y), "refresh_every": RunConfig().refresh_every}
    print(f"  Fisher in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for budget in budgets:
        row = {"model": name, "budget": str(budget), "float": fm["float_test_accuracy"]}

        t0 = time.perf_counter()
        res = search_plan(
            model,
            fisher,
            budget,
            SearchSpace(per_layer_prune=args.per_layer_prune),
            model_name=name,
            input_shape=spec.input_shape,
            seed=args.seed,
            **refresh,
        )
        search_s = time.perf_counter() - t0
        r = _finetuned(
            model,
            res.plan,
            res.masks,
            data,
            args,
            regrow=args.regrow,
            distill=args.distill,
            verify=args.verify,
        )
        r.note = " ".join(f"{lp.weight_bits}b/{lp.sparsity:.0%}" for lp in res.plan.layers)
        r.note += f"  (bits/zeros per layer; planned size {res.plan.achieved_cost:.4f})"
        r.seconds += search_s
        row["fitc"] = r

        t0 = time.perf_counter()
        candidates = []
        for bits in args.uniform_bits:
            plan, masks = magnitude_plan(model, name, spec, bits, budget.limit)
            qmodel = calibrate(apply_plan(model, plan, masks), data.X_train)
            candidates.append((evaluate_quant(qmodel, data.X_val, data.y_val), -bits, plan, masks))
        _, neg_bits, plan, masks = max(candidates, key=lambda c: c[:2])
        select_s = time.perf_counter() - t0
        r = _finetuned(model, plan, masks, data, args)
        r.note = f"{-neg_bits}b, {_pruned(plan):.0%} zeros"
        r.seconds += select_s
        row["uniform"] = r

        t0 = time.perf_counter()
        try:
            res = search_plan(
                model,
                fisher,
                budget,
                SearchSpace(prune_levels=(0.0,)),
                model_name=name,
                input_shape=spec.input_shape,
                seed=args.seed,
                **refresh,
            )
            search_s = time.perf_counter() - t0
            r = _finetuned(model, res.plan, res.masks, data, args)
            r.note = " ".join(f"{lp.weight_bits}b" for lp in res.plan.layers)
            r.seconds += search_s
        except BudgetInfeasibleError as e:
            r = Result(None, None, e.smallest_reachable, note="unreachable without pruning")
        row["fit-mp"] = r

        plan, masks = magnitude_plan(model, name, spec, 8, budget.limit)
        r = _finetuned(model, plan, masks, data, args)
        r.note = f"{_pruned(plan):.0%} zeros"
        row["mag-8b"] = r
        rows.append(row)
        _print_row(row)
    return rows


METHODS = ("fitc", "uniform", "fit-mp", "mag-8b")


def _pm(accs: list[float]) -> str:
    """Mean ± sample standard deviation of accuracies, in %."""
    mean = 100 * statistics.fmean(accs)
    if len(accs) < 2:
        return f"{mean:6.2f}"
    return f"{mean:6.2f} ± {100 * statistics.stdev(accs):4.2f}"


def _cell(r: Result) -> str:
    if r.test_acc is None:
        return f"{'—':>6} (min size {r.size:.4f})" if r.size else "—"
    return f"{_pm(r.accs or [r.test_acc])} (size {r.size:.4f})"


def _print_row(row: dict) -> None:
    print(
        f"  {row['budget']:>9}: " + " | ".join(f"{m} {_cell(row[m])}" for m in METHODS), flush=True
    )
    for m in METHODS:
        r = row[m]
        print(f"      {m:8s} {r.note}  [{r.seconds:.1f} s]", flush=True)


def _mean_rows(rows: list[dict]) -> list[dict]:
    """Average the per-seed rows of each (model, budget), keeping each seed's accuracy."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["budget"]), []).append(row)
    out = []
    for (model, budget), rs in groups.items():
        row = {"model": model, "budget": budget, "float": [r["float"] for r in rs]}
        for m in METHODS:
            res = [r[m] for r in rs]
            acc = [x.test_acc for x in res if x.test_acc is not None]
            size = [x.size for x in res if x.size is not None]
            whole = len(acc) == len(res)
            row[m] = Result(
                test_acc=statistics.fmean(acc) if whole else None,
                val_acc=None,
                size=max(size) if size else None,
                accs=acc if whole else [],
            )
        out.append(row)
    return out


def print_table(rows: list[dict], n_seeds: int) -> None:
    rows = _mean_rows(rows)
    what = f"mean ± std of {n_seeds} seeds; " if n_seeds > 1 else ""
    print(
        f"\nTest accuracy % ({what}achieved size as a fraction of float32"
        f"{', the largest over seeds' if n_seeds > 1 else ''}) — same fine-tuning for all (fitc regrows its support, --regrow)\n"
    )
    width = 31 if n_seeds > 1 else 24
    fw = 13 if n_seeds > 1 else 6
    head = (
        f"| {'model':10s} | {'budget':9s} | {'float':{fw}s} | "
        + " | ".join(f"{m:{width}s}" for m in METHODS)
        + " |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c) + 0) for c in head.split("|")[1:-1]) + "|")
    for row in rows:
        cells = " | ".join(f"{_cell(row[m]):{width}s}" for m in METHODS)
        print(f"| {row['model']:10s} | {row['budget']:9s} | {_pm(row['float']):{fw}s} | {cells} |")
    wins = [
        (row["model"], row["budget"], m)
        for row in rows
        for m in METHODS[1:]
        if row[m].test_acc is not None and row[m].test_acc > row["fitc"].test_acc + 1e-9
    ]
    print(
        "\nbaselines above fitc (ties excluded): "
        + (", ".join(f"{a} {b} {c}" for a, b, c in wins) or "none")
    )


# ---------------------------------------------------------------------------------------------
# Device rows: the pipeline's closed loop


def run_device(name: str, fraction: float, args) -> dict:
    """One seed of the pipeline on ``--device`` at ``fraction`` (until fine-tuning)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fitc-quality-") as tmp:
        cfg = RunConfig(
            model=name,
            data=args.data,
            device=args.device,
            fraction=fraction,
            seed=args.seed,
            out=tmp,
            until="export" if args.verify else "finetune",  # export includes the verification
            progress=False,
            train_epochs=args.train_epochs,
            act_bits=(8,) if args.fixed_act else None,  # None: searched under a device budget
            per_layer_prune=args.per_layer_prune,
            finetune_epochs=args.epochs,
            finetune_lr=args.lr,
            regrow=args.regrow,
            distill=args.distill,
            strategy=args.strategy,
            optimizer=args.optimizer,
            schedule=args.schedule,
            batch_size=args.batch_size,
        )
        from fitc.pipeline import run_pipeline

        run = run_pipeline(cfg)
        with open(f"{tmp}/loop.json") as f:
            loop = json.load(f)
        layers = " ".join(
            f"w{lp.weight_bits}a{lp.act_bits}/{lp.sparsity:.0%}" for lp in run.plan.layers
        )
        row = {
            "model": name,
            "budget": f"{args.device} {fraction:g}",
            "float": run.metrics["float_test_accuracy"],
            "acc": float(loop["accuracy"]),
            "lut": float(loop["accurate"].get("lut", float("nan"))),
            "limit": float(loop["targets"].get("lut", float("nan"))),
            "fits": bool(loop["fits"]),
            "iterations": int(loop["iterations"]),
            "chosen": int(loop["chosen_iteration"]),
            "exact": bool(args.verify) or None,  # run_pipeline raises unless bit-exact
            "history": [
                (h["iteration"], h["accuracy"], h["val_accuracy"], h["accurate"].get("lut"))
                for h in loop["history"]
            ],
        }
    print(
        f"  {row['budget']:>14}: fitc {100 * row['acc']:6.2f}, LUT {row['lut']:.0f} / "
        f"{row['limit']:.0f}, fits {row['fits']}, {row['iterations']} loop iterations (kept {row['chosen']}); {layers} "
        f"(w/a bits, zeros) [{time.perf_counter() - t0:.1f} s]",
        flush=True,
    )
    for k, acc, val, lut in row["history"]:
        print(f"      iteration {k}: test {100 * acc:.2f}, val {100 * val:.2f}, LUT {lut:.0f}")
    return row


def print_device_table(rows: list[dict], n_seeds: int) -> None:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["budget"]), []).append(row)
    what = f"mean ± std of {n_seeds} seeds" if n_seeds > 1 else "one seed"
    print(f"\nDevice budgets through the pipeline's closed loop (test accuracy %, {what})\n")
    print(f"| {'model':10s} | {'budget':14s} | {'float':13s} | {'fitc':13s} | LUT (max) | fits |")
    print(f"|{'-' * 12}|{'-' * 16}|{'-' * 15}|{'-' * 15}|{'-' * 11}|{'-' * 6}|")
    for (model, budget), rs in groups.items():
        lut = max(r["lut"] for r in rs)
        fits = f"{sum(r['fits'] for r in rs)}/{len(rs)}"
        print(
            f"| {model:10s} | {budget:14s} | {_pm([r['float'] for r in rs]):13s} | "
            f"{_pm([r['acc'] for r in rs]):13s} | {lut:9.0f} | {fits:4s} |"
        )


def _save(path: str, rows: list[dict], device_rows: list[dict]) -> None:
    def plain(row: dict) -> dict:
        return {k: dataclasses.asdict(v) if isinstance(v, Result) else v for k, v in row.items()}

    with open(path, "w") as f:
        json.dump({"rows": [plain(r) for r in rows], "device_rows": device_rows}, f, indent=1)


def _merge(paths: list[str]) -> None:
    rows, device_rows = [], []
    for path in paths:
        with open(path) as f:
            saved = json.load(f)
        rows += [
            {k: Result(**v) if k in METHODS else v for k, v in r.items()} for r in saved["rows"]
        ]
        device_rows += saved["device_rows"]
    seeds = lambda rs: max(Counter((r["model"], r["budget"]) for r in rs).values(), default=1)  # noqa: E731
    if rows:
        print_table(rows, seeds(rows))
    if device_rows:
        print_device_table(device_rows, seeds(device_rows))


def main(argv: list[str] | None = None) -> None:
    defaults = RunConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models",
        "--model",
        nargs="+",
        default=["digits-mlp", "digits-cnn"],
        help="zoo names, mlp (sized by --data) or path/to/file.py:factory",
    )
    p.add_argument(
        "--data",
        default=None,
        help="dataset for every model: built-in (digits, wine, breast-cancer) or a .npz file; "
        "default: each model's own",
    )
    p.add_argument(
        "--budgets",
        nargs="*",
        default=["1/8", "1/16", "1/32", "1/64"],
        help="size budgets (none: device rows only)",
    )
    p.add_argument("--device", default=None, help="device preset for device rows, e.g. xc7z020")
    p.add_argument(
        "--strategy", default=defaults.strategy, help="hls4ml strategy of the device rows' firmware"
    )
    p.add_argument(
        "--fractions", type=float, nargs="+", default=[], help="device fractions, e.g. 0.1 0.25"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=defaults.finetune_epochs,
        help="fine-tuning epochs (all methods; default: the model's own, 30 for the digits models; "
        "device rows: the pipeline's, twice that where activation bits are searched)",
    )
    p.add_argument("--lr", type=float, default=defaults.finetune_lr, help="fine-tuning lr")
    p.add_argument(
        "--regrow", type=float, default=defaults.regrow, help="prune-and-regrow fraction (0: fixed)"
    )
    p.add_argument(
        "--distill",
        type=float,
        default=defaults.distill,
        help="fitc's distillation weight for plans that are not sparse (the float model teaches; 0: off)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="export every fitc design and check it bit for bit (Brevitas, qonnx, onnxruntime) "
        "and against its plan's bits and non-zeros",
    )
    p.add_argument("--optimizer", default=defaults.optimizer)
    p.add_argument("--schedule", default=defaults.schedule)
    p.add_argument(
        "--global-prune",
        dest="per_layer_prune",
        action="store_false",
        default=defaults.per_layer_prune,
        help="fitc prunes by one global ladder (default: the pipeline's, a ladder per layer)",
    )
    p.add_argument(
        "--fixed-act", action="store_true", help="device rows: activations fixed at 8 bits"
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--train-epochs", type=int, default=60)
    p.add_argument("--uniform-bits", type=int, nargs="+", default=[8, 6, 4, 3, 2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--save", metavar="JSON", help="also write the per-seed rows to this file")
    p.add_argument(
        "--merge",
        metavar="JSON",
        nargs="+",
        help="print the tables of rows saved by earlier runs (e.g. one per seed, run in parallel)",
    )
    args = p.parse_args(argv)
    if args.merge:
        _merge(args.merge)
        return
    if bool(args.device) != bool(args.fractions):
        p.error("--device and --fractions go together")
    logging.basicConfig(level=logging.WARNING)
    budgets = [Budget.parse(f"size={b}") for b in args.budgets]
    t0 = time.perf_counter()
    rows, device_rows = [], []
    for seed in args.seeds:
        args.seed = seed
        if budgets:
            rows += [row for name in args.models for row in run_model(name, budgets, args)]
        for name in args.models:
            for fraction in args.fractions:
                device_rows.append(run_device(name, fraction, args))
    if args.save:
        _save(args.save, rows, device_rows)
    if rows:
        print_table(rows, len(args.seeds))
    if device_rows:
        print_device_table(device_rows, len(args.seeds))
    if args.verify:
        checked = [r["fitc"].exact for r in rows] + [r["exact"] for r in device_rows]
        print(
            f"\nfitc designs exported and bit-exact (Brevitas ≡ qonnx ≡ onnxruntime on the test "
            f"split, bits and non-zeros equal to the plan): {sum(map(bool, checked))}/{len(checked)}"
        )
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s; fine-tuning: {args.epochs or f'{ModelSpec.finetune_epochs} (device rows: the pipeline default)'} epochs, "
        f"{args.optimizer}, lr {args.lr:g}, {args.schedule}, batch "
        f"{args.batch_size}, per-layer pruning {args.per_layer_prune}, regrow {args.regrow:g}, distill {args.distill:g}, "
        f"seeds {args.seeds}"
    )


if __name__ == "__main__":
    main()
