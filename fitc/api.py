"""The Python API: compress the network you have, reopen a run.

Contract:
- :func:`compress` runs the whole pipeline (train or take the weights → Fisher → search →
  fine-tune → export ≡ → hls4ml ≡ → resources) on an ``nn.Module`` (or any ``--model`` string)
  and data given as arrays, an ``.npz`` path or a built-in dataset name, and returns the
  :class:`~fitc.pipeline.Run` (``run.plan``, ``run.metrics``, ``run.qonnx_path``,
  ``run.hls4ml_dir``, ``run.dir``).
- Arrays are written into the run directory as ``data.npz`` (so later commands on the run see the
  same data); a run that fails its input checks leaves no directory it created behind.
- A module handed in is deep-copied, never modified. It is taken as trained unless
  ``train=True`` (or ``weights=FILE`` loads a state dict into it). Its class is recorded, not its
  code: later commands on the run need it handed back in, ``load_run(DIR, model=module)``. To
  reopen a run from the command line, give the model as ``--model file.py:factory`` instead.
- :func:`load_run` reopens any run directory without running or writing anything; its results
  (plan, metrics, models, graphs) load lazily.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fitc.config import RunConfig, from_mapping, load_config
from fitc.errors import ConfigError, DataError, FitcError, RunDirError
from fitc.rundir import RUN_JSON, check_not_busy, check_not_nested, read_json, write_bytes

__all__ = ["compress", "load_run"]

DATA_FILE = "data.npz"


def _budgets(budget: str | Sequence[str] | None) -> tuple[str, ...]:
    if budget is None:
        return ()
    if isinstance(budget, str):
        return tuple(b for b in budget.replace("+", ",").split(",") if b)
    return tuple(str(b) for b in budget)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` whose bytes depend on the arrays only (fixed zip dates): the same data gives
    the same file, so a repeated ``compress`` reuses its stages."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            one = io.BytesIO()
            np.lib.format.write_array(one, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(
                zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), one.getvalue()
            )
    return buf.getvalue()


def _save_arrays(data: Sequence[Any], path: Path, *, force: bool) -> None:
    if len(data) not in (2, 4):
        raise DataError(
            f"data must be (X, y) or (X, y, X_test, y_test), got a sequence of {len(data)} items"
        )
    names = ("X", "y", "X_test", "y_test")
    arrays = {}
    for name, a in zip(names, data, strict=False):
        if hasattr(a, "detach"):  # torch tensors
            a = a.detach().cpu().numpy()
        arr = np.asarray(a)
        if arr.dtype == object:
            raise DataError(f"data {name}: not a numeric array (dtype object)")
        arrays[name] = arr
    blob = _npz_bytes(arrays)
    if path.is_file() and path.read_bytes() == blob:
        return
    if (path.parent / RUN_JSON).is_file() and not force:
        raise RunDirError(
            f"{path.parent} holds a run on other data ({path.name} differs); give another out= "
            "or force=True to replace that run"
        )
    write_bytes(path, blob)


def compress(
    model: nn.Module | str,
    data: Sequence[Any] | str | Path | None = None,
    *,
    budget: str | Sequence[str] | None = None,
    device: str | None = None,
    fraction: float | None = None,
    out: str | Path | None = None,
    weights: str | Path | None = None,
    train: bool = False,
    force: bool = False,
    **options: Any,
):
    """Compress ``model`` for an FPGA and return the finished :class:`~fitc.pipeline.Run`.

    ``model``: an ``nn.Module`` (taken as trained unless ``train=True``), or a ``--model`` string
    (``file.py:factory``, ``package.module:factory``, ``mlp``, a zoo name: trained unless
    ``weights`` is given). ``data``: ``(X, y)``, ``(X, y, X_test, y_test)``, an ``.npz`` path or a
    built-in dataset name. ``budget``: e.g. ``"size=1/32"``, ``"lut=20000,dsp=0"`` or a list;
    ``device`` + ``fraction``: a device preset and the share of it to fit in. ``force``: replace
    another run found in ``out``. ``options``: any
    other :class:`~fitc.config.RunConfig` field (``finetune_epochs=10``, ``strategy=...``).
    """
    from fitc.pipeline import open_run, run_pipeline

    module = model if isinstance(model, nn.Module) else None
    if module is None and not isinstance(model, str):
        raise ConfigError(
            f"model must be an nn.Module or a model reference string, got {type(model).__name__}"
        )
    fields: dict[str, Any] = {
        **options,
        "budget": _budgets(budget),
        "device": device,
        "fraction": fraction,
        "weights": str(weights) if weights is not None else None,
        "train_module": bool(train),
    }
    if module is None:
        fields["model"] = model
    else:
        fields["model"] = f"<module {type(module).__module__}.{type(module).__qualname__}>"
    if out is not None:
        fields["out"] = str(out)
    if data is not None and not isinstance(data, (str, Path)):
        fields["data"] = None  # set once the run directory is known
    elif data is not None:
        fields["data"] = str(data)
    cfg = from_mapping({k: v for k, v in fields.items() if v is not None}, source="compress()")

    out_dir = cfg.run_dir()
    check_not_nested(out_dir)
    check_not_busy(out_dir)
    created = not out_dir.exists()
    try:
        if data is not None and not isinstance(data, (str, Path)):
            path = out_dir / DATA_FILE
            _save_arrays(data, path, force=force)
            cfg = cfg.replace(data=str(path))
        open_run(cfg, module=module)  # input checks before any work
    except FitcError:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return run_pipeline(cfg, module=module, force=force)


def load_run(run_dir: str | Path, *, model: nn.Module | None = None):
    """Reopen the run in ``run_dir`` (nothing is run or written).

    ``model``: the module a run made by :func:`compress` from an ``nn.Module`` was given.
    """
    from fitc.pipeline import open_run

    run_dir = Path(run_dir)
    if not (run_dir / RUN_JSON).is_file():
        raise ConfigError(f"{run_dir} is not a fitc run directory (no {RUN_JSON})")
    recorded = read_json(run_dir / RUN_JSON).get("config", {})
    cfg: RunConfig = load_config(None, base=recorded, out=str(run_dir))
    return open_run(cfg, module=model)
