"""A non-editable install: a wheel built from this checkout, installed into a folder of its own and imported
from elsewhere, still finds everything it reads at run time (the DeepSpeed configs).

Builds a wheel (≈ 10 s): marked slow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    # Build from a copy of the sources so that a stale build/ in the checkout cannot leak files into the wheel.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "r2g", src / "r2g", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path_factory.mktemp("wheels")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # No build isolation: the venv's setuptools builds it, so the test needs no index.
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)], check=True)
    (wheel,) = wheels.glob("r2g-*.whl")
    target = tmp_path_factory.mktemp("site")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def test_an_installed_wheel_finds_the_shipped_ds_configs(installed, tmp_path):
    script = (
        "import json, r2g\n"
        "from r2g.ds_config import find_ds_config\n"
        "print(json.dumps([r2g.__file__, str(find_ds_config('ds_configs/zero2.json')), str(find_ds_config('zero3.json'))]))\n"
    )
    # Run from a folder outside the checkout, with the installed copy first on the path.
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)},
                            capture_output=True, text=True, check=True)
    package, zero2, zero3 = map(Path, json.loads(result.stdout.splitlines()[-1]))
    assert package.is_relative_to(installed)
    assert zero2 == installed / "r2g" / "ds_configs" / "zero2.json" and zero3.parent == zero2.parent
    assert json.loads(zero2.read_text())["zero_optimization"]["stage"] == 2
    shipped = sorted(p.name for p in (ROOT / "r2g" / "ds_configs").glob("*.json"))
    assert sorted(p.name for p in zero2.parent.glob("*.json")) == shipped


def test_an_installed_wheel_carries_every_data_file_of_the_package(installed):
    """Recipes, phrase lists, the demo's sentence templates, LLM configs, the serve page: whatever the package reads
    at run time."""
    data_suffixes = {".json", ".txt", ".html"}
    in_checkout = {p.relative_to(ROOT) for p in (ROOT / "r2g").rglob("*") if p.suffix in data_suffixes}
    in_wheel = {p.relative_to(installed) for p in (installed / "r2g").rglob("*") if p.suffix in data_suffixes}
    assert Path("r2g/recipes.json") in in_checkout and Path("r2g/demo/sentences.json") in in_checkout
    assert in_checkout - in_wheel == set()
