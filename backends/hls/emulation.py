"""hls4ml's C++ emulation against the qonnx executor: the hls4ml hop of the equivalence chain.

Contract: :func:`emulation_check` runs the compiled emulation (of a model lowered in this process,
or of a project on disk through its compiled library) and compares it with qonnx; the
:class:`~fitc.artifacts.HopReport` says whether they agree bit for bit on the rows emulated
(``n_samples``).

Which rows: every row, unless the set costs more than :data:`EMULATION_MACS` multiply-accumulates
(rows × the graph's MACs per row, :func:`graph_macs`). hls4ml's C++ emulation runs arbitrary-
precision ``ap_fixed`` arithmetic at ≈ 30–150 ns per MAC: resnet8 (12.5 M MACs) costs 0.4–1.8 s a
row, so its 600 test rows alone would take 4–18 minutes. Then a sample is emulated
(:func:`sample_rows`): for every output, the row where qonnx gives its largest and its smallest
value (the inputs that drive the network's outputs to their extremes), filled up to
``EMULATION_MACS / MACs per row`` rows (at least :data:`MIN_ROWS`) by a seeded random draw.
qonnx still runs on every row (it is cheap). What the check then covers: bit-exactness on those
rows. Errors that change the function (layout, rounding or saturation modes, weights, wrong or
narrow types on common values) show on nearly every row and cannot hide from the sample; an error
that only some rare input triggers could. Such errors are what the static precision check
(:func:`~fitc.backends.hls.layers.check_precisions`: every accumulator and result type holds every
possible sum over the input range) and the range-edge rows (which the pipeline checks in full, as a
set of their own) cover.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from fitc.artifacts import HopReport
from fitc.errors import (
    ArtifactError,
    DataError,
    ToolNotFoundError,
)

from .project import (
    _HLS_CONFIG_FILE,
    COMPILED,
    PROJECT_JSON,
    HLSCompileError,
    HLSProject,
    captured_output,
    compile_model,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Emulation check


class _LinkedEmulation:
    """The compiled emulation of a project lowered earlier (another process), called through the
    ``<project>_double`` C function of hls4ml's generated bridge. hls4ml's own
    ``link_existing_project`` cannot read ONNX-converted projects (their ``hls4ml_config.yml``
    holds a ``python/object`` YAML tag that ``yaml.safe_load`` rejects)."""

    def __init__(self, project: HLSProject) -> None:
        import ctypes

        from numpy import ctypeslib

        root = Path(project.project_dir)
        if not (root / _HLS_CONFIG_FILE).is_file():
            raise ArtifactError(f"{root}: no hls4ml project (no {_HLS_CONFIG_FILE})")
        if project.output_size <= 0:
            raise ArtifactError(f"{root}: {PROJECT_JSON} does not record the output size")
        libs = sorted((root / "firmware").glob(f"{project.project_name}-*.so"), key=_mtime)
        if not libs:
            if shutil.which("g++") is None:
                raise ToolNotFoundError(
                    f"g++ is not on PATH: it compiles the C++ emulation of the project in {root}"
                )
            t0 = time.perf_counter()
            done = subprocess.run(
                ["bash", "build_lib.sh"], cwd=root, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                raise HLSCompileError(f"g++ could not compile the project in {root}:\n{tail}")
            log.info("compiled %s in %.2f s", root, time.perf_counter() - t0)
            libs = sorted((root / "firmware").glob(f"{project.project_name}-*.so"), key=_mtime)
        self._lib = ctypes.CDLL(str(libs[-1]))
        self._fn = getattr(self._lib, f"{project.project_name}_double")
        arr = ctypeslib.ndpointer(ctypes.c_double, flags="C_CONTIGUOUS")
        self._fn.argtypes = [arr, arr]
        self._fn.restype = None
        self.input_shape = tuple(project.input_shape)
        self.output_size = project.output_size

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        out = np.zeros((len(x), self.output_size), dtype=np.float64)
        for i in range(len(x)):
            row = np.ascontiguousarray(x[i])
            res = np.zeros(self.output_size, dtype=np.float64)
            self._fn(row, res)
            out[i] = res
        return out


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def _emulator(obj: Any) -> tuple[tuple[int, ...], Any]:
    """(input shape of one sample, predict function) of a project or an hls4ml model."""
    if isinstance(obj, HLSProject):
        key = str(Path(obj.project_dir).resolve())
        model = COMPILED.get(key)
        if model is None:
            model = _LinkedEmulation(obj)
            COMPILED[key] = model
        if isinstance(model, _LinkedEmulation):
            return model.input_shape, model.predict
        obj = model
    if not hasattr(obj, "predict") or not hasattr(obj, "get_input_variables"):
        raise TypeError(
            f"emulation_check needs an HLSProject or an hls4ml model, got {type(obj).__name__}"
        )
    if getattr(obj, "_top_function_lib", None) is None:  # not compiled yet
        compile_model(obj)
    shape = tuple(int(d) for d in obj.get_input_variables()[0].shape)
    return shape, obj.predict


def emulation_check(
    hls_model_or_project: Any,
    qonnx_path: str | Path,
    X: np.ndarray,
    y: np.ndarray,
    *,
    max_rows: int | str | None = "auto",
    seed: int = 0,
) -> HopReport:
    """Compare hls4ml's C++ emulation with the qonnx executor on the rows of ``X``.

    ``X`` has the graph's layout, ``(N, *input_shape)`` (NCHW for a CNN). ``max_rows``: None
    emulates every row, an integer at most that many (:func:`sample_rows`), ``"auto"`` every row
    unless that costs more than :data:`EMULATION_MACS` (module docstring). The report's
    ``n_samples`` is the number of rows emulated. Exactness is ``report.exact`` (max |diff| 0 and
    every row identical); the caller decides what to do with a difference.
    """
    from fitc.export import load_onnx, run_qonnx
    from fitc.export.verify import compare

    in_shape, predict = _emulator(hls_model_or_project)
    proto = load_onnx(qonnx_path)
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    sample = tuple(d.dim_value for d in dims[1:])
    if X.ndim < 2 or tuple(X.shape[1:]) != sample or y.shape != (len(X),) or len(X) == 0:
        raise DataError(
            f"emulation_check: need inputs (N, {', '.join(map(str, sample))}) with N > 0 and N "
            f"labels for {qonnx_path}, got X {X.shape}, y {y.shape}"
        )
    t0 = time.perf_counter()
    ref = run_qonnx(proto, X).reshape(len(X), -1)
    t_ref = time.perf_counter() - t0

    macs = graph_macs(proto)
    limit = rows_limit(proto, len(X), macs=macs) if max_rows == "auto" else max_rows
    if limit is not None and limit < len(X):
        idx = sample_rows(ref, int(limit), seed)
        log.info(
            "hls4ml emulation: %d of %d rows (per-output extremes + seeded random; qonnx ran all)",
            len(idx), len(X),
        )  # fmt: skip
        X, y, ref = X[idx], y[idx], ref[idx]

    emu_in = X
    if X.ndim == 4 and tuple(X.shape[1:]) != in_shape and (*X.shape[2:], X.shape[1]) == in_shape:
        emu_in = X.transpose(0, 2, 3, 1)
    if math.prod(emu_in.shape[1:]) != math.prod(in_shape):
        raise ArtifactError(
            f"emulation_check: inputs of shape {X.shape[1:]} do not fit the emulation's input "
            f"{in_shape}"
        )
    # float64 in and out: the C++ side converts doubles, exact for any fixed type ≤ 53 bits.
    emu_in = np.ascontiguousarray(emu_in.reshape(len(X), -1), dtype=np.float64)
    t0 = time.perf_counter()
    workers = emulation_workers(len(X) * macs)
    with captured_output("predict"):
        out = predict_in_processes(predict, emu_in, workers).reshape(len(X), -1)
    t_emu = time.perf_counter() - t0
    report = compare("qonnx", ref, "hls4ml", out, y)
    log.info(
        "hls4ml emulation vs qonnx on %d rows: max|diff| %g, identical rows %.4f, argmax %.4f "
        "(qonnx %.2f s, emulation %.2f s in %d process%s)",
        report.n_samples,
        report.max_abs_diff,
        report.identical_rows,
        report.argmax_agreement,
        t_ref,
        t_emu,
        workers,
        "es" if workers > 1 else "",
    )
    return report


# --------------------------------------------------------------------------------------------
# Emulating in several processes

#: Multiply-accumulates (rows × MACs per row) from which the emulation is split over processes:
#: about a second of emulation, far above the cost of forking.
PARALLEL_MACS = 100_000_000

_FORKED: tuple[Any, np.ndarray] | None = None  # (predict, rows) the forked children read


def emulation_workers(macs: int) -> int:
    """Processes for an emulation of ``macs`` multiply-accumulates: 1 below
    :data:`PARALLEL_MACS` or off Linux, else this process's share of the cores
    (``OMP_NUM_THREADS`` when set, as in a sweep worker; else every core it may run on)."""
    if macs < PARALLEL_MACS or not hasattr(os, "fork"):
        return 1
    from fitc.threads import available_cores

    share = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(int(share) if share.isdigit() else available_cores(), available_cores()))


def _predict_chunk(rows: np.ndarray) -> np.ndarray:
    predict, X = _FORKED
    return np.asarray(predict(X[rows]), dtype=np.float64).reshape(len(rows), -1)


def predict_in_processes(predict: Any, X: np.ndarray, workers: int) -> np.ndarray:
    """``predict(X)`` as float64 rows, the rows split over ``workers`` forked processes.

    The compiled emulation keeps state in C++ ``static`` variables (stream line buffers), so it
    cannot run in threads; forked children each get their own copy of the loaded library. The
    result is the same array as one process gives (the emulation is exact and row-independent);
    resnet8's 143 emulated rows took 47 s in one process on this 2-core machine kind."""
    global _FORKED
    if workers <= 1 or len(X) < 2 * workers:
        return np.asarray(predict(X), dtype=np.float64).reshape(len(X), -1)
    chunks = np.array_split(np.arange(len(X)), workers)
    _FORKED = (predict, X)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_predict_chunk, chunks)
    finally:
        _FORKED = None
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------------
# Which rows to emulate

#: Multiply-accumulates one emulation check may cost before it samples rows (≈ 80 resnet8 rows).
EMULATION_MACS = 1_000_000_000
#: A sampled check emulates at least this many rows.
MIN_ROWS = 64


def graph_macs(proto: Any) -> int:
    """Multiply-accumulates of one forward pass of a QONNX graph (dense count: zeros included,
    as the emulation computes them): Σ weights × output positions over Conv/MatMul/Gemm."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(proto if not isinstance(proto, ModelWrapper) else proto.model)
    try:
        model = model.transform(InferShapes())
    except Exception as e:  # unknown shapes: count nothing (rows_limit then emulates every row)
        log.debug("graph_macs: shape inference failed (%s); every row is emulated", e)
        return 0
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        w = model.get_tensor_shape(node.input[1]) or []
        out = model.get_tensor_shape(node.output[0]) or []
        positions = math.prod(out[2:]) if node.op_type == "Conv" else math.prod(out[:-1]) or 1
        total += math.prod(w) * max(1, positions)
    return int(total)


def rows_limit(
    proto: Any, n_rows: int, budget: int = EMULATION_MACS, *, macs: int | None = None
) -> int | None:
    """How many of ``n_rows`` rows to emulate: None (all) when they cost at most ``budget``
    MACs, else ``budget // MACs per row`` but at least :data:`MIN_ROWS` (``macs``: the graph's
    :func:`graph_macs`, when the caller has it)."""
    macs = graph_macs(proto) if macs is None else macs
    if macs <= 0 or n_rows * macs <= budget:
        return None
    return max(MIN_ROWS, budget // macs)


def sample_rows(ref: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``k`` rows (all if ``k`` ≥ rows): for every output column the rows of
    its largest and smallest reference value first, then a seeded random draw of the rest."""
    ref = np.asarray(ref).reshape(len(ref), -1)
    n = len(ref)
    if k >= n:
        return np.arange(n)
    if k < 1:
        raise DataError(f"emulation_check: max_rows must be ≥ 1, got {k}")
    extremes: list[int] = []
    for j in range(ref.shape[1]):
        for i in (int(np.argmax(ref[:, j])), int(np.argmin(ref[:, j]))):
            if i not in extremes:
                extremes.append(i)
    chosen = extremes[:k]
    rest = np.setdiff1d(np.arange(n), chosen)
    rng = np.random.default_rng(seed)
    fill = rng.choice(rest, size=k - len(chosen), replace=False) if k > len(chosen) else []
    return np.sort(
        np.concatenate([np.asarray(chosen, dtype=np.int64), np.asarray(fill, dtype=np.int64)])
    )
