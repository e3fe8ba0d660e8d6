"""fitc.models: where networks come from, their data, and the float network fitc compresses.

``resolve_model`` turns ``--model`` (a zoo name, ``mlp``, ``file.py:factory``,
``package.module:factory``) into a source; ``open_network`` matches it with its data (input shape
and classes from the data for non-zoo models) and compiles it (batch norm folded, dropout removed,
1-D layers as 2-D: :mod:`.prepare`); ``load_weights`` reads a user's trained state dict safely;
``train_float``/``evaluate`` train and score it. See each module's contract.
"""

from __future__ import annotations

from .data import BUILTIN_DATASETS, Dataset, load_data, spec_for_data
from .network import Network, open_network
from .prepare import SUPPORTED, compile_float, for_training
from .source import (
    GENERIC_MODELS,
    ModelSource,
    check_recorded_source,
    module_fingerprint,
    object_source,
    resolve_model,
    source_from_dict,
)
from .train import evaluate, train_float
from .weights import load_weights, read_state_dict
from .zoo import MODELS, ModelSpec, build_model, get_spec

__all__ = [
    "BUILTIN_DATASETS",
    "GENERIC_MODELS",
    "MODELS",
    "SUPPORTED",
    "Dataset",
    "ModelSource",
    "ModelSpec",
    "Network",
    "build_model",
    "check_recorded_source",
    "compile_float",
    "evaluate",
    "for_training",
    "get_spec",
    "load_data",
    "load_weights",
    "module_fingerprint",
    "object_source",
    "open_network",
    "read_state_dict",
    "resolve_model",
    "source_from_dict",
    "spec_for_data",
    "train_float",
]
