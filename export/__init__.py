"""fitc.export — Brevitas model → QONNX graph (+ QCDQ twin) and the bit-exact equivalence chain.

- :func:`export_qonnx` writes ``model.qonnx.onnx`` and, when all bit widths fit int8,
  ``model.qcdq.onnx``; returns an :class:`ExportedGraph` with the torch-name → node-name map.
- :func:`verify_chain` compares Brevitas, the qonnx executor and onnxruntime on a test set and
  checks the planned bits and sparsity per layer; :func:`check_equivalence` fails on any difference.
- :func:`verify_onnx_file` checks a graph made elsewhere.
"""

from __future__ import annotations

from .qonnx_export import (
    ExportedGraph,
    ExportError,
    InputShapeError,
    NotFixedPointError,
    check_fixed_point,
    export_qonnx,
    layer_weights,
    load_onnx,
    match_layers,
)
from .verify import (
    OnnxFileReport,
    check_equivalence,
    layer_checks,
    range_edge_inputs,
    run_brevitas,
    run_onnxruntime,
    run_qonnx,
    verify_chain,
    verify_onnx_file,
)

__all__ = [
    "ExportError",
    "ExportedGraph",
    "InputShapeError",
    "NotFixedPointError",
    "OnnxFileReport",
    "check_equivalence",
    "check_fixed_point",
    "export_qonnx",
    "layer_checks",
    "layer_weights",
    "load_onnx",
    "match_layers",
    "run_brevitas",
    "run_onnxruntime",
    "run_qonnx",
    "range_edge_inputs",
    "verify_chain",
    "verify_onnx_file",
]
