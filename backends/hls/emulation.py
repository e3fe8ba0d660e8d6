"""hls4ml's C++ emulation against the qonnx executor: the hls4ml hop of the equivalence chain.

Contract: :func:`emulation_check` runs the compiled emulation (of a model lowered in this process,
or of a project on disk through its compiled library) on every row and compares it with qonnx;
the :class:`~fitc.artifacts.HopReport` says whether they agree bit for bit.
"""

from __future__ import annotations

import logging
import math
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
    hls_model_or_project: Any, qonnx_path: str | Path, X: np.ndarray, y: np.ndarray
) -> HopReport:
    """Compare hls4ml's C++ emulation with the qonnx executor on every row of ``X``.

    ``X`` has the graph's layout, ``(N, *input_shape)`` (NCHW for a CNN). Exactness is
    ``report.exact`` (max |diff| 0 and every row identical); the caller decides what to do
    with a difference.
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
    with captured_output("predict"):
        out = np.asarray(predict(emu_in), dtype=np.float64).reshape(len(X), -1)
    t_emu = time.perf_counter() - t0
    report = compare("qonnx", ref, "hls4ml", out, y)
    log.info(
        "hls4ml emulation vs qonnx on %d rows: max|diff| %g, identical rows %.4f, argmax %.4f "
        "(qonnx %.2f s, emulation %.2f s)",
        report.n_samples,
        report.max_abs_diff,
        report.identical_rows,
        report.argmax_agreement,
        t_ref,
        t_emu,
    )
    return report
