"""`python -m build` ships the catalog in the sdist and in the wheel built from it, and a plain install
(no extras, no repo on the path) answers queries."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def _build(tmp_path: Path) -> tuple[Path, Path]:
    """`python -m build`: the sdist first, then the wheel built from that sdist (not from the tree)."""
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "-o", str(out), str(REPO)], check=True,
                   capture_output=True, timeout=900)
    return next(out.glob("task_matcher-*.tar.gz")), next(out.glob("task_matcher-*.whl"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _build(tmp_path_factory.mktemp("build"))


def test_sdist_carries_the_catalog_configs_and_license(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert "matcher/data/catalog/document-extraction.yaml" in names
    assert "matcher/data/catalog/SCHEMA.md" in names
    assert "matcher/data/default-config.json" in names
    assert {"LICENSE", "README.md", "pyproject.toml", "constraints.txt"} <= names


def test_wheel_from_the_sdist_contains_the_catalog_config_and_type_marker(built: tuple[Path, Path]) -> None:
    _, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "matcher/py.typed" in names
    assert "matcher/data/default-config.json" in names
    assert "matcher/data/catalog/document-extraction.yaml" in names
    assert any(name.startswith("matcher/data/heads/head-") and name.endswith(".npz") for name in names)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not any(name.startswith(("tests/", "benchmarks/", "corpora/")) for name in names)


def test_plain_install_of_the_wheel_built_from_the_sdist_matches_keyword_only(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    _, wheel = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt")]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=900)
    code = ("import json, warnings, matcher\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    r = matcher.match('extract key fields from contracts')\n"
            "print(json.dumps({'body': r.to_dict(), 'warnings': [str(w.message) for w in caught],"
            " 'file': matcher.__file__}))\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         cwd=elsewhere, check=True, timeout=300)
    result = json.loads(out.stdout)
    assert str(venv) in result["file"]
    assert result["body"]["chosen"]["task_id"] == "contract-key-fields"
    assert result["body"]["matcher"] == "keyword"
    assert any("keyword-only" in w for w in result["warnings"])
