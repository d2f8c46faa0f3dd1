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


def test_fuzzy_repair_work_is_bounded_per_query(index: KeywordIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    import matcher.keyword as keyword_module

    calls: list[str] = []
    real = keyword_module.process.extractOne

    def counting(token: str, *args: object, **kwargs: object) -> object:
        calls.append(token)
        return real(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(keyword_module.process, "extractOne", counting)
    fresh = KeywordIndex(matcher.default_catalog().profiles(), weights=FieldWeights())
    words = [f"zq{chr(97 + i // 26)}{chr(97 + i % 26)}xv" for i in range(500)]
    fresh.score(normalize(" ".join(words * 3)))
    assert len(calls) == 64  # distinct out-of-vocabulary words looked up once each, 64 at most
    fresh.score(normalize(" ".join(words * 3)))
    assert len(calls) == 64  # misses are cached too
    fresh.score(normalize("x" * 3000))
    assert len(calls) == 64  # no word longer than 40 letters is looked up


def test_a_query_that_normalization_expands_past_the_limit_is_refused_before_any_work() -> None:
    engine = matcher.Matcher(semantic=False)
    with pytest.raises(matcher.QueryError, match="expands to 73,728 characters"):
        engine.match("\ufdfa" * 4096)
    assert engine.match("\ufdfa" * 100).candidates
