"""Run configuration: one frozen dataclass, filled from defaults < YAML file < command-line flags.

Contract:
- ``load_config(path)`` reads YAML with ``yaml.safe_load``; unknown keys are rejected with a
  :class:`ConfigError` naming the nearest valid key; values are type-checked, never silently
  converted (``hidden: [64.5]`` is refused, not truncated), numbers range-checked (finite floats;
  integers within what their consumer can hold) and ``part`` must read as a Xilinx part number.
- ``RunConfig.replace(**overrides)`` applies flags (``None`` means "not given").
- ``RunConfig.to_dict()`` is the resolved config recorded in ``run.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fitc.artifacts import MAX_REUSE_FACTOR, STRATEGIES, Budget, HardwareConfig, check_part
from fitc.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    """Every option of a fitc run. Field names are the YAML keys and, with ``-`` for ``_``, the flags."""

    # what to compress
    model: str = "digits-mlp"  # zoo name, "mlp", path/to/file.py:factory or package.module:factory
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # the factory's kwargs
    hidden: tuple[int, ...] = (64, 32, 32)  # hidden widths of the generic "mlp"
    data: str | None = None  # built-in dataset name or a user .npz; None = the model's default
    seed: int = 0
    out: str | None = None  # run directory; None = runs/<model>-<budget>
    # float training
    weights: str | None = None  # trained float weights (a state dict file): skip float training
    float_from: str | None = None  # reuse trained float weights (float.pt) instead of training
    train_module: bool = False  # a module handed in from Python (fitc.compress): train it first
    fisher_from: str | None = None  # reuse a Fisher (fisher.pt) of that float model
    train_epochs: int | None = None  # None: the model's own default (zoo)
    train_lr: float = 3e-3
    batch_size: int = 64
    # search
    budget: tuple[str, ...] = ()  # none and no device: size=1/16
    device: str | None = None  # device preset (e.g. xc7z020); with `fraction` → hardware budgets
    fraction: float | None = None
    weight_bits: tuple[int, ...] = (8, 7, 6, 5, 4, 3, 2)
    # None: by the budget (fitc.space.default_act_bits): searched 8…2 under a hardware budget,
    # whose cost depends on activation widths, fixed at 8 under size/BOPs budgets
    act_bits: tuple[int, ...] | None = None
    per_layer_prune: bool = True  # each layer its own pruning ladder (False: one global ladder)
    fisher_method: str = "per_sample"  # "per_sample" | "batch"
    fisher_max_batches: int = 20
    algorithm: str = "greedy"  # "greedy" | "astar"
    lam: float = 1.0
    refresh_every: int = 10  # re-estimate the Fisher every k expansions; 0 = never
    # fine-tuning
    # None: the model's own default (zoo: 30, resnet8: 10), twice that when activation bits are
    # searched (hardware budgets): low-bit activations take longer to recover
    finetune_epochs: int | None = None
    finetune_lr: float = 1e-2
    regrow: float = 0.3  # prune-and-regrow: fraction of each layer's support moved (0: fixed)
    # knowledge distillation from the float model: the soft loss's weight (plans that are not
    # sparse; sparse ones regrow instead, fitc.finetune)
    distill: float = 0.15
    optimizer: str = "adam"
    schedule: str = "cosine"
    # hardware
    backend: str = "Vitis"  # hls4ml's Vitis or Vivado HLS, or "rtl" (da4ml Verilog)
    latency_cutoff: float = -1.0  # rtl: da4ml delay per pipeline stage; ≤ 0 combinational
    part: str | None = None  # None: the device's part, else xc7z020clg400-1
    clock_ns: float = 5.0
    # "auto": by the network (fitc.backends.hls.io_rule: CNNs with a feature map > 1024 values
    # stream), resolved by the run; io_parallel | io_stream: as given
    io_type: str = "auto"
    # "auto": by the run (fitc.backends.hls.strategy_rule: distributed_arithmetic under a hardware
    # budget at io_parallel and reuse factor 1, else Latency); Latency | Resource |
    # distributed_arithmetic: as given
    strategy: str = "auto"
    reuse_factor: int = 1
    resource_model: str = "da4ml"  # the accurate model the loop checks against
    max_loop_iterations: int = 4
    # how far `fitc run` goes
    until: str = "estimate"
    progress: bool = True

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is not valid; choose one of {', '.join(map(str, allowed))}"
                )
        for b in self.budgets():
            _ = b  # parsed for validation
        if (self.device is None) != (self.fraction is None):
            raise ConfigError(
                "device and fraction go together, e.g. --device xc7z020 --fraction 0.25"
            )
        if not self.hidden or any(not (1 <= h <= _MAX_WIDTH) for h in self.hidden):
            raise ConfigError(
                f"hidden widths must be a non-empty list of integers in 1..{_MAX_WIDTH}, "
                f"got {list(self.hidden)}"
            )
        if self.weights is not None and self.float_from is not None:
            raise ConfigError("give weights (your trained model) or float_from, not both")
        if self.fraction is not None and not (0 < self.fraction <= 1):
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        for key, (lo, hi) in _INT_RANGES.items():
            v = getattr(self, key)
            if v is not None and not (lo <= v <= hi):
                raise ConfigError(f"{key} must be an integer in {lo}..{hi}, got {v}")
        for key, positive in _FLOATS.items():
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and (v > 0 if positive else v >= 0)):
                raise ConfigError(
                    f"{key} must be a finite number {'> 0' if positive else '≥ 0'}, got {v}"
                )
        if not (math.isfinite(self.regrow) and 0 <= self.regrow < 1):
            raise ConfigError(
                f"regrow must be a fraction in [0, 1) (0: the pruning support stays fixed), "
                f"got {self.regrow}"
            )
        if not (math.isfinite(self.distill) and 0 <= self.distill <= 1):
            raise ConfigError(
                f"distill must be a weight in [0, 1] (0: cross-entropy only), got {self.distill}"
            )
        for key in _ANY_FLOATS:
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"{key} must be a finite number, got {getattr(self, key)}")
        if self.part is not None:
            try:
                check_part(self.part)
            except ConfigError as e:
                raise ConfigError(f"{e} (a board preset goes in --device, e.g. pynq-z2)") from None
        for key in ("weight_bits", "act_bits"):
            bits = getattr(self, key)
            if bits is None and key == "act_bits":
                continue
            if not bits or any(not (2 <= b <= 16) for b in bits):
                raise ConfigError(
                    f"{key} must be a non-empty list of bit widths in 2..16, got {list(bits)}"
                )
        if self.strategy not in ("auto", *STRATEGIES):
            raise ConfigError(
                "strategy must be 'auto', 'Latency', 'Resource' or 'distributed_arithmetic', "
                f"got {self.strategy!r}"
            )
        self.hardware()  # validates backend / io_type / reuse factor

    # ---------------------------------------------------------------------------------------
    def budgets(self) -> list[Budget]:
        return [Budget.parse(b) for b in self.budget]

    @property
    def firmware_backend(self) -> str:
        """The backend the run builds: ``backend``, but the RTL when Yosys costs the design
        (the yosys resource model synthesizes the RTL, so that is the firmware it prices)."""
        return "rtl" if self.resource_model == "yosys" else self.backend

    def hardware(self) -> HardwareConfig:
        """The firmware's hardware config. The RTL backend is da4ml's fully parallel adder
        graphs: strategy distributed_arithmetic, io_parallel, reuse factor 1 whatever is set."""
        rtl = self.firmware_backend == "rtl"
        return HardwareConfig(
            part=self.part or "xc7z020clg400-1",
            clock_period_ns=float(self.clock_ns),
            backend=self.firmware_backend,
            # "auto" is resolved per network by the run (Run.hardware); io_parallel until then
            io_type="io_parallel" if rtl or self.io_type == "auto" else self.io_type,
            # "auto" is resolved by the run (Run.hardware); Latency until then
            strategy="distributed_arithmetic"
            if rtl
            else ("Latency" if self.strategy == "auto" else self.strategy),
            reuse_factor=1 if rtl else int(self.reuse_factor),
        )

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        parts = [re.sub(r"[^A-Za-z0-9.]+", "-", b) for b in self.budget]
        if self.device:
            parts.append(f"{self.device}-{self.fraction:g}")
        slug = "_".join(parts) or "size-1-16"
        return Path("runs") / f"{model_slug(self.model)}_{slug}"

    def replace(self, **overrides: Any) -> RunConfig:
        given = {k: v for k, v in overrides.items() if v is not None}
        return from_mapping({**self.to_dict(), **given}, source="command line")

    def to_dict(self) -> dict[str, Any]:
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v
        return d


def model_slug(model: str) -> str:
    """A model reference as one safe path component: ``nets/my.py:build`` → ``my-build``."""
    name = str(model)
    if ":" in name:
        target, _, factory = name.rpartition(":")
        name = f"{Path(target).stem.rsplit('.', 1)[-1]}-{factory}"
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "model"


# Integer options and their ranges: beyond them a value is a typo, not a wish (a seed must fit
# numpy's 32-bit seeds, a batch or reuse factor a C int, an epoch count a lifetime).
_INT_RANGES = {
    "seed": (0, 2**32 - 1),
    "train_epochs": (1, 1_000_000),
    "batch_size": (1, 2**31 - 1),
    "fisher_max_batches": (1, 2**31 - 1),
    "refresh_every": (0, 2**31 - 1),
    "finetune_epochs": (1, 1_000_000),
    "reuse_factor": (1, MAX_REUSE_FACTOR),
    "max_loop_iterations": (1, 1000),
}
_MAX_WIDTH = 2**16  # a hidden layer wider than this fits on no FPGA, and may not fit in memory
# Float options: True = must be > 0, False = must be ≥ 0; always finite.
_FLOATS = {"train_lr": True, "finetune_lr": True, "lam": False, "clock_ns": True}
# Float options that may be negative (finite only).
_ANY_FLOATS = ("latency_cutoff",)

_CHOICES = {
    "io_type": ("auto", "io_parallel", "io_stream"),
    "fisher_method": ("per_sample", "batch"),
    "algorithm": ("greedy", "astar"),
    "optimizer": ("adam", "sgd"),
    "schedule": ("cosine", "none"),
    "until": ("train", "search", "finetune", "export", "lower", "estimate"),
    "resource_model": ("analytical", "da4ml", "report", "yosys"),
    "backend": ("Vitis", "Vivado", "rtl"),
}

FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _nearest(key: str) -> str:
    match = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(FIELDS)}"


def _coerce(name: str, value: Any, source: str) -> Any:
    hint = typing.get_type_hints(RunConfig)[name]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: key {name!r} must be {expected}, got {value!r}")

    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad("a mapping of names to values (e.g. model_args: {width: 32})")
        return dict(value)
    if origin is tuple:
        item = args[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, str):  # "8,6,4" or "size=1/16,lut=2000" (+ also joins budgets)
            items = [s.strip() for s in re.split(r"[,+]" if name == "budget" else ",", value)]
            items = [s for s in items if s]
        if item is int and any(isinstance(x, bool) or not isinstance(x, (int, str)) for x in items):
            raise bad("a list of integers")  # 64.5 would become 64 silently
        try:
            return tuple(int(x) if item is int else str(x) for x in items)
        except (TypeError, ValueError):
            raise bad(f"a list of {item.__name__}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise bad("an integer")
        try:
            return int(value)
        except ValueError:
            raise bad("an integer") from None
    if hint is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad("a number") from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad("a string")
        return str(value)
    return value


def from_mapping(mapping: dict[str, Any], *, source: str = "config") -> RunConfig:
    """Build a RunConfig from a mapping, rejecting unknown keys with the nearest valid one."""
    kwargs = {}
    for key, value in mapping.items():
        norm = str(key).replace("-", "_")
        if norm not in FIELDS:
            raise ConfigError(f"{source}: unknown key {key!r}{_nearest(norm)}")
        kwargs[norm] = _coerce(norm, value, source)
    return RunConfig(**kwargs)


def load_config(
    path: str | Path | None, base: dict[str, Any] | None = None, **overrides: Any
) -> RunConfig:
    """Defaults < ``base`` (e.g. a run's recorded config) < YAML file at ``path`` < ``overrides``
    (flags; ``None`` = not given)."""
    loaded: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    cfg = from_mapping(base or {}, source="recorded config")
    if loaded:
        cfg = from_mapping({**cfg.to_dict(), **loaded}, source=str(path))
    return cfg.replace(**overrides)
