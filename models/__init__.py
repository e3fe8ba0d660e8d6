"""fitc.models: the model zoo, datasets and float training.

``get_spec``/``build_model`` give a named float model, ``load_data`` its validated, split and
standardised data, ``train_float``/``evaluate`` train and score it. See each module's contract.
"""

from __future__ import annotations

from .data import BUILTIN_DATASETS, Dataset, load_data
from .train import evaluate, train_float
from .zoo import MODELS, ModelSpec, build_model, get_spec

__all__ = [
    "BUILTIN_DATASETS",
    "MODELS",
    "Dataset",
    "ModelSpec",
    "build_model",
    "evaluate",
    "get_spec",
    "load_data",
    "train_float",
]
