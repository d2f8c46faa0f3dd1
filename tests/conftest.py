"""Shared fixtures: small hand-made catalogs, matchers on the default catalog, a child run without root's overrides."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matcher

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def small_records() -> list[dict[str, Any]]:
    """A three-task catalog whose expected rankings are obvious to a reader."""
    return [
        {
            "id": "invoice-extraction",
            "title": "Invoice extraction",
            "description": "Extract header fields, line items and totals from vendor invoices.",
            "keywords": {"invoice": 1.0, "line items": 1.0, "vendor bill": 0.8},
            "phrases": ["pull totals out of supplier invoices", "read line items from bills"],
        },
        {
            "id": "receipt-extraction",
            "title": "Receipt extraction",
            "description": "Read merchant, date and total from shop receipts.",
            "keywords": {"receipt": 1.0, "merchant": 0.8, "till slip": 0.5},
            "phrases": ["scan restaurant receipts", "expense receipts to rows"],
        },
        {
            "id": "sentiment-analysis",
            "title": "Sentiment analysis",
            "description": "Label reviews as positive, negative or neutral.",
            "keywords": {"sentiment": 1.0, "polarity": 0.8, "review": 0.6},
            "phrases": ["are customers happy with our app", "tag tweets as positive or negative"],
        },
    ]


@pytest.fixture(scope="session")
def default_keyword_matcher() -> matcher.Matcher:
    """Keyword-only matcher on the bundled catalog (index built once per test session)."""
    m = matcher.Matcher(matcher.default_catalog(), semantic=False)
    m.warm_up()
    return m


@pytest.fixture
def small_catalog() -> matcher.Catalog:
    return matcher.Catalog.from_records(small_records())


@pytest.fixture
def small_matcher(small_catalog: matcher.Catalog) -> matcher.Matcher:
    return matcher.Matcher(small_catalog, semantic=False)


@pytest.fixture(scope="session")
def semantic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache folder of `default_semantic_matcher`: the ONNX export and the task embeddings."""
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="session")
def default_semantic_matcher(semantic_cache: Path) -> matcher.Matcher:
    """The full cascade with the shipped MiniLM model and the default backend (ONNX Runtime);
    the export and embeddings cached in a temporary folder."""
    m = matcher.Matcher(matcher.default_catalog(), semantic=True, cache_dir=semantic_cache)
    m.warm_up()
    return m


def run_python_as_an_ordinary_user(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter for which file permissions hold, even when the tests run as root.

    Root ignores permission bits through two capabilities; the child drops them from its bounding
    set before it starts, so a folder with mode 0 really is closed to it. An ordinary user runs
    the child unchanged.
    """
    def drop_permission_override() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
            if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "cannot drop the capability to bypass file permissions")

    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, preexec_fn=drop_permission_override if os.geteuid() == 0 else None)


def last_json_line_in_a_closed_folder(folder: Path, code: str) -> Any:
    """Run `code` (with `folder` as its argument) as an ordinary user while `folder` exists with mode 0,
    and return its last line of output read as JSON; the folder is opened again afterwards."""
    folder.mkdir(mode=0)
    try:
        run = run_python_as_an_ordinary_user(code, str(folder))
    finally:
        folder.chmod(0o700)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


@pytest.fixture(scope="session")
def torch_semantic_matcher(semantic_cache: Path) -> matcher.Matcher:
    """The full cascade on the torch backend, sharing the cache folder (its embeddings are its own)."""
    m = matcher.Matcher(matcher.default_catalog(), semantic="torch", cache_dir=semantic_cache)
    m.warm_up()
    return m


@pytest.fixture
def exported_cache(tmp_path: Path, default_semantic_matcher: matcher.Matcher, semantic_cache: Path) -> Path:
    """A fresh cache folder holding only a copy of the verified ONNX export (no task embeddings)."""
    folder = tmp_path / "exported"
    folder.mkdir()
    for path in semantic_cache.glob("onnx-*"):
        shutil.copyfile(path, folder / path.name)
    assert len(list(folder.glob("onnx-*.onnx"))) == 1
    return folder
