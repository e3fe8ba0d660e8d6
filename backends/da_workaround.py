"""Workaround: hls4ml 1.3.0's ``distributed_arithmetic`` strategy on QONNX graphs.

The one place fitc works around an hls4ml bug; delete this module (and its single use in
``backends/hls.py``) once ``tests/backends/test_lower.py::test_da_workaround_still_needed`` fails.

The bug: hls4ml's DA code generator asks ``bit_exact.get_input_layers(layer)`` for the layer that
produces a Dense/Conv layer's input. That helper looks each entry of ``layer.inputs`` up in
``model.graph``, which is keyed by *layer* names. Keras/PyTorch graphs use the producing layer's
name as its output tensor name, so the lookup works there; the ONNX converter keeps ONNX *tensor*
names (``Quant_0_out0``) as layer inputs, so the lookup fails with ``AssertionError: Layer
Dense_MatMul_0 has input Quant_0_out0 which is not in the model``.

The fix: while a conversion runs, the name ``get_input_layers`` inside hls4ml's DA pass module
points to a wrapper that resolves a tensor name to the layer whose ``outputs`` contain it, and falls
back to hls4ml's own helper for anything else (so its own errors still surface). No installed file
is edited; the original is restored on exit. Nothing else in hls4ml is touched.

Contract: :func:`distributed_arithmetic_on_qonnx` is a context manager; use it around
``convert_from_onnx_model`` (the DA pass runs during conversion). It is not thread-safe with
another conversion running at the same time in the same process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

# Where hls4ml 1.3.0 calls the failing lookup from (the DA pass imports it by name).
_DA_PASS_MODULE = "hls4ml.backends.vivado.passes.distributed_arithmetic"
_LOOKUP_NAME = "get_input_layers"


def _resolving_lookup(original: Callable[[Any], list[Any]]) -> Callable[[Any], list[Any]]:
    """``original`` with ONNX tensor names resolved to the layers that produce them."""

    def get_input_layers(layer: Any) -> list[Any]:
        graph = layer.model.graph
        producer = {out: lyr for lyr in graph.values() for out in lyr.outputs}
        found = []
        for name in layer.inputs:
            if name in graph:
                found.append(graph[name])
            elif name in producer:
                found.append(producer[name])
            else:
                return original(layer)
        return found

    get_input_layers.__wrapped__ = original  # type: ignore[attr-defined]
    return get_input_layers


@contextlib.contextmanager
def distributed_arithmetic_on_qonnx() -> Iterator[None]:
    """Let hls4ml's distributed_arithmetic pass find a layer's producer on ONNX-converted graphs."""
    import importlib

    module = importlib.import_module(_DA_PASS_MODULE)
    original = getattr(module, _LOOKUP_NAME)
    if hasattr(original, "__wrapped__"):  # already active (nested use)
        yield
        return
    setattr(module, _LOOKUP_NAME, _resolving_lookup(original))
    log.debug("distributed_arithmetic workaround active (%s.%s)", _DA_PASS_MODULE, _LOOKUP_NAME)
    try:
        yield
    finally:
        setattr(module, _LOOKUP_NAME, original)


def upstream_failure_signature(error: BaseException) -> bool:
    """True if ``error`` is the hls4ml bug this module works around (used by the canary test)."""
    return isinstance(error, AssertionError) and "which is not in the model" in str(error)


__all__ = ["distributed_arithmetic_on_qonnx", "upstream_failure_signature"]
