"""hls4ml lowering + g++ compile time of the C++ emulation, and its bit-exactness on the test set.

For each model: train the float model briefly, build a mixed-precision sparse plan (fitc.build),
calibrate, export to QONNX, then time ``lower`` (qonnx preparation + hls4ml conversion + precision
check, and the g++ compile of the emulation) and ``emulation_check`` against the qonnx executor on
the whole test set. The target for digits-mlp is lowering + compile under 20 s. The emulation must
be bit-exact; the script exits non-zero if it is not.

    python bench/lower_speed.py                                  # digits-mlp, Latency, io_parallel
    python bench/lower_speed.py --models digits-mlp digits-cnn --strategy Resource --reuse-factor 4
    python bench/lower_speed.py --io-type io_stream --backend Vivado
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from fitc.artifacts import HardwareConfig
from fitc.backends.hls import emulation_check, lower
from fitc.build import apply_plan, calibrate, magnitude_masks, make_plan
from fitc.export import export_qonnx
from fitc.models import build_model, get_spec, load_data, train_float

LADDER = (8, 6, 4, 3)


def bench(name: str, hw: HardwareConfig, epochs: int, sparsity: float) -> bool:
    spec = get_spec(name)
    data = load_data(spec)
    model = build_model(name, seed=0)
    metrics = train_float(model, data, epochs=epochs, progress=False)
    layers = [
        n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    wbits = {n: LADDER[i % len(LADDER)] for i, n in enumerate(layers)}
    abits = {n: LADDER[i % len(LADDER)] if i else 8 for i, n in enumerate(layers)}
    masks = magnitude_masks(model, sparsity, scope="layer")
    plan = make_plan(
        model, model_name=name, input_shape=spec.input_shape, weight_bits=wbits, act_bits=abits,
        masks=masks,
    )  # fmt: skip
    qmodel = calibrate(apply_plan(model, plan, masks), data.X_train)
    print(
        f"\n== {name}: weight bits {list(wbits.values())}, act bits {list(abits.values())}, "
        f"sparsity {sparsity:.0%} per layer, float test acc {metrics['float_test_accuracy']:.4f}; "
        f"{hw.backend} {hw.io_type} {hw.strategy} RF {hw.reuse_factor}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        exported = export_qonnx(qmodel, spec.input_shape, out, plan=plan)
        t0 = time.perf_counter()
        project = lower(
            exported.qonnx_path, out / "hls4ml", hw, plan=plan, layer_map=exported.layer_map
        )
        t_lower = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = emulation_check(project, exported.qonnx_path, data.X_test, data.y_test)
        t_check = time.perf_counter() - t0
    print(f"lower, total:                 {t_lower:7.2f} s  (target < 20 s for digits-mlp)")
    print(f"  prepare + convert + check:  {project.convert_time_s:7.2f} s")
    print(f"  g++ compile:                {project.compile_time_s:7.2f} s")
    print(f"emulation_check ({report.n_samples} rows):  {t_check:7.2f} s")
    print(
        f"emulation vs qonnx: max |diff| {report.max_abs_diff:g}, identical rows "
        f"{report.identical_rows:.4f}, argmax agreement {report.argmax_agreement:.4f}, "
        f"accuracy {report.accuracy_a:.4f} / {report.accuracy_b:.4f}"
    )
    for layer, d in project.layers.items():
        print(
            f"  {layer:8s} {d['hls_layer']:18s} in {d['input']:28s} w {d['weight']:32s} "
            f"acc {d['accum']:14s} nz {d['n_nonzero']}/{d['n_weights']}"
        )
    return report.exact


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["digits-mlp"])
    p.add_argument("--backend", default="Vitis", choices=("Vitis", "Vivado"))
    p.add_argument("--io-type", default="io_parallel", choices=("io_parallel", "io_stream"))
    p.add_argument(
        "--strategy", default="Latency", choices=("Latency", "Resource", "distributed_arithmetic")
    )
    p.add_argument("--reuse-factor", type=int, default=1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--sparsity", type=float, default=0.7)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    hw = HardwareConfig(
        backend=args.backend,
        io_type=args.io_type,
        strategy=args.strategy,
        reuse_factor=args.reuse_factor,
    )
    ok = all([bench(name, hw, args.epochs, args.sparsity) for name in args.models])
    if not ok:
        print("FAIL: the emulation is not bit-exact", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
