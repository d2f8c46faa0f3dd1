"""A plain wheel install (no extras, no repo on the path) carries the catalog and answers queries."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_contains_the_catalog_config_and_type_marker(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("task_matcher-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "matcher/py.typed" in names
    assert "matcher/data/default-config.json" in names
    assert "matcher/data/catalog/document-extraction.yaml" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "corpora/")) for name in names)


def test_plain_wheel_install_matches_keyword_only(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                    str(REPO)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("task_matcher-*.whl"))
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
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True, timeout=300)
    result = json.loads(out.stdout)
    assert str(venv) in result["file"]
    assert result["body"]["chosen"]["task_id"] == "contract-key-fields"
    assert result["body"]["matcher"] == "keyword"
    assert any("keyword-only" in w for w in result["warnings"])
