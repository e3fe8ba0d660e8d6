"""Trained float weights from the user: a state dict file, loaded safely and checked key by key.

Contract:
- :func:`load_weights` reads ``path`` with ``torch.load(..., weights_only=True)`` (no code runs),
  accepts a plain state dict or a checkpoint dict holding it under ``state_dict`` or
  ``model_state_dict`` (a ``module.`` prefix from ``DataParallel`` is stripped), and loads it
  into ``model`` strictly. Missing keys, unexpected keys and shape mismatches raise one
  :class:`~fitc.errors.ModelSourceError` naming them; an unreadable file likewise.
- It returns the metrics the train stage records: the file's path and sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fitc.errors import ModelSourceError

from .source import sha256_of

__all__ = ["load_weights"]

_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


def _names(keys: list[str], n: int = 6) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"weights file {path} not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # untrusted bytes: anything that fails is a bad file
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelSourceError(
            f"weights file {path} cannot be read as a state dict ({e.__class__.__name__}: "
            f"{first[:200]}); save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(blob, dict):
        for key in _CHECKPOINT_KEYS:
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob.items()
    ):
        raise ModelSourceError(
            f"weights file {path} holds a {type(blob).__name__}, not a state dict of tensors; "
            "save it with torch.save(model.state_dict(), path)"
        )
    if blob and all(k.startswith("module.") for k in blob):
        blob = {k[len("module.") :]: v for k, v in blob.items()}
    return blob


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load the state dict at ``path`` into ``model`` (strict); return ``weights``, ``weights_sha256``."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches (file vs model): {_names(shapes, 4)}")
    if problems:
        raise ModelSourceError(f"weights file {path} does not fit the model: {'; '.join(problems)}")
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return {"weights": str(Path(path)), "weights_sha256": sha256_of(path)}
