"""The wheel carries the shipped models, so a plain `pip install` predicts (issue 16)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pneumocnn.core import locations
from pneumocnn.core.locations import shipped_model_dir

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# What a build needs from the checkout (no .git, no .venv, no run folders).
BUILD_INPUTS = (
    "pneumocnn",
    "saved_models",
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "MANIFEST.in",
    "README.md",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout with the test venv's setuptools (offline)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    output = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--wheel-dir", str(output), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = output.glob("pneumocnn-*.whl")
    return built


def test_wheel_carries_every_shipped_model_file_unchanged(wheel):
    shipped = sorted(p for p in (PROJECT_ROOT / "saved_models").iterdir() if p.is_file())
    assert shipped
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for path in shipped:
            member = f"pneumocnn/saved_models/{path.name}"
            assert member in names, member
            assert archive.read(member) == path.read_bytes(), member


def test_wheel_holds_the_package_and_no_top_level_saved_models(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "pneumocnn/predict.py" in names and "pneumocnn/runtime/runners.py" in names
    assert not [name for name in names if name.startswith("saved_models/")]


def test_shipped_model_dir_prefers_the_installed_copy(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "pneumocnn"
    package.mkdir(parents=True)
    monkeypatch.setattr(locations, "_PACKAGE", package)
    # A source checkout: saved_models/ beside the package.
    assert shipped_model_dir() == tmp_path / "site-packages" / "saved_models"
    # An installed wheel: the copy inside the package.
    (package / "saved_models").mkdir()
    assert shipped_model_dir() == package / "saved_models"


def test_in_this_checkout_the_shipped_models_are_found():
    assert (shipped_model_dir() / "pneumocnn.json").is_file()
