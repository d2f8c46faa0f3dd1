"""Normalization, tokenization and stemming: examples and properties."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from matcher.text import STOP_WORDS, content_terms, normalize, split_negated, stem, tokenize


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


def test_negated_mentions_are_split_from_the_request() -> None:
    def split(text: str) -> tuple[str, tuple[str, ...]]:
        return split_negated(normalize(text))

    assert split("not sentiment, we want to know which product each review is about") == (
        "we want to know which product each review is about", ("not sentiment",))
    assert split("no need to translate the tickets, just tell me what language each one is in") == (
        "just tell me what language each one is in", ("no need to translate the tickets",))
    assert split("I don't need to know who is speaking, just every word written out.") == (
        "i, just every word written out", ("don't need to know who is speaking",))
    assert split("No translation needed, the whole team speaks Portuguese.")[1] == ("no translation needed",)
    assert split("translate this, not summarize") == ("translate this", ("not summarize",))
    assert split("These aren't duplicate questions; they're rows in two product databases")[1] == (
        "aren't duplicate questions",)
    assert split("The team doesn’t want a summary, only the to-dos")[1] == ("doesn’t want a summary",)


def test_a_clause_ending_in_a_verdict_is_set_aside_whole() -> None:
    def split(text: str) -> tuple[str, tuple[str, ...]]:
        return split_negated(normalize(text))

    assert split("One label per image isn't enough: I need every item boxed") == (
        "i need every item boxed", ("one label per image isn't enough",))
    assert split("Thanks. A single function call won't cut it, it has to plan several steps") == (
        "thanks. it has to plan several steps", ("a single function call won't cut it",))
    assert split("a summary is not what we need, we want the action items")[1] == ("a summary is not what we need",)
    assert split("we do need it done") == ("we do need it done", ())


def test_text_without_negation_or_with_nothing_else_is_kept_whole() -> None:
    for text in ("invoice extraction", "they can't read the tickets", "is this not spam", "not sentiment"):
        assert split_negated(normalize(text)) == (normalize(text), ())


@given(st.text(max_size=200))
def test_split_negated_only_removes_words(text: str) -> None:
    normalized = normalize(text)
    kept, spans = split_negated(normalized)
    assert set(tokenize(kept)) <= set(tokenize(normalized))
    assert (kept == normalized) == (not spans)
    assert split_negated(normalized) == (kept, spans)


def _normalize_without_shortcuts(text: str) -> str:
    """`normalize` as specified: every character visited, every whitespace run collapsed."""
    import re

    from matcher.text import _visible

    folded = "".join(_visible(ch) for ch in unicodedata.normalize("NFKC", text).casefold())
    return re.sub(r"\s+", " ", folded).strip()


@given(st.one_of(st.text(max_size=80), st.text(alphabet=" \t\n\x0b\x0c\r\x1cab'’-", max_size=30),
                 st.from_regex(r"[ -~]{0,60}", fullmatch=True), st.from_regex(r"[\x00-\x7f]{0,40}", fullmatch=True)))
def test_the_shortcuts_of_normalize_and_tokenize_change_nothing(text: str) -> None:
    from matcher.text import _TOKEN

    assert normalize(text) == _normalize_without_shortcuts(text)
    assert tokenize(text) == [token.replace("’", "'") for token in _TOKEN.findall(text)]
