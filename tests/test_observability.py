"""Metrics and decision logs of the server, read back over real HTTP and from the real log output."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import matcher
from matcher.observability import route_label
from matcher.server import create_app, serve_in_background

from .test_server import MATCHED, ServeProcess, serve_process, wait_for

__all__ = ["serve_process"]  # the fixture, shared with test_server

KEY = "observed-api-key"


def samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample named `name` in the server's /metrics, with its labels."""
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return [(dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def value(url: str, name: str, **labels: str) -> float:
    return sum(v for got, v in samples(url, name) if all(got.get(k) == w for k, w in labels.items()))


@pytest.fixture(scope="module")
def observed() -> Iterator[tuple[str, matcher.Matcher]]:
    engine = matcher.Matcher(semantic=False)
    with serve_in_background(create_app(engine, api_keys=[KEY])) as url:
        yield url, engine


def test_requests_are_counted_by_route_status_type_and_matcher(observed: tuple[str, matcher.Matcher]) -> None:
    url, engine = observed
    auth = {"Authorization": f"Bearer {KEY}"}
    queries = [MATCHED, MATCHED, "asdkjh qwpoeiru zxcmvn", "make me a video of my dog surfing"]
    outcomes = [engine.match(q) for q in queries]
    for query in queries:
        assert httpx.post(f"{url}/v1/tasks/match", json={"query": query}, headers=auth).status_code == 200
    assert httpx.post(f"{url}/v1/tasks/match", json={"query": " "}, headers=auth).status_code == 422
    assert httpx.get(f"{url}/v1/tasks/no-such-task", headers=auth).status_code == 404
    assert httpx.get(f"{url}/v1/tasks").status_code == 401
    for result in outcomes:
        expected = sum(r.type == result.type and r.matcher == result.matcher for r in outcomes)
        assert value(url, "task_matcher_requests_total", route="/v1/tasks/match", method="POST", status="200",
                     type=result.type, matcher=result.matcher) == expected
    assert value(url, "task_matcher_requests_total", route="/v1/tasks/match", status="422", type="") == 1
    assert value(url, "task_matcher_requests_total", route="/v1/tasks/{task_id}", status="404") == 1
    assert value(url, "task_matcher_requests_total", route="/v1/tasks", status="401") == 1
    assert value(url, "task_matcher_request_duration_seconds_count", route="/v1/tasks/match") == 5
    assert value(url, "task_matcher_match_duration_seconds_count") == 4
    assert value(url, "task_matcher_matches_in_flight") == 0
    [(labels, one)] = samples(url, "task_matcher_catalog_generation")
    assert one == 1 and labels["catalog_fingerprint"] == engine.catalog.fingerprint[:16]
    assert labels["tasks"] == str(len(engine.catalog))


def test_fuzzy_cache_hits_and_misses_are_counted(observed: tuple[str, matcher.Matcher]) -> None:
    url, engine = observed

    def counted() -> tuple[float, float]:
        return (value(url, "task_matcher_fuzzy_lookups_total", result="hit"),
                value(url, "task_matcher_fuzzy_lookups_total", result="miss"))

    def send() -> None:
        httpx.post(f"{url}/v1/tasks/match", json={"query": "invoce parsnig qzxv"},
                   headers={"Authorization": f"Bearer {KEY}"})

    hits0, misses0 = counted()
    info0 = engine.cache_info()
    send()
    hits1, misses1 = counted()
    info1 = engine.cache_info()
    send()
    send()
    hits2, misses2 = counted()
    info2 = engine.cache_info()
    assert misses1 - misses0 == info1.fuzzy_misses - info0.fuzzy_misses > 0  # first sight of the typos
    assert misses2 == misses1  # the same words again: all from the cache
    assert hits2 - hits1 == info2.fuzzy_hits - info1.fuzzy_hits == 2 * (misses1 - misses0 + hits1 - hits0)


def test_route_labels_are_templates() -> None:
    assert route_label("/v1/tasks/abc") == "/v1/tasks/{task_id}"
    assert route_label("/v1/tasks/abc/leaderboard") == "/v1/tasks/{task_id}/leaderboard"
    assert route_label("/v1/tasks/a/b/c") == route_label("/anything") == "other"


class TinyEmbedder:
    """A deterministic bag-of-letters embedder: real vectors for the real on-disk cache, in microseconds."""

    model_id = "tiny-letters-v1"

    def encode(self, texts: Sequence[str]) -> Any:
        rows = np.zeros((len(texts), 26), dtype=np.float32)
        for i, text in enumerate(texts):
            for ch in text.lower():
                if "a" <= ch <= "z":
                    rows[i, ord(ch) - 97] += 1
            rows[i] = rows[i] / max(float(np.linalg.norm(rows[i])), 1e-9) if rows[i].any() else np.eye(1, 26)[0]
        return rows


def test_embedding_cache_reads_are_counted_at_warm_up(tmp_path: Path) -> None:
    for expected in ("miss", "hit"):  # the second server finds the first one's cache file
        engine = matcher.Matcher(semantic=TinyEmbedder(), config=matcher.MatcherConfig(), cache_dir=tmp_path)
        with serve_in_background(create_app(engine)) as url:
            wait_for(lambda: value(url, "task_matcher_embedding_cache_reads_total") == 1, 30, "the count")
            assert value(url, "task_matcher_embedding_cache_reads_total", result=expected) == 1


def decision_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in records if r.name == "matcher.decisions"]


@pytest.mark.parametrize("log_queries", [False, True])
def test_each_match_logs_one_json_decision_and_the_query_only_when_opted_in(
        log_queries: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    engine = matcher.Matcher(semantic=False)
    with serve_in_background(create_app(engine, api_keys=[KEY], log_queries=log_queries)) as url:
        httpx.post(f"{url}/v1/tasks/match", json={"query": MATCHED, "top_k": 2},
                   headers={"Authorization": f"Bearer {KEY}"})
        httpx.get(f"{url}/v1/tasks?examples_n=1", headers={"Authorization": f"Bearer {KEY}"})
    [decision] = decision_lines(caplog.records)
    expected = engine.match(MATCHED, 2)
    assert decision["event"] == "match" and decision["type"] == expected.type
    assert decision["chosen"] == "contract-key-fields" and decision["matched"] is True
    assert decision["candidates"] == [[c.task_id, c.score] for c in expected.candidates]
    assert decision["query_chars"] == len(MATCHED) and decision["top_k"] == 2
    assert ("query" in decision) is log_queries
    assert (MATCHED in caplog.text) is log_queries
    assert KEY not in caplog.text


def test_the_serve_command_prints_decisions_as_json_lines_without_keys(
        tmp_path: Path, serve_process: Callable[..., ServeProcess]) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n", encoding="utf-8")
    server = serve_process("--semantic", "off", "--api-keys-file", str(keys), "--log-level", "info")
    try:
        server.wait_until_ready(timeout=120)
        httpx.post(server.url + "/v1/tasks/match", json={"query": MATCHED}, headers={"Authorization": f"Bearer {KEY}"})
        wait_for(lambda: '"event": "match"' in server.output, 30, "the decision line")
    finally:
        code = server.stop()
    assert code == 0, server.output
    [line] = [line for line in server.output.splitlines() if line.startswith("{")]
    assert json.loads(line)["chosen"] == "contract-key-fields"
    assert MATCHED not in server.output and KEY not in server.output
