"""Analytical vs da4ml LUT estimates over the zoo and a spread of compression plans.

For digits-mlp and digits-cnn (trained with fitc.models) this makes hand-written plans — uniform
and mixed per-layer weight bits (8…2), activation bits (8…3), global and per-layer magnitude
pruning (0…95 %) — and prints per plan the analytical and the da4ml LUT estimate, then:

- Spearman rank correlation of the totals (target ≥ 0.9), and the uncalibrated total error;
- the total error after per-layer calibration (target ≤ 15 %), three ways:
  * ``fitted``: one factor per layer, least squares over all plans (the model's shape error);
  * ``loop``: along compression paths like the search's (each step lowers one layer's bits or
    prunes more), calibrated on the previous step's da4ml measurement — what the closed loop does;
  * ``any-pair``: calibrated on one plan, evaluated on every other plan (worst case: far-apart plans);
- with ``--cross-fit``, the analytical LUT constants refitted on one model's da4ml data and
  evaluated on the other (an out-of-sample check of the constants shipped in AnalyticalParams).

With ``--yosys`` (or ``--yosys-only``), it then runs ``bench/resource_calibration.py``: ≥ 20 plans
over digits-mlp, jet-mlp and digits-cnn built with Brevitas, written as Verilog by da4ml and
synthesized by Yosys (cached in ``bench/yosys_cache.json``), and prints per strategy (RTL and
distributed arithmetic: shared adder graphs; Latency: unshared constant multiplies; Resource:
generic multipliers) and model the Spearman correlation and the mean and worst error of the
analytical and da4ml models against Yosys LUT (FF for the pipelined RTL), before and after the
calibration shipped in ``fitc.backends.resources``.

Integer weights are the plan's quantized masked weights (``fitc.build.fixed_point_quantize``, equal
to Brevitas' ``quant_weight().int()``; ``--brevitas`` builds each plan with ``apply_plan`` and reads
them with ``quant_int_weights`` instead). Run: ``python bench/resource_models.py`` (~3–6 min on 2
cores; ``--plans 12`` for a quicker run).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.stats import spearmanr

from fitc.artifacts import CompressionPlan, HardwareConfig
from fitc.backends.resources import (
    AnalyticalModel,
    AnalyticalParams,
    Da4mlModel,
    cmvm_luts,
    quant_int_weights,
)
from fitc.build import apply_plan, fixed_point_quantize, float_layers, magnitude_masks, make_plan
from fitc.models import build_model, get_spec, load_data, train_float

W_BITS = (8, 7, 6, 5, 4, 3, 2)
A_BITS = (8, 6, 5, 4, 3)
SPARSITY = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)


def per_layer_masks(model, sparsity: dict[str, float]) -> dict[str, torch.Tensor]:
    out = {}
    for name, mod in float_layers(model).items():
        w = mod.weight.detach().abs().flatten()
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[torch.argsort(w, stable=True)[: int(round(sparsity[name] * w.numel()))]] = False
        out[name] = keep.reshape(mod.weight.shape)
    return out


def random_config(rng, names: list[str], kind: int):
    if kind == 0:  # uniform bits, global magnitude pruning
        wb, ab, sp = int(rng.choice(W_BITS)), int(rng.choice(A_BITS)), float(rng.choice(SPARSITY))
        return {n: wb for n in names}, {n: ab for n in names}, ("global", sp)
    wb = {n: int(rng.choice(W_BITS)) for n in names}
    ab = {n: int(rng.choice(A_BITS)) for n in names}
    if kind == 1:
        return wb, ab, ("global", float(rng.choice(SPARSITY)))
    return wb, ab, ("layer", {n: float(rng.choice(SPARSITY)) for n in names})


def compression_paths(rng, names: list[str], n_paths: int, steps: int):
    """Search-like paths: start at 8/8 bits dense; each step lowers one layer's weight bits by one
    or raises one layer's sparsity to the next level."""
    paths = []
    for _ in range(n_paths):
        wb = {n: 8 for n in names}
        ab = {n: 8 for n in names}
        sp = {n: 0.0 for n in names}
        path = [(dict(wb), dict(ab), ("layer", dict(sp)))]
        for _ in range(steps):
            n = names[int(rng.integers(len(names)))]
            if rng.random() < 0.5 and wb[n] > 2:
                wb[n] -= 1
            elif sp[n] < SPARSITY[-1]:
                sp[n] = SPARSITY[SPARSITY.index(sp[n]) + 1]
            elif ab[n] > 3:
                ab[n] -= 1
            path.append((dict(wb), dict(ab), ("layer", dict(sp))))
        paths.append(path)
    return paths


def describe(wb, ab, prune) -> str:
    def short(d):
        vals = list(d.values())
        return str(vals[0]) if len(set(vals)) == 1 else "/".join(str(v) for v in vals)

    scope, sp = prune
    spd = f"{sp:.2f}g" if scope == "global" else short({k: f"{v:.2f}" for k, v in sp.items()})
    return f"w{short(wb)} a{short(ab)} s{spd}"


@dataclasses.dataclass
class Row:
    desc: str
    plan: CompressionPlan
    ana: list[float]  # per-layer analytical LUT
    da: list[float]  # per-layer da4ml LUT


def evaluate_plans(model, name, configs, hw, da4ml, ana, use_brevitas: bool, progress: bool):
    spec = get_spec(name)
    names = list(float_layers(model))
    rows = []
    for wb, ab, prune in configs:
        scope, sp = prune
        masks = magnitude_masks(model, sp) if scope == "global" else per_layer_masks(model, sp)
        plan = make_plan(
            model,
            model_name=name,
            input_shape=spec.input_shape,
            weight_bits=wb,
            act_bits=ab,
            masks=masks,
        )
        if use_brevitas:
            weights = quant_int_weights(apply_plan(model, plan, masks))
        else:
            weights = {}
            for n, mod in float_layers(model).items():
                w = mod.weight.detach() * masks[n].to(mod.weight.dtype)
                weights[n] = fixed_point_quantize(w, wb[n])[0].numpy().astype(np.int64)
        r_da = da4ml.estimate(plan, hw, weights=weights, progress=progress)
        r_an = ana.estimate(plan, hw)
        rows.append(
            Row(
                describe(wb, ab, prune),
                plan,
                [lr.lut for lr in r_an.layers],
                [lr.lut for lr in r_da.layers],
            )
        )
        assert [lr.name for lr in r_da.layers] == names
    return rows


def calibrated_errors(rows_from: list[Row], rows_to: list[Row], clip=(0.1, 10.0)) -> np.ndarray:
    """|error| of the total of each ``rows_to[i]`` calibrated on ``rows_from[i]``."""
    out = []
    for a, b in zip(rows_from, rows_to, strict=True):
        f = [
            min(max(d / e, clip[0]), clip[1]) if e >= 1.0 and d > 0 else 1.0
            for e, d in zip(a.ana, a.da, strict=True)
        ]
        est = sum(fi * e for fi, e in zip(f, b.ana, strict=True))
        out.append(abs(est / sum(b.da) - 1.0))
    return np.array(out)


def summarize(label: str, rows: list[Row], path_rows: list[list[Row]]) -> dict[str, float]:
    A = np.array([r.ana for r in rows])
    D = np.array([r.da for r in rows])
    ta, td = A.sum(1), D.sum(1)
    rho = spearmanr(ta, td).statistic
    raw = np.abs(ta / td - 1.0)
    f = np.array(
        [np.sum(A[:, i] * D[:, i]) / max(np.sum(A[:, i] ** 2), 1e-9) for i in range(A.shape[1])]
    )
    fitted = np.abs((A * f).sum(1) / td - 1.0)
    loop = np.concatenate([calibrated_errors(p[:-1], p[1:]) for p in path_rows])
    pair = np.concatenate(
        [
            calibrated_errors(
                [rows[i]] * (len(rows) - 1), [r for j, r in enumerate(rows) if j != i]
            )
            for i in range(len(rows))
        ]
    )
    print(f"\n== {label}: {len(rows)} plans, {sum(len(p) for p in path_rows)} path steps")
    print(f"  Spearman rank correlation of total LUT (analytical vs da4ml): {rho:.3f}")
    print(f"  uncalibrated total error: mean {raw.mean():.1%}, max {raw.max():.1%}")
    print(
        f"  per-layer factors fitted on all plans: mean {fitted.mean():.1%}, max {fitted.max():.1%}"
    )
    print(
        f"  loop (calibrated on the previous path step): mean {loop.mean():.1%}, "
        f"median {np.median(loop):.1%}, max {loop.max():.1%}"
    )
    print(
        f"  any pair (calibrated on one plan, all others): mean {pair.mean():.1%}, "
        f"median {np.median(pair):.1%}, p90 {np.quantile(pair, 0.9):.1%}"
    )
    return {"spearman": rho, "fitted": fitted.mean(), "loop": loop.mean(), "pair": pair.mean()}


# -- refit of the LUT constants (out-of-sample check) ---------------------------------------

FIT_FIELDS = (
    "lut_per_acc_bit",
    "lut_per_mult_bit",
    "magnitude_offset",
    "csd_digits_per_bit",
    "acc_growth",
    "sharing_exponent",
)


def layer_samples(rows: list[Row]):
    """(layer plan, da4ml arithmetic LUT) pairs, activation overhead removed, one per distinct plan."""
    seen = {}
    base = AnalyticalModel(strategies={}, live=False)
    for r in rows:
        for lp, a, d in zip(r.plan.layers, r.ana, r.da, strict=True):
            overhead = a - cmvm_luts(lp, base.params)
            if d - overhead > 1.0:
                seen[lp] = d - overhead
    return list(seen.items())


def fit_params(samples) -> AnalyticalParams:
    cost = np.log(np.array([c for _, c in samples]))
    x0 = np.array([getattr(AnalyticalParams(), f) for f in FIT_FIELDS])

    def params(x):
        return dataclasses.replace(AnalyticalParams(), **dict(zip(FIT_FIELDS, x, strict=True)))

    def resid(x):
        p = params(x)
        r = np.log([max(cmvm_luts(lp, p), 1e-9) for lp, _ in samples]) - cost
        return r

    x = least_squares(resid, x0).x
    return params(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="digits-mlp,digits-cnn")
    ap.add_argument("--plans", type=int, default=24, help="random plans per model")
    ap.add_argument("--paths", type=int, default=3, help="compression paths per model")
    ap.add_argument("--steps", type=int, default=8, help="steps per compression path")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--brevitas", action="store_true", help="build every plan with apply_plan")
    ap.add_argument(
        "--cross-fit",
        action="store_true",
        help="refit the constants on one model, test on the other",
    )
    ap.add_argument("--show", action="store_true", help="print every plan")
    ap.add_argument(
        "--yosys",
        action="store_true",
        help="also compare against Yosys netlists (bench/resource_calibration.py, cached)",
    )
    ap.add_argument("--yosys-only", action="store_true", help="only the Yosys comparison")
    ap.add_argument("--no-synth", action="store_true", help="Yosys comparison from the cache only")
    args = ap.parse_args()
    if args.yosys_only:
        yosys_comparison(args.no_synth)
        return
    torch.manual_seed(args.seed)
    # The raw adder-graph costs (shared sub-expressions, no dead-logic removal, no strategy
    # calibration): what the analytical LUT constants were fitted to.
    hw = HardwareConfig(strategy="distributed_arithmetic")
    ana = AnalyticalModel(strategies={}, live=False)
    da4ml = Da4mlModel(strategies={}, live=False)
    all_rows: dict[str, tuple[list[Row], list[list[Row]]]] = {}
    for name in args.models.split(","):
        spec = get_spec(name)
        model = build_model(name, seed=args.seed)
        data = load_data(spec, seed=args.seed)
        t0 = time.perf_counter()
        metrics = train_float(model, data, epochs=args.epochs, seed=args.seed, progress=False)
        print(
            f"{name}: trained in {time.perf_counter() - t0:.0f} s, "
            f"test accuracy {metrics['float_test_accuracy']:.3f}"
        )
        names = list(float_layers(model))
        rng = np.random.default_rng(args.seed)
        configs = [random_config(rng, names, k % 3) for k in range(args.plans)]
        t0 = time.perf_counter()
        rows = evaluate_plans(model, name, configs, hw, da4ml, ana, args.brevitas, False)
        paths = [
            evaluate_plans(model, name, p, hw, da4ml, ana, args.brevitas, False)
            for p in compression_paths(rng, names, args.paths, args.steps)
        ]
        dt = time.perf_counter() - t0
        n_solved = len(da4ml._cache)
        print(
            f"{name}: da4ml + analytical over {len(rows) + sum(map(len, paths))} plans in {dt:.0f} s ({n_solved} distinct layer solves so far)"
        )
        t0 = time.perf_counter()
        for _ in range(100):
            for r in rows:
                ana.total("lut", r.plan.layers, hw)
        print(
            f"{name}: analytical estimate {1e6 * (time.perf_counter() - t0) / (100 * len(rows)):.1f} µs per plan (cached layers)"
        )
        if args.show:
            print(f"  {'plan':40s} {'analytical':>10s} {'da4ml':>8s} {'ratio':>6s}")
            for r in rows:
                print(
                    f"  {r.desc:40s} {sum(r.ana):10.0f} {sum(r.da):8.0f} {sum(r.da) / sum(r.ana):6.2f}"
                )
        all_rows[name] = (rows, paths)
    results = {name: summarize(name, *rp) for name, rp in all_rows.items()}
    if len(all_rows) > 1:
        rows = [r for rp in all_rows.values() for r in rp[0]]
        spear = spearmanr([sum(r.ana) for r in rows], [sum(r.da) for r in rows]).statistic
        print(f"\n== zoo together: Spearman {spear:.3f} over {len(rows)} plans")
    ok = all(
        v["spearman"] >= 0.9 and v["loop"] <= 0.15 and v["fitted"] <= 0.15 for v in results.values()
    )
    print(
        f"\ntargets (Spearman ≥ 0.9, calibrated error ≤ 15 % in the fitted and loop settings): {'met' if ok else 'NOT met'}"
    )

    if args.cross_fit and len(all_rows) == 2:
        (a, (ra, pa)), (b, (rb, pb)) = all_rows.items()
        for src, dst, rows_src, rows_dst, paths_dst in (
            (a, b, ra + sum(pa, []), rb, pb),
            (b, a, rb + sum(pb, []), ra, pa),
        ):
            p = fit_params(layer_samples(rows_src))
            print(f"\n== constants refitted on {src}, evaluated on {dst}:")
            print("  " + ", ".join(f"{f}={getattr(p, f):.3f}" for f in FIT_FIELDS))
            m = AnalyticalModel(params=p, strategies={}, live=False)

            def redo(rs, m=m):
                return [
                    dataclasses.replace(r, ana=[lr.lut for lr in m.estimate(r.plan, hw).layers])
                    for r in rs
                ]

            summarize(
                f"{dst} (constants from {src})", redo(rows_dst), [redo(p_) for p_ in paths_dst]
            )
        print(
            "\n  shipped: "
            + ", ".join(f"{f}={getattr(AnalyticalParams(), f):.3f}" for f in FIT_FIELDS)
        )
    if args.yosys:
        yosys_comparison(args.no_synth)


def yosys_comparison(no_synth: bool) -> None:
    """The per-strategy comparison against Yosys (bench/resource_calibration.py)."""
    import resource_calibration as rc

    cache = rc.Cache()
    built = rc.collect(list(rc.PLANS), cache, workers=2, synth=not no_synth)
    rc.evaluate(built, cache)


if __name__ == "__main__":
    main()
