"""The confusability report names overlapping task pairs and the phrases that cause the overlap."""

from __future__ import annotations

import json

import pytest

import matcher
from matcher import Catalog
from matcher.cli import main
from matcher.confusability import confusability_report


def test_a_phrase_that_describes_another_task_is_reported() -> None:
    catalog = Catalog.from_records([
        {"id": "invoice-extraction", "title": "Invoice extraction",
         "description": "Extract totals from vendor invoices", "keywords": {"invoice": 1.0},
         "phrases": ["read invoice totals", "scan shop receipts for the merchant"]},
        {"id": "receipt-extraction", "title": "Receipt extraction",
         "description": "Read merchant and total from shop receipts", "keywords": {"receipt": 1.0},
         "phrases": ["expense receipts to rows"]},
        {"id": "translation", "title": "Translation", "description": "Translate text between languages",
         "keywords": {"translate": 1.0}, "phrases": ["french to english"]},
    ])
    report = confusability_report(catalog)
    assert [(p.task_a, p.task_b) for p in report] == [("invoice-extraction", "receipt-extraction")]
    assert report[0].phrases == (("invoice-extraction", "scan shop receipts for the merchant", "receipt-extraction"),)
    assert 0.0 <= report[0].profile_similarity <= 1.0


def test_default_catalog_report_is_deterministic_and_limited() -> None:
    first = confusability_report(matcher.default_catalog(), limit=5)
    assert first == confusability_report(matcher.default_catalog(), limit=5)
    assert len(first) <= 5
    counts = [len(p.phrases) for p in first]
    assert counts == sorted(counts, reverse=True)
    task_ids = {t.id for t in matcher.default_catalog()}
    assert all(p.task_a < p.task_b and {p.task_a, p.task_b} <= task_ids for p in first)


def test_cli_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["confusability", "--limit", "3", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert len(body) <= 3
    assert set(body[0]) == {"tasks", "profile_similarity", "phrases"}
