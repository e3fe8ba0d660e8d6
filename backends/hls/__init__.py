"""QONNX graph → hls4ml project + its C++ emulation, every layer's precision checked.

- :mod:`.project`: the qonnx preparation, the hls4ml configuration, :func:`lower` and the
  project artifact (:class:`HLSProject`, ``SUMMARY.md``);
- :mod:`.layers`: the map from hls4ml layers back to torch modules and the precision checks;
- :mod:`.emulation`: the hls4ml hop of the equivalence chain (:func:`emulation_check`).
"""

from __future__ import annotations

from .emulation import emulation_check
from .layers import (
    GraphLayer,
    LoweringError,
    average_pool_precisions,
    average_pool_types,
    check_precisions,
    graph_layers,
    input_precision,
    map_layers,
)
from .project import (
    COMPILED,
    INPUT_PRECISION,
    PROJECT_JSON,
    PROJECT_NAME,
    SUMMARY_NAME,
    HLSCompileError,
    HLSProject,
    hls_config,
    load_project,
    lower,
    prepare_qonnx,
    summary_markdown,
)

_COMPILED = COMPILED  # the same registry (tests drop entries to act as a new process)

__all__ = [
    "INPUT_PRECISION",
    "PROJECT_JSON",
    "PROJECT_NAME",
    "SUMMARY_NAME",
    "GraphLayer",
    "HLSCompileError",
    "HLSProject",
    "LoweringError",
    "average_pool_precisions",
    "average_pool_types",
    "check_precisions",
    "emulation_check",
    "graph_layers",
    "hls_config",
    "input_precision",
    "load_project",
    "lower",
    "map_layers",
    "prepare_qonnx",
    "summary_markdown",
]
