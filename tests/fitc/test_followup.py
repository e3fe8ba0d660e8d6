"""Commands on a finished run work on what it holds: `fitc estimate` is read-only (never re-runs
a stage, never deletes, never persists its options; writes resources.json only on success),
`fitc lower` with other hardware lowers the plan that exists, a vendor report of another design
is refused, and the RTL path (`lower --backend rtl` → `synth --tool yosys` → `estimate --model
yosys`) costs the netlist of the firmware it built."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

from fitc.cli import main

FAST = ["--train-epochs", "5", "--finetune-epochs", "2", "--no-progress"]


def call(*args) -> tuple[int, str, str]:
    """``fitc ARGS``: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


FIXTURES = Path(__file__).parents[1] / "fixtures" / "vivado-report"


def snapshot(d: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``d`` (but ``skip``), by relative path."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file() and str(p.relative_to(d)) not in skip and p.name != ".fitc.lock"
    }


def record(d: Path) -> dict:
    return json.loads((d / "run.json").read_text())


@pytest.fixture(scope="module")
def device_run(tmp_path_factory) -> Path:
    """digits-mlp at 25 % of an xc7z020 (one loop iteration), up to the verified export."""
    d = tmp_path_factory.mktemp("followup") / "dev"
    code, _, err = call(
        "run", "--device", "xc7z020", "--fraction", "0.25", "--max-loop-iterations", "1",
        "--until", "export", *FAST, "--out", d,
    )  # fmt: skip
    assert code == 0, err[-3000:]
    return d


@pytest.fixture
def run_copy(device_run, tmp_path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(device_run, d)
    return d


def test_estimate_is_read_only_and_labelled(run_copy):
    d = run_copy
    before, config = snapshot(d, ("run.json",)), record(d)["config"]
    stages = {k: v["fingerprint"] for k, v in record(d)["stages"].items()}
    code, out, err = call("estimate", d, "--model", "analytical", "--json")
    assert code == 0, err[-2000:]
    after = snapshot(d, ("run.json", "resources.json"))
    assert after == before  # plan.json, masks.pt, model.pt, the graphs: byte-identical
    rec = record(d)
    assert rec["config"] == config and rec["config"]["resource_model"] == "da4ml"
    assert {k: v["fingerprint"] for k, v in rec["stages"].items() if k != "estimate"} == stages
    res = json.loads((d / "resources.json").read_text())
    assert res["source"] == "analytical"
    summary = json.loads(out)
    assert summary["fits"] == rec["metrics"]["fits"]  # one verdict, in run.json and the summary


def test_a_failed_estimate_changes_nothing(run_copy):
    d = run_copy
    before = snapshot(d)
    code, out, err = call("estimate", d, "--model", "yosys")
    assert code == 2 and "Traceback" not in err
    assert "--backend rtl" in err and len(err.strip().splitlines()) == 1
    assert snapshot(d) == before


def test_estimate_to_a_named_file_leaves_the_run_untouched(run_copy, tmp_path):
    d, out_file = run_copy, tmp_path / "est.json"
    before = snapshot(d)
    code, out, err = call("estimate", d, "--model", "analytical", "--output", out_file)
    assert code == 0, err
    assert snapshot(d) == before
    assert json.loads(out_file.read_text())["source"] == "analytical"
    assert str(out_file) in out


@pytest.mark.compile
def test_lower_with_another_strategy_lowers_the_same_plan(run_copy):
    d = run_copy
    plan_files = snapshot(d, ("run.json",))
    config = record(d)["config"]
    code, out, err = call(
        "lower", d, "--strategy", "resource", "--reuse-factor", "2", "--no-progress"
    )
    assert code == 0, err[-3000:]
    now = snapshot(d)
    for name in ("plan.json", "masks.pt", "model.pt", "float.pt", "model.qonnx.onnx"):
        assert now[name] == plan_files[name], name
    rec = record(d)
    assert rec["config"] == config  # the lowering's options are not the run's config
    project = json.loads((d / "hls4ml.json").read_text())["project"]
    assert project["hardware"]["strategy"] == "Resource"
    assert project["hardware"]["reuse_factor"] == 2
    assert rec["metrics"]["emulation"]["max_abs_diff"] == 0
    assert rec["metrics"]["plan_fits_firmware"] in (True, False)

    # The estimate costs the firmware that was built (Resource, RF 2), and reads it only.
    hls = snapshot(d / "hls4ml")
    code, _, err = call("estimate", d, "--model", "analytical")
    assert code == 0, err[-2000:]
    assert snapshot(d / "hls4ml") == hls
    res = json.loads((d / "resources.json").read_text())
    assert res["hardware"]["strategy"] == "Resource" and res["hardware"]["reuse_factor"] == 2

    # A vendor report of another design (the fixture: one 16→5 layer) is refused.
    for f in FIXTURES.iterdir():
        if f.suffix in (".xml", ".rpt"):
            shutil.copy(f, d / "hls4ml" / f.name)
    before = snapshot(d)
    code, _, err = call("estimate", d, "--model", "report")
    assert code == 2 and "report of another design" in err
    assert "the design has 4" in err
    assert snapshot(d) == before


def test_vendor_report_checks_part_and_top():
    from fitc.backends.resources import read_vendor_report
    from fitc.backends.resources.report import VendorReportError

    ok = {"top": "myproject", "part": "xc7z020clg400-1", "layers": 1}
    assert read_vendor_report(FIXTURES, expect=ok).lut == 1526
    for bad, words in (
        ({"top": "fitc_net"}, "top function 'myproject'"),
        ({"part": "xczu9eg-ffvb1156-2-e"}, "part xc7z020-clg400-1"),
        ({"layers": 3}, "1 weight layer"),
    ):
        with pytest.raises(VendorReportError, match=words):
            read_vendor_report(FIXTURES, expect={**ok, **bad})


@pytest.mark.slow
@pytest.mark.compile
def test_rtl_backend_synth_and_yosys_estimate(tmp_path):
    """A small MLP: RTL ≡ qonnx bit for bit (test split and range-edge rows), Yosys' netlist
    counts as the run's resources, the hls4ml-free run's earlier files untouched."""
    d = tmp_path / "tiny"
    code, _, err = call(
        "run", "--model", "mlp", "--hidden", "8", "--budget", "size=1/8", "--until", "export",
        *FAST, "--out", d,
    )  # fmt: skip
    assert code == 0, err[-2000:]
    exported = snapshot(d, ("run.json",))
    code, out, err = call("lower", d, "--backend", "rtl", "--json")
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    (rtl_hop,) = [h for h in summary["equivalence"] if h["hop"] == "qonnx → rtl"]
    assert rtl_hop["exact"] and rtl_hop["n_samples"] > 64  # the test split + 64 range-edge rows
    assert record(d)["config"]["backend"] == "Vitis"  # not persisted
    assert not (d / "hls4ml").exists() and (d / "rtl" / "fitc_rtl_project.json").is_file()

    code, out, err = call("synth", d, "--tool", "yosys")
    assert code == 0, err[-3000:]
    stat = json.loads((d / "rtl" / "yosys_stat.json").read_text())
    assert stat["family"] == "xc7" and stat["lut"] > 0 and "LUT" in out

    code, out, err = call("estimate", d, "--model", "yosys", "--json")
    assert code == 0, err[-3000:]
    res = json.loads((d / "resources.json").read_text())
    assert res["source"] == "yosys" and res["lut"] == stat["lut"] and res["ff"] == stat["ff"]
    assert res["hardware"]["backend"] == "rtl"
    now = snapshot(d)
    assert all(now[k] == v for k, v in exported.items())
    code, out, _ = call("estimate", d, "--model", "yosys")
    assert "Yosys netlist of the RTL (open-source synthesis, before place and route)" in out


@pytest.mark.slow
@pytest.mark.compile
def test_closed_loop_on_yosys_counts(tmp_path):
    """`--resource-model yosys`: every loop iteration is synthesized, the firmware is the RTL,
    and the run's resources are the netlist of the chosen iteration (synthesized once)."""
    d = tmp_path / "loop"
    code, out, err = call(
        "run", "--model", "mlp", "--hidden", "8", "--budget", "lut=1500", "--resource-model",
        "yosys", "--max-loop-iterations", "2", *FAST, "--out", d,
    )  # fmt: skip
    assert code == 0, err[-3000:]
    loop = json.loads((d / "loop.json").read_text())
    assert loop["accurate_model"] == "yosys"
    chosen = loop["history"][loop["chosen_iteration"] - 1]
    for h in loop["history"]:
        stat = json.loads(
            (d / "loop" / f"iter{h['iteration']}" / "rtl" / "yosys_stat.json").read_text()
        )
        assert h["accurate"]["lut"] == stat["lut"]
    res = json.loads((d / "resources.json").read_text())
    assert res["source"] == "yosys" and res["hardware"]["backend"] == "rtl"
    assert res["lut"] == chosen["accurate"]["lut"]  # the chosen iteration's netlist, reused
    rec = record(d)
    assert rec["metrics"]["fits"] == loop["fits"] == (res["lut"] <= 1500)
    assert rec["metrics"]["rtl_emulation"]["max_abs_diff"] == 0
    assert not (d / "hls4ml").exists()
