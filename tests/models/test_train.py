"""Float training: deterministic, keeps the best-validation weights, reaches the accuracy bar."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fitc.errors import ConfigError, DataError
from fitc.models import build_model, evaluate, get_spec, load_data, train_float


@pytest.fixture(scope="module")
def digits():
    return load_data(get_spec("digits-mlp"))


def test_digits_mlp_reaches_95_percent(digits):
    model = build_model("digits-mlp")
    t0 = time.perf_counter()
    metrics = train_float(model, digits, progress=False)
    elapsed = time.perf_counter() - t0
    assert metrics["float_test_accuracy"] >= 0.95
    assert set(metrics) >= {
        "float_train_accuracy",
        "float_val_accuracy",
        "float_test_accuracy",
        "epochs",
    }
    # the returned weights are the kept ones
    assert evaluate(model, digits.X_test, digits.y_test) == metrics["float_test_accuracy"]
    assert evaluate(model, digits.X_val, digits.y_val) == metrics["float_val_accuracy"]
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"]
    assert elapsed < 60  # ≈ 1.5 s on an idle 2-core machine


def test_same_seed_same_weights(digits):
    runs = []
    for _ in range(2):
        model = build_model("digits-mlp", seed=3)
        m = train_float(model, digits, epochs=3, seed=3, progress=False)
        runs.append((model.state_dict(), m))
    (a, ma), (b, mb) = runs
    assert ma == mb
    for k in a:
        assert torch.equal(a[k], b[k]), k
    other = build_model("digits-mlp", seed=3)
    train_float(other, digits, epochs=3, seed=4, progress=False)
    assert not all(torch.equal(a[k], other.state_dict()[k]) for k in a)


def test_cnn_trains_deterministically():
    data = load_data(get_spec("digits-cnn"))
    states = []
    for _ in range(2):
        model = build_model("digits-cnn")
        m = train_float(model, data, epochs=2, progress=False)
        states.append(model.state_dict())
    assert m["float_test_accuracy"] > 0.5
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_bad_hyper_parameters(digits):
    model = build_model("digits-mlp")
    with pytest.raises(ConfigError, match="epochs"):
        train_float(model, digits, epochs=0, progress=False)
    with pytest.raises(ConfigError, match="learning rate"):
        train_float(model, digits, lr=-1.0, progress=False)
    with pytest.raises(ConfigError, match="batch size"):
        train_float(model, digits, batch_size=0, progress=False)


def test_evaluate():
    model = torch.nn.Sequential(torch.nn.Identity())
    X = np.eye(3, dtype=np.float32)
    assert evaluate(model, X, np.array([0, 1, 2])) == 1.0
    assert evaluate(model, X, np.array([0, 1, 0]), batch_size=2) == pytest.approx(2 / 3)
    with pytest.raises(DataError):
        evaluate(model, X, np.array([0, 1]))


@pytest.mark.slow
def test_resnet8_trains_deterministically_on_a_subset():
    from fitc.models import Dataset

    full = load_data(get_spec("resnet8"))
    sub = Dataset(
        name="synthetic-cifar-subset",
        X_train=full.X_train[:96],
        y_train=full.y_train[:96],
        X_val=full.X_val[:32],
        y_val=full.y_val[:32],
        X_test=full.X_test[:32],
        y_test=full.y_test[:32],
        num_classes=10,
        synthetic=True,
    )
    states = []
    for _ in range(2):
        model = build_model("resnet8", seed=1)
        train_float(model, sub, epochs=1, batch_size=32, seed=1, progress=False, num_threads=2)
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_thread_setting_is_restored(digits):
    before = torch.get_num_threads()
    train_float(build_model("digits-mlp"), digits, epochs=1, progress=False)
    assert torch.get_num_threads() == before


def test_progress_bar_runs(digits, capsys):
    train_float(build_model("digits-mlp"), digits, epochs=1, progress=True)
