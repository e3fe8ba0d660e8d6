"""Where a network comes from: the zoo, a generic architecture, the user's file or module.

Contract:
- :func:`resolve_model` turns the ``--model`` string into a :class:`ModelSource`:

  * a zoo name (``digits-mlp``, …): the zoo's builder, input shape and classes;
  * ``mlp``: a generic MLP ``in → hidden… → classes`` (ReLU) sized from the data;
  * ``path/to/file.py:factory``: ``factory`` (a function or class; ``a.b`` walks attributes)
    from that file, called with the ``model_args`` keyword arguments; the file's sha256 is
    recorded;
  * ``package.module:factory``: the same from an importable module (its file's sha256 is
    recorded when it has one).

  Bad references raise :class:`~fitc.errors.UnknownModelError` (a near zoo name, the syntax)
  or :class:`~fitc.errors.ModelSourceError` (file not found, import failed, no such factory).
- :meth:`ModelSource.build` returns a fresh float ``nn.Module`` whose initial weights depend only on
  ``seed`` (the global RNG is left untouched); a factory that raises or returns something other
  than an ``nn.Module`` is a :class:`~fitc.errors.ModelSourceError`.
- :meth:`ModelSource.check_unchanged` (used when a recorded run is reopened) raises
  :class:`~fitc.errors.ModelSourceError` if the file vanished or its content changed.
- A user file is imported (its code runs), exactly as ``python file.py`` would: point ``--model``
  only at code you trust. Weights and data are never unpickled.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fitc.errors import ModelSourceError, UnknownModelError

from .zoo import MODELS, build_model

__all__ = [
    "GENERIC_MODELS",
    "ModelSource",
    "generic_mlp",
    "module_fingerprint",
    "object_source",
    "resolve_model",
    "sha256_of",
    "check_recorded_source",
    "source_from_dict",
]

GENERIC_MODELS = ("mlp",)
DEFAULT_HIDDEN = (64, 32, 32)


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def generic_mlp(n_in: int, hidden: tuple[int, ...], n_classes: int) -> nn.Module:
    """``in → hidden[0] → … → classes`` with ReLUs, layers named ``fc1…`` / ``relu1…``."""
    sizes = (int(n_in), *(int(h) for h in hidden), int(n_classes))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    n = len(sizes) - 1
    for i in range(n):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        if i < n - 1:
            layers[f"relu{i + 1}"] = nn.ReLU()
    return nn.Sequential(layers)


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``--model``: ``kind`` is ``zoo``, ``generic``, ``file``, ``module`` or ``object``.

    ``ref`` is the string as given; ``path`` and ``sha256`` the factory's file (``file``; also
    ``module`` when the module has a file); ``factory`` the attribute called; ``args`` its
    keyword arguments. ``object`` is an ``nn.Module`` handed to the Python API (its class is
    recorded; later commands need the module passed back in: :func:`fitc.load_run`).
    """

    kind: str
    ref: str
    path: str | None = None
    sha256: str | None = None
    factory: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    module: nn.Module | None = field(default=None, compare=False, repr=False)

    @property
    def zoo(self) -> bool:
        return self.kind == "zoo"

    @property
    def label(self) -> str:
        """A short name for directories and tables."""
        if self.kind in ("zoo", "generic"):
            return self.ref
        if self.kind == "object":
            return f"module-{self.factory}"
        base = Path(self.path).stem if self.kind == "file" and self.path else self.ref.split(":")[0]
        return f"{base.rsplit('.', 1)[-1]}-{self.factory}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ref": self.ref,
            "path": self.path,
            "sha256": self.sha256,
            "factory": self.factory,
            "args": dict(self.args),
        }

    # ------------------------------------------------------------------------------------------
    def build(
        self, seed: int = 0, *, input_shape: tuple[int, ...] = (), num_classes: int = 0,
        hidden: tuple[int, ...] = DEFAULT_HIDDEN,
    ) -> nn.Module:  # fmt: skip
        """A fresh float model; ``input_shape``/``num_classes`` size the generic architectures."""
        if self.kind == "zoo":
            return build_model(self.ref, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.kind == "generic":
                n_in = 1
                for d in input_shape:
                    n_in *= int(d)
                model = generic_mlp(n_in, hidden, num_classes)
                if len(input_shape) > 1:
                    children = OrderedDict(flatten=nn.Flatten())
                    children.update(model.named_children())
                    model = nn.Sequential(children)
            elif self.kind == "object":
                if self.module is None:
                    raise ModelSourceError(
                        f"this run's model was handed in from Python ({self.factory}); reopen it "
                        "with fitc.load_run(DIR, model=<the same module>) or give --model FILE:factory"
                    )
                import copy

                model = copy.deepcopy(self.module)
            else:
                model = self._call_factory()
        return model.eval()

    def _call_factory(self) -> nn.Module:
        fn = _load_factory(self)
        try:
            model = fn(**dict(self.args))
        except Exception as e:  # the user's code: any failure is theirs to see, in one line
            raise ModelSourceError(
                f"model factory {self.ref}({_fmt_args(self.args)}) raised "
                f"{e.__class__.__name__}: {e}"
            ) from e
        if not isinstance(model, nn.Module):
            raise ModelSourceError(
                f"model factory {self.ref} returned {type(model).__name__}, not a torch.nn.Module"
            )
        return model

    def check_unchanged(self) -> None:
        """The recorded file must still exist with the same content."""
        if self.kind not in ("file", "module") or not self.path or not self.sha256:
            return
        if not Path(self.path).is_file():
            raise ModelSourceError(
                f"model file {self.path} (of --model {self.ref}) no longer exists; restore it or "
                "start a new run"
            )
        now = sha256_of(self.path)
        if now != self.sha256:
            raise ModelSourceError(
                f"model file {self.path} changed since this run was made (sha256 {self.sha256[:12]}… "
                f"→ {now[:12]}…); restore it, or start a new run (--out) with the new model"
            )


def _fmt_args(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _load_factory(src: ModelSource) -> Callable[..., Any]:
    target, _, attr = src.ref.rpartition(":")
    if src.kind == "file":
        path = Path(src.path or target)
        name = f"fitc_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ModelSourceError(f"model file {path} cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling-free helpers look modules up here
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ModelSourceError(
                f"model file {path} failed to import: {e.__class__.__name__}: {e}"
            ) from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise ModelSourceError(
                f"module {target} (of --model {src.ref}) cannot be imported: "
                f"{e.__class__.__name__}: {e}"
            ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [
                n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))
            ]
            near = difflib.get_close_matches(attr, names, n=1)
            hint = f" did you mean '{near[0]}'?" if near else ""
            raise ModelSourceError(
                f"{target} has no attribute '{attr}'.{hint} Callables there: "
                f"{', '.join(sorted(names)[:12]) or 'none'}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSourceError(
            f"{src.ref}: '{attr}' is a {type(obj).__name__}, not a callable returning an nn.Module"
        )
    return obj


def resolve_model(ref: str, args: Mapping[str, Any] | None = None) -> ModelSource:
    """The :class:`ModelSource` of ``--model ref`` (see the module contract)."""
    args = dict(args or {})
    ref = str(ref).strip()
    if ref in MODELS or ref in GENERIC_MODELS:
        if args:
            raise ModelSourceError(
                f"model_args {sorted(args)} given, but {ref} is a built-in model that takes none"
            )
        return ModelSource(kind="zoo" if ref in MODELS else "generic", ref=ref)
    if ":" not in ref:
        valid = sorted([*MODELS, *GENERIC_MODELS])
        close = difflib.get_close_matches(ref, valid, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        as_file = (
            " (to use your own file, add the factory: FILE.py:build)" if ref.endswith(".py") else ""
        )
        raise UnknownModelError(
            f"unknown model '{ref}'{as_file}: {hint}give a built-in model ({', '.join(valid)}), "
            "path/to/file.py:factory or package.module:factory"
        )
    target, _, attr = ref.rpartition(":")
    if not target or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise UnknownModelError(
            f"--model {ref}: expected path/to/file.py:factory or package.module:factory, where "
            "factory is a function or class returning an nn.Module"
        )
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if is_file:
        path = Path(target).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"model file {path} not found (from --model {ref})")
        path = path.resolve()
        src = ModelSource(
            kind="file", ref=ref, path=str(path), sha256=sha256_of(path), factory=attr, args=args
        )
    else:
        if not all(p.isidentifier() for p in target.split(".")):
            raise UnknownModelError(
                f"--model {ref}: '{target}' is neither a .py file nor a module name"
            )
        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise ModelSourceError(
                f"module {target} (of --model {ref}) cannot be found; is it installed or on "
                "PYTHONPATH? For a file, give its path: path/to/file.py:factory"
            )
        origin = spec.origin if spec.origin and Path(spec.origin).is_file() else None
        src = ModelSource(
            kind="module", ref=ref, path=origin,
            sha256=sha256_of(origin) if origin else None, factory=attr, args=args,
        )  # fmt: skip
    _load_factory(src)  # fail now, before any work, if the factory cannot be found
    return src


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's state (names and tensor bytes): a handed-in module's identity."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def object_source(module: nn.Module) -> ModelSource:
    """The source of a module handed to the Python API."""
    if not isinstance(module, nn.Module):
        raise ModelSourceError(f"model must be a torch.nn.Module, got {type(module).__name__}")
    cls = type(module)
    return ModelSource(
        kind="object", ref=f"<module {cls.__module__}.{cls.__qualname__}>",
        factory=cls.__qualname__, module=module,
    )  # fmt: skip


def source_from_dict(d: Mapping[str, Any], module: nn.Module | None = None) -> ModelSource:
    """The source recorded in run.json (``module`` re-attaches a Python-API module)."""
    return ModelSource(
        kind=str(d["kind"]), ref=str(d["ref"]), path=d.get("path"), sha256=d.get("sha256"),
        factory=d.get("factory"), args=dict(d.get("args") or {}), module=module,
    )  # fmt: skip


def check_recorded_source(
    recorded: Mapping[str, Any] | None, model: str, model_args: Mapping[str, Any], run_dir: Any
) -> None:
    """Reopening a run: a model made from a user's file needs the file there and unchanged; a
    module handed in from Python needs that module back."""
    if not recorded or recorded.get("ref") != model:
        return
    if recorded.get("kind") == "object":
        raise ModelSourceError(
            f"{run_dir}: this run's model was handed in from Python ({recorded.get('factory')}); "
            "reopen it with fitc.load_run(DIR, model=<that module>)"
        )
    if dict(recorded.get("args") or {}) == dict(model_args):
        source_from_dict(recorded).check_unchanged()
