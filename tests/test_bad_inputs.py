"""A catalogue of bad inputs, each run through the command line as a user would (``python -m
fitc.cli …`` in a subprocess).

Every case must end the same way: exit code 2, the problem named on one line (the last line of
stderr starts with ``fitc <command>: error:`` and no other line holds an error), no traceback,
and nothing written: every file under the case's directory (its inputs, a copy of a finished run,
the output directory it names) is exactly as it was before. A case that fails today because the
fix belongs in a file this module's author does not own is marked ``xfail(strict=True)`` with the
fix in its reason, so it turns into a failure the day the fix lands (then drop the mark).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Files a command may add to a run directory without changing its content: the writer's lock
# (fitc/rundir.py), which only says "nobody is writing now".
HOUSEKEEPING = {".fitc.lock"}


# ---------------------------------------------------------------------------------------------
# Fixtures: one tiny finished run per module, copied per case


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """digits-mlp, 3 float epochs, 1 fine-tuning epoch, up to the verified QONNX export."""
    out = tmp_path_factory.mktemp("finished") / "run"
    res = _fitc(
        "run",
        "--model",
        "digits-mlp",
        "--train-epochs",
        "3",
        "--finetune-epochs",
        "1",
        "--until",
        "export",
        "--out",
        str(out),
        "--no-progress",
        "-q",
        cwd=out.parent,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "model.qonnx.onnx").is_file() and (out / "model.pt").is_file()
    return out


def _fitc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "fitc.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def snapshot(root: Path) -> dict[str, str]:
    """Relative path → sha256 of every file (and ``<dir>`` for every directory) under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink() or p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<link>"
        elif p.is_dir():
            out[rel] = "<dir>"
    return out


# ---------------------------------------------------------------------------------------------
# Inputs the cases are made of


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def digits_like(n: int = 200, features: int = 64) -> tuple[np.ndarray, np.ndarray]:
    r = rng()
    return r.normal(size=(n, features)).astype("float32"), r.integers(0, 10, n)


def npz(name: str, **arrays) -> Callable[[Path, Path], None]:
    def make(d: Path, run: Path) -> None:
        np.savez(d / name, **arrays)

    return make


def raw(name: str, data: bytes) -> Callable[[Path, Path], None]:
    def make(d: Path, run: Path) -> None:
        (d / name).write_bytes(data)

    return make


def text(name: str, content: str) -> Callable[[Path, Path], None]:
    def make(d: Path, run: Path) -> None:
        (d / name).write_text(content)

    return make


def truncated_npz(d: Path, run: Path) -> None:
    X, y = digits_like()
    np.savez(d / "data.npz", X=X, y=y)
    data = (d / "data.npz").read_bytes()
    (d / "data.npz").write_bytes(data[: len(data) // 2])


def with_X(name: str, X, y=None) -> Callable[[Path, Path], None]:
    def make(d: Path, run: Path) -> None:
        np.save(d / name, X)
        if y is not None:
            np.save(d / "y.npy", y)

    return make


def float_onnx(d: Path, run: Path) -> None:
    """A plain float ONNX graph (MatMul + Relu, no quantizer): nothing fixed point to verify."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    W = rng().normal(size=(64, 10)).astype("float32")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="MatMul_0"),
            helper.make_node("Relu", ["h"], ["y"], name="Relu_0"),
        ],
        "float_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, d / "float.onnx")
    np.save(d / "X.npy", digits_like(20)[0])


def unsupported_op_onnx(d: Path, run: Path) -> None:
    """The run's QONNX graph with one node turned into an op no engine knows."""
    import onnx

    model = onnx.load(run / "model.qonnx.onnx")
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "FancyActivation"
    onnx.save(model, d / "odd.onnx")
    np.save(d / "X.npy", digits_like(20)[0])


def copy_qonnx(X_shape: tuple[int, ...], labels=None) -> Callable[[Path, Path], None]:
    def make(d: Path, run: Path) -> None:
        shutil.copy(run / "model.qonnx.onnx", d / "model.onnx")
        np.save(d / "X.npy", rng().normal(size=X_shape).astype("float32"))
        if labels is not None:
            np.save(d / "y.npy", labels)

    return make


def edit_run(name: str, change: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    """Copy the finished run into ``d/run`` and change one of its files."""

    def make(d: Path, run: Path) -> None:
        shutil.copytree(run, d / "run")
        change(d / "run" / name)

    return make


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(700))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def plan_edit(**layer0) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        import json

        plan = json.loads(path.read_text())
        plan["layers"][0].update(layer0)
        path.write_text(json.dumps(plan, indent=2))

    return change


def torch_wrong_shapes(path: Path) -> None:
    import torch

    saved = torch.load(path, weights_only=True)
    state = saved.get("state_dict", saved)  # model.pt: {"format", "state_dict", "masks"}
    key = next(k for k, v in state.items() if hasattr(v, "ndim") and v.ndim == 2)
    state[key] = torch.zeros(3, 3)
    torch.save(saved, path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def torch_pickle(path: Path) -> None:
    import torch

    torch.save({"state_dict": _Payload()}, path)


def copy_run(d: Path, run: Path) -> None:
    shutil.copytree(run, d / "run")


def read_only_dir(d: Path, run: Path) -> None:
    ro = d / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits; the immutable attribute binds it too
        subprocess.run(["chattr", "+i", str(ro)], capture_output=True)
    try:
        (ro / ".probe").touch()
    except OSError:
        return
    (ro / ".probe").unlink()
    pytest.skip("cannot make a read-only directory here (root without chattr +i)")


def undo_read_only(d: Path) -> None:
    ro = d / "ro"
    if ro.is_dir():
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)], capture_output=True)
        ro.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# The catalogue

X, Y = digits_like()
RUN = ["run", "--model", "digits-mlp", "--train-epochs", "1", "--finetune-epochs", "1"]
TRAIN = [*RUN, "--until", "train", "--out", "out"]


@dataclass
class Case:
    id: str
    argv: list[str]
    setup: Callable[[Path, Path], None] | None = None
    needs_run: bool = False
    xfail: str | None = None

    @property
    def command(self) -> str:
        return self.argv[0]


def _data(id_: str, make: Callable[[Path, Path], None], *extra: str) -> Case:
    return Case(id_, [*TRAIN, "--data", "data.npz", *extra], make)


CASES: list[Case] = [
    # ---- data files
    _data("npz-corrupt", raw("data.npz", os.urandom(600))),
    _data("npz-truncated", truncated_npz),
    _data("npz-empty-file", raw("data.npz", b"")),
    _data("npz-wrong-keys", npz("data.npz", a=X, b=Y)),
    _data(
        "npz-nan",
        npz("data.npz", X=np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X), y=Y),
    ),
    _data(
        "npz-inf",
        npz("data.npz", X=np.where(np.arange(X.size).reshape(X.shape) == 7, np.inf, X), y=Y),
    ),
    _data("labels-out-of-range", npz("data.npz", X=X, y=np.where(np.arange(len(Y)) == 3, 12, Y))),
    _data("labels-float", npz("data.npz", X=X, y=Y + 0.5)),
    _data("labels-negative", npz("data.npz", X=X, y=np.where(np.arange(len(Y)) == 3, -1, Y))),
    _data("labels-strings", npz("data.npz", X=X, y=np.array([str(v) for v in Y]))),
    _data("npz-object-array", npz("data.npz", X=X, y=np.array([1, "a", None], dtype=object))),
    _data("wrong-feature-count", npz("data.npz", X=X[:, :10], y=Y)),
    _data("zero-samples", npz("data.npz", X=X[:0], y=Y[:0])),
    _data("one-sample", npz("data.npz", X=X[:1], y=Y[:1])),
    _data("mismatched-lengths", npz("data.npz", X=X, y=Y[:-1])),
    _data("x-test-without-y-test", npz("data.npz", X=X, y=Y, X_test=X[:20])),
    # ---- configuration files
    Case("yaml-corrupt", [*TRAIN, "--config", "c.yaml"], text("c.yaml", "a: [1, 2\n")),
    Case("yaml-unknown-key", [*TRAIN, "--config", "c.yaml"], text("c.yaml", "finetune_epoch: 3\n")),
    Case("yaml-wrong-type", [*TRAIN, "--config", "c.yaml"], text("c.yaml", "batch_size: many\n")),
    Case(
        "yaml-python-object",
        [*TRAIN, "--config", "c.yaml"],
        text("c.yaml", 'model: !!python/object/apply:os.system ["touch PWNED"]\n'),
    ),
    Case("yaml-top-level-list", [*TRAIN, "--config", "c.yaml"], text("c.yaml", "- 1\n- 2\n")),
    Case(
        "yaml-hidden-width-float",
        [*TRAIN, "--model", "mlp", "--data", "digits", "--config", "c.yaml"],
        text("c.yaml", "hidden: [64.5, 32]\n"),
    ),
    Case("yaml-clock-inf", [*TRAIN, "--config", "c.yaml"], text("c.yaml", "clock_ns: .inf\n")),
    # ---- budgets and fractions
    Case("budget-size-above-1", [*TRAIN, "--budget", "size=2"]),
    Case("budget-unknown-kind", [*TRAIN, "--budget", "speed=1"]),
    Case("budget-lut-fraction", [*TRAIN, "--budget", "lut=1.5"]),
    Case("budget-dsp-fraction", [*TRAIN, "--budget", "dsp=1.5"]),
    Case("budget-lut-1e400", [*TRAIN, "--budget", "lut=1e400"]),
    Case("budget-lut-huge", [*TRAIN, "--budget", "lut=1e300"]),
    Case("budget-negative", [*TRAIN, "--budget", "lut=-5"]),
    Case("budget-size-0", [*TRAIN, "--budget", "size=0"]),
    Case("budget-not-a-number", [*TRAIN, "--budget", "size=abc"]),
    Case("fraction-0", [*TRAIN, "--device", "xc7z020", "--fraction", "0"]),
    Case("fraction-1.5", [*TRAIN, "--device", "xc7z020", "--fraction", "1.5"]),
    Case("fraction-negative", [*TRAIN, "--device", "xc7z020", "--fraction", "-0.1"]),
    # ---- unknown names
    Case("unknown-model", [*TRAIN, "--model", "digits-mpl"]),
    Case("unknown-device", [*TRAIN, "--device", "nonsense", "--fraction", "0.5"]),
    Case("unknown-part", [*TRAIN, "--part", "nonsense"]),
    Case("unknown-strategy", [*TRAIN, "--strategy", "Fastest"]),
    Case("unknown-io-type", [*TRAIN, "--io-type", "io_serial"]),
    Case("reuse-factor-0", [*TRAIN, "--reuse-factor", "0"]),
    Case(
        "da-with-reuse-factor-2",
        [*TRAIN, "--strategy", "distributed_arithmetic", "--reuse-factor", "2"],
    ),
    # ---- huge numbers
    Case("huge-seed", [*TRAIN, "--seed", "99999999999999999999999"]),
    Case("huge-epochs", [*TRAIN, "--train-epochs", "99999999999999999999"]),
    Case(
        "huge-hidden-width",
        [*TRAIN, "--model", "mlp", "--data", "digits", "--hidden", "99999999999"],
    ),
    Case("huge-batch-size", [*TRAIN, "--batch-size", "99999999999999999999"]),
    Case("clock-1e400", [*TRAIN, "--clock-ns", "1e400"]),
    # ---- outputs
    Case("out-is-a-file", [*RUN, "--until", "train", "--out", "taken"], text("taken", "mine\n")),
    Case(
        "out-under-a-file",
        [*RUN, "--until", "train", "--out", "taken/run"],
        text("taken", "mine\n"),
    ),
    Case("out-read-only", [*RUN, "--until", "train", "--out", "ro/run"], read_only_dir),
    # ---- graphs made elsewhere: fitc verify --onnx
    Case(
        "onnx-random-bytes",
        ["verify", "--onnx", "g.onnx", "--inputs", "X.npy"],
        lambda d, r: (raw("g.onnx", os.urandom(900))(d, r), with_X("X.npy", X)(d, r)),
    ),
    Case(
        "onnx-empty-file",
        ["verify", "--onnx", "g.onnx", "--inputs", "X.npy"],
        lambda d, r: (raw("g.onnx", b"")(d, r), with_X("X.npy", X)(d, r)),
    ),
    Case(
        "onnx-float-graph-no-quantizers",
        ["verify", "--onnx", "float.onnx", "--inputs", "X.npy"],
        float_onnx,
    ),
    Case(
        "onnx-unsupported-op",
        ["verify", "--onnx", "odd.onnx", "--inputs", "X.npy"],
        unsupported_op_onnx,
        needs_run=True,
    ),
    Case(
        "onnx-wrong-input-shape",
        ["verify", "--onnx", "model.onnx", "--inputs", "X.npy"],
        copy_qonnx((20, 3)),
        needs_run=True,
    ),
    Case(
        "onnx-inputs-nan",
        ["verify", "--onnx", "model.onnx", "--inputs", "X.npy"],
        lambda d, r: (
            copy_qonnx((20, 64))(d, r),
            with_X("X.npy", np.full((20, 64), np.nan, "float32"))(d, r),
        ),
        needs_run=True,
    ),
    Case(
        "onnx-inputs-not-npy",
        ["verify", "--onnx", "model.onnx", "--inputs", "X.npy"],
        lambda d, r: (copy_qonnx((20, 64))(d, r), raw("X.npy", b"not an array")(d, r)),
        needs_run=True,
    ),
    Case(
        "onnx-string-labels",
        ["verify", "--onnx", "model.onnx", "--inputs", "X.npy", "--labels", "y.npy"],
        copy_qonnx((20, 64), np.array(["cat"] * 20)),
        needs_run=True,
    ),
    # ---- a finished run with a damaged artifact: `verify` (a read) must refuse it
    Case("run-json-corrupt", ["verify", "run"], edit_run("run.json", garbage), True),
    Case("plan-json-corrupt", ["verify", "run"], edit_run("plan.json", garbage), True),
    Case("plan-json-truncated", ["verify", "run"], edit_run("plan.json", truncate), True),
    Case(
        "plan-json-bad-bits",
        ["verify", "run"],
        edit_run("plan.json", plan_edit(weight_bits=99)),
        True,
    ),
    Case(
        "plan-json-hand-edited",
        ["verify", "run"],
        edit_run("plan.json", plan_edit(weight_bits=8)),
        True,
    ),
    Case("model-pt-corrupt", ["verify", "run"], edit_run("model.pt", garbage), True),
    Case(
        "model-pt-wrong-shapes", ["verify", "run"], edit_run("model.pt", torch_wrong_shapes), True
    ),
    Case("model-pt-pickled-object", ["verify", "run"], edit_run("model.pt", torch_pickle), True),
    Case("float-pt-corrupt", ["verify", "run"], edit_run("float.pt", garbage), True),
    Case("float-pt-truncated", ["verify", "run"], edit_run("float.pt", truncate), True),
    Case(
        "float-pt-wrong-shapes", ["verify", "run"], edit_run("float.pt", torch_wrong_shapes), True
    ),
    # A command that writes redoes a stage whose outputs were altered, with a warning naming the
    # file (the rule; tests/fitc/test_rundir_integrity.py checks it).
    Case("not-a-run-directory", ["verify", "empty"], lambda d, r: (d / "empty").mkdir()),
    Case("lower-part-nonsense", ["lower", "run", "--part", "nonsense"], copy_run, needs_run=True),
    Case(
        "lower-reuse-factor-hls4ml-would-change",
        ["lower", "run", "--strategy", "Resource", "--reuse-factor", "3"],
        copy_run,
        needs_run=True,
    ),
    # ---- sweeps
    Case("sweep-budget-fraction", ["sweep", "--budget", "dsp=1.5", "--out", "s"]),
    Case("sweep-unknown-device", ["sweep", "--budget", "device=nonsense:0.5", "--out", "s"]),
    Case("sweep-fraction-1e400", ["sweep", "--budget", "device=xc7z020:1e400", "--out", "s"]),
    Case("sweep-unknown-strategy", ["sweep", "--strategy", "fastest", "--out", "s"]),
    Case(
        "sweep-da-reuse-factor", ["sweep", "--strategy", "da", "--reuse-factor", "2", "--out", "s"]
    ),
    Case("sweep-workers-0", ["sweep", "--workers", "0", "--out", "s"]),
    Case("sweep-worker-without-ledger", ["sweep", "worker"]),
    Case("report-not-a-run", ["report", "empty"], lambda d, r: (d / "empty").mkdir()),
]


def _params():
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        yield pytest.param(c, id=c.id, marks=marks)


def test_the_catalogue_is_big_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@dataclass
class Outcome:
    result: subprocess.CompletedProcess
    before: dict[str, str]
    after: dict[str, str]


TEST_NAME = "test_bad_input_is_one_line_exit_2_and_changes_nothing"


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Outcome | BaseException]:
    """Every selected case, run up to a few at a time (each is a fresh Python process that spends
    most of its time importing torch): its setup, a snapshot, the command, a snapshot."""
    cases = [
        item.callspec.params["case"]
        for item in request.session.items
        if getattr(item, "originalname", None) == TEST_NAME
    ]
    run = request.getfixturevalue("finished_run") if any(c.needs_run for c in cases) else None
    works = {c.id: tmp_path_factory.mktemp(c.id) / "case" for c in cases}

    def execute(case: Case) -> Outcome | BaseException:
        work = works[case.id]
        try:
            work.mkdir()
            if case.setup is not None:
                case.setup(work, run)
            before = snapshot(work)
            try:
                result = _fitc(*case.argv, cwd=work)
            finally:
                undo_read_only(work)
            return Outcome(result, before, snapshot(work))
        except BaseException as e:  # pytest.skip too: raised again in the case's own test
            return e

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(zip([c.id for c in cases], pool.map(execute, cases), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_params()))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: Case, outcomes):
    out = outcomes[case.id]
    if isinstance(out, BaseException):
        raise out
    res, before, after = out.result, out.before, out.after
    shown = (
        f"$ fitc {' '.join(case.argv)}\n--- stdout\n{res.stdout[-2000:]}\n"
        f"--- stderr\n{res.stderr[-4000:]}"
    )
    assert "Traceback" not in res.stderr + res.stdout, shown
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"fitc {case.command}: error: "), shown
    assert [ln for ln in lines if ": error:" in ln] == [lines[-1]], shown
    assert res.returncode == 2, shown
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    removed = sorted(before.keys() - after.keys())
    added = sorted(k for k in after.keys() - before.keys() if Path(k).name not in HOUSEKEEPING)
    assert (changed, removed, added) == ([], [], []), shown


# ---------------------------------------------------------------------------------------------
# The checks behind some cases, against their references


def test_valid_reuse_factors_are_hls4mls():
    """Reference: hls4ml's own ``get_valid_reuse_factors`` (what ``set_closest_reuse_factor``
    keeps) for every layer size up to 40 × 40 and a few real ones."""
    from hls4ml.backends import get_backend

    from fitc.artifacts import valid_reuse_factors

    backend = get_backend("Vitis")
    sizes = [(a, b) for a in range(1, 41) for b in range(1, 41)] + [(64, 64), (144, 16), (576, 32)]
    for n_in, n_out in sizes:
        assert valid_reuse_factors(n_in, n_out) == backend.get_valid_reuse_factors(n_in, n_out)


def test_a_reuse_factor_hls4ml_would_change_is_refused_with_the_valid_ones():
    from fitc.artifacts import HardwareConfig, check_reuse_factor
    from fitc.errors import ConfigError

    layers = [("fc1", 64, 64), ("fc4", 32, 10)]
    with pytest.raises(ConfigError) as e:
        check_reuse_factor(HardwareConfig(strategy="Resource", reuse_factor=3), layers)
    msg = str(e.value)
    assert "fc1 (64×64): 1, 2, 4, 8, 16, 32, 64, 128," in msg and "\n" not in msg
    assert "fc4 (32×10): 1, 2, 4, 8, 16, 32, 64, 160, 320" in msg
    check_reuse_factor(HardwareConfig(strategy="Resource", reuse_factor=64), layers)
    check_reuse_factor(HardwareConfig(strategy="Latency", reuse_factor=3), layers)  # any is kept


@pytest.mark.parametrize(
    "part",
    [
        "xc7z020clg400-1",
        "xc7z020-clg400-1",
        "xcu250-figd2104-2L-e",
        "xczu9eg-ffvb1156-2-e",
        "xcvu9p-flga2104-2L-e",
        "xc7a35tcpg236-1",
        "xck26-sfvc784-2LV-c",
        "xcvc1902-vsva2197-2MP-e-S",
        "xqzu9eg-ffrb1156-1-i",
        "xa7a35t-cpg236-1I",
        "XC7Z020CLG400-1",
    ],
)
def test_real_part_numbers_are_accepted(part):
    from fitc.artifacts import check_part
    from fitc.config import RunConfig

    assert check_part(part) == part
    assert RunConfig(part=part).hardware().part == part


@pytest.mark.parametrize(
    "part", ["nonsense", "pynq-z2", "xc", "xc-1", "7z020", "xc7z020 clg400", "xc7z020;rm -rf", ""]
)
def test_garbage_part_numbers_are_refused(part):
    from fitc.config import RunConfig
    from fitc.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a Xilinx part number"):
        RunConfig(part=part)
