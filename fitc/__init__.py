"""fitc: FITCompress joint pruning + mixed-precision search, exported to QONNX and lowered through hls4ml.

The stages are plain functions (see ``fitc.pipeline``); the artifacts between them live in
``fitc.artifacts``. The search core (``fitc.fisher``, ``fitc.space``, ``fitc.search``) imports only
torch and numpy.
"""

from __future__ import annotations

__version__ = "0.1.0"
