"""Golden-query snapshots: a dependency upgrade or catalog edit that moves scores fails here.

Regenerate on purpose with `UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py` and review
the diff like code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import matcher

GOLDEN = Path(__file__).parent / "golden"
QUERIES = [
    "extract key fields from contracts",
    "pull line items and totals out of vendor invoices",
    "invoce parsing",
    "receipt scanning",
    "classify support tickets by urgency",
    "is this tweet positive or negative",
    "detect anger and joy in chat messages",
    "find the names of people and companies in news",
    "redact phone numbers and emails from transcripts",
    "turn questions into SQL over our warehouse",
    "fix the failing unit test in this function",
    "translate product pages into german",
    "summarize long reports into one paragraph",
    "who spoke when in this recording",
    "transcribe voicemails",
    "count cars in drone photos",
    "read the handwritten notes from the doctor",
    "answer questions about a bar chart",
    "match customer records across two databases",
    "rerank search results",
    "I want to know whether people like our app from what they write",
    "a general assistant my team can ask anything",
    "generate a video of a cat",
    "what's the weather in paris",
    "asdf qwerty zxcv",
    "foo bar baz",
    "ICD-10 codes for discharge summaries",
    "résumé parsing for recruiters",
    "ＯＣＲ for scanned pages",
    "x",
]


def snapshot(m: matcher.Matcher) -> list[dict[str, Any]]:
    return [m.match(q, top_k=5).to_dict() for q in QUERIES]


def check(name: str, got: list[dict[str, Any]], *, writes: bool = True) -> None:
    path = GOLDEN / name
    if writes and os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    expected = json.loads(path.read_text(encoding="utf-8"))
    for want, have in zip(expected, got, strict=True):
        assert have == want, f"golden query {want['query']!r} moved"


def test_keyword_path_golden(default_keyword_matcher: matcher.Matcher) -> None:
    check("keyword.json", snapshot(default_keyword_matcher))


@pytest.mark.semantic
def test_semantic_cascade_golden(default_semantic_matcher: matcher.Matcher) -> None:
    check("semantic.json", snapshot(default_semantic_matcher))


@pytest.mark.semantic
def test_semantic_cascade_golden_on_the_torch_backend(torch_semantic_matcher: matcher.Matcher) -> None:
    # the same snapshot, never rewritten from torch: the ONNX Runtime (default) and torch backends
    # agree to the rounding of every score
    check("semantic.json", snapshot(torch_semantic_matcher), writes=False)
