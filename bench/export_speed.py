"""Export and bit-exact verification timings: Brevitas → QONNX (+ QCDQ) → qonnx executor / onnxruntime.

For each model: train the float model briefly, build a mixed-precision sparse plan (fitc.build),
calibrate, then time ``export_qonnx`` (TorchScript, and the dynamo exporter with ``--dynamo``),
``verify_chain`` on the whole test set (per engine), and ``verify_onnx_file`` on both graphs.
Every hop must be bit-exact; the script exits non-zero if one is not.

    python bench/export_speed.py                       # digits-mlp and digits-cnn
    python bench/export_speed.py --models resnet8 --repeat 1 --dynamo
"""

from __future__ import annotations  # noqa: I001 (fitc.export resolves as third-party to ruff)

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from fitc.build import apply_plan, calibrate, magnitude_masks, make_plan
from fitc.errors import ArtifactError
from fitc.export import check_equivalence, export_qonnx, verify_chain, verify_onnx_file
from fitc.models import build_model, get_spec, load_data, train_float

LADDER = (8, 6, 4, 3, 2)


def _median(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench(name: str, repeat: int, dynamo: bool, epochs: int, sparsity: float) -> bool:
    spec = get_spec(name)
    data = load_data(spec)
    model = build_model(name, seed=0)
    t0 = time.perf_counter()
    metrics = train_float(model, data, epochs=epochs, progress=False)
    t_train = time.perf_counter() - t0
    layers = [
        n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    wbits = {n: LADDER[i % len(LADDER)] for i, n in enumerate(layers)}
    abits = {n: LADDER[(i + 1) % len(LADDER)] if i else 8 for i, n in enumerate(layers)}
    masks = magnitude_masks(model, sparsity, scope="layer")
    plan = make_plan(
        model, model_name=name, input_shape=spec.input_shape, weight_bits=wbits, act_bits=abits,
        masks=masks,
    )  # fmt: skip
    try:
        qmodel = apply_plan(model, plan, masks)
    except ArtifactError as e:  # layers sharing one quantizer (residual blocks) need equal act bits
        print(f"(mixed act bits not buildable: {e}; using 6 act bits everywhere)")
        abits = dict.fromkeys(layers, 6)
        plan = make_plan(
            model, model_name=name, input_shape=spec.input_shape, weight_bits=wbits, act_bits=6,
            masks=masks,
        )  # fmt: skip
        qmodel = apply_plan(model, plan, masks)
    qmodel = calibrate(qmodel, data.X_train)

    print(f"\n== {name}: {len(layers)} layers, weight bits {list(wbits.values())}, "
          f"act bits {list(abits.values())}, sparsity {sparsity:.0%} per layer; "
          f"float test acc {metrics['float_test_accuracy']:.4f} ({epochs} epochs, {t_train:.1f} s); "
          "quantized without fine-tuning")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t_exp, g = _median(lambda: export_qonnx(qmodel, spec.input_shape, out, plan=plan), repeat)
        print(f"export_qonnx (TorchScript, QONNX + QCDQ):  {t_exp:7.3f} s")
        if dynamo:
            t_dyn, _ = _median(
                lambda: export_qonnx(qmodel, spec.input_shape, out / "dyn", plan=plan, dynamo=True),
                repeat,
            )
            print(f"export_qonnx (dynamo QONNX + TS QCDQ):     {t_dyn:7.3f} s")
        timings: dict[str, float] = {}
        t_ver, report = _median(
            lambda: verify_chain(
                qmodel, g, data.X_test, data.y_test, plan=plan, masks=masks, timings=timings
            ),
            repeat,
        )
        n = len(data.X_test)
        print(f"verify_chain on {n} test samples:         {t_ver:7.3f} s")
        for engine, s in timings.items():
            print(f"    {engine:<16} {s:7.3f} s  ({n / s:,.0f} samples/s)" if engine != "layer_checks_s"
                  else f"    {engine:<16} {s:7.3f} s")  # fmt: skip
        for path in (g.qonnx_path, g.qcdq_path):
            t_file, r = _median(lambda p=path: verify_onnx_file(p, data.X_test), repeat)
            print(f"verify_onnx_file {Path(path).name:<18}  {t_file:7.3f} s  "
                  f"(hops: {', '.join(f'{h.a}→{h.b}' for h in r.hops)}; exact {r.exact})")  # fmt: skip
    for h in report.hops:
        print(f"  {h.a}→{h.b}: max|diff| {h.max_abs_diff:g}, identical rows {h.identical_rows:.2%}, "
              f"argmax {h.argmax_agreement:.2%}, acc {h.accuracy_a:.4f} / {h.accuracy_b:.4f}")  # fmt: skip
    worst = max(c["acc_bound_bits"] for c in report.layer_checks)
    print(f"  layer checks: {sum(c['ok'] for c in report.layer_checks)}/{len(report.layer_checks)} "
          f"ok; widest accumulator bound {worst:.1f} bits (float32 exact ≤ 24)")  # fmt: skip
    try:
        check_equivalence(report)
    except Exception as e:
        print(f"  NOT EXACT: {e}")
        return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["digits-mlp", "digits-cnn"])
    p.add_argument("--repeat", type=int, default=3, help="median of this many runs per timing")
    p.add_argument("--dynamo", action="store_true", help="also time the dynamo exporter")
    p.add_argument("--epochs", type=int, default=20, help="float training epochs")
    p.add_argument("--sparsity", type=float, default=0.8)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    print(f"torch threads: 1; repeat: median of {a.repeat}")
    ok = all([bench(m, a.repeat, a.dynamo, a.epochs, a.sparsity) for m in a.models])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
