"""fitc.backends — QONNX → hls4ml firmware project + bit-exact C++ emulation; resource models.

- :func:`lower` (``fitc.backends.hls``) turns an exported QONNX graph into an hls4ml project,
  checks every layer's precisions against the plan and compiles the C++ emulation; the
  configuration is built in one place by :func:`hls_config`.
- :func:`emulation_check` compares the emulation with the qonnx executor, bit for bit.
- :func:`synthesize` (``fitc.backends.synth``) runs the vendor build when Vitis/Vivado is on PATH.
- ``fitc.backends.da_workaround`` holds the one hls4ml workaround (distributed arithmetic on
  QONNX graphs); ``fitc.backends.resources`` and ``fitc.backends.devices`` the resource models and
  device presets.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: ``import fitc.backends.devices`` (the device table) must not pull in
# onnx, qonnx and hls4ml.
_LAZY = {
    "HLSProject": ".hls",
    "emulation_check": ".hls",
    "hls_config": ".hls",
    "load_project": ".hls",
    "lower": ".hls",
    "prepare_qonnx": ".hls",
    "synthesize": ".synth",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HLSProject",
    "emulation_check",
    "hls_config",
    "load_project",
    "lower",
    "prepare_qonnx",
    "synthesize",
]
