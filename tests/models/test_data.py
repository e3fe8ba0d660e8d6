"""Datasets: built-in shapes, split and standardisation; every bad .npz case gives a DataError."""

from __future__ import annotations

import numpy as np
import pytest

from fitc.errors import DataError
from fitc.models import BUILTIN_DATASETS, Dataset, get_spec, load_data
from fitc.models.zoo import ModelSpec

JET = get_spec("jet-mlp")
CNN = get_spec("digits-cnn")


def _npz(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _good(n=60, d=16, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % classes


# ------------------------------------------------------------------------------------------
# Built-in data


def test_builtin_names():
    assert set(BUILTIN_DATASETS) == {"digits", "wine", "breast-cancer", "synthetic-cifar"}


@pytest.mark.parametrize(
    "model, shape, n",
    [("digits-mlp", (64,), 1797), ("digits-cnn", (1, 8, 8), 1797)],
)
def test_digits(model, shape, n):
    d = load_data(get_spec(model))
    assert isinstance(d, Dataset) and d.name == "digits" and not d.synthetic
    assert d.num_classes == 10
    sizes = (len(d.y_train), len(d.y_val), len(d.y_test))
    assert sum(sizes) == n and sizes == (1078, 360, 359)
    for X, y in ((d.X_train, d.y_train), (d.X_val, d.y_val), (d.X_test, d.y_test)):
        assert X.shape[1:] == shape and X.dtype == np.float32 and y.dtype == np.int64
        assert set(np.unique(y)) == set(range(10))  # stratified: every class in every split
    flat = d.X_train.reshape(len(d.X_train), -1)
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=1e-5)
    std = flat.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-4) | (std == 0))  # constant pixels are only centred
    assert np.isfinite(d.X_val).all() and np.isfinite(d.X_test).all()


def test_mlp_and_cnn_see_the_same_digits():
    a, b = load_data(get_spec("digits-mlp")), load_data(get_spec("digits-cnn"))
    assert np.array_equal(a.X_train, b.X_train.reshape(len(b.X_train), 64))
    assert np.array_equal(a.y_test, b.y_test)


def test_split_is_seeded():
    spec = get_spec("digits-mlp")
    a, b, c = load_data(spec, seed=0), load_data(spec, seed=0), load_data(spec, seed=1)
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.y_train, c.y_train)


@pytest.mark.parametrize("name, features, classes", [("wine", 13, 3), ("breast-cancer", 30, 2)])
def test_tabular_builtins(name, features, classes):
    spec = ModelSpec(name=f"{name}-mlp", input_shape=(features,), num_classes=classes)
    d = load_data(spec, name)
    assert d.X_train.shape[1:] == (features,) and d.num_classes == classes
    np.testing.assert_allclose(d.X_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(d.X_train.std(axis=0), 1, atol=1e-4)


def test_synthetic_cifar():
    spec = get_spec("resnet8")
    d = load_data(spec)
    assert d.synthetic and d.name == "synthetic-cifar"
    assert d.X_train.shape == (1800, 3, 32, 32) and len(d.y_val) == 600 and len(d.y_test) == 600
    assert set(np.unique(d.y_train)) == set(range(10))
    again = load_data(spec)
    assert np.array_equal(d.X_test, again.X_test)


def test_builtin_shape_mismatch():
    with pytest.raises(DataError, match=r"expects inputs of shape \(N, 16\).*got \(1797, 64\)"):
        load_data(JET, "digits")


def test_builtin_labels_out_of_range_for_model():
    spec = ModelSpec(name="tiny", input_shape=(64,), num_classes=5)
    with pytest.raises(DataError, match=r"labels must be in \[0, 5\)"):
        load_data(spec, "digits")


def test_model_without_default_data():
    with pytest.raises(DataError, match="jet-mlp has no built-in dataset; pass a .npz"):
        load_data(JET)


def test_unknown_dataset_name_suggests():
    with pytest.raises(DataError, match="did you mean 'digits'"):
        load_data(get_spec("digits-mlp"), "digit")


# ------------------------------------------------------------------------------------------
# User .npz: good files


def test_npz_split_and_standardise(tmp_path):
    X, y = _good(n=100)
    X = X * 5 + 3
    d = load_data(JET, str(_npz(tmp_path, X=X, y=y)))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (60, 20, 20)
    np.testing.assert_allclose(d.X_train.mean(axis=0), 0, atol=1e-5)
    assert not d.synthetic


def test_npz_with_test_set(tmp_path):
    X, y = _good(n=80)
    Xt, yt = _good(n=10, seed=1)
    d = load_data(JET, _npz(tmp_path, X=X, y=y, X_test=Xt, y_test=yt))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (60, 20, 10)
    assert sorted(d.y_test.tolist()) == sorted(yt.tolist())


def test_npz_label_forms(tmp_path):
    X, y = _good(n=50)
    ref = load_data(JET, _npz(tmp_path, "a.npz", X=X, y=y))
    for i, labels in enumerate((y.astype(np.float64), y.reshape(-1, 1), np.eye(5)[y])):
        d = load_data(JET, _npz(tmp_path, f"b{i}.npz", X=X, y=labels))
        assert np.array_equal(d.y_train, ref.y_train) and np.array_equal(d.X_val, ref.X_val)


def test_npz_flat_or_unit_dims_are_reshaped(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(50) % 10
    for i, shape in enumerate([(50, 64), (50, 8, 8), (50, 1, 8, 8)]):
        X = rng.integers(0, 16, size=shape).astype(np.int16)
        d = load_data(CNN, _npz(tmp_path, f"c{i}.npz", X=X, y=y))
        assert d.X_train.shape[1:] == (1, 8, 8) and d.X_train.dtype == np.float32


# ------------------------------------------------------------------------------------------
# User .npz: every bad case names the file and the key


def _bad(tmp_path, match, spec=JET, **arrays):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_data(spec, str(path))
    assert str(path) in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_data(JET, str(tmp_path / "nope.npz"))


def test_directory_is_not_a_file(tmp_path):
    d = tmp_path / "dir.npz"
    d.mkdir()
    with pytest.raises(DataError, match="not a file"):
        load_data(JET, str(d))


def test_not_an_npz(tmp_path):
    p = tmp_path / "text.npz"
    p.write_text("hello")
    with pytest.raises(DataError, match="not an .npz archive"):
        load_data(JET, str(p))


def test_truncated_npz(tmp_path):
    X, y = _good()
    p = _npz(tmp_path, X=X, y=y)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="not an .npz archive"):
        load_data(JET, str(p))


def test_corrupt_npz_member(tmp_path):
    X, y = _good()
    p = tmp_path / "c.npz"
    np.savez_compressed(p, X=X, y=y)
    raw = bytearray(p.read_bytes())
    raw[400:440] = bytes(40)  # inside X's compressed data: the CRC check fails
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"c.npz: key 'X' cannot be read.*corrupt"):
        load_data(JET, str(p))


def test_single_npy(tmp_path):
    p = tmp_path / "x.npz"
    with open(p, "wb") as f:
        np.save(f, np.zeros((4, 16)))
    with pytest.raises(DataError, match="single .npy array"):
        load_data(JET, str(p))


def test_pickled_object_array(tmp_path):
    X, y = _good()
    obj = np.empty(len(y), dtype=object)
    obj[:] = [int(v) for v in y]
    _bad(tmp_path, "key 'y' cannot be read", X=X, y=obj)


def test_missing_X(tmp_path):
    _, y = _good()
    _bad(tmp_path, "missing key 'X'", y=y)


def test_missing_y(tmp_path):
    X, _ = _good()
    _bad(tmp_path, r"missing key 'y' \(found keys: \['X'\]\)", X=X)


def test_X_test_without_y_test(tmp_path):
    X, y = _good()
    _bad(tmp_path, "has 'X_test' but no 'y_test'", X=X, y=y, X_test=X)


def test_y_test_without_X_test(tmp_path):
    X, y = _good()
    _bad(tmp_path, "has 'y_test' but no 'X_test'", X=X, y=y, y_test=y)


def test_wrong_feature_count(tmp_path):
    X, y = _good(d=15)
    _bad(tmp_path, r"key 'X'.*expects inputs of shape \(N, 16\).*got \(60, 15\)", X=X, y=y)


def test_wrong_ndim(tmp_path):
    X, y = _good()
    _bad(tmp_path, r"key 'X'.*sample axis", X=X[:, 0], y=y)
    _bad(tmp_path, r"key 'X'.*expects inputs", X=X.reshape(60, 4, 2, 2), y=y)


def test_channels_last_hint(tmp_path):
    spec = ModelSpec(name="rgb", input_shape=(3, 8, 8), num_classes=2)
    X = np.zeros((10, 8, 8, 3), dtype=np.float32)
    _bad(tmp_path, "channels-last", spec=spec, X=X, y=np.arange(10) % 2)


def test_wrong_test_shape(tmp_path):
    X, y = _good()
    _bad(tmp_path, r"key 'X_test'.*got \(60, 8\)", X=X, y=y, X_test=X[:, :8], y_test=y)


def test_non_numeric_X(tmp_path):
    X, y = _good()
    _bad(tmp_path, r"key 'X'.*numeric.*dtype <U", X=X.astype(str), y=y)


def test_complex_X(tmp_path):
    X, y = _good()
    _bad(tmp_path, r"key 'X'.*numeric", X=X.astype(np.complex64), y=y)


def test_non_numeric_labels(tmp_path):
    X, y = _good()
    _bad(tmp_path, r"key 'y'.*integers.*dtype <U", X=X, y=y.astype(str))


def test_non_integer_labels(tmp_path):
    X, y = _good()
    _bad(tmp_path, r"key 'y'.*integer class ids, found 0.5", X=X, y=y + 0.5)


def test_bad_label_shape(tmp_path):
    X, y = _good()
    _bad(tmp_path, r"key 'y'.*shape \(N,\)", X=X, y=np.stack([y, y, y], axis=1))


def test_bad_one_hot(tmp_path):
    X, y = _good()
    onehot = np.eye(5)[y]
    onehot[0, :] = 1
    _bad(tmp_path, r"key 'y'.*one-hot", X=X, y=onehot)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_inputs(tmp_path, bad):
    X, y = _good()
    X[3, 7] = bad
    _bad(tmp_path, r"key 'X'.*1 NaN/inf values \(first at index \(3, 7\)\)", X=X, y=y)


def test_nan_in_test_inputs(tmp_path):
    X, y = _good()
    Xt = X.copy()
    Xt[0, 0] = np.nan
    _bad(tmp_path, r"key 'X_test'.*NaN/inf", X=X, y=y, X_test=Xt, y_test=y)


def test_nan_labels(tmp_path):
    X, y = _good()
    yf = y.astype(np.float32)
    yf[2] = np.nan
    _bad(tmp_path, r"key 'y'.*NaN/inf", X=X, y=yf)


def test_float32_overflow(tmp_path):
    X, y = _good()
    X = X.astype(np.float64)
    X[0, 0] = 1e300
    _bad(tmp_path, r"key 'X'.*overflow float32", X=X, y=y)


@pytest.mark.parametrize("label", [5, -1])
def test_labels_out_of_range(tmp_path, label):
    X, y = _good()
    y = y.copy()
    y[4] = label
    _bad(tmp_path, rf"key 'y'.*in \[0, 5\) for model jet-mlp, found {label}", X=X, y=y)


def test_test_labels_out_of_range(tmp_path):
    X, y = _good()
    _bad(tmp_path, r"key 'y_test'.*in \[0, 5\)", X=X, y=y, X_test=X, y_test=y + 1)


def test_empty_X(tmp_path):
    _bad(tmp_path, r"key 'X'.*empty", X=np.zeros((0, 16), np.float32), y=np.zeros(0, np.int64))


def test_empty_features(tmp_path):
    _bad(tmp_path, r"key 'X'.*empty", X=np.zeros((10, 0), np.float32), y=np.zeros(10, np.int64))


def test_empty_y(tmp_path):
    X, _ = _good()
    _bad(tmp_path, r"key 'y'.*empty", X=X, y=np.zeros(0, np.int64))


def test_length_mismatch(tmp_path):
    X, y = _good()
    _bad(tmp_path, r"'X' has 60 samples but 'y' has 59", X=X, y=y[:-1])


def test_test_length_mismatch(tmp_path):
    X, y = _good()
    _bad(
        tmp_path, r"'X_test' has 60 samples but 'y_test' has 30", X=X, y=y, X_test=X, y_test=y[:30]
    )


def test_too_few_samples(tmp_path):
    X, y = _good(n=2)
    _bad(tmp_path, "too few to split", X=X, y=y)


def test_tiny_classes_fall_back_to_random_split(tmp_path):
    X, y = _good(n=20)
    y = np.zeros(20, np.int64)
    y[0] = 1  # a class with one sample cannot be stratified
    d = load_data(JET, _npz(tmp_path, X=X, y=y))
    assert len(d.y_train) + len(d.y_val) + len(d.y_test) == 20
