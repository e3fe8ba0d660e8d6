"""Device presets, look-up by name/alias/part, YAML registration and fractional budgets."""

from __future__ import annotations

import pytest

from fitc.artifacts import Budget
from fitc.backends.devices import (
    PRESETS,
    Device,
    UnknownDeviceError,
    device_budgets,
    get_device,
    load_devices,
    register_device,
)
from fitc.errors import ConfigError


@pytest.mark.parametrize(
    "name, lut, ff, dsp, bram_18k",
    [
        ("xc7z020", 53_200, 106_400, 220, 280),
        ("xczu9eg", 274_080, 548_160, 2_520, 1_824),
        ("xcu250", 1_728_000, 3_456_000, 12_288, 5_376),
        ("xcvu9p", 1_182_240, 2_364_480, 6_840, 4_320),
        ("xcku115", 663_360, 1_326_720, 5_520, 4_320),
    ],
)
def test_required_presets_match_datasheets(name, lut, ff, dsp, bram_18k):
    d = get_device(name)
    assert (d.lut, d.ff, d.dsp, d.bram_18k) == (lut, ff, dsp, bram_18k)
    assert d.source  # every preset says where its numbers come from


def test_xc7z020_matches_the_vivado_report_fixture():
    # the "Available" row of the csynth report in tests/fixtures/vivado-report
    d = get_device("pynq-z2")
    assert (d.bram_18k, d.dsp, d.ff, d.lut) == (280, 220, 106_400, 53_200)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("pynq-z2", "xc7z020"),
        ("PYNQ-Z2", "xc7z020"),
        ("xc7z020clg400-1", "xc7z020"),
        ("xc7z020-clg400-1", "xc7z020"),
        ("zcu102", "xczu9eg"),
        ("xczu9eg-ffvb1156-2-e", "xczu9eg"),
        ("u250", "xcu250"),
        ("xcu250-figd2104-2L-e", "xcu250"),
        ("vcu118", "xcvu9p"),
        ("xcku115-flyb2104-2-i", "xcku115"),
    ],
)
def test_lookup_by_alias_and_part(query, expected):
    assert get_device(query).name == expected


def test_every_preset_part_resolves_to_itself():
    for d in PRESETS:
        assert get_device(d.part) is d or get_device(d.part) == d


def test_unknown_device_names_the_nearest():
    with pytest.raises(UnknownDeviceError, match="xc7z020") as e:
        get_device("xc7z02")
    assert isinstance(e.value, ConfigError)
    with pytest.raises(UnknownDeviceError, match="pynq-z2"):
        get_device("pynq-z3")


def test_device_budgets_fraction():
    budgets = device_budgets("xc7z020", 0.25)
    assert budgets == [
        Budget("lut", 13_300.0),
        Budget("ff", 26_600.0),
        Budget("dsp", 55.0),
        Budget("bram", 70.0),
    ]
    assert device_budgets(get_device("xc7z020"), 1.0)[0].limit == 53_200
    # floors, never rounds up past the fraction
    assert device_budgets("xc7z020", 0.1)[2] == Budget("dsp", 22.0)
    assert [b.kind for b in device_budgets("xcu250", 0.5, kinds=("lut", "dsp"))] == ["lut", "dsp"]


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_device_budgets_rejects_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        device_budgets("xc7z020", fraction)


def test_register_and_load_yaml(tmp_path):
    path = tmp_path / "parts.yaml"
    path.write_text(
        "xc7a35t:\n"
        "  part: xc7a35tcpg236-1\n"
        "  family: Artix-7\n"
        "  lut: 20800\n"
        "  ff: 41600\n"
        "  dsp: 90\n"
        "  bram_36k: 50\n"
        "  aliases: [basys3, cmod-a7-35t]\n"
    )
    (dev,) = load_devices(path)
    assert dev.bram_18k == 100
    assert get_device("basys3") is dev
    assert get_device("xc7a35tcpg236-1") is dev
    # re-registering the same device is fine; a different one under a taken name is not
    register_device(dev)
    other = Device("xc7a35t", "xc7a35t", "Artix-7", lut=1, ff=1, dsp=1, bram_18k=1)
    with pytest.raises(ConfigError, match="already registered"):
        register_device(other)


@pytest.mark.parametrize(
    "text, match",
    [
        ("foo:\n  lut: 10\n  ff: 10\n  dsp: 1\n", "missing keys"),
        ("foo:\n  lut: 10\n  ff: 10\n  dsp: 1\n  bram18k: 2\n", "did you mean 'bram_18k'"),
        ("foo:\n  lut: -1\n  ff: 10\n  dsp: 1\n  bram_18k: 2\n", "lut must be an integer"),
        ("- a\n- b\n", "mapping"),
        ("foo: [unclosed\n", "not valid YAML"),
    ],
)
def test_load_devices_errors_name_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_devices(path)


def test_missing_device_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_devices(tmp_path / "nope.yaml")
