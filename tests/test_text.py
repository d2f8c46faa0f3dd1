"""Normalization, tokenization and stemming: examples and properties."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from matcher.text import STOP_WORDS, content_terms, normalize, stem, tokenize


def test_normalize_folds_width_case_and_ligatures() -> None:
    assert normalize("  ＩＮＶＯＩＣＥ  Parsing ﬁle ") == "invoice parsing file"
    assert normalize("STRASSE Straße") == "strasse strasse"


def test_zero_width_characters_vanish_and_controls_split_words() -> None:
    assert normalize("in\u200bvoice\ufeff") == "invoice"
    assert normalize("line\x00items\ttotal\n") == "line items total"
    assert normalize("\u202eabc\u202c") == "abc"


def test_right_to_left_and_emoji_survive() -> None:
    assert normalize("مرحبا 🎉 שלום") == "مرحبا 🎉 שלום"
    assert tokenize(normalize("مرحبا 🎉 שלום")) == ["مرحبا", "שלום"]


def test_tokenize_splits_hyphens_and_keeps_apostrophes() -> None:
    assert tokenize("line-items don't e2e") == ["line", "items", "don't", "e2e"]


def test_stem_joins_common_inflections() -> None:
    groups = [
        ("invoice", "invoices"),
        ("parse", "parsing", "parsed"),
        ("extract", "extraction", "extracted"),
        ("summarize", "summarization", "summarise", "summarisation"),
        ("classify", "classification"),
        ("receipt", "receipts"),
        ("company", "companies"),
        ("box", "boxes"),
    ]
    for group in groups:
        assert len({stem(word) for word in group}) == 1, group


def test_content_terms_drop_filler_but_keep_domain_words() -> None:
    terms = content_terms(normalize("Please help me pull the bill totals out of our invoices"))
    assert terms == ["pull", "bill", "total", "invoic"]
    assert {"bill", "name", "call", "system"}.isdisjoint(STOP_WORDS)


@given(st.text(max_size=200))
def test_normalize_is_idempotent_and_leaves_no_invisible_characters(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once
    assert once == once.strip()
    assert "  " not in once
    assert all(unicodedata.category(ch) not in {"Cc", "Cf"} for ch in once)


@given(st.text(alphabet=st.characters(categories=["Ll"]), min_size=1, max_size=30))
def test_stem_is_deterministic_and_never_longer(word: str) -> None:
    assert stem(word) == stem(word)
    assert len(stem(word)) <= len(word)
