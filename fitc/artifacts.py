"""The artifacts passed between pipeline stages: small frozen dataclasses with JSON round-trips.

Contract:
- every artifact validates itself at construction and raises :class:`ArtifactError` naming the
  layer and the value that is wrong;
- field names carry their units (``weight_bits``, ``clock_period_ns``, ``wall_time_s``);
- layers are always keyed by the torch module's qualified name in the float model
  (``"net.0"``, ``"stage1.0.conv1"``); later stages keep a map back to that name;
- ``to_dict()`` returns plain JSON types and ``from_dict(to_dict(x)) == x``;
- user input is refused, never adjusted: :meth:`Budget.parse` takes whole-number hardware counts
  only and no number beyond a float; :func:`check_part` wants a Xilinx part number; and
  :func:`check_reuse_factor` refuses a reuse factor hls4ml would silently replace (its valid
  values: :func:`valid_reuse_factors`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from fitc.errors import ArtifactError, ConfigError

SCHEMA_VERSION = 1


def _tuple_of(cls, items) -> tuple:
    return tuple(x if isinstance(x, cls) else cls.from_dict(x) for x in items)


class _Json:
    """Mixin: to_dict/from_dict for flat frozen dataclasses (nested ones override from_dict)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, _Json):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = [x.to_dict() if isinstance(x, _Json) else x for x in v]
            elif isinstance(v, dict):
                v = {k: (x.to_dict() if isinstance(x, _Json) else x) for k, x in v.items()}
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ArtifactError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in d:
                v = d[f.name]
                kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Budgets


def exact_number(value: str, what: str) -> Fraction:
    """``value`` (``20000``, ``2e4``, ``1/16``, ``0.0625``) as an exact fraction. Exponents beyond
    ±400 are refused before :class:`Fraction` would build a number of that many digits."""
    for exp in re.findall(r"[eE]\s*([+-]?\d+)", value):
        if abs(int(exp)) > 400:
            raise ConfigError(f"{what}: {value!r} is out of range for a number")
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{what}: {value!r} is not a number or fraction") from None


BUDGET_KINDS = ("size", "bops", "lut", "ff", "dsp", "bram", "latency", "combined")
HARDWARE_KINDS = ("lut", "ff", "dsp", "bram", "latency")
_COUNT_UNITS = {
    "lut": "LUT",
    "ff": "flip-flop",
    "dsp": "DSP",
    "bram": "BRAM_18K",
    "latency": "cycle",
}
_MAX_EXACT_COUNT = 2**53


@dataclass(frozen=True)
class Budget(_Json):
    """A limit on one cost. ``size`` and ``bops`` are fractions of the float model (0 < limit ≤ 1);
    hardware kinds are absolute (LUT count, DSP count, FF count, BRAM_18K count, latency in cycles).
    ``combined`` limits the worst ratio cost/limit over several budgets (limit 1: all are met)."""

    kind: str
    limit: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ConfigError(
                f"unknown budget kind {self.kind!r}; valid kinds: {', '.join(BUDGET_KINDS)}"
            )
        if not (
            isinstance(self.limit, (int, float)) and math.isfinite(self.limit) and self.limit >= 0
        ):
            raise ConfigError(
                f"budget {self.kind}: limit must be a finite number ≥ 0, got {self.limit!r}"
            )
        if self.kind in ("size", "bops") and not (0 < self.limit <= 1):
            raise ConfigError(
                f"budget {self.kind}={self.limit} must be a fraction of the float model in (0, 1], "
                f"e.g. {self.kind}=1/16"
            )

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse ``"size=1/16"``, ``"size=0.0625"``, ``"bops=0.02"``, ``"lut=20000"``.

        User input is held to more than a Budget: a hardware count must be a whole number
        ≤ 2^53 (``dsp=1.5`` is refused, not rounded), and a number too large for a float
        (``lut=1e400``) is refused."""
        if "=" not in text:
            raise ConfigError(
                f"budget {text!r} must look like KIND=VALUE, e.g. size=1/16 or lut=20000"
            )
        kind, value = (s.strip() for s in text.split("=", 1))
        kind = kind.lower()
        if kind == "combined":
            raise ConfigError(
                f"budget {text!r}: 'combined' is internal; give each limit, e.g. lut=20000 dsp=0"
            )
        exact = exact_number(value, f"budget {text!r}")
        if kind in HARDWARE_KINDS and exact >= 0:
            # A count (LUTs, DSPs, cycles …) is a whole number: refuse a fraction, never round it
            # (only user input: the closed loop's own tightened limits may be fractional).
            if exact.denominator != 1:
                raise ConfigError(
                    f"budget {text!r}: a {_COUNT_UNITS[kind]} count must be a whole number, "
                    f"e.g. {kind}={math.floor(exact)}"
                )
            if exact > _MAX_EXACT_COUNT:
                raise ConfigError(
                    f"budget {text!r} is too large: at most 2^53 = {_MAX_EXACT_COUNT} "
                    "(the largest count a float holds exactly)"
                )
        try:
            limit = float(exact)
        except OverflowError:
            raise ConfigError(f"budget {text!r}: {value!r} is too large for a number") from None
        return cls(kind, limit)

    def __str__(self) -> str:
        if self.kind in ("size", "bops") and self.limit > 0 and (1 / self.limit).is_integer():
            return f"{self.kind}=1/{int(1 / self.limit)}"
        return f"{self.kind}={self.limit:g}"


# --------------------------------------------------------------------------------------------
# Compression plan (output of the search, input of the build)


@dataclass(frozen=True)
class LayerPlan(_Json):
    """One Linear/Conv2d layer of the plan.

    ``act_bits`` is the bit width of the quantizer that feeds this layer's input (the network's
    input quantizer for the first layer, the preceding quantized ReLU otherwise).
    ``n_nonzero`` counts the weights that are non-zero *after* pruning and quantization.
    ``out_positions`` is the number of output positions each weight is used at (H_out·W_out for a
    convolution, 1 for a dense layer); ``fan_in`` is n·k² (inputs summed per output).
    """

    name: str
    kind: str  # "linear" | "conv2d"
    weight_bits: int
    act_bits: int
    n_weights: int
    n_nonzero: int
    fan_in: int
    out_positions: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "conv2d"):
            raise ArtifactError(
                f"layer {self.name}: kind must be 'linear' or 'conv2d', got {self.kind!r}"
            )
        for key in ("weight_bits", "act_bits"):
            b = getattr(self, key)
            if not (isinstance(b, int) and 1 <= b <= 32):
                raise ArtifactError(f"layer {self.name}: {key} must be an int in 1..32, got {b!r}")
        if not (0 <= self.n_nonzero <= self.n_weights) or self.n_weights <= 0:
            raise ArtifactError(
                f"layer {self.name}: need 0 ≤ n_nonzero ≤ n_weights and n_weights > 0, "
                f"got n_nonzero={self.n_nonzero}, n_weights={self.n_weights}"
            )
        if self.fan_in <= 0 or self.out_positions <= 0:
            raise ArtifactError(f"layer {self.name}: fan_in and out_positions must be positive")

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n_nonzero / self.n_weights

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["sparsity"] = round(self.sparsity, 6)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerPlan:
        return super().from_dict({k: v for k, v in d.items() if k != "sparsity"})


@dataclass(frozen=True)
class PathStep(_Json):
    """One expansion of the path search: the move taken and the search quantities after it."""

    move: str  # e.g. "net.0:w8->w6", "prune:0.42", "net.2:a8->a6"
    g: float
    h: float
    f: float
    cost: float


@dataclass(frozen=True)
class CompressionPlan(_Json):
    """The searched configuration. The pruning mask lives next to it (``masks.pt``:
    ``{layer name: bool tensor}``, True = kept), loadable with ``weights_only=True``."""

    model: str
    layers: tuple[LayerPlan, ...]
    budget: Budget
    achieved_cost: float
    predicted_fit: float
    path: tuple[PathStep, ...] = ()
    fisher_time_s: float = 0.0
    search_time_s: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.layers:
            raise ArtifactError("plan has no layers")
        names = [lp.name for lp in self.layers]
        if len(set(names)) != len(names):
            raise ArtifactError(f"plan has duplicate layer names: {names}")

    def layer(self, name: str) -> LayerPlan:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise ArtifactError(
            f"layer {name!r} is not in the plan; layers: {[lp.name for lp in self.layers]}"
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompressionPlan:
        d = dict(d)
        d["layers"] = _tuple_of(LayerPlan, d["layers"])
        d["path"] = _tuple_of(PathStep, d.get("path", ()))
        d["budget"] = Budget.from_dict(d["budget"])
        return super().from_dict(d)


# --------------------------------------------------------------------------------------------
# Equivalence checks (export and lowering)


@dataclass(frozen=True)
class HopReport(_Json):
    """Comparison of two executions of the same model on the same inputs (``b`` against ``a``)."""

    a: str  # e.g. "brevitas"
    b: str  # e.g. "qonnx"
    n_samples: int
    max_abs_diff: float
    identical_rows: float  # fraction of samples whose whole output row is bit-identical
    argmax_agreement: float
    accuracy_a: float
    accuracy_b: float

    @property
    def exact(self) -> bool:
        return self.max_abs_diff == 0.0 and self.identical_rows == 1.0


@dataclass(frozen=True)
class EquivalenceReport(_Json):
    hops: tuple[HopReport, ...]
    layer_checks: tuple[dict, ...] = ()  # per layer: name, planned/exported bits and sparsity, ok

    @property
    def exact(self) -> bool:
        return all(h.exact for h in self.hops)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EquivalenceReport:
        d = dict(d)
        d["hops"] = _tuple_of(HopReport, d["hops"])
        return super().from_dict(d)


# --------------------------------------------------------------------------------------------
# Hardware


#: hls4ml's strategies, as the firmware config spells them (``RunConfig`` also takes ``"auto"``).
STRATEGIES = ("Latency", "Resource", "distributed_arithmetic")


@dataclass(frozen=True)
class HardwareConfig(_Json):
    """What lowering and resource estimation assume about the target."""

    part: str = "xc7z020clg400-1"
    clock_period_ns: float = 5.0
    backend: str = "Vitis"  # "Vitis" | "Vivado" (hls4ml) | "rtl" (da4ml Verilog)
    io_type: str = "io_parallel"  # "io_parallel" | "io_stream"
    strategy: str = "Latency"  # "Latency" | "Resource" | "distributed_arithmetic"
    reuse_factor: int = 1

    def __post_init__(self) -> None:
        if self.backend not in ("Vitis", "Vivado", "rtl"):
            raise ConfigError(f"backend must be 'Vitis', 'Vivado' or 'rtl', got {self.backend!r}")
        if self.backend == "rtl" and (
            self.strategy != "distributed_arithmetic" or self.io_type != "io_parallel"
        ):
            raise ConfigError(
                "backend rtl is da4ml's fully parallel adder graphs: it needs strategy "
                f"distributed_arithmetic and io_type io_parallel, got {self.strategy!r}, "
                f"{self.io_type!r}"
            )
        if self.io_type not in ("io_parallel", "io_stream"):
            raise ConfigError(f"io_type must be 'io_parallel' or 'io_stream', got {self.io_type!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"strategy must be 'Latency', 'Resource' or 'distributed_arithmetic', got {self.strategy!r}"
            )
        if not (
            isinstance(self.reuse_factor, int)
            and not isinstance(self.reuse_factor, bool)
            and 1 <= self.reuse_factor <= MAX_REUSE_FACTOR
        ):
            raise ConfigError(
                f"reuse_factor must be an integer in 1..{MAX_REUSE_FACTOR}, got {self.reuse_factor!r}"
            )
        if self.strategy == "distributed_arithmetic" and self.reuse_factor != 1:
            raise ConfigError(
                f"strategy distributed_arithmetic needs reuse_factor 1 (hls4ml's DA kernels are fully "
                f"parallel), got reuse_factor={self.reuse_factor}; use strategy Resource for reuse"
            )
        clock = self.clock_period_ns
        if isinstance(clock, bool) or not (
            isinstance(clock, (int, float)) and math.isfinite(clock) and clock > 0
        ):
            raise ConfigError(f"clock_period_ns must be a finite number > 0, got {clock!r}")


#: hls4ml writes the reuse factor into C++ ``unsigned`` constants and loops up to it.
MAX_REUSE_FACTOR = 2**31 - 1

# Xilinx/AMD part numbers: xc (commercial), xq (defence), xa (automotive), then the family and
# device (7z020, zu9eg, vu9p, u250, ku115, k26, vc1902, 7a35t …), then package, speed grade and
# temperature, dash separated or not (xc7z020clg400-1, xczu9eg-ffvb1156-2-e, xcu250-figd2104-2L-e).
XILINX_PART = re.compile(r"x[cqa][a-z]{0,4}\d[a-z0-9]*(-[a-z0-9]+)*", re.IGNORECASE)


def check_part(part: str, what: str = "part") -> str:
    """``part`` if it reads as a Xilinx/AMD part number (see :data:`XILINX_PART`), else a
    :class:`ConfigError` naming it. Permissive about package, speed grade and temperature."""
    if not isinstance(part, str) or len(part) > 64 or not XILINX_PART.fullmatch(part):
        raise ConfigError(
            f"{what} {part!r} is not a Xilinx part number such as xc7z020clg400-1, "
            "xczu9eg-ffvb1156-2-e or xcu250-figd2104-2L-e"
        )
    return part


def valid_reuse_factors(n_in: int, n_out: int) -> list[int]:
    """The reuse factors hls4ml 1.3.0 keeps for a layer of ``n_in`` inputs per output (dense:
    inputs; convolution: channels × kernel size) and ``n_out`` outputs (filters) under the
    Resource strategy — ``FPGABackend.get_valid_reuse_factors``. Any other value hls4ml
    silently replaces by the closest of these (``set_closest_reuse_factor``)."""
    if n_in < 1 or n_out < 1:
        raise ArtifactError(f"layer sizes must be ≥ 1, got n_in={n_in}, n_out={n_out}")
    total = n_in * n_out
    divisors = sorted(
        {d for i in range(1, math.isqrt(total) + 1) if total % i == 0 for d in (i, total // i)}
    )
    return [
        rf
        for rf in divisors  # QoR: rf divides n_in·n_out (hls4ml's third condition)
        if (rf < n_in and (-(-total // rf)) % n_out == 0) or (rf >= n_in and rf % n_in == 0)
    ]


def check_reuse_factor(hw: HardwareConfig, layers: Iterable[tuple[str, int, int]]) -> None:
    """Refuse a reuse factor hls4ml would silently change. ``layers`` are ``(name, n_in, n_out)``
    as in :func:`valid_reuse_factors`. Only the Resource strategy is checked: hls4ml validates
    (and changes) reuse factors there only; Latency takes any, distributed arithmetic only 1
    (checked by :class:`HardwareConfig`). Raises :class:`ConfigError` naming every layer whose
    valid values do not include ``hw.reuse_factor``, with those values."""
    if hw.strategy != "Resource":
        return
    bad = []
    for name, n_in, n_out in layers:
        valid = valid_reuse_factors(int(n_in), int(n_out))
        if hw.reuse_factor not in valid:
            bad.append(f"{name} ({n_in}×{n_out}): {', '.join(map(str, valid))}")
    if bad:
        raise ConfigError(
            f"reuse factor {hw.reuse_factor} is not valid for the Resource strategy (hls4ml would "
            f"silently use another); valid reuse factors per layer — {'; '.join(bad)}"
        )


@dataclass(frozen=True)
class LayerResources(_Json):
    name: str  # torch module name
    lut: float = 0.0
    ff: float = 0.0
    dsp: float = 0.0
    bram_18k: float = 0.0
    latency_cycles: float = 0.0


@dataclass(frozen=True)
class ResourceReport(_Json):
    """FPGA resources of one design. ``source`` names the model that produced it
    (``"analytical"``, ``"da4ml"``, ``"yosys"``, ``"vivado_synth"``, ``"csynth"``); ``firmware``
    the firmware the numbers are for (``"hls4ml Latency"``, ``"hls4ml Resource RF=4"``,
    ``"hls4ml distributed_arithmetic"``, ``"rtl"``), ``basis`` what they model and how they were
    calibrated, ``note`` the caveats (e.g. a safety margin and why). The three are empty in
    reports written before they existed."""

    source: str
    hardware: HardwareConfig
    lut: float
    ff: float
    dsp: float
    bram_18k: float
    latency_cycles: float
    latency_ns: float
    initiation_interval_cycles: float
    layers: tuple[LayerResources, ...] = ()
    firmware: str = ""
    basis: str = ""
    note: str = ""

    def totals(self) -> dict[str, float]:
        """The totals by budget kind (``lut``, ``ff``, ``dsp``, ``bram``, ``latency``)."""
        return {
            "lut": float(self.lut),
            "ff": float(self.ff),
            "dsp": float(self.dsp),
            "bram": float(self.bram_18k),
            "latency": float(self.latency_cycles),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResourceReport:
        d = dict(d)
        d["hardware"] = HardwareConfig.from_dict(d["hardware"])
        d["layers"] = _tuple_of(LayerResources, d.get("layers", ()))
        return super().from_dict(d)


__all__ = [
    "BUDGET_KINDS",
    "Budget",
    "CompressionPlan",
    "EquivalenceReport",
    "HARDWARE_KINDS",
    "HardwareConfig",
    "HopReport",
    "LayerPlan",
    "LayerResources",
    "MAX_REUSE_FACTOR",
    "PathStep",
    "ResourceReport",
    "XILINX_PART",
    "check_part",
    "check_reuse_factor",
    "exact_number",
    "valid_reuse_factors",
]
