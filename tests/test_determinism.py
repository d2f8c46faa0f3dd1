"""Hypothesis properties: the same query always gives the same result, whatever else changes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import matcher
from matcher import Catalog, Matcher

from .conftest import REPO

WORDS = sorted({
    "invoice", "receipt", "totals", "line", "items", "contract", "sentiment", "reviews", "translate",
    "summarize", "meeting", "transcribe", "calls", "tickets", "urgency", "photos", "objects", "sql",
    "code", "bug", "emails", "spam", "weather", "video", "the", "from", "please", "invoce", "recipts",
})
queries = st.one_of(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join),
    st.text(min_size=1, max_size=60).filter(lambda s: matcher.text.normalize(s) != ""),
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(query=queries, top_k=st.integers(min_value=1, max_value=70))
def test_repeated_calls_agree_and_respect_the_contract(default_keyword_matcher: Matcher, query: str,
                                                       top_k: int) -> None:
    first = default_keyword_matcher.match(query, top_k)
    assert default_keyword_matcher.match(query, top_k).to_dict() == first.to_dict()
    candidates = first.candidates
    assert len(candidates) == min(top_k, len(default_keyword_matcher.catalog))
    assert all(0.0 <= c.score <= 1.0 for c in candidates)
    keys = [(-c.score, c.task_id) for c in candidates]
    assert keys == sorted(keys)
    rank = {"low": 0, "medium": 1, "high": 2}
    tiers = [rank[c.confidence] for c in candidates]
    assert tiers == sorted(tiers, reverse=True)
    assert first.matched == (candidates[0].confidence == "high")
    assert (first.chosen is not None) == first.matched
    assert not first.ambiguous or len(default_keyword_matcher.catalog) >= 2


@FAST
@given(query=queries)
def test_smaller_top_k_is_a_prefix(default_keyword_matcher: Matcher, query: str) -> None:
    full = default_keyword_matcher.match(query, 8)
    for k in (1, 3, 5):
        shorter = default_keyword_matcher.match(query, k)
        assert shorter.candidates == full.candidates[:k]
        assert (shorter.matched, shorter.ambiguous, shorter.type) == (full.matched, full.ambiguous, full.type)


@FAST
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=6),
       pads=st.lists(st.sampled_from([" ", "  ", "\t", "\n", " \u00a0"]), min_size=7, max_size=7),
       upper=st.lists(st.booleans(), min_size=6, max_size=6))
def test_whitespace_and_case_do_not_change_the_ranking(default_keyword_matcher: Matcher, words: list[str],
                                                       pads: list[str], upper: list[bool]) -> None:
    plain = " ".join(words)
    varied = pads[0] + "".join(
        (w.upper() if u else w.title()) + pad for w, u, pad in zip(words, upper, pads[1:], strict=False))
    a = default_keyword_matcher.match(plain).to_dict()
    b = default_keyword_matcher.match(varied).to_dict()
    a.pop("query"), b.pop("query")
    assert a == b


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_catalog_order_does_not_matter(seed: int) -> None:
    records = [{**t.to_dict(examples_n=None), "keywords": dict(t.keywords)}
               for t in matcher.default_catalog().profiles()]
    for record in records:
        record.pop("examples", None)
    shuffled = records[:]
    random.Random(seed).shuffle(shuffled)
    reference = Matcher(Catalog.from_records(records), semantic=False)
    permuted = Matcher(Catalog.from_records(shuffled), semantic=False)
    for query in ["vendor invoices", "is this review positive", "asdf", "bounding boxes", "translate"]:
        assert permuted.match(query, 10).to_dict() == reference.match(query, 10).to_dict()


def test_threads_agree_with_sequential_calls(default_keyword_matcher: Matcher) -> None:
    queries = [" ".join(random.Random(i).sample(WORDS, 3)) for i in range(120)]
    expected = [default_keyword_matcher.match(q).to_dict() for q in queries]
    fresh = Matcher(matcher.default_catalog(), semantic=False)  # index built lazily by racing threads
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda q: fresh.match(q).to_dict(), queries))
    assert got == expected


def test_call_history_does_not_matter() -> None:
    queries = ["invoice totals", "translate emails to german", "qwerty", "meeting notes summary"]
    forward = Matcher(matcher.default_catalog(), semantic=False)
    backward = Matcher(matcher.default_catalog(), semantic=False)
    a = [forward.match(q).to_dict() for q in queries]
    b = [backward.match(q).to_dict() for q in reversed(queries)][::-1]
    assert a == b


PROBE = """
import json, sys, matcher
m = matcher.Matcher(matcher.default_catalog(), semantic=False)
print(json.dumps([m.match(q, 6).to_dict() for q in json.loads(sys.argv[1])], sort_keys=True))
"""


def test_fresh_processes_with_different_hash_seeds_agree() -> None:
    queries = ["pull totals out of vendor invoices", "recipts", "detect toxic comments", "foo bar baz",
               "what is the weather", "find people and places in news articles"]
    outputs = set()
    for seed in ("0", "1", "12345", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(queries)], capture_output=True,
                             text=True, env=env, cwd=REPO, check=True)
        outputs.add(run.stdout)
    assert len(outputs) == 1
    in_process = Matcher(matcher.default_catalog(), semantic=False)
    assert json.loads(outputs.pop()) == [in_process.match(q, 6).to_dict() for q in queries]


def test_concurrent_semantic_matches_agree_with_sequential_calls(default_semantic_matcher: Matcher) -> None:
    # alone, a match scores its keywords on a worker thread during the encode; with every core
    # busy it scores them on its own thread: the answer must not depend on which
    queries = [" ".join(random.Random(i).sample(WORDS, 4)) for i in range(40)]
    expected = [default_semantic_matcher.match(q).to_dict() for q in queries]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda q: default_semantic_matcher.match(q).to_dict(), queries))
    assert got == expected
