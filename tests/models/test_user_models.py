"""Your own network, your own data: models from files and modules, trained weights, the Python API.

The networks are in ``user/user_models.py``, written the way users write them (Sequential and
ordinary forward methods, batch norm, dropout, Conv1d, a trailing softmax).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fitc
from fitc.config import RunConfig
from fitc.errors import DataError, ModelSourceError, UnknownModelError, UnsupportedLayerError
from fitc.models import compile_float, evaluate, load_weights, resolve_model
from fitc.pipeline import open_run, run_pipeline

USER = Path(__file__).parent / "user" / "user_models.py"


def _features(path: Path, n: int = 1200, d: int = 40, k: int = 4, seed: int = 0) -> Path:
    """A flat-feature 4-class task no zoo entry matches (Gaussian clusters in 40 dimensions)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 0.6
    y = rng.integers(0, k, size=n)
    X = (means[y] + rng.normal(size=(n, d))).astype(np.float32)
    np.savez(path, X=X, y=y)
    return path


def _signals(path: Path, n: int = 600, seed: int = 0) -> Path:
    """Two-channel signals of length 16; the class is the frequency of channel 0."""
    rng = np.random.default_rng(seed)
    t = np.arange(16)
    y = rng.integers(0, 3, size=n)
    f = np.array([1, 2, 4])[y]
    phase = rng.uniform(0, 6, size=(n, 1))
    X = np.stack(
        [np.sin(2 * np.pi * f[:, None] * t / 16 + phase), 0.3 * rng.normal(size=(n, 16))], 1
    )
    X = X + 0.2 * rng.normal(size=X.shape)
    np.savez(path, X=X.astype(np.float32), y=y)
    return path


def _images(path: Path, n: int = 800, seed: int = 0) -> Path:
    """1×8×8 images: the class is which quadrant holds a bright blob."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    X = 0.3 * rng.normal(size=(n, 1, 8, 8))
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        X[i, 0, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 1.0
    np.savez(path, X=X.astype(np.float32), y=y)
    return path


def fitc_cli(*args: str, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "fitc.cli", *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
    )


def _assert_exact(m: dict) -> None:
    for hop in m["equivalence"]["hops"]:
        assert hop["max_abs_diff"] == 0 and hop["identical_rows"] == 1, hop
    assert m["emulation"]["max_abs_diff"] == 0 and m["emulation"]["identical_rows"] == 1


# ---------------------------------------------------------------------------------------------
# Whole runs on users' networks (compile the hls4ml emulation)


@pytest.mark.compile
@pytest.mark.slow
def test_user_mlp_with_batchnorm_and_dropout_from_a_file(tmp_path):
    data = _features(tmp_path / "features.npz")
    user = tmp_path / "nets" / "user_models.py"
    user.parent.mkdir()
    shutil.copy(USER, user)
    out = tmp_path / "run"
    res = fitc_cli(
        "run", "--model", f"{user}:build", "--data", str(data), "--budget", "size=1/32",
        "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    m = record["metrics"]
    assert m["achieved_size"] <= 1 / 32
    assert m["achieved_size"] == m["planned_cost"]
    _assert_exact(m)
    assert m["finetuned_test_accuracy"] >= m["float_test_accuracy"] - 0.02
    assert any("folded BatchNorm1d" in c for c in m["compiled"])
    assert any("removed Dropout" in c for c in m["compiled"])
    src = record["model_source"]
    assert src["kind"] == "file" and src["factory"] == "build" and len(src["sha256"]) == 64

    # Every later command reopens the run from the recorded source.
    for cmd in (("estimate", str(out)), ("verify", str(out)), ("report", str(out))):
        res = fitc_cli(*cmd)
        assert res.returncode == 0, (cmd, res.stderr[-2000:])
    res = fitc_cli("sensitivity", str(out))
    assert res.returncode == 0 and "0" in res.stdout

    # The file changed: a one-line error, nothing rerun.
    before = (out / "run.json").read_text()
    user.write_text(user.read_text() + "\n# edited\n")
    res = fitc_cli("estimate", str(out))
    assert res.returncode == 2 and "changed since this run was made" in res.stderr
    assert "Traceback" not in res.stderr
    user.unlink()
    res = fitc_cli("verify", str(out))
    assert res.returncode == 2 and "no longer exists" in res.stderr
    assert (out / "run.json").read_text() == before


@pytest.mark.compile
@pytest.mark.slow
def test_user_conv1d_model_with_softmax(tmp_path):
    data = _signals(tmp_path / "signals.npz")
    cfg = RunConfig(
        model=f"{USER}:Conv1dNet", data=str(data), budget=("size=1/16",), out=str(tmp_path / "r"),
        finetune_epochs=15, progress=False,
    )  # fmt: skip
    run = run_pipeline(cfg, until="lower")
    m = run.metrics
    _assert_exact(m)
    assert m["achieved_size"] <= 1 / 16
    assert m["finetuned_test_accuracy"] >= m["float_test_accuracy"] - 0.02
    assert run.spec.input_shape == (2, 1, 16)  # (C, L) runs as (C, 1, L)
    assert any("dropped trailing softmax" in c for c in m["compiled"])


@pytest.mark.compile
@pytest.mark.slow
def test_user_cnn_with_batchnorm_and_global_average_pooling(tmp_path):
    data = _images(tmp_path / "images.npz")
    cfg = RunConfig(
        model=f"{USER}:SmallCNN", data=str(data), budget=("size=1/8",), out=str(tmp_path / "r"),
        finetune_epochs=15, progress=False,
    )  # fmt: skip
    run = run_pipeline(cfg, until="lower")
    m = run.metrics
    _assert_exact(m)
    assert m["achieved_size"] <= 1 / 8
    assert m["finetuned_test_accuracy"] >= m["float_test_accuracy"] - 0.02


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["wine", "breast-cancer"])
def test_generic_mlp_on_builtin_tabular_data(tmp_path, dataset):
    out = tmp_path / dataset
    res = fitc_cli("run", "--model", "mlp", "--data", dataset, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "run.json").read_text())["metrics"]
    _assert_exact(m)
    assert m["finetuned_test_accuracy"] > 0.85


# ---------------------------------------------------------------------------------------------
# Trained weights and the Python API


def _train_outside(model: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int = 30) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).long()
    model.train()
    for _ in range(epochs):
        for idx in torch.split(torch.randperm(len(Xt)), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()


@pytest.mark.parametrize("checkpoint", [False, True])
def test_weights_skip_training_and_keep_the_users_accuracy(tmp_path, checkpoint):
    sys.path.insert(0, str(USER.parent))
    try:
        from user_models import build
    finally:
        sys.path.remove(str(USER.parent))
    data = _features(tmp_path / "features.npz")
    cfg = RunConfig(model=f"{USER}:build", data=str(data), out=str(tmp_path / "r"), progress=False)
    probe = open_run(cfg)  # the split fitc will use: train on it outside fitc, as a user would
    model = build()
    _train_outside(model, probe.data.X_train, probe.data.y_train)
    state = model.state_dict()
    torch.save({"epoch": 3, "model_state_dict": state} if checkpoint else state, tmp_path / "w.pt")

    run = run_pipeline(cfg.replace(weights=str(tmp_path / "w.pt")), until="train")
    m = run.metrics
    assert "epochs" not in m and len(m["weights_sha256"]) == 64  # no training happened
    by_hand = evaluate(model, probe.data.X_test, probe.data.y_test)
    assert m["float_test_accuracy_as_written"] == by_hand
    assert abs(m["float_test_accuracy"] - by_hand) <= 1 / len(probe.data.y_test)  # BN folded


def test_compress_an_nn_module_on_arrays_and_reopen_it(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 12)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + 2 * (X[:, 2] > 0)
    net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run = fitc.compress(
        net, (X, y), budget="size=1/32", out=tmp_path / "api", train=True,
        finetune_epochs=5, until="export", progress=False,
    )  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # not modified
    assert run.metrics["achieved_size"] <= 1 / 32
    assert run.qonnx_path is not None and run.qonnx_path.is_file()
    assert run.metrics["float_test_accuracy"] > 0.8
    for hop in run.metrics["equivalence"]["hops"]:
        assert hop["max_abs_diff"] == 0
    again = fitc.load_run(tmp_path / "api", model=net)
    assert again.plan == run.plan
    with pytest.raises(ModelSourceError, match="handed in from Python"):
        fitc.load_run(tmp_path / "api")


# ---------------------------------------------------------------------------------------------
# Refusals: one clear error each, before any work


def test_unsupported_layer_names_the_module_and_the_supported_set(tmp_path):
    data = _features(tmp_path / "f.npz")
    with pytest.raises(UnsupportedLayerError, match=r"module 1 \(GELU\).*BatchNorm1d"):
        open_run(RunConfig(model=f"{USER}:with_gelu", data=str(data), out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "ref, error, match",
    [
        (f"{USER}:raises", ModelSourceError, "raised ValueError: this factory is broken"),
        (f"{USER}:not_a_module", ModelSourceError, "returned dict, not a torch.nn.Module"),
        (f"{USER}:NOT_CALLABLE", ModelSourceError, "not a callable"),
        (f"{USER}:biuld", ModelSourceError, "did you mean 'build'"),
        ("no/such/file.py:build", ModelSourceError, "not found"),
        (str(USER), UnknownModelError, "add the factory: FILE.py:build"),
        ("no_such_package.nets:build", ModelSourceError, "cannot be found"),
        ("digits-mpl", UnknownModelError, "did you mean 'digits-mlp'"),
    ],
)
def test_bad_model_references(ref, error, match):
    with pytest.raises(error, match=match):
        resolve_model(ref).build()


def test_model_args_reach_the_factory_and_bad_ones_are_named(tmp_path):
    src = resolve_model(f"{USER}:build", {"n_in": 12, "width": 8})
    assert src.build()[0].weight.shape == (8, 12)
    with pytest.raises(ModelSourceError, match="unexpected keyword argument 'depth'"):
        resolve_model(f"{USER}:build", {"depth": 3}).build()


def test_weights_with_wrong_keys_or_shapes_are_named(tmp_path):
    sys.path.insert(0, str(USER.parent))
    try:
        from user_models import build
    finally:
        sys.path.remove(str(USER.parent))
    state = build().state_dict()
    bad = dict(state)
    bad["extra.weight"] = torch.zeros(1)
    del bad["0.bias"]
    bad["4.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ModelSourceError) as e:
        load_weights(build(), tmp_path / "bad.pt")
    msg = str(e.value)
    assert "missing keys: 0.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "4.weight (3, 3) vs (16, 32)" in msg
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelSourceError, match="cannot be read as a state dict"):
        load_weights(build(), tmp_path / "junk.pt")


def test_data_the_model_rejects_shows_both_shapes(tmp_path):
    data = _features(tmp_path / "f.npz")
    with pytest.raises(DataError, match=r"samples have shape \(N, 40\).*Conv1d\(in_channels=2\)"):
        open_run(RunConfig(model=f"{USER}:Conv1dNet", data=str(data), out=str(tmp_path / "r")))
    X, y = np.random.default_rng(0).normal(size=(100, 40)), np.arange(100) % 7
    np.savez(tmp_path / "seven.npz", X=X, y=y)
    with pytest.raises(DataError, match="outputs 4 class scores but the labels"):
        open_run(RunConfig(model=f"{USER}:build", data=str(tmp_path / "seven.npz")))


def test_cli_refusals_are_one_line(tmp_path):
    res = fitc_cli("run", "--model", "mymodel.py", "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "FILE.py:build" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# Compiling: the function is unchanged


def test_compiled_network_computes_the_same_function():
    sys.path.insert(0, str(USER.parent))
    try:
        from user_models import Conv1dNet, SmallCNN, build
    finally:
        sys.path.remove(str(USER.parent))
    torch.manual_seed(0)
    for model, shape in ((build(), (40,)), (SmallCNN(), (1, 8, 8)), (Conv1dNet(), (2, 16))):
        model.train()
        with torch.no_grad():  # non-trivial running statistics
            for _ in range(5):
                model(torch.randn(64, *shape) * 2 + 0.5)
        model.eval()
        comp = compile_float(model, shape)
        x = torch.randn(32, *shape)
        with torch.no_grad():
            want = model(x)
            got = comp.model(x.reshape(32, *comp.input_shape))
        if isinstance(model, Conv1dNet):  # softmax dropped: logits, same argmax
            assert torch.equal(want.argmax(1), got.argmax(1))
            assert torch.allclose(want, torch.softmax(got, 1), atol=1e-5)
        else:
            assert torch.allclose(want, got, atol=1e-5, rtol=1e-4)
        names = {n for n, _ in comp.model.named_modules()}
        assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.Dropout)
                       for m in comp.model.modules())  # fmt: skip
        assert "fc" in names or "7" in names  # qualified names kept
