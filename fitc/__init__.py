"""fitc: FITCompress joint pruning + mixed-precision search, exported to QONNX and lowered through hls4ml.

The stages are plain functions (see ``fitc.pipeline``); the artifacts between them live in
``fitc.artifacts``. The search core (``fitc.fisher``, ``fitc.space``, ``fitc.search``) imports only
torch and numpy.

``fitc.compress(model, data, budget=...)`` compresses the network you have; ``fitc.load_run(DIR)``
reopens a run (see :mod:`fitc.api`).
"""

from __future__ import annotations

import warnings

# brevitas.graph.equalize: an optional CUDA kernel package; nothing a CPU user can act on.
warnings.filterwarnings(
    "ignore", message="fast_hadamard_transform package not found", category=UserWarning
)

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning (read once, when torch loads): see fitc.threads.
from fitc.threads import quiet_openmp_env as _quiet_openmp_env  # noqa: E402

_quiet_openmp_env()


def __getattr__(name: str):
    # The API imports torch; keep ``import fitc`` light for tools that only read artifacts.
    if name in ("compress", "load_run"):
        from fitc import api

        return getattr(api, name)
    raise AttributeError(f"module 'fitc' has no attribute {name!r}")


__all__ = ["__version__", "compress", "load_run"]
