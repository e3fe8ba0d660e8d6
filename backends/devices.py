"""FPGA device presets: the resources of common parts, and budgets as fractions of them.

Contract:
- :class:`Device` is a frozen dataclass with the part's programmable-logic resources: LUTs, flip-flops,
  DSP slices and block RAM counted in 18 Kb halves (``bram_18k`` = 2 × the datasheet's 36 Kb blocks),
  the unit hls4ml/Vivado HLS reports use.
- :func:`get_device` accepts a preset name (``"xc7z020"``), an alias (``"pynq-z2"``, ``"zcu102"``,
  ``"u250"``) or a full part number (``"xc7z020clg400-1"``, ``"xcu250-figd2104-2L-e"``: the longest
  preset name the part starts with). Unknown names raise :class:`UnknownDeviceError` naming the nearest.
- A device's ``part`` must read as a Xilinx/AMD part number (:func:`fitc.artifacts.check_part`:
  ``xc``/``xq``/``xa``, family and device, then package, speed grade, temperature).
- :func:`register_device` adds a part at run time; :func:`load_devices` reads extra parts from a YAML
  file (``yaml.safe_load``) and registers them.
- :func:`device_budgets` turns "fit in 25 % of this part" into one :class:`~fitc.artifacts.Budget`
  per resource (lut, ff, dsp, bram), each the floor of ``fraction`` × the part's count.

Preset numbers are the device totals from the AMD/Xilinx product data sheets (DS190 Zynq-7000,
DS891 Zynq UltraScale+ MPSoC, DS890 Kintex UltraScale, DS923 Virtex UltraScale+, DS962 Alveo U200/U250,
DS963 Alveo U280). For Alveo cards these are the FPGA's totals; the platform shell uses part of them.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fitc.artifacts import Budget, check_part
from fitc.errors import ConfigError

log = logging.getLogger(__name__)

#: The resource kinds a device limits, in the order :func:`device_budgets` returns them.
DEVICE_RESOURCES = ("lut", "ff", "dsp", "bram")


class UnknownDeviceError(ConfigError):
    """A device name, alias or part number matches no preset or registered device."""


@dataclass(frozen=True)
class Device:
    """One FPGA part and its programmable-logic resources (device totals from the data sheet)."""

    name: str  # canonical preset name, lower case, e.g. "xc7z020"
    part: str  # a full part number usable by hls4ml / Vivado, e.g. "xc7z020clg400-1"
    family: str  # e.g. "Zynq-7000"
    lut: int
    ff: int
    dsp: int
    bram_18k: int  # 18 Kb block RAM halves (= 2 × 36 Kb blocks)
    aliases: tuple[str, ...] = ()
    uram: int = 0  # UltraRAM blocks (288 Kb), informational
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower():
            raise ConfigError(f"device name must be non-empty lower case, got {self.name!r}")
        for key in ("lut", "ff", "dsp", "bram_18k", "uram"):
            v = getattr(self, key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ConfigError(f"device {self.name}: {key} must be an integer ≥ 0, got {v!r}")
        if self.lut == 0:
            raise ConfigError(f"device {self.name}: lut must be > 0")
        check_part(self.part, f"device {self.name}: part")
        object.__setattr__(self, "aliases", tuple(a.strip().lower() for a in self.aliases))

    def resource(self, kind: str) -> int:
        """The part's count of one budget kind (``lut``, ``ff``, ``dsp``, ``bram``)."""
        if kind == "bram":
            return self.bram_18k
        if kind in ("lut", "ff", "dsp"):
            return getattr(self, kind)
        raise ConfigError(f"device resource {kind!r} is not one of {', '.join(DEVICE_RESOURCES)}")


PRESETS: tuple[Device, ...] = (
    Device(
        "xc7z020",
        "xc7z020clg400-1",
        "Zynq-7000",
        lut=53_200,
        ff=106_400,
        dsp=220,
        bram_18k=280,
        aliases=("pynq-z2", "pynq", "pynq-z1", "zedboard", "zybo-z7-20", "zc702", "z7020"),
        source="DS190: 53,200 LUT, 106,400 FF, 220 DSP48E1, 140 × 36 Kb BRAM",
    ),
    Device(
        "xc7z010",
        "xc7z010clg400-1",
        "Zynq-7000",
        lut=17_600,
        ff=35_200,
        dsp=80,
        bram_18k=120,
        aliases=("zybo", "zybo-z7-10", "z7010"),
        source="DS190: 17,600 LUT, 35,200 FF, 80 DSP48E1, 60 × 36 Kb BRAM",
    ),
    Device(
        "xczu9eg",
        "xczu9eg-ffvb1156-2-e",
        "Zynq UltraScale+",
        lut=274_080,
        ff=548_160,
        dsp=2_520,
        bram_18k=1_824,
        aliases=("zcu102", "zu9eg"),
        source="DS891: 274,080 LUT, 548,160 FF, 2,520 DSP48E2, 912 × 36 Kb BRAM",
    ),
    Device(
        "xczu7ev",
        "xczu7ev-ffvc1156-2-e",
        "Zynq UltraScale+",
        lut=230_400,
        ff=460_800,
        dsp=1_728,
        bram_18k=624,
        uram=96,
        aliases=("zcu104", "zcu106", "zu7ev"),
        source="DS891: 230,400 LUT, 460,800 FF, 1,728 DSP48E2, 312 × 36 Kb BRAM, 96 URAM",
    ),
    Device(
        "xcku115",
        "xcku115-flvb2104-2-e",
        "Kintex UltraScale",
        lut=663_360,
        ff=1_326_720,
        dsp=5_520,
        bram_18k=4_320,
        aliases=("ku115", "kcu1500"),
        source="DS890: 663,360 LUT, 1,326,720 FF, 5,520 DSP48E2, 2,160 × 36 Kb BRAM",
    ),
    Device(
        "xcvu9p",
        "xcvu9p-flga2104-2L-e",
        "Virtex UltraScale+",
        lut=1_182_240,
        ff=2_364_480,
        dsp=6_840,
        bram_18k=4_320,
        uram=960,
        aliases=("vu9p", "vcu118"),
        source="DS923: 1,182,240 LUT, 2,364,480 FF, 6,840 DSP48E2, 2,160 × 36 Kb BRAM, 960 URAM",
    ),
    Device(
        "xcu200",
        "xcu200-fsgd2104-2-e",
        "Alveo (Virtex UltraScale+)",
        lut=1_182_240,
        ff=2_364_480,
        dsp=6_840,
        bram_18k=4_320,
        uram=960,
        aliases=("u200", "alveo-u200"),
        source="DS962 (VU9P-class die): 1,182,240 LUT, 2,364,480 FF, 6,840 DSP, 2,160 × 36 Kb BRAM",
    ),
    Device(
        "xcu250",
        "xcu250-figd2104-2L-e",
        "Alveo (Virtex UltraScale+)",
        lut=1_728_000,
        ff=3_456_000,
        dsp=12_288,
        bram_18k=5_376,
        uram=1_280,
        aliases=("u250", "alveo-u250"),
        source="DS962 (VU13P-class die): 1,728,000 LUT, 3,456,000 FF, 12,288 DSP, "
        "2,688 × 36 Kb BRAM, 1,280 URAM",
    ),
    Device(
        "xcu280",
        "xcu280-fsvh2892-2L-e",
        "Alveo (Virtex UltraScale+ HBM)",
        lut=1_303_680,
        ff=2_607_360,
        dsp=9_024,
        bram_18k=4_032,
        uram=960,
        aliases=("u280", "alveo-u280"),
        source="DS963: 1,303,680 LUT, 2,607,360 FF, 9,024 DSP, 2,016 × 36 Kb BRAM, 960 URAM",
    ),
)

_REGISTRY: dict[str, Device] = {}


def _norm(text: str) -> str:
    return re.sub(r"[\s_]+", "-", text.strip().lower())


def register_device(device: Device, *, overwrite: bool = False) -> Device:
    """Add ``device`` to the registry under its name and aliases.

    Raises :class:`ConfigError` if the name or an alias is already taken by another device and
    ``overwrite`` is false.
    """
    keys = (device.name, *device.aliases)
    if not overwrite:
        for key in keys:
            other = _REGISTRY.get(_norm(key))
            if other is not None and other != device:
                raise ConfigError(
                    f"device {device.name}: {key!r} is already registered for {other.name}; "
                    "pass overwrite=True to replace it"
                )
    for key in keys:
        _REGISTRY[_norm(key)] = device
    return device


for _d in PRESETS:
    register_device(_d)


def list_devices() -> list[Device]:
    """Every registered device, once each, sorted by name."""
    return sorted({d.name: d for d in _REGISTRY.values()}.values(), key=lambda d: d.name)


def get_device(name: str) -> Device:
    """Look up a device by preset name, alias or full part number (case-insensitive).

    A part number resolves to the longest registered name it starts with, so
    ``"xc7z020clg400-1"`` and ``"xc7z020-clg400-1"`` both give the ``xc7z020`` preset.
    """
    if isinstance(name, Device):
        return name
    key = _norm(str(name))
    if key in _REGISTRY:
        return _REGISTRY[key]
    matches = [d for d in list_devices() if key.startswith(d.name)]
    if matches:
        return max(matches, key=lambda d: len(d.name))
    for d in list_devices():
        if _norm(d.part) == key:
            return d
    names = sorted(_REGISTRY)
    nearest = difflib.get_close_matches(key, names, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(repr(n) for n in nearest)}?" if nearest else ""
    raise UnknownDeviceError(
        f"unknown device {name!r}{hint} Known devices: "
        f"{', '.join(d.name for d in list_devices())} (add one with register_device or a YAML "
        "file passed to load_devices)"
    )


def device_from_dict(name: str, d: dict[str, Any]) -> Device:
    """Build a :class:`Device` from a YAML/JSON mapping.

    Keys: ``part``, ``family``, ``lut``, ``ff``, ``dsp``, and either ``bram_18k`` or ``bram_36k``;
    optional ``aliases`` (list), ``uram``, ``source``.
    """
    if not isinstance(d, dict):
        raise ConfigError(
            f"device {name!r}: expected a mapping of resources, got {type(d).__name__}"
        )
    allowed = {
        "part",
        "family",
        "lut",
        "ff",
        "dsp",
        "bram_18k",
        "bram_36k",
        "aliases",
        "uram",
        "source",
    }
    unknown = set(d) - allowed
    if unknown:
        key = sorted(unknown)[0]
        near = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(
            f"device {name!r}: unknown key {key!r}{hint}; valid keys: {sorted(allowed)}"
        )
    missing = {"lut", "ff", "dsp"} - set(d)
    if missing or ("bram_18k" not in d and "bram_36k" not in d):
        need = sorted(missing) + ([] if ("bram_18k" in d or "bram_36k" in d) else ["bram_18k"])
        raise ConfigError(f"device {name!r}: missing keys {need}")
    if "bram_18k" in d and "bram_36k" in d:
        raise ConfigError(f"device {name!r}: give bram_18k or bram_36k, not both")
    bram_18k = d["bram_18k"] if "bram_18k" in d else 2 * d["bram_36k"]
    aliases = d.get("aliases", ())
    if isinstance(aliases, str):
        aliases = (aliases,)
    return Device(
        name=_norm(name),
        part=str(d.get("part", name)),
        family=str(d.get("family", "")),
        lut=d["lut"],
        ff=d["ff"],
        dsp=d["dsp"],
        bram_18k=bram_18k,
        aliases=tuple(str(a) for a in aliases),
        uram=d.get("uram", 0),
        source=str(d.get("source", "user")),
    )


def load_devices(path: str | Path, *, overwrite: bool = False) -> list[Device]:
    """Register the devices of a YAML file ``{name: {part:, lut:, ff:, dsp:, bram_18k:, ...}}``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"device file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"device file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"device file {path}: expected a mapping of device name → resources")
    out = []
    for name, spec in data.items():
        try:
            dev = device_from_dict(str(name), spec)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        out.append(register_device(dev, overwrite=overwrite))
        log.info("registered device %s from %s", dev.name, path)
    return out


def device_budgets(
    device: Device | str, fraction: float, kinds: Iterable[str] = DEVICE_RESOURCES
) -> list[Budget]:
    """One budget per resource kind: ``floor(fraction × the part's count)``.

    ``fraction`` must be in (0, 1]. ``kinds`` defaults to lut, ff, dsp and bram.
    """
    dev = get_device(device) if isinstance(device, str) else device
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
    return [Budget(kind, float(math.floor(fraction * dev.resource(kind) + 1e-9))) for kind in kinds]


__all__ = [
    "DEVICE_RESOURCES",
    "PRESETS",
    "Device",
    "UnknownDeviceError",
    "device_budgets",
    "device_from_dict",
    "get_device",
    "list_devices",
    "load_devices",
    "register_device",
]
