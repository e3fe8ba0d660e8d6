"""Datasets: scikit-learn's shipped sets, a generated image task and validated user ``.npz`` files.

Contract:
- ``load_data(spec, data, seed)`` returns a :class:`Dataset` whose inputs are float32 arrays shaped
  ``(N, *spec.input_shape)`` and whose labels are int64 in ``[0, spec.num_classes)``.
- ``data`` is a built-in name (``BUILTIN_DATASETS``) or a path to an ``.npz`` with keys ``X``, ``y``
  and optionally ``X_test``, ``y_test``. ``None`` means ``spec.default_data``.
- The split is fixed by ``seed``: stratified 60/20/20 train/val/test; when the file brings its own
  test set, ``X``/``y`` are split 75/25 into train/val. Inputs are standardised per feature with the
  training set's mean and standard deviation (features with zero spread are only centred).
- Inputs are reshaped to the model's input shape when the per-sample element count matches (a flat
  ``(N, 64)`` array feeds a ``(1, 8, 8)`` CNN) or when they differ only by unit dimensions.
- Every bad input raises :class:`~fitc.errors.DataError` naming the file, the key and the value:
  not a file or not an npz, missing keys, ``X_test`` without ``y_test``, wrong shape or ndim,
  non-numeric dtype, non-integer labels, NaN/inf, labels out of range, empty arrays, length mismatch.
  Files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import difflib
import functools
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fitc.errors import DataError

from .zoo import ModelSpec

log = logging.getLogger(__name__)

__all__ = ["Dataset", "load_data", "BUILTIN_DATASETS", "make_synthetic_cifar", "spec_for_data"]

_TRAIN_FRACTION = 0.6
_VAL_FRACTION = 0.2
_SYNTHETIC_SEED = 20240601  # the generated task is fixed; ``seed`` only changes the split


@dataclass(frozen=True, eq=False)
class Dataset:
    """A split, standardised dataset. Inputs float32 ``(N, *input_shape)``, labels int64 ``(N,)``."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    synthetic: bool = False

    def __post_init__(self) -> None:
        for part in ("train", "val", "test"):
            X, y = getattr(self, f"X_{part}"), getattr(self, f"y_{part}")
            if X.dtype != np.float32 or y.dtype != np.int64:
                raise DataError(
                    f"dataset {self.name}: X_{part} must be float32 and y_{part} int64, "
                    f"got {X.dtype} and {y.dtype}"
                )
            if len(X) != len(y):
                raise DataError(
                    f"dataset {self.name}: X_{part} has {len(X)} samples, y_{part} {len(y)}"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X_train.shape[1:])


# ---------------------------------------------------------------------------------------------
# Built-in data


@functools.lru_cache(maxsize=1)
def make_synthetic_cifar(
    n_per_class: int = 300, seed: int = _SYNTHETIC_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """A learnable generated 10-class task on 3×32×32 images (not real data).

    Each class owns a smooth colour template (a few random low-frequency sinusoids per channel).
    A sample is its class template, circularly shifted by up to ±4 pixels, scaled by 0.7–1.3, plus a
    smooth random distractor field and white noise. Returns ``(X float32 (N,3,32,32), y int64)``.
    The result is cached; callers must not modify the returned arrays in place.
    """
    rng = np.random.default_rng(seed)
    n_classes, size = 10, 32
    grid = np.arange(size) / size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")

    def smooth_field(n_waves: int, max_freq: int) -> np.ndarray:
        field = np.zeros((3, size, size))
        for c in range(3):
            for _ in range(n_waves):
                fy, fx = rng.integers(0, max_freq + 1, size=2)
                phase = rng.uniform(0, 2 * np.pi)
                amp = rng.uniform(0.5, 1.0)
                field[c] += amp * np.cos(2 * np.pi * (fy * yy + fx * xx) + phase)
        return field / np.sqrt(n_waves)

    templates = np.stack([smooth_field(4, 3) for _ in range(n_classes)])
    n = n_per_class * n_classes
    y = np.repeat(np.arange(n_classes), n_per_class)
    rng.shuffle(y)
    X = np.empty((n, 3, size, size), dtype=np.float32)
    shifts = rng.integers(-4, 5, size=(n, 2))
    scales = rng.uniform(0.7, 1.3, size=n)
    for i in range(n):
        img = np.roll(templates[y[i]], shift=tuple(shifts[i]), axis=(1, 2)) * scales[i]
        img += 0.8 * smooth_field(2, 2) + rng.normal(0.0, 0.8, size=(3, size, size))
        X[i] = img
    return X, y.astype(np.int64)


def _sklearn(loader_name: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        import sklearn.datasets

        X, y = getattr(sklearn.datasets, loader_name)(return_X_y=True)
        return X, y

    return load


_BUILTINS: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], bool]] = {
    "digits": (_sklearn("load_digits"), False),
    "wine": (_sklearn("load_wine"), False),
    "breast-cancer": (_sklearn("load_breast_cancer"), False),
    "synthetic-cifar": (make_synthetic_cifar, True),
}
BUILTIN_DATASETS: tuple[str, ...] = tuple(_BUILTINS)


# ---------------------------------------------------------------------------------------------
# Validation


def _fit_shape(X: np.ndarray, spec: ModelSpec, where: str) -> np.ndarray:
    """Reshape X (N, ...) to (N, *spec.input_shape), or DataError stating expected vs got."""
    want = tuple(spec.input_shape)
    got = tuple(X.shape[1:])
    if got == want:
        return X
    n_want = int(np.prod(want))
    flat_match = X.ndim == 2 and got[0] == n_want
    unit_match = tuple(d for d in got if d != 1) == tuple(d for d in want if d != 1)
    if flat_match or unit_match:
        return X.reshape((X.shape[0], *want))
    hint = ""
    if X.ndim == 4 and got[-1] == want[0] and got[:-1] == want[1:]:
        hint = (
            " (it looks channels-last; the model wants channels-first: transpose to (N, C, H, W))"
        )
    raise DataError(
        f"{where}: model {spec.name} expects inputs of shape (N, {', '.join(map(str, want))}) "
        f"[{n_want} values per sample], got {X.shape}{hint}"
    )


def _check_inputs(X: np.ndarray, spec: ModelSpec, where: str) -> np.ndarray:
    if X.dtype.kind not in "fiu":
        raise DataError(
            f"{where}: inputs must be a numeric (int or float) array, got dtype {X.dtype}"
        )
    if X.ndim < 2:
        raise DataError(
            f"{where}: inputs must have a sample axis and feature axes (N, ...), got shape {X.shape}"
        )
    if X.shape[0] == 0 or X.size == 0:
        raise DataError(f"{where}: inputs are empty (shape {X.shape})")
    X = _fit_shape(X, spec, where)
    if X.dtype.kind == "f":
        bad = ~np.isfinite(X)
        if bad.any():
            idx = np.argwhere(bad)[0]
            raise DataError(
                f"{where}: {int(bad.sum())} NaN/inf values (first at index {tuple(idx.tolist())}); "
                "clean or impute them before training"
            )
    with np.errstate(over="ignore"):
        X32 = X.astype(np.float32)
    if not np.isfinite(X32).all():
        raise DataError(f"{where}: values overflow float32 (max |x| = {np.abs(X).max():.3g})")
    return X32


def _check_labels(y: np.ndarray, spec: ModelSpec, where: str) -> np.ndarray:
    """int64 labels (N,). Accepts integer labels, integral floats, (N, 1) and one-hot (N, C)."""
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.size == 0:
        raise DataError(f"{where}: labels are empty (shape {y.shape})")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{where}: labels contain NaN/inf")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] == spec.num_classes:
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise DataError(
                f"{where}: 2-D labels of shape {y.shape} must be one-hot (one 1 per row, rest 0)"
            )
        y = y.argmax(axis=1)
    elif y.ndim != 1:
        raise DataError(
            f"{where}: labels must have shape (N,) (or one-hot (N, {spec.num_classes})), "
            f"got {y.shape}"
        )
    if y.dtype.kind == "f" and not (y == np.round(y)).all():
        bad = float(y[y != np.round(y)][0])
        raise DataError(f"{where}: labels must be integer class ids, found {bad:g}")
    y = y.astype(np.int64)
    out = (y < 0) | (y >= spec.num_classes)
    if out.any():
        raise DataError(
            f"{where}: labels must be in [0, {spec.num_classes}) for model {spec.name}, "
            f"found {int(y[out][0])} ({int(out.sum())} out of range)"
        )
    return y


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise DataError(
            f"{path}: a single .npy array, not an .npz archive; save with "
            "np.savez(path, X=..., y=...)"
        )
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path}: not an .npz archive (not a zip file, or truncated); save with "
            "np.savez(path, X=..., y=...)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: corrupt .npz archive ({e.__class__.__name__}: {e})") from e
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except Exception as e:  # untrusted bytes: any failure is a bad file
                raise DataError(
                    f"{path}: key '{key}' cannot be read ({e.__class__.__name__}: {e}); the file "
                    "is corrupt or holds object (pickled) arrays, which are not accepted"
                ) from e
    return arrays


def _load_npz(path: Path, spec: ModelSpec):
    arrays = _read_npz(path)
    keys = sorted(arrays)
    for key in ("X", "y"):
        if key not in arrays:
            raise DataError(
                f"{path}: missing key '{key}' (found keys: {keys or 'none'}); "
                "expected X, y and optionally X_test, y_test"
            )
    if ("X_test" in arrays) != ("y_test" in arrays):
        have, lack = ("X_test", "y_test") if "X_test" in arrays else ("y_test", "X_test")
        raise DataError(f"{path}: has '{have}' but no '{lack}'; give both or neither")
    extra = [k for k in keys if k not in ("X", "y", "X_test", "y_test")]
    if extra:
        log.warning("%s: ignoring unknown keys %s", path, extra)

    def pair(xk: str, yk: str) -> tuple[np.ndarray, np.ndarray]:
        X = _check_inputs(arrays[xk], spec, f"{path} key '{xk}'")
        y = _check_labels(arrays[yk], spec, f"{path} key '{yk}'")
        if len(X) != len(y):
            raise DataError(f"{path}: '{xk}' has {len(X)} samples but '{yk}' has {len(y)}")
        return X, y

    X, y = pair("X", "y")
    test = pair("X_test", "y_test") if "X_test" in arrays else None
    return X, y, test


def _spec_from_source(data: str, name: str) -> ModelSpec:
    if data in _BUILTINS:
        X, y = _BUILTINS[data][0]()
        return spec_for_data(name, X, [y], f"built-in dataset '{data}'")
    path = Path(data).expanduser()
    if not path.exists() and path.suffix != ".npz":
        return ModelSpec(name=name, input_shape=(1,), num_classes=2)  # load_data names the error
    arrays = _read_npz(path)
    if "X" not in arrays or "y" not in arrays:
        return ModelSpec(name=name, input_shape=(1,), num_classes=2)  # load_data names the error
    labels = [arrays["y"]] + ([arrays["y_test"]] if "y_test" in arrays else [])
    return spec_for_data(name, arrays["X"], labels, str(path))


# ---------------------------------------------------------------------------------------------
# Split and standardise


def _split(X, y, fraction: float, seed: int, where: str):
    """(X_a, y_a, X_b, y_b) with ``fraction`` of the samples in b; stratified when possible."""
    from sklearn.model_selection import train_test_split

    n_b = int(round(len(y) * fraction))
    if n_b < 1 or len(y) - n_b < 1:
        raise DataError(f"{where}: {len(y)} samples are too few to split into train/val/test")
    try:
        Xa, Xb, ya, yb = train_test_split(X, y, test_size=n_b, random_state=seed, stratify=y)
    except ValueError:
        log.warning("%s: a class is too small to stratify the split; splitting at random", where)
        Xa, Xb, ya, yb = train_test_split(X, y, test_size=n_b, random_state=seed)
    return Xa, ya, Xb, yb


def _standardise(X_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = X_train.mean(axis=0, dtype=np.float64)
    std = X_train.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-8 * max(1.0, float(np.abs(mean).max())), std, 1.0)
    return [((a - mean) / std).astype(np.float32) for a in (X_train, *others)]


def spec_for_data(name: str, X: np.ndarray, labels: list[np.ndarray], where: str) -> ModelSpec:
    """The input shape and number of classes of a model sized by its data (not a zoo entry)."""
    X = np.asarray(X)
    if X.ndim < 2 or X.shape[0] == 0:
        raise DataError(
            f"{where}: inputs must have a sample axis and feature axes (N, ...), got shape {X.shape}"
        )
    n_classes = 0
    for y in labels:
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1:
            n_classes = max(n_classes, int(y.shape[1]))
        elif y.size and y.dtype.kind in "biuf" and np.isfinite(y).all():
            n_classes = max(n_classes, int(np.max(y)) + 1)
    if labels and np.asarray(labels[0]).dtype.kind in "biuf" and n_classes < 2:
        raise DataError(f"{where}: the labels hold fewer than 2 classes; fitc trains classifiers")
    return ModelSpec(name=name, input_shape=tuple(int(d) for d in X.shape[1:]),
                     num_classes=max(n_classes, 2))  # fmt: skip


def load_data(
    spec: ModelSpec | None, data: str | None = None, seed: int = 0, *, name: str = "model"
) -> Dataset:
    """Load, validate, split and standardise ``data`` for model ``spec`` (see the module contract).

    ``spec=None``: the model is sized by the data (``spec_for_data``; ``name`` labels errors),
    and ``data`` must be given.
    """
    if spec is None:
        if data is None:
            raise DataError(
                f"model {name} is sized by its data: give --data (a built-in dataset: "
                f"{', '.join(BUILTIN_DATASETS)}, or a .npz file with X, y)"
            )
        spec = _spec_from_source(str(data), name)
    if data is None:
        data = spec.default_data
        if data is None:
            raise DataError(
                f"model {spec.name} has no built-in dataset; pass a .npz file with keys X, y "
                f"(X: (N, {', '.join(map(str, spec.input_shape))}), y: (N,) in "
                f"0..{spec.num_classes - 1})"
            )
    data = str(data)
    if data in _BUILTINS:
        loader, synthetic = _BUILTINS[data]
        X_raw, y_raw = loader()
        where = f"built-in dataset '{data}'"
        X = _check_inputs(np.asarray(X_raw), spec, where)
        y = _check_labels(np.asarray(y_raw), spec, where)
        test = None
        name = data
    else:
        path = Path(data).expanduser()
        if not path.exists() and path.suffix != ".npz":
            close = difflib.get_close_matches(data, BUILTIN_DATASETS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise DataError(
                f"unknown dataset '{data}': {hint}not a built-in "
                f"({', '.join(BUILTIN_DATASETS)}) and no such .npz file"
            )
        X, y, test = _load_npz(path, spec)
        synthetic = False
        name = str(path)
        where = str(path)

    if test is None:
        X_rest, y_rest, X_test, y_test = _split(
            X, y, 1 - _TRAIN_FRACTION - _VAL_FRACTION, seed, where
        )
    else:
        X_rest, y_rest = X, y
        X_test, y_test = test
    val_share = _VAL_FRACTION / (_TRAIN_FRACTION + _VAL_FRACTION)
    X_train, y_train, X_val, y_val = _split(X_rest, y_rest, val_share, seed, where)
    X_train, X_val, X_test = _standardise(X_train, X_val, X_test)
    missing = sorted(set(range(spec.num_classes)) - set(np.unique(y_train).tolist()))
    if missing:
        log.warning("%s: classes %s have no training samples", where, missing)
    log.info(
        "%s: %d train / %d val / %d test samples, input %s",
        where,
        len(y_train),
        len(y_val),
        len(y_test),
        X_train.shape[1:],
    )
    return Dataset(
        name=name,
        X_train=X_train,
        y_train=y_train,
        X_val=X_val,
        y_val=y_val,
        X_test=X_test,
        y_test=y_test,
        num_classes=spec.num_classes,
        synthetic=synthetic,
    )
