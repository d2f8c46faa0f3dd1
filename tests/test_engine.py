"""The matcher's contract: result shape, input validation, ranking rules, out-of-scope, explain."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import matcher
from matcher import Matcher, MatcherConfig, QueryError, TaskMatch
from matcher.engine import _self_calibration_path
from matcher.text import tokenize

from .conftest import REPO, last_json_line_in_a_closed_folder, small_records


def test_contract_example_matches_with_high_confidence(default_keyword_matcher: Matcher) -> None:
    result = default_keyword_matcher.match("extract key fields from contracts")
    assert result.matched
    assert result.chosen is not None
    assert result.chosen.task_id == "contract-key-fields"
    assert result.chosen == result.candidates[0]
    assert result.chosen.confidence == "high"
    assert result.type == "task"
    assert result.matcher == "keyword"


def test_module_level_match_uses_the_default_catalog() -> None:
    result = matcher.match("pull line items and totals out of vendor invoices", top_k=3)
    assert result.candidates[0].task_id == "invoice-extraction"
    assert len(result.candidates) == 3


def test_to_dict_is_the_api_body(default_keyword_matcher: Matcher) -> None:
    body = default_keyword_matcher.match("classify support tickets by urgency", top_k=2).to_dict()
    assert list(body)[:6] == ["query", "matched", "chosen", "candidates", "ambiguous", "matcher"]
    assert body["query"] == "classify support tickets by urgency"
    assert set(body["candidates"][0]) == {"task_id", "score", "confidence"}
    assert json.loads(json.dumps(body)) == body
    assert body["type"] in {"task", "capability", "unsupported", "none"}
    assert body["confidence"] in {"high", "medium", "low"}
    assert isinstance(body["reasoning"], str) and body["reasoning"]


def test_results_are_immutable(default_keyword_matcher: Matcher) -> None:
    result = default_keyword_matcher.match("receipt scanning")
    with pytest.raises(AttributeError):
        result.matched = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        result.candidates[0].score = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("query", ["", "   ", "\n\t ", "\u200b\u200b", "\x00\x01"])
def test_empty_queries_raise_value_error(default_keyword_matcher: Matcher, query: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        default_keyword_matcher.match(query)


@pytest.mark.parametrize("query", [None, 42, b"invoice", ["invoice"]])
def test_non_string_queries_raise_type_error(default_keyword_matcher: Matcher, query: object) -> None:
    with pytest.raises(TypeError, match="query must be a str"):
        default_keyword_matcher.match(query)  # type: ignore[arg-type]


@pytest.mark.parametrize(("top_k", "error"), [(0, ValueError), (-3, ValueError), (True, TypeError),
                                              (2.0, TypeError), ("5", TypeError), (None, TypeError)])
def test_bad_top_k_is_rejected(default_keyword_matcher: Matcher, top_k: object,
                               error: type[Exception]) -> None:
    with pytest.raises(error, match="top_k"):
        default_keyword_matcher.match("invoices", top_k=top_k)  # type: ignore[arg-type]


def test_top_k_is_clamped_to_the_catalog_size(small_matcher: Matcher) -> None:
    result = small_matcher.match("invoice totals", top_k=50)
    assert len(result.candidates) == 3
    assert sorted(c.task_id for c in result.candidates) == sorted(t.id for t in small_matcher.catalog)


def test_candidates_are_a_prefix_across_top_k(default_keyword_matcher: Matcher) -> None:
    query = "sort scanned documents by type"
    five = default_keyword_matcher.match(query, top_k=5).candidates
    for k in (1, 2, 3, 4):
        assert default_keyword_matcher.match(query, top_k=k).candidates == five[:k]


def test_ranking_is_score_descending_then_id_ascending(small_matcher: Matcher) -> None:
    for query in ["invoice", "zzzz unknown words", "receipts and invoices", "reviews"]:
        keys = [(-c.score, c.task_id) for c in small_matcher.match(query).candidates]
        assert keys == sorted(keys)


def test_nothing_in_common_gives_no_match(default_keyword_matcher: Matcher) -> None:
    result = default_keyword_matcher.match("qwxz vbnm plkj")
    assert not result.matched
    assert result.chosen is None
    assert result.type == "none"
    assert all(c.confidence == "low" for c in result.candidates)
    assert "None of the request's words" in result.reasoning


def test_one_known_word_among_unknown_ones_is_never_high(default_keyword_matcher: Matcher) -> None:
    # "bar" is a strong keyword of chart-question-answering, but the catalog knows one word in
    # three: the keyword path may rank that task first, never commit to it.
    result = default_keyword_matcher.match("foo bar baz")
    assert result.candidates[0].task_id == "chart-question-answering"
    assert result.candidates[0].confidence != "high"
    assert not result.matched
    # with the request gate out of the way, the coverage rule alone still refuses it, and only it
    ungated = default_keyword_matcher.config.with_changes(gate_threshold=0.0)
    assert not Matcher(default_keyword_matcher.catalog, semantic=False, config=ungated).match("foo bar baz").matched
    permissive = Matcher(default_keyword_matcher.catalog, semantic=False,
                         config=ungated.with_changes(keyword_min_coverage=0.0))
    assert permissive.match("foo bar baz").matched
    assert default_keyword_matcher.match("answer questions about a bar chart").matched


def test_a_typo_still_finds_the_task(default_keyword_matcher: Matcher) -> None:
    result = default_keyword_matcher.match("invoce parsing")
    assert result.candidates[0].task_id == "invoice-extraction"
    explanation = default_keyword_matcher.explain("invoce parsing", top_k=1)[0]
    assert [(c.original, c.corrected) for c in explanation.corrections] == [("invoce", "invoice")]
    assert "'invoce' as 'invoice'" in result.reasoning


def test_out_of_scope_profiles_block_a_match_and_are_never_candidates(
        default_keyword_matcher: Matcher) -> None:
    result = default_keyword_matcher.match("generate a short video of my dog surfing")
    assert result.type == "unsupported"
    assert not result.matched
    unsupported_ids = {p.id for p in default_keyword_matcher.catalog.profiles() if p.kind != "task"}
    assert unsupported_ids.isdisjoint(c.task_id for c in result.candidates)
    assert "no task in the catalog covers" in result.reasoning


def test_capability_lane_fills_in_when_no_specific_task_fits(default_keyword_matcher: Matcher) -> None:
    result = default_keyword_matcher.match("a general assistant my whole team can chat with")
    assert result.type == "capability"
    assert result.capability is not None
    assert result.capability.id == "general-chat"
    assert result.to_dict()["capability"]["category"] == "capability"


def test_ambiguity_flags_close_plausible_candidates(default_keyword_matcher: Matcher) -> None:
    cfg = default_keyword_matcher.config
    for query in ["receipt or invoice", "summarize meeting notes and action items", "invoice"]:
        result = default_keyword_matcher.match(query)
        top, second = result.candidates[0].score, result.candidates[1].score
        expected = top >= cfg.medium_threshold and round(top - second, 4) < cfg.ambiguity_margin
        assert result.ambiguous == expected


def test_match_many_equals_one_by_one(default_keyword_matcher: Matcher) -> None:
    queries = ["invoices", "translate to french", "asdf", "count cars in photos", "invoices"]
    batch = default_keyword_matcher.match_many(queries, top_k=4)
    assert [r.to_dict() for r in batch] == [default_keyword_matcher.match(q, 4).to_dict() for q in queries]
    with pytest.raises(TypeError, match="iterable of queries"):
        default_keyword_matcher.match_many("one string")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        default_keyword_matcher.match_many(["fine", " "])


def test_explain_names_matched_terms_fields_and_phrase(default_keyword_matcher: Matcher) -> None:
    explanations = default_keyword_matcher.explain("pull line items out of vendor invoices", top_k=2)
    first = explanations[0]
    assert first.task_id == "invoice-extraction"
    fields = {f.field: f for f in first.fields}
    assert "keywords" in fields
    assert any(term == "invoic" for term, _ in fields["keywords"].terms)
    assert all(contribution > 0 for f in first.fields for _, contribution in f.terms)
    assert first.best_phrase is not None
    assert json.loads(json.dumps(first.to_dict()))["task_id"] == "invoice-extraction"
    ranked = default_keyword_matcher.match("pull line items out of vendor invoices", 2).candidates
    assert [e.task_id for e in explanations] == [c.task_id for c in ranked]


@pytest.mark.parametrize("query", [
    "x",
    "🧾🧾🧾 invoices 🧾",
    "فواتير الموردين invoices",
    "in\u200bvoice\u200d totals",
    "\x1b[31minvoice\x1b[0m\x07",
    "a" * 4000,
    "invoice " * 500,
    "\U0010ffff\ufffe receipts",
])
def test_odd_input_returns_a_valid_result_quickly(default_keyword_matcher: Matcher, query: str) -> None:
    start = time.perf_counter()
    result = default_keyword_matcher.match(query)
    assert time.perf_counter() - start < 2.0
    assert 1 <= len(result.candidates) <= 5
    assert all(0.0 <= c.score <= 1.0 for c in result.candidates)


def test_huge_queries_get_a_clear_error_without_work(default_keyword_matcher: Matcher) -> None:
    start = time.perf_counter()
    with pytest.raises(QueryError, match="limit is 4,096") as info:
        default_keyword_matcher.match("invoice " * 131072)
    assert isinstance(info.value, ValueError)
    assert time.perf_counter() - start < 0.5


def test_a_query_that_normalizes_into_too_many_words_is_refused(default_keyword_matcher: Matcher) -> None:
    # 2,048 characters of U+33C2 ("a.m." under NFKC) stay within the character limits but read as
    # 4,096 words, twice what any 4,096-character ASCII query can hold
    with pytest.raises(QueryError, match=r"4,096 words .* the limit is 2,048"):
        default_keyword_matcher.match("\u33c2" * 2048)
    assert default_keyword_matcher.match("a " * 2048).candidates  # the most words plain text can hold


ASCII_REFERENCES = {
    "plain English": ("extract invoice totals from vendor bills and read their line items " * 80)[:4096],
    "one-letter words": "a " * 2048,
    "unknown words": " ".join(f"zq{chr(97 + i // 26)}{chr(97 + i % 26)}xv" for i in range(585))[:4096],
}
EXPANDING = ["\ufdfa", "\u33c2", "\ufb03", "\u2474", "\uff49\uff4e\uff56\uff4f\uff49\uff43\uff45", "\u200b",
             "\x00", " ", "qzv", "invoce", "not ", "no ", "a", "\u0301"]


def counted_work(engine: Matcher, query: str) -> tuple[int, int, int]:
    """What one match costs in counted units: normalized characters and words scored, fuzzy lookups."""
    index = engine._keyword_index()
    seen: list[str] = []
    lookups = 0
    real_score, real_lookup = engine._score, index._closest_word

    def score(normalized: str, scope: Any = None) -> object:
        seen.append(normalized)
        return real_score(normalized, scope)

    def lookup(token: str) -> object:
        nonlocal lookups
        lookups += 1
        return real_lookup(token)

    engine._score = score  # type: ignore[method-assign,assignment]
    index._closest_word = lookup  # type: ignore[method-assign]
    try:
        engine.match(query)
    finally:
        del engine._score  # type: ignore[method-assign]
        index._closest_word = real_lookup  # type: ignore[method-assign]
    (normalized,) = seen
    return len(normalized), len(tokenize(normalized)), lookups


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(EXPANDING), min_size=1, max_size=4096))
def test_no_query_costs_more_than_twenty_times_the_longest_ascii_one(default_keyword_matcher: Matcher,
                                                                     pieces: list[str]) -> None:
    query = "".join(pieces)[:4096]
    reference = [max(units) for units in zip(*(counted_work(default_keyword_matcher, q)
                                               for q in ASCII_REFERENCES.values()), strict=True)]
    try:
        work = counted_work(default_keyword_matcher, query)
    except QueryError:
        return  # refused before any scoring
    ratios = [spent / max(allowed, 1) for spent, allowed in zip(work, reference, strict=True)]
    assert max(ratios) <= 20, (work, reference)


def test_zero_width_characters_do_not_change_the_ranking(default_keyword_matcher: Matcher) -> None:
    plain = default_keyword_matcher.match("invoice totals")
    hidden = default_keyword_matcher.match("in\u200bvoice\u200c to\u200dtals")
    assert [c.to_dict() for c in plain.candidates] == [c.to_dict() for c in hidden.candidates]


def test_constructor_validates_its_arguments(small_catalog: matcher.Catalog) -> None:
    with pytest.raises(TypeError, match="catalog must be"):
        Matcher(42, semantic=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be"):
        Matcher(small_catalog, semantic=False, config={"high_threshold": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="semantic must be"):
        Matcher(small_catalog, semantic="sometimes")  # type: ignore[arg-type]


def test_a_catalog_path_is_accepted() -> None:
    folder = REPO / "matcher" / "data" / "catalog"
    assert len(Matcher(folder, semantic=False).catalog) == len(matcher.default_catalog())


def test_thresholds_come_from_the_config(small_catalog: matcher.Catalog) -> None:
    strict = Matcher(small_catalog, semantic=False, config=MatcherConfig(high_threshold=1.0))
    lenient = Matcher(small_catalog, semantic=False,
                      config=MatcherConfig(high_threshold=0.01, medium_threshold=0.0, high_margin=0.0))
    assert not strict.match("invoice line items").matched
    assert lenient.match("invoice line items").matched


def test_import_does_not_load_torch_or_sentence_transformers() -> None:
    code = ("import sys, matcher; matcher.match('invoices') if False else None; "
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'onnxruntime', "
            "'tokenizers', 'sklearn', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_task_match_round_trips_through_json(default_keyword_matcher: Matcher) -> None:
    result: TaskMatch = default_keyword_matcher.match("transcribe recorded sales calls")
    assert json.loads(json.dumps(result.to_dict()))["candidates"][0]["task_id"] == "speech-to-text"


# Sentences that mention a task's subject without asking for it: questions about the service,
# real-world actions, remarks. Written for these tests, not taken from any labelled corpus.
NEAR_MISSES = [
    "please archive the signed contracts from 2019 in the basement cabinet",
    "does the invoice extraction model run on-prem or only in your cloud",
    "my boss spilled coffee on a stack of receipts again",
    "print 200 copies of the meeting summary for tomorrow",
]
# Requests that rule out one task and ask for another.
NEGATED = [
    ("no need to translate the tickets, just tell me what language each one is in", "translation"),
    ("we don't want a summary of the call, only the list of who has to do what by when",
     "meeting-summarization"),
    ("not sentiment, we want to know which product each review is about", "sentiment-analysis"),
]


@pytest.mark.parametrize("query", NEAR_MISSES)
def test_a_sentence_that_only_mentions_a_task_is_not_matched(default_keyword_matcher: Matcher,
                                                             query: str) -> None:
    result = default_keyword_matcher.match(query)
    assert not result.matched
    assert result.type in ("none", "unsupported")


@pytest.mark.parametrize(("query", "ruled_out"), NEGATED)
def test_a_task_the_request_rules_out_is_never_the_confident_answer(default_keyword_matcher: Matcher,
                                                                    query: str, ruled_out: str) -> None:
    result = default_keyword_matcher.match(query)
    assert not (result.matched and result.chosen is not None and result.chosen.task_id == ruled_out)
    assert "Ruled out by the request" in result.reasoning


def test_reasoning_says_why_a_mention_is_not_a_request(default_keyword_matcher: Matcher) -> None:
    result = default_keyword_matcher.match("print 200 copies of the meeting summary for tomorrow")
    assert result.type == "none"
    assert result.candidates[0].task_id == "meeting-summarization"  # the topic ranks first ...
    assert result.reasoning.startswith(  # ... but the gate says it is not asked for
        "This reads as a remark, question or action that is not a request for a catalog task (the words ")


def self_calibrating_catalog() -> matcher.Catalog:
    """Three tasks with phrases enough to hold out: no shipped config fits, so it self-calibrates."""
    records = small_records()
    for record, extra in zip(records, (["itemise vendor bills", "invoice header and totals"],
                                       ["till slips to a spreadsheet", "merchant and date from a receipt"],
                                       ["is this review positive", "mood of customer comments"]), strict=True):
        record["phrases"] = [*record["phrases"], *extra]  # type: ignore[misc]
    return matcher.Catalog.from_records(records)


def test_a_fifo_at_the_self_calibration_cache_is_never_opened(tmp_path: Path) -> None:
    catalog = self_calibrating_catalog()
    path = _self_calibration_path(tmp_path, catalog.fingerprint, None)
    os.mkfifo(path)
    configs: list[MatcherConfig] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker = threading.Thread(target=lambda: configs.append(
            Matcher(catalog, semantic=False, cache_dir=tmp_path).config), daemon=True)
        worker.start()
        worker.join(120)
    if worker.is_alive() and stat.S_ISFIFO(path.lstat().st_mode):  # a reader stuck in open(): let it go
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert configs, "the matcher hung on the FIFO at its self-calibration cache"
    assert any("self-calibration cache" in str(w.message) and "not a regular file but a FIFO" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    assert stat.S_ISREG(path.lstat().st_mode)  # the fitted config replaced it
    assert Matcher(catalog, semantic=False, cache_dir=tmp_path).config == configs[0]


def test_a_self_calibration_cache_folder_the_process_may_not_enter_only_warns(tmp_path: Path) -> None:
    code = (
        "import json, sys, warnings\n"
        "import matcher\n"
        "from tests.test_engine import self_calibrating_catalog\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    result = matcher.Matcher(self_calibrating_catalog(), semantic=False, cache_dir=sys.argv[1])"
        ".match('read the totals of vendor invoices')\n"
        "print(json.dumps([result.candidates[0].task_id, [str(w.message) for w in caught]]))\n"
    )
    top, messages = last_json_line_in_a_closed_folder(tmp_path / "locked", code)
    assert top == "invoice-extraction"
    assert any("self-calibration cache" in m and "is unusable (cannot inspect it: Permission denied)" in m
               for m in messages), messages
    assert any("cannot cache the self-calibration" in m for m in messages), messages


class HeldUntilTheLoopRuns(Matcher):
    """A keyword-only matcher whose `match` waits for the event loop to run a callback meanwhile:
    a match executed on the loop itself could never see that callback and would time out."""

    def __init__(self) -> None:
        super().__init__(matcher.default_catalog(), semantic=False)
        self.loop_ran = threading.Event()
        self.threads: list[int] = []

    def match(self, query: str, top_k: int = 5, *, tasks: Iterable[str] | None = None,
              categories: Iterable[str] | None = None) -> TaskMatch:
        self.threads.append(threading.get_ident())
        assert self.loop_ran.wait(10), "the event loop was blocked while the match ran"
        return super().match(query, top_k, tasks=tasks, categories=categories)


def test_amatch_runs_off_the_event_loop_and_equals_match(default_keyword_matcher: Matcher) -> None:
    import asyncio

    held = HeldUntilTheLoopRuns()

    async def run() -> tuple[TaskMatch, int]:
        loop = asyncio.get_running_loop()
        loop.call_soon(held.loop_ran.set)  # runs only if the loop is free while the match is scored
        return await held.amatch("extract key fields from contracts", 3), threading.get_ident()

    result, loop_thread = asyncio.run(run())
    assert held.threads and held.threads[0] != loop_thread
    assert result.to_dict() == default_keyword_matcher.match("extract key fields from contracts", 3).to_dict()


def test_amatch_raises_what_match_raises(default_keyword_matcher: Matcher) -> None:
    import asyncio

    with pytest.raises(QueryError, match="empty"):
        asyncio.run(default_keyword_matcher.amatch("   "))
    with pytest.raises(ValueError, match="top_k"):
        asyncio.run(default_keyword_matcher.amatch("invoices", 0))


def test_module_level_amatch_uses_the_default_matcher_off_the_loop(monkeypatch: pytest.MonkeyPatch,
                                                                   default_keyword_matcher: Matcher) -> None:
    import asyncio

    from matcher import engine

    held = HeldUntilTheLoopRuns()
    monkeypatch.setattr(engine, "_DEFAULT_MATCHER", held)  # keyword-only: no model to load here

    async def run() -> TaskMatch:
        asyncio.get_running_loop().call_soon(held.loop_ran.set)
        return await matcher.amatch("pull line items and totals out of vendor invoices")

    query = "pull line items and totals out of vendor invoices"
    assert asyncio.run(run()).to_dict() == default_keyword_matcher.match(query).to_dict()


SCOPED_QUERY = "pull line items and totals out of vendor invoices"


def test_a_scope_limits_the_candidates_to_its_tasks(default_keyword_matcher: Matcher) -> None:
    scope = ["bank-statement-extraction", "invoice-extraction", "receipt-extraction"]
    result = default_keyword_matcher.match(SCOPED_QUERY, top_k=10, tasks=scope)
    assert sorted(c.task_id for c in result.candidates) == sorted(scope)  # top_k clamped to the scope
    assert result.chosen is not None and result.chosen.task_id == "invoice-extraction"


def test_a_scope_without_the_asked_for_task_gives_no_match(default_keyword_matcher: Matcher) -> None:
    unscoped = default_keyword_matcher.match(SCOPED_QUERY)
    assert unscoped.chosen is not None and unscoped.chosen.task_id == "invoice-extraction"
    scoped = default_keyword_matcher.match(SCOPED_QUERY, tasks=["address-parsing", "sentiment-analysis"])
    assert not scoped.matched and scoped.type == "none"
    assert {c.task_id for c in scoped.candidates} == {"address-parsing", "sentiment-analysis"}


def test_categories_scope_and_combine_with_tasks(default_keyword_matcher: Matcher) -> None:
    catalog = default_keyword_matcher.catalog
    category = catalog.get("invoice-extraction").category
    assert category is not None
    by_category = default_keyword_matcher.match(SCOPED_QUERY, top_k=50, categories=[category])
    assert {c.task_id for c in by_category.candidates} == {t.id for t in catalog if t.category == category}
    other = next(t.id for t in catalog if t.category != category)
    both = default_keyword_matcher.match(SCOPED_QUERY, tasks=["invoice-extraction", other], categories=[category])
    assert [c.task_id for c in both.candidates] == ["invoice-extraction"]


def test_out_of_scope_profiles_still_refuse_within_a_scope(default_keyword_matcher: Matcher) -> None:
    query = "what is the weather in paris tomorrow"
    assert not default_keyword_matcher.match(query).matched
    assert not default_keyword_matcher.match(query, tasks=["invoice-extraction"]).matched


def test_scope_errors_name_the_closest_ids(default_keyword_matcher: Matcher) -> None:
    with pytest.raises(matcher.ScopeError, match=r"unknown task id 'invoice-extractoin'.*'invoice-extraction'"):
        default_keyword_matcher.match(SCOPED_QUERY, tasks=["invoice-extractoin"])
    with pytest.raises(matcher.ScopeError, match=r"no task has category 'vison'.*'vision'"):
        default_keyword_matcher.match(SCOPED_QUERY, categories=["vison"])
    with pytest.raises(matcher.ScopeError, match="select no task"):
        default_keyword_matcher.match(SCOPED_QUERY, tasks=[])
    with pytest.raises(TypeError, match="list of strings"):
        default_keyword_matcher.match(SCOPED_QUERY, tasks="invoice-extraction")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hold strings"):
        default_keyword_matcher.match(SCOPED_QUERY, tasks=[3])  # type: ignore[list-item]


def test_scope_results_ignore_order_and_repeats(default_keyword_matcher: Matcher) -> None:
    one = default_keyword_matcher.match(SCOPED_QUERY, tasks=["receipt-extraction", "invoice-extraction"])
    two = default_keyword_matcher.match(SCOPED_QUERY, tasks=("invoice-extraction", "receipt-extraction",
                                                             "invoice-extraction"))
    assert one.to_dict() == two.to_dict()
    assert default_keyword_matcher.match_many([SCOPED_QUERY], tasks=["receipt-extraction"])[0].to_dict() \
        == default_keyword_matcher.match(SCOPED_QUERY, tasks=["receipt-extraction"]).to_dict()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.sampled_from([SCOPED_QUERY, "sort support tickets by urgency", "transcribe the call",
                              "which language is this email in", "find the names of people in the text"]),
       picks=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=6))
def test_scoped_scores_are_calibrated_among_the_scope(default_keyword_matcher: Matcher, query: str,
                                                       picks: list[int]) -> None:
    """Keyword path: the softmax runs over fewer competitors, so no task in scope scores lower
    than unscoped, and the scope's scores still sum to at most 1."""
    ids = [t.id for t in default_keyword_matcher.catalog]
    scope = sorted({ids[p % len(ids)] for p in picks})
    unscoped = {c.task_id: c.score for c in default_keyword_matcher.match(query, top_k=len(ids)).candidates}
    scoped = default_keyword_matcher.match(query, top_k=len(ids), tasks=scope).candidates
    assert sorted(c.task_id for c in scoped) == scope
    assert all(c.score >= unscoped[c.task_id] for c in scoped)
    assert sum(c.score for c in scoped) <= 1.0 + 1e-9


def test_a_task_threshold_overrides_the_global_one_for_its_task_alone(default_keyword_matcher: Matcher) -> None:
    config = default_keyword_matcher.config
    query, other = "extract key fields from contracts", "classify support tickets by urgency"
    before = default_keyword_matcher.match(query)
    assert before.chosen is not None and before.chosen.score < 0.9
    strict = Matcher(semantic=False, config=config.with_changes(task_high_thresholds={"contract-key-fields": 0.9}))
    after = strict.match(query)
    assert not after.matched and after.candidates[0].confidence == "medium"
    assert [c.score for c in after.candidates] == [c.score for c in before.candidates]  # scores do not move
    assert strict.match(other).to_dict() == default_keyword_matcher.match(other).to_dict()


NEW_TASK = {"id": "translation", "title": "Translation", "description": "Translate text between languages.",
            "keywords": {"translate": 1.0, "language": 0.6},
            "phrases": ["turn this french email into english", "translate our manual into german"]}


LEGAL_TASK = {"id": "legal-clause-risk", "title": "Legal clause risk", "category": "text-classification",
              "description": "Flag risky clauses in contracts: unlimited liability, auto-renewal, exclusivity.",
              "keywords": {"risky clause": 1.0, "unlimited liability": 0.8, "exclusivity term": 0.8},
              "phrases": ["which clauses in this agreement expose us to unlimited liability",
                          "flag auto-renewal and exclusivity terms in supplier agreements"]}


def test_an_updated_matcher_serves_the_new_catalog_as_a_fresh_one_would(
        tmp_path: Path, default_keyword_matcher: Matcher) -> None:
    old = Matcher(semantic=False, cache_dir=tmp_path)
    query = "flag the clauses with unlimited liability in this agreement"
    before = old.match(query).to_dict()
    new = old.updated(add=[LEGAL_TASK], remove=["general-chat"])
    assert "legal-clause-risk" in new.catalog and "general-chat" not in new.catalog
    assert old.match(query).to_dict() == before == default_keyword_matcher.match(query).to_dict()  # unchanged
    assert _tuned_for_fingerprint(new) == new.catalog.fingerprint  # self-calibrated for the new catalog
    fresh = Matcher(new.catalog, semantic=False, cache_dir=tmp_path)
    for text in (query, "pull line items and totals out of vendor invoices", "hello, how are you today"):
        assert new.match(text).to_dict() == fresh.match(text).to_dict()
    assert new.match(query).candidates[0].task_id == "legal-clause-risk"


def _tuned_for_fingerprint(m: Matcher) -> str | None:
    return (m.config.tuning or {}).get("catalog_fingerprint")


class CountingEmbedder:
    """The shipped model, counting the texts it is asked to encode."""

    def __init__(self, inner: matcher.Embedder) -> None:
        self.inner, self.texts = inner, 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def encode(self, texts: Sequence[str]) -> Any:
        self.texts += len(texts)
        return self.inner.encode(texts)


def test_an_updated_matcher_encodes_only_the_new_texts(tmp_path: Path, default_semantic_matcher: Matcher) -> None:
    assert default_semantic_matcher.embedder is not None
    counting = CountingEmbedder(default_semantic_matcher.embedder)
    config = MatcherConfig(high_threshold=0.5, medium_threshold=0.2)
    old = Matcher(matcher.Catalog.from_records(small_records()), semantic=counting, config=config,
                  cache_dir=tmp_path / "old")
    old.warm_up()
    counting.texts = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", matcher.ConfigWarning)  # the given config is kept, as documented
        new = old.updated(add=[NEW_TASK])
        new.warm_up()
    # the new task's title with description and each phrase, and warm_up's probe query; nothing else
    assert counting.texts == 1 + len(NEW_TASK["phrases"]) + 1
    assert new.config == config
    fresh = Matcher(new.catalog, semantic=default_semantic_matcher.embedder, config=config,
                    cache_dir=tmp_path / "fresh")
    for query in ("please translate the attached letter", "scan restaurant receipts", "vendor bills"):
        assert new.match(query).to_dict() == fresh.match(query).to_dict()


def test_an_encode_overlaps_its_keywords_only_while_a_core_is_idle() -> None:
    from matcher.engine import _encode_slot

    with _encode_slot(2) as first:
        with _encode_slot(2) as second:
            assert (first, second) == (True, False)  # two encodes keep both cores busy
        with _encode_slot(4) as on_four:
            assert on_four
    with pytest.raises(RuntimeError), _encode_slot(2):
        raise RuntimeError("an encode that fails still leaves its slot")
    with _encode_slot(2) as again:
        assert again
    with _encode_slot(1) as single_core:
        assert not single_core  # one core: the hand-off cannot run in parallel
