"""The CLI on one real run (digits-mlp, a few epochs, up to the export): the summary's JSON,
`fitc verify DIR` recomputing the chain without writing (and failing on a tampered graph),
`verify --onnx --labels` printing accuracies, and the next-step hints of refusals.

A device-budget run through the closed loop, lowering and estimate is marked slow and compile."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fitc.cli import main

FAST = ["--train-epochs", "5", "--finetune-epochs", "2", "--no-progress"]


def call(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict]:
    """A run up to the export (the equivalence check included), and its summary as JSON."""
    d = tmp_path_factory.mktemp("cli") / "mlp"
    code, out, err = call(
        "run", "--until", "export", "--budget", "size=1/16", *FAST, "--out", d, "--json"
    )
    assert code == 0, err[-2000:]
    return d, json.loads(out)


def files(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, p.stat().st_size) for p in d.rglob("*")}


def test_run_json_summary_parses_and_says_what_is_next(exported):
    d, s = exported
    assert s["budget"]["targets"] == {"size": 0.0625}
    assert s["achieved"]["size"] <= 0.0625 and s["fits"] is True
    assert set(s["accuracy"]) >= {"float", "built", "finetuned", "n_test_samples"}
    assert [h["hop"] for h in s["equivalence"]] == [
        "brevitas → qonnx",
        "brevitas → onnxruntime",
        "brevitas → qonnx (range-edge rows)",
        "brevitas → onnxruntime (range-edge rows)",
    ]
    assert all(h["exact"] for h in s["equivalence"])
    assert all(h["exact"] for h in s["equivalence"])
    assert s["next"][0]["command"] == f"fitc lower {d}"


def test_verify_dir_recomputes_the_chain_and_writes_nothing(exported, capsys):
    d, _ = exported
    before = files(d)
    assert main(["verify", str(d)]) == 0
    out = capsys.readouterr().out
    assert "recomputed on the test split (359 samples)" in out
    for hop in ("brevitas → qonnx", "brevitas → onnxruntime"):
        (row,) = [line for line in out.splitlines() if line.startswith(hop)]
        assert row.split()[4:7] == ["0", "100.0%", "100.0%"]  # max |diff|, identical, argmax
    assert "accuracy: brevitas " in out
    assert "skipped: hls4ml emulation: not lowered yet" in out
    assert files(d) == before


def test_verify_dir_json(exported):
    code, out, _ = call("verify", exported[0], "--json")
    assert code == 0
    report = json.loads(out)
    assert report["exact"] is True and report["n_samples"] == 359
    assert [(h["a"], h["b"]) for h in report["hops"]] == [
        ("brevitas", "qonnx"),
        ("brevitas", "onnxruntime"),
    ]
    assert all(c["ok"] for c in report["layer_checks"])


def test_verify_dir_fails_on_a_tampered_qcdq_graph(exported, tmp_path, capsys):
    d = tmp_path / "tampered"
    shutil.copytree(exported[0], d)
    path = d / "model.qcdq.onnx"
    model = onnx.load(path)
    for init in model.graph.initializer:  # a bias: one quantization step of the output changes
        if init.name.endswith("bias") or "bias" in init.name.lower():
            arr = numpy_helper.to_array(init).copy()
            arr.flat[0] += 1.0
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
            break
    else:
        pytest.fail(f"no bias initializer in {[i.name for i in model.graph.initializer]}")
    onnx.save(model, path)
    assert main(["verify", str(d)]) == 2
    captured = capsys.readouterr()
    (row,) = [
        line for line in captured.out.splitlines() if line.startswith("brevitas → onnxruntime")
    ]
    assert row.split()[4] != "0" and " NO " in row  # max |diff| > 0, not bit-exact
    assert "equivalence check failed" in captured.err and "onnxruntime" in captured.err


def test_verify_onnx_with_labels_prints_accuracies(exported, tmp_path, capsys):
    import fitc

    d, s = exported
    run = fitc.load_run(d)
    np.save(tmp_path / "X.npy", run.data.X_test)
    np.save(tmp_path / "y.npy", run.data.y_test)
    args = ["verify", "--onnx", d / "model.qonnx.onnx", "--inputs", tmp_path / "X.npy"]
    assert main([str(a) for a in args] + ["--labels", str(tmp_path / "y.npy")]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("accuracy: ")]
    acc = float(line.split("qonnx ")[1].split("%")[0]) / 100
    assert acc == pytest.approx(s["accuracy"]["finetuned"], abs=5e-5)  # printed as 86.91%
    assert "onnxruntime" in line
    assert main([str(a) for a in args]) == 0  # without labels: no accuracy
    assert "accuracy" not in capsys.readouterr().out


def test_estimate_from_vendor_reports_points_at_synth(exported, tmp_path):
    d = tmp_path / "lowered"
    shutil.copytree(exported[0], d)
    code, _, err = call("estimate", d, "--model", "report")
    assert code == 2 and f"run `fitc lower {d}` first" in err
    (d / "hls4ml.json").write_text("{}")
    (d / "hls4ml").mkdir()
    code, _, err = call("estimate", d, "--model", "report")
    assert code == 2
    assert f"run `fitc synth {d}`" in err and f"`fitc estimate {d} --model report`" in err
    assert "hls_model.build" not in err


def test_verify_dir_refuses_the_flags_of_a_graph_made_elsewhere(exported):
    code, _, err = call("verify", exported[0], "--labels", "y.npy")
    assert code == 2 and "--labels go with --onnx FILE" in err


@pytest.mark.slow
@pytest.mark.compile
def test_device_budget_run_prints_the_share_of_the_part(tmp_path):
    d = tmp_path / "dev"
    code, out, err = call(
        "run",
        "--device",
        "xc7z020",
        "--fraction",
        "0.25",
        "--max-loop-iterations",
        "2",
        *FAST,
        "--out",
        d,
    )
    assert code == 0, err[-3000:]
    lines = out.splitlines()
    assert any(
        line.startswith("budget     25 % of xc7z020 (Zynq-7000, xc7z020clg400-1): LUT ≤ 13,300")
        for line in lines
    )
    (lut,) = [line for line in lines if line.startswith("  LUT ")]
    assert "of the 25 % share); " in lut and "% of the part (53,200)" in lut
    assert any(line.startswith("loop       ") for line in lines)
    assert any(line.startswith("  1. ") for line in lines)
    assert any(line.startswith("next       fitc report ") for line in lines)
    assert "{'" not in out  # no Python dicts
    assert "fast_hadamard_transform" not in err
    code, out, _ = call("report", d)
    assert code == 0 and (d / "plots" / "utilisation.png").is_file()
