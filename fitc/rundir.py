"""The run directory: atomic artifact writes, ``run.json`` and stage resume.

Contract:
- every file is written to a temporary name in the same directory and renamed into place, so a
  reader (or a crash) never sees a half-written artifact;
- ``run.json`` holds the resolved config, package versions, each finished stage (wall time,
  fingerprint of its inputs, outputs) and the metrics so far; it is rewritten after every stage;
- a stage whose fingerprint matches the recorded one and whose outputs all exist is not redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from fitc.errors import ArtifactError

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
_PACKAGES = (
    "fitc",
    "torch",
    "brevitas",
    "qonnx",
    "hls4ml",
    "onnx",
    "onnxruntime",
    "numpy",
    "da4ml",
)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically. Only tensors and plain containers: reloadable with weights_only."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike) -> Any:
    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a weights-only file
        raise ArtifactError(
            f"{path}: cannot load as a weights-only torch file ({e.__class__.__name__}: {e})"
        ) from e


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from e


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able values and files (``Path`` parts are hashed by content)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(p.name.encode())
            h.update(p.read_bytes() if p.is_file() else b"<missing>")
        else:
            h.update(json.dumps(p, sort_keys=True, default=_json_default).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class RunDir:
    """A run directory and its ``run.json``."""

    def __init__(
        self,
        path: str | os.PathLike,
        config: dict[str, Any] | None = None,
        model_source: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        existing = read_json(self.path / RUN_JSON) if (self.path / RUN_JSON).exists() else {}
        self.record: dict[str, Any] = {
            "config": existing.get("config", {}),
            "model_source": existing.get("model_source"),
            "versions": package_versions(),
            "stages": existing.get("stages", {}),
            "metrics": {},
        }
        if config is not None:
            self.record["config"] = config
        if model_source is not None:
            self.record["model_source"] = model_source
        self._merge_metrics()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def stages(self) -> dict[str, Any]:
        return self.record["stages"]

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics of the stages still valid, merged in stage order (read-only view)."""
        return self.record["metrics"]

    def _merge_metrics(self) -> None:
        merged: dict[str, Any] = {}
        for rec in self.stages.values():
            merged.update(rec.get("metrics", {}))
        self.record["metrics"] = merged

    def save(self) -> None:
        self._merge_metrics()
        write_json(self.path / RUN_JSON, self.record)

    def is_done(self, stage: str, fp: str) -> bool:
        rec = self.stages.get(stage)
        if not rec or rec.get("fingerprint") != fp:
            return False
        return all((self.path / o).exists() for o in rec.get("outputs", []))

    def _invalidate(self, stage: str, outputs: list[str]) -> list[str]:
        """Forget ``stage``, every stage that wrote one of ``outputs``, and every stage after the
        first of those (they depend on it). Returns the outputs of the forgotten stages."""
        names = list(self.stages)
        hit = [
            i
            for i, name in enumerate(names)
            if name == stage or set(self.stages[name].get("outputs", [])) & set(outputs)
        ]
        stale: list[str] = []
        if hit:
            for name in names[min(hit) :]:
                stale += self.stages.pop(name).get("outputs", [])
            self.save()
        return stale

    def run_stage(
        self,
        stage: str,
        fp: str,
        outputs: list[str],
        fn: Callable[[], dict[str, Any] | None],
    ) -> bool:
        """Run ``fn`` unless ``stage`` is already done with fingerprint ``fp``.

        ``fn`` writes ``outputs`` (names relative to the run directory) and returns metrics to merge
        into ``run.json``. Returns True if the stage ran, False if it was reused. Before ``fn``
        runs, the stages it invalidates are forgotten in ``run.json`` (so a crash cannot leave a
        record pointing at overwritten files); only once it succeeded are their other, now stale,
        outputs removed — a failed stage leaves every earlier file where it was.
        """
        if self.is_done(stage, fp):
            log.info("stage %s: reusing %s", stage, ", ".join(outputs) or "results")
            return False
        stale = self._invalidate(stage, outputs)
        t0 = time.perf_counter()
        metrics = fn() or {}
        wall = time.perf_counter() - t0
        missing = [o for o in outputs if not (self.path / o).exists()]
        if missing:
            raise ArtifactError(f"stage {stage} finished without writing {missing}")
        for name in set(stale) - set(outputs):
            path = self.path / name
            if path.is_file():
                path.unlink()
        self.stages[stage] = {
            "fingerprint": fp,
            "wall_time_s": round(wall, 3),
            "outputs": outputs,
            "metrics": metrics,
        }
        self.save()
        log.info("stage %s: done in %.2f s", stage, wall)
        return True
