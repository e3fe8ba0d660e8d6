"""Packaging: one distribution `fitc` with fitc.export/backends/models, no generic top-level names."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_subpackages_import_from_anywhere(tmp_path):
    code = (
        "import importlib.util, fitc, fitc.export, fitc.backends, fitc.models\n"
        "for m in (fitc, fitc.export, fitc.backends, fitc.models):\n"
        "    assert m.__file__ is not None, m  # a regular package, not an empty namespace\n"
        "for name in ('export', 'backends', 'models'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.slow
def test_wheel_has_only_the_fitc_namespace(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("fitc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"fitc"}, top
    for sub in ("export", "backends", "models"):
        assert f"fitc/{sub}/__init__.py" in names
    assert "fitc/pipeline.py" in names
