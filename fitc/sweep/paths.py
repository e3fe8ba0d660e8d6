"""Where a sweep writes: every path built from the ledger, checked to stay inside the sweep.

Contract: the ledger is input like any other. A point key and a model reference read from it are
checked against strict patterns (:func:`check_key`, :func:`check_model_ref`) before any path is
built from them, and every path a worker writes to is resolved (symlinks followed) and checked to
lie inside the sweep directory (:func:`inside`, :func:`point_dir`, :func:`shared_dir`), so a key
such as ``../../x`` makes no worker write or delete anything outside the sweep; a violation is a
:class:`~fitc.errors.ConfigError` naming the value. Paths derived from a model use its label
(:func:`model_label`: the model's slug, plus a short hash of the reference when it names a file or
module, so two ``nets.py:build`` in different folders never share a directory). A sweep directory
read from the ledger must be an absolute path (:func:`check_sweep_dir`).

What this cannot do: make a ledger trustworthy. Whoever can write the ledger (or a model file it
names) chooses the code every worker imports and runs. Depends on nothing else of the sweep.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from fitc.errors import ConfigError

#: A point key: one path component of letters, digits and ``. _ = @ + -``, not starting with a dot
#: or a dash, at most 200 characters (file systems allow 255 per component).
KEY_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=@+-]{0,199}")
_COMPONENT = re.compile(r"[A-Za-z0-9._=@+-]{1,255}")
_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,119}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")  # a zoo or generic model name
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_key(key: object) -> str:
    """``key`` if it is a safe point key (:data:`KEY_PATTERN`), else a :class:`ConfigError`."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ConfigError(
            f"sweep point key {key!r} is not a valid key (letters, digits and . _ = @ + - only, "
            "at most 200, not starting with . or -); refusing to build a path from it"
        )
    return key


def check_model_ref(model: object) -> str:
    """``model`` if it reads as a ``--model`` reference — a zoo/generic name, or
    ``TARGET:factory`` with a dotted Python name as factory and no control characters — else a
    :class:`ConfigError`. (Whether it exists is for the model loader to say.)"""
    ok = isinstance(model, str) and 0 < len(model) <= 4096 and not _CONTROL.search(model)
    if ok and ":" in model:
        target, _, factory = model.rpartition(":")
        ok = bool(target.strip()) and bool(_FACTORY.fullmatch(factory))
    elif ok:
        ok = bool(_NAME.fullmatch(model))
    if not ok:
        raise ConfigError(
            f"sweep model {model!r} is not a model reference (a built-in name, "
            "path/to/file.py:factory or package.module:factory)"
        )
    return model


def model_label(model: str) -> str:
    """A model as one path component and key part: its slug (``nets/my.py:build`` →
    ``my-build``), plus 8 hex digits of the reference's sha256 unless the reference is already
    its own slug (zoo names: ``digits-mlp``)."""
    from fitc.config import model_slug

    check_model_ref(model)
    slug = model_slug(model)[:100].strip("-") or "model"
    label = slug if slug == model else f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"
    if not _LABEL.fullmatch(label):  # model_slug keeps [A-Za-z0-9_-]: cannot happen
        raise ConfigError(f"sweep model {model!r}: no safe directory name ({label!r})")
    return label


def inside(root: str | os.PathLike, *parts: str) -> Path:
    """``root / parts…`` resolved, after checking each part is one plain path component and the
    result (symlinks followed) lies inside ``root``."""
    for part in parts:
        if not isinstance(part, str) or not _COMPONENT.fullmatch(part) or part in (".", ".."):
            raise ConfigError(f"{part!r} is not a plain file name; refusing to build a path")
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise ConfigError(
            f"{Path(root).joinpath(*parts)} resolves to {path}, outside the sweep directory "
            f"{base}; refusing to write there"
        )
    return path


def point_dir(sweep_dir: str | os.PathLike, key: str) -> Path:
    """The run directory of point ``key``: ``<sweep>/points/<key>``, checked."""
    return inside(sweep_dir, "points", check_key(key))


def shared_dir(sweep_dir: str | os.PathLike, model: str) -> Path:
    """Where the float model and Fisher of ``model`` are shared: ``<sweep>/shared/<label>``."""
    return inside(sweep_dir, "shared", model_label(model))


def check_sweep_dir(value: object, where: str = "the ledger") -> Path:
    """A sweep directory recorded in the ledger: an absolute path without ``..`` or control
    characters, else a :class:`ConfigError` (pass ``--out`` to choose it yourself)."""
    ok = isinstance(value, str) and not _CONTROL.search(value) and os.path.isabs(value)
    if not ok or ".." in Path(value).parts:
        raise ConfigError(
            f"{where} records the sweep directory {value!r}, which is not a plain absolute path; "
            "pass --out DIR"
        )
    return Path(value)


__all__ = [
    "KEY_PATTERN",
    "check_key",
    "check_model_ref",
    "check_sweep_dir",
    "inside",
    "model_label",
    "point_dir",
    "shared_dir",
]
