"""Property-based tests of the HTTP API against its own OpenAPI schema (schemathesis).

Generated requests, valid and invalid, go to a real uvicorn server on loopback. Every response
must be a non-5xx whose status, content type and body conform to the schema. Requests that are
valid by the schema may still be refused on meaning (a random task id is unknown, a query of
punctuation is empty once normalized), so the positive-data-acceptance check is left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

import matcher
from matcher.server import create_app, serve_in_background

MAX_EXAMPLES = 150  # per operation and schema

BOARD_RECORDS: list[dict[str, Any]] = [
    {
        "id": "invoice-extraction",
        "title": "Invoice extraction",
        "keywords": {"invoice": 1.0},
        "leaderboard": {
            "illustrative": True,
            "note": "Illustrative sample numbers; nothing here was measured.",
            "models": [
                {"name": "qwen-1", "kind": "open", "quality": 0.8, "cost_per_request_micro_usd": 90,
                 "context_k": 32, "run_mode": "rte"},
                {"name": "phi-1", "kind": "open"},
            ],
            "frontier": {"name": "frontier-a", "kind": "frontier", "quality": 0.9,
                         "cost_per_request_micro_usd": 3000, "context_k": 200},
        },
    },
    {"id": "sentiment-analysis", "title": "Sentiment analysis", "keywords": {"sentiment": 1.0}},
]


# Built at import (cheap: the warm-up runs when the server starts) so that schemathesis can
# parametrize over the operations of the very apps the fixtures serve. `schemathesis.pytest.
# from_fixture` would defer this, but it breaks on pytest 9 (it reads the removed Node._nodeid).
DEFAULT_APP = create_app(matcher.Matcher(semantic=False))
BOARD_APP = create_app(matcher.Matcher(matcher.Catalog.from_records(BOARD_RECORDS), semantic=False))


def _schema(app: Any) -> Any:
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True,
                                    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


default_schema = _schema(DEFAULT_APP)
board_schema = _schema(BOARD_APP)

_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def default_url() -> Iterator[str]:
    """The bundled catalog behind a keyword-only matcher, served by uvicorn."""
    with serve_in_background(DEFAULT_APP) as url:
        yield url


@pytest.fixture(scope="module")
def board_url() -> Iterator[str]:
    """A two-task catalog with an illustrative leaderboard, so board bodies are checked too."""
    with serve_in_background(BOARD_APP) as url:
        yield url


@default_schema.parametrize()
@_SETTINGS
def test_default_catalog_api_conforms(case: Any, default_url: str) -> None:
    response = case.call_and_validate(base_url=default_url, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500


@board_schema.parametrize()
@_SETTINGS
def test_leaderboard_catalog_api_conforms(case: Any, board_url: str) -> None:
    response = case.call_and_validate(base_url=board_url, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500
