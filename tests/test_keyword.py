"""Keyword scoring: differential checks against scikit-learn and rapidfuzz, and its guarantees."""

from __future__ import annotations

import numpy as np
import pytest
from rapidfuzz import fuzz

import matcher
from matcher import FieldWeights
from matcher.keyword import KeywordIndex, word_terms
from matcher.text import normalize


@pytest.fixture(scope="module")
def index() -> KeywordIndex:
    return KeywordIndex(matcher.default_catalog().profiles(), weights=FieldWeights())


@pytest.mark.parametrize("query", ["pull line items and totals out of vendor invoices",
                                   "invoice invoice invoice receipts", "translate emails", "zzz"])
def test_query_vectors_equal_scikit_learns_transform(index: KeywordIndex, query: str) -> None:
    idx, values = index.query_vector(normalize(query))
    dense = np.zeros(len(index._vocab))
    dense[idx] = values
    expected = index._word.transform([normalize(query)]).toarray()[0]
    np.testing.assert_allclose(dense, expected, atol=1e-12)


def test_idf_is_smoothed_and_positive_even_for_common_terms(index: KeywordIndex) -> None:
    assert np.all(index._idf >= 1.0)


def test_raw_scores_are_bounded(index: KeywordIndex) -> None:
    for query in ["invoice", "x", "the of and", "invoice " * 200, "contracts contracts key fields"]:
        raw = index.score(normalize(query)).raw
        assert raw.shape == (len(index.ids),)
        assert np.all((raw >= 0) & (raw <= 1))


def test_fuzzy_repair_uses_plain_ratio_with_no_processor(index: KeywordIndex) -> None:
    repaired, corrections = index.repair("invoce recipts")
    assert repaired == "invoice receipts"
    for c in corrections:
        assert c.similarity == round(fuzz.ratio(c.original, c.corrected, processor=None), 2)
        assert c.similarity >= 85


def test_known_and_short_words_are_never_rewritten(index: KeywordIndex) -> None:
    assert index.repair("invoice receipt") == ("invoice receipt", ())
    assert index.repair("invo") == ("invo", ())
    assert index.repair("quantum chromodynamics")[1] == ()


def test_a_short_query_does_not_score_high_against_long_text(index: KeywordIndex) -> None:
    # WRatio would rate "america" ~90 against a long name; our signals are length-normalized.
    raw = index.score(normalize("america")).raw
    assert raw.max() < 0.1


def test_word_terms_make_bigrams_within_lines_only() -> None:
    assert word_terms("line items\ntotal due") == ["line", "item", "line item", "total", "due", "total due"]


def test_coverage_counts_known_content_words(index: KeywordIndex) -> None:
    assert index.coverage("invoice totals") == 1.0
    assert index.coverage("foo invoice") == 0.5
    assert index.coverage("the and of") == 0.0
