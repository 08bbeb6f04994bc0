"""The wheel ships the catalogs: memsim/data/* are symlinks in the checkout, real files in the wheel.

Builds from a copy of the checkout (so concurrent runs never share a build/ folder), without build
isolation (no network), then installs the wheel into a folder and lists the catalog from elsewhere.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from memsim.catalog import FAMILIES
from memsim.specio import catalog_names

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("setuptools")
pytestmark = pytest.mark.slow   # ~10 s together: one build and one install


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "memsim", src / "memsim", symlinks=True, ignore=ignore)
    for family in FAMILIES:
        if (ROOT / family).is_dir():
            shutil.copytree(ROOT / family, src / family, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.py", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(dist)], check=True, capture_output=True, text=True)
    (built,) = dist.glob("memsim-*.whl")
    return built


@pytest.mark.slow
def test_wheel_lists_every_hardware_catalog_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "memsim/data/hardware/h100-sxm.yaml" in names
    for entry in catalog_names("hardware"):
        assert f"memsim/data/hardware/{entry}.yaml" in names


@pytest.mark.slow
def test_installed_wheel_finds_the_catalog_from_any_directory(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", str(wheel), "--no-deps", "--no-index", "-q",
                    "--target", str(target)], check=True, capture_output=True, text=True)
    assert (target / "memsim" / "data" / "hardware" / "h100-sxm.yaml").is_file()
    assert not (target / "memsim" / "data" / "hardware").is_symlink()
    code = ("import json, memsim.catalog as c; from memsim.hardware import list_systems; "
            "print(json.dumps([str(c.catalog_dir('hardware')), [s.name for s in list_systems()]]))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    folder, systems = json.loads(out)
    assert folder.startswith(str(target))
    assert systems == catalog_names("hardware")
