"""Reference HTTP API over a `Matcher`: the `/v1/tasks` routes that the pareta client calls.

`create_app` builds a FastAPI app over one matcher and its catalog; `serve_main` is the
`task-matcher serve` command. FastAPI and uvicorn are imported here only (the `server` extra),
so `import matcher` never needs them.

Routes (bodies are the library's own `to_dict()` output, so keys the library adds flow through):

- ``POST /v1/tasks/match`` ``{"query": str, "top_k": int = 5, "tasks": [id] | null, "categories": [str] | null}``
  -> `TaskMatch.to_dict()` (`tasks` and `categories` scope the request: see `Matcher.match`)
- ``GET /v1/tasks`` -> ``{"tasks": [...]}``; ``GET /v1/tasks/{task_id}?examples_n=N`` -> one record
- ``GET /v1/tasks/{task_id}/leaderboard`` -> the task's ranked models (empty board without data)
- ``GET /healthz`` and ``GET /v1/health`` -> ``{"status", "tasks", "semantic"}``; 503 until warm
- ``GET /metrics``: Prometheus text (`matcher.observability`)
- ``POST /v1/admin/reload`` (only with admin keys, and only for them): reload the catalog files
  (`matcher.live`); 422 with the loader's error when they do not load, the old generation serving on
- ``GET /openapi.json``: the OpenAPI schema. ``/docs`` and ``/redoc`` are off: Swagger UI and ReDoc
  load their scripts from a CDN (no pinned package ships them), so they would be blank offline.

Every error body is ``{"detail": "<message>"}``: 422 for invalid input (the library's messages
are passed through), 400 for a body that cannot be decoded at all (and, from the protocol, for a
request that is not HTTP), 404 naming the closest task ids (an unknown id is echoed up to 100
characters), 401 for a missing or wrong API key, 413 for a body over the limit, 415 for a match
body not declared as JSON, 408 for a request head or body that does not arrive in time
(`matcher.connections`), 503 with ``Retry-After`` while warming up or when `max_concurrency`
matches are already in flight, and a 500 for a failure nobody foresaw (its traceback goes to the
log). Client input never produces a 5xx. Every GET route answers HEAD.

Warm-up: building the index and loading the model take from a second to a minute, so the server
accepts connections at once and warms the matcher on a background thread started by the
lifespan. Until it is warm, health answers 503 ``{"status": "starting"}`` and
``POST /v1/tasks/match`` answers 503 with a ``Retry-After`` header instead of holding the request
(a client or load balancer then retries, or picks a warm worker); the catalog routes need only
the catalog, which is loaded before the port opens, and answer at once. A warm-up that raises is
logged with its traceback, and health and match then answer 503 ``{"status": "failed"}`` and
``{"detail": ...}`` for the rest of the process's life.

Logs: the library logs its slow steps (index build, model load, embedding or cache read) at INFO
on the ``matcher`` loggers; ``serve`` prints them, with uvicorn's own, at ``--log-level``, and each
match as one JSON line on ``matcher.decisions`` (the query text only with ``--log-queries``).

Reload: every request reads the served generation once (`matcher.live.Live.current`) and answers
from it, with its fingerprint in the ``X-Task-Matcher-Generation`` header; SIGHUP and the admin
route load, warm and swap a new one while the old one serves.

Several workers: ``task-matcher serve --workers N`` binds the port once in a supervisor process
and uvicorn's `Multiprocess` supervisor hands the listening socket to N worker processes (and
restarts any that die); the kernel spreads connections over them. The supervisor reads and
validates the catalog and config once, and every worker, a restarted one too, serves the
generation its private store points at (`matcher.generation`), so an edit to the files never puts
two catalogs behind one port; a reload (SIGHUP to the supervisor, or the admin route in any worker)
publishes a new generation there, which every worker swaps to once warm. A worker that cannot start (its snapshot,
its keys file or its model cannot be loaded) exits with uvicorn's start-up failure status, and
the supervisor stops the server with that error instead of restarting the worker in a loop. Each
worker calls `app_from_env` (settings travel as ``MATCHER_*`` environment variables, API keys
only as a file path) and builds its own matcher and model, so memory grows with N. The workers share the
on-disk embedding cache: by default ``~/.cache/task-matcher``; set ``TASK_MATCHER_CACHE`` to one
directory (a shared volume, say) to choose another. The library writes the cache to a temporary
file and renames it into place with `os.replace`, so workers warming at the same time at worst
compute identical files, the last rename wins, and none reads a torn file. Each worker accepts
connections at once and warms up on its own, so while workers start, a request may reach a warm
one or get the 503 above from a cold one.

Workers and semaphores: uvicorn starts workers with the ``spawn`` method, which stays their
default, so a `multiprocessing` lock made in a worker is a named semaphore registered with the
supervisor's resource tracker; the worker ends by the SIGTERM that uvicorn re-raises after its
graceful shutdown, so multiprocessing's exit hooks never unregister it and the tracker reports it
as leaked. The one such lock is tqdm's (sentence-transformers builds a disabled progress bar on
every ``encode``), so workers give tqdm a thread lock before the model loads.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hmac
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
import orjson
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from .catalog import Catalog, Task
from .connections import (
    ADMISSION_STATE,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HTTP,
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    HTTP_CHOICES,
    LimitedConfig,
    error_response_bytes,
)
from .engine import SEMANTIC_CHOICES, SEMANTIC_HELP, Matcher
from .errors import MatcherError, UnknownTaskError
from .generation import Generation, GenerationStore, report_failure, reported_failures
from .leaderboard import Leaderboards, board_body
from .live import Live, Served
from .observability import (
    CONTENT_TYPE,
    DECISIONS_LOGGER,
    MULTIPROCESS_ENV,
    DecisionLog,
    Metrics,
    mark_worker_dead,
    route_label,
)
from .semantic import THREADS_ENV, Embedder, thread_count

__all__ = [
    "MatchRequest",
    "ServerSettings",
    "app_from_env",
    "create_app",
    "describe_validation_errors",
    "load_api_keys",
    "serve_in_background",
    "serve_main",
]

HEALTH_PATHS = ("/healthz", "/v1/health")
MATCH_PATH = "/v1/tasks/match"
ADMIN_RELOAD_PATH = "/v1/admin/reload"
METRICS_PATH = "/metrics"
GENERATION_HEADER = "X-Task-Matcher-Generation"
# Matches run on their own small thread pool: keyword scoring holds the GIL, so more threads
# do not help it, and concurrent model calls beyond a few per core oversubscribe the CPU
# (measured on 2 cores: 2 to 8 threads served 10-35% more requests/s than the 40 of the
# default pool, on both paths and from 1 to 64 concurrent clients).
MATCH_THREADS = max(4, os.cpu_count() or 1)
# A keyword-only match of a query this short runs on the event loop instead: handing it to a
# thread and back costs more than the match (measured on 2 cores: ~0.5 ms of a 1.3 ms request,
# for a 0.5 ms match), and its worst case (fresh unknown words, every one a fuzzy lookup: ~4 ms)
# holds the loop no longer than a thread holding the GIL would (its switch interval is 5 ms).
INLINE_QUERY_CHARS = 200
DEFAULT_MAX_BODY_BYTES = 64_000
# Matches in flight per worker (running or queued for a thread) before new ones get a fast 503:
# a queue longer than this only makes every client wait (measured on 2 cores: 256 concurrent
# semantic requests waited a median of 8.3 s); 64 is a few seconds of the slowest path's work.
DEFAULT_MAX_CONCURRENCY = 64
OVERLOAD_RETRY_AFTER_SECONDS = 1
# Seconds a client is asked to wait before retrying a match during warm-up (the keyword index
# takes about a second, the model and task embeddings up to a minute on a small machine).
RETRY_AFTER_SECONDS = 5
# The serve command runs each model call single-threaded and gets its parallelism from
# concurrent requests instead. With OpenMP's default team per calling thread, idle teams spin
# and starve the busy one: measured on 2 cores, 1 client got 2-6 semantic requests/s (p50
# 150-700 ms) by default and 50/s (p50 18 ms) with one OpenMP thread. Set the variables
# yourself to override.
_SERVER_THREAD_ENV = {"OMP_NUM_THREADS": "1"}
_ENV_CATALOG = "MATCHER_CATALOG"
_ENV_CONFIG = "MATCHER_CONFIG"
_ENV_MODEL = "MATCHER_MODEL"
_ENV_SEMANTIC = "MATCHER_SEMANTIC"
_ENV_KEYS = "MATCHER_API_KEYS"
_ENV_KEYS_FILE = "MATCHER_API_KEYS_FILE"
_ENV_ADMIN_KEYS = "MATCHER_ADMIN_KEYS"
_ENV_ADMIN_KEYS_FILE = "MATCHER_ADMIN_KEYS_FILE"
_ENV_LEADERBOARDS = "MATCHER_LEADERBOARDS"
_ENV_LOG_QUERIES = "MATCHER_LOG_QUERIES"
_ENV_MAX_BODY = "MATCHER_MAX_BODY_BYTES"
_ENV_MAX_CONCURRENCY = "MATCHER_MAX_CONCURRENCY"
_ENV_GENERATION = "MATCHER_GENERATION"
_ENV_HTTP = "MATCHER_HTTP"
_ENV_TIMEOUTS = {"header_timeout": "MATCHER_HEADER_TIMEOUT", "body_timeout": "MATCHER_BODY_TIMEOUT",
                 "keep_alive_timeout": "MATCHER_KEEP_ALIVE_TIMEOUT"}
_MAX_REPORTED_ERRORS = 5
_log = logging.getLogger(__name__)


class MatchRequest(BaseModel):
    """Body of ``POST /v1/tasks/match``; types are checked here, values by the library.

    `minLength`/`minimum` in the schema document what the library enforces (an empty or
    whitespace-only query and ``top_k < 1`` are refused with its own messages).
    """

    query: StrictStr = Field(description="The job to match, in plain English.",
                             json_schema_extra={"minLength": 1})
    top_k: StrictInt = Field(default=5, description="How many ranked candidates to return.",
                             json_schema_extra={"minimum": 1})
    tasks: list[StrictStr] | None = Field(
        default=None,
        description="Scope: only these task ids are candidates, scored among themselves (unknown ids: 422).")
    categories: list[StrictStr] | None = Field(
        default=None,
        description="Scope: only tasks of these categories are candidates (with `tasks`, both must hold).")

    @field_validator("query")
    @classmethod
    def _encodable(cls, value: str) -> str:
        """A lone surrogate cannot be echoed back as UTF-8 JSON, so it is refused up front."""
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("query must be valid Unicode text (it contains a lone surrogate)") from None
        return value


class _Body(BaseModel):
    """Response documentation: unknown keys are allowed so new library fields stay valid."""

    model_config = ConfigDict(extra="allow")


class CandidateBody(_Body):
    """One ranked candidate of a match."""

    task_id: str
    score: float
    confidence: Literal["high", "medium", "low"]


class MatchBody(_Body):
    """Body returned by ``POST /v1/tasks/match`` (`TaskMatch.to_dict()`); outcome keys optional."""

    query: str
    matched: bool
    chosen: CandidateBody | None
    candidates: list[CandidateBody]
    ambiguous: bool
    matcher: str
    type: str | None = Field(default=None, description="task, capability, unsupported or none")
    confidence: str | None = None
    reasoning: str | None = None
    capability: dict[str, Any] | None = None


class TaskBody(_Body):
    """A task record (`Task.to_dict()`); `examples` only when requested."""

    id: str
    kind: str
    title: str | None
    category: str | None
    has_blob_input: bool
    default_scorer: str | None
    description: str | None
    keywords: dict[str, float]
    phrases: list[str]
    examples: list[dict[str, Any]] | None = None


class TaskListBody(_Body):
    """Body of ``GET /v1/tasks``."""

    tasks: list[TaskBody]


class LeaderboardEntryBody(_Body):
    """One model row of a leaderboard; cost in integer micro-USD per request."""

    name: str
    kind: Literal["open", "frontier"]
    quality: float | None
    cost_per_request_micro_usd: int | None
    context_k: int | None
    run_mode: str | None


class LeaderboardBody(_Body):
    """Body of ``GET /v1/tasks/{task_id}/leaderboard``; `illustrative` marks unmeasured sample data."""

    task_id: str
    metric: str
    cost_unit: str
    recommended: str | None
    models: list[LeaderboardEntryBody]
    frontier: LeaderboardEntryBody | None
    illustrative: bool
    note: str | None


class HealthBody(_Body):
    """Body of the health routes: ``ok`` once the catalog, index and model are loaded."""

    status: Literal["ok", "starting", "failed"]
    tasks: int
    semantic: bool


class ReloadBody(_Body):
    """Body of ``POST /v1/admin/reload``: the generation served before and now (fingerprints)."""

    status: Literal["reloaded", "unchanged"]
    previous: str
    generation: str
    tasks: int
    seconds: float


class ErrorBody(_Body):
    """Every error body: FastAPI-style, with a human-readable message."""

    detail: str


class _FastJSONResponse(JSONResponse):
    """A JSON response rendered by orjson: the bytes of Starlette's `JSONResponse` (compact, UTF-8,
    no NaN), several times faster. Route bodies are plain dicts already in their final shape, so
    they are rendered as they are, not validated again through a pydantic model."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


def create_app(matcher: Matcher | Live | None = None, *, api_keys: Collection[str] = (),
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_concurrency: int = DEFAULT_MAX_CONCURRENCY, leaderboards: Leaderboards | None = None,
               admin_keys: Collection[str] = (), log_queries: bool = False) -> FastAPI:
    """The API over `matcher` (default: the bundled catalog, ``semantic="auto"``), or over the
    reloadable generation of a `Live` (what `ServerSettings.build_app` passes).

    With `api_keys`, every route but health needs ``Authorization: Bearer <key>``. With
    `admin_keys` (none may also be an API key) and a `Live` that can reload, ``POST
    /v1/admin/reload`` reloads the catalog for a bearer admin key; without admin keys the route
    does not exist. Bodies over `max_body_bytes` get 413 before they are parsed. At most
    `max_concurrency` matches are in flight; one more gets 503 with ``Retry-After`` at once
    instead of a place in a queue. `leaderboards` are the boards served beside the records' own
    (a `Live` carries its generation's). Decision logs hold the query text only with `log_queries`.
    The lifespan start-up warms the matcher (index and model) on a background thread while the
    server already answers (see the module docstring).
    """
    metrics = Metrics()
    if isinstance(matcher, Live):
        live = matcher
        if leaderboards is not None:
            raise ValueError("a Live generation carries its own leaderboards: pass them in its Generation")
    else:
        the_matcher = matcher if matcher is not None else Matcher()
        if not isinstance(the_matcher, Matcher):
            raise TypeError(f"matcher must be a Matcher or a Live, got {type(the_matcher).__name__}")
        live = Live(Served.of(Generation(the_matcher.catalog, None, leaderboards), the_matcher), build=_cannot_build)
    for name, value in (("max_body_bytes", max_body_bytes), ("max_concurrency", max_concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    keys = _validated_keys(api_keys)
    admin = _validated_keys(admin_keys, what="admin key")
    if set(admin) & set(keys):
        raise ValueError("an admin key must not also be an API key: give the admin route keys of its own")
    if admin and not live.can_reload:
        raise ValueError("admin keys need a server that can reload its catalog (build it with ServerSettings)")
    decisions = DecisionLog(log_queries=log_queries)
    live.observe(metrics.served)
    first = live.current
    first_warm = first.warm
    first_warm.keys_required = bool(keys)
    first_warm.after(lambda: metrics.warmed(first.matcher))

    admission = _MatchAdmission(max_concurrency, keys=keys)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        first_warm.start()
        live.watch()
        yield {ADMISSION_STATE: admission}  # the HTTP protocol refuses over-capacity matches itself
        live.stop()
        if first_warm.status == "starting":
            _log.info("shutting down: waiting for the warm-up to finish (a model load cannot be interrupted)")
            await anyio.to_thread.run_sync(first_warm.wait)

    app = FastAPI(title="task-matcher", version=_version(), lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Match plain-English job descriptions to benchmark tasks.")
    app.state.live = live
    app.state.metrics = metrics
    app.state.admission = admission
    app.add_middleware(_RequestGate, keys=keys, max_body_bytes=max_body_bytes,
                       open_paths=frozenset(HEALTH_PATHS), admission=admission,
                       admin_keys=admin, admin_paths=frozenset({ADMIN_RELOAD_PATH}) if admin else frozenset())
    app.add_middleware(_Observe, metrics=metrics)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)

    async def health() -> _FastJSONResponse:
        """Readiness: 200 ``ok`` after warm-up, 503 ``starting`` before it or ``failed`` if it
        raised (on the event loop, so a busy thread pool never delays it)."""
        served = live.current
        status = served.warm.status
        body = {"status": status, "tasks": len(served.generation.catalog), "semantic": served.matcher.semantic_enabled}
        return _FastJSONResponse(body, status_code=200 if status == "ok" else 503,
                                 headers=_generation_header(served))

    for path in HEALTH_PATHS:
        app.add_api_route(path, health, methods=["GET"], response_model=None, tags=["health"],
                          summary="Readiness of this worker",
                          responses={200: {"model": HealthBody},
                                     503: {"model": HealthBody, "description": "Warming up, or warm-up failed"}})

    match_slots = anyio.CapacityLimiter(MATCH_THREADS)

    @app.post(MATCH_PATH, response_model=None, tags=["tasks"], openapi_extra=_MATCH_REQUEST_BODY,
              responses={200: {"model": MatchBody},
                         400: _error("Body cannot be decoded (not UTF-8, or nested too deeply)"),
                         413: _error("Body too large"), 415: _error("Body is not declared as JSON"),
                         422: _error("Invalid query, top_k or scope (an unknown task id or category, named "
                                     "with the closest)"),
                         503: _error("Still warming up, or over capacity (see Retry-After); or warm-up failed")})
    async def match_tasks(http: Request) -> _FastJSONResponse:
        """Rank the catalog's tasks for a plain-English description of a job."""
        request = await _match_request(http)
        served = live.current  # this request's generation, whatever a reload swaps in meanwhile
        status = served.warm.status
        if status == "starting":
            raise HTTPException(status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                                detail="the matcher is still warming up (index and model); retry shortly")
        if status == "failed":
            raise HTTPException(status_code=503, detail="the matcher failed to warm up; see the server log")
        metrics.in_flight.inc()
        started = time.perf_counter()
        call = functools.partial(served.matcher.match, request.query, request.top_k, tasks=request.tasks,
                                 categories=request.categories)
        try:
            result = call() if _runs_inline(served.matcher, request.query) else \
                await anyio.to_thread.run_sync(call, limiter=match_slots)
        except (MatcherError, ValueError, TypeError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        finally:
            metrics.in_flight.dec()
        seconds = time.perf_counter() - started
        metrics.matched(served.matcher, result, seconds)
        decisions.record(request.query, request.top_k, result, seconds=seconds, generation=served.fingerprint)
        outcome = http.scope.get(_OUTCOME)
        if isinstance(outcome, dict):
            outcome.update(type=result.type, matcher=result.matcher)
        return _FastJSONResponse(result.to_dict(), headers=_generation_header(served))

    @app.get("/v1/tasks", response_model=None, tags=["tasks"],
             responses={200: {"model": TaskListBody}})
    async def list_tasks() -> _FastJSONResponse:
        """Every task of the catalog, without examples."""
        served = live.current
        return _FastJSONResponse(served.task_list, headers=_generation_header(served))

    example_id = first.generation.catalog.list()[0].id

    @app.get("/v1/tasks/{task_id}", response_model=None, tags=["tasks"],
             responses={200: {"model": TaskBody}, 404: _error("Unknown task id"),
                        422: _error("Invalid examples_n")})
    async def retrieve_task(
        task_id: str = PathParam(description="A catalog task id.", examples=[example_id]),
        examples_n: Annotated[int, Query(ge=0, description="Example items to include.")] = 0,
    ) -> _FastJSONResponse:
        """One task's record with `examples_n` examples."""
        served = live.current
        return _FastJSONResponse(_task(served.generation.catalog, task_id).to_dict(examples_n=examples_n),
                                 headers=_generation_header(served))

    @app.get("/v1/tasks/{task_id}/leaderboard", response_model=None, tags=["tasks"],
             responses={200: {"model": LeaderboardBody}, 404: _error("Unknown task id")})
    async def task_leaderboard(
        task_id: str = PathParam(description="A catalog task id.", examples=[example_id]),
    ) -> _FastJSONResponse:
        """The models scored on a task, best quality first (then cheaper, then by name), with the recommended pick."""
        served = live.current
        task = _task(served.generation.catalog, task_id)
        return _FastJSONResponse(board_body(task, served.generation.leaderboards),
                                 headers=_generation_header(served))

    @app.get(METRICS_PATH, response_model=None, tags=["operations"], include_in_schema=True,
             responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
    async def prometheus_metrics() -> Response:
        """Prometheus metrics of this server (all workers' with several)."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    if admin:
        @app.post(ADMIN_RELOAD_PATH, response_model=None, tags=["operations"],
                  responses={200: {"model": ReloadBody}, 401: _error("Missing or invalid admin key"),
                             422: _error("The new catalog, config or leaderboards file does not load"),
                             500: _error("The new generation failed to warm up")})
        async def reload_catalog() -> JSONResponse:
            """Reload the catalog, config and leaderboards files; every worker swaps to them once warm."""
            serving = live.current.fingerprint[:12]
            try:
                outcome = await anyio.to_thread.run_sync(live.reload)
            except (MatcherError, ValueError, OSError) as exc:
                metrics.reloads.labels("rejected").inc()
                _log.warning("task-matcher reload rejected, still serving generation %s: %s", serving, exc)
                raise HTTPException(status_code=422, detail=f"reload rejected: {exc}; still serving generation "
                                                            f"{serving}") from None
            except Exception:
                metrics.reloads.labels("failed").inc()
                _log.exception("task-matcher reload failed, still serving generation %s", serving)
                raise HTTPException(status_code=500, detail=f"reload failed: the new generation did not warm up "
                                                            f"(see the server log); still serving {serving}") from None
            metrics.reloads.labels(outcome.status).inc()
            return JSONResponse(outcome.to_dict(), headers=_generation_header(live.current))

    app.openapi().setdefault("components", {}).setdefault("schemas", {})["MatchRequest"] = \
        MatchRequest.model_json_schema(ref_template="#/components/schemas/{model}")  # read by `_match_request`
    if keys or admin:
        _document_bearer_auth(app, admin_only=frozenset({ADMIN_RELOAD_PATH}) if admin else frozenset(),
                              keys_required=bool(keys))
    return app


def _runs_inline(engine: Matcher, query: str) -> bool:
    """Whether a match is cheap enough for the event loop: keyword-only and short (`INLINE_QUERY_CHARS`).
    A subclass may override `match` with work of unknown cost, so its matches always take a thread."""
    return type(engine) is Matcher and not engine.semantic_enabled and len(query) <= INLINE_QUERY_CHARS


def _cannot_build(_generation: Generation) -> Matcher:
    raise MatcherError("this app serves a fixed matcher: build it with ServerSettings to reload")


def _generation_header(served: Served) -> dict[str, str]:
    """Which generation answered: a reload is visible response by response."""
    return {GENERATION_HEADER: served.fingerprint[:16]}


def _task(catalog: Catalog, task_id: str) -> Task:
    try:
        return catalog.get(task_id)
    except UnknownTaskError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


_MATCH_REQUEST_BODY: dict[str, Any] = {"requestBody": {
    "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MatchRequest"}}}}}


async def _match_request(http: Request) -> MatchRequest:
    """The body of a match as a `MatchRequest`, with FastAPI's own outcomes (415 when not declared
    as JSON, 422 for JSON that does not decode or fields that do not validate, 400 for bytes
    `json.loads` cannot even read) but without its per-request dependency resolution, which cost
    a keyword match more than a third of its time on top of the engine's."""
    _json_declared(http)
    body = await http.body()
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}]) from None
    except Exception:  # not UTF-8/16/32, or nested past the recursion limit
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from None
    try:
        return MatchRequest.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in exc.errors(include_url=False)]) from None


def _json_declared(request: Request) -> None:
    """415 for a body not declared as JSON: FastAPI would call it a missing "dictionary or object"."""
    declared = request.headers.get("content-type")
    media = (declared or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    what = "no Content-Type header" if not declared else f"Content-Type {media[:100]!r}"
    raise HTTPException(status_code=415, detail=f"the request has {what}: send the body as JSON with "
                                                "'Content-Type: application/json'")


async def _internal_error(_request: Request, _exc: Exception) -> JSONResponse:
    """A JSON 500 for a failure the app did not foresee (uvicorn logs its traceback)."""
    return JSONResponse({"detail": "internal server error: the cause is in the server log"}, status_code=500)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 with one readable sentence per problem instead of FastAPI's list of error objects."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": describe_validation_errors(errors)}, status_code=422)


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """``"body field 'top_k': Input should be a valid integer"``-style text for pydantic errors."""
    parts: list[str] = []
    for error in errors[:_MAX_REPORTED_ERRORS]:
        loc = [str(part) for part in error.get("loc", ())]
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "decode error")
            parts.append(f"request body is not valid JSON: {reason}")
        elif loc == ["body"]:
            parts.append(f"request body: {message}")
        elif loc and loc[0] == "body":
            parts.append(f"body field '{'.'.join(loc[1:])}': {message}")
        elif len(loc) == 2 and loc[0] in ("query", "path", "header"):
            parts.append(f"{loc[0]} parameter '{loc[1]}': {message}")
        else:
            parts.append(f"{'.'.join(loc) or 'request'}: {message}")
    if len(errors) > _MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more problems")
    return "; ".join(parts) or "invalid request"


def _document_bearer_auth(app: FastAPI, *, admin_only: frozenset[str], keys_required: bool) -> None:
    """Declare the bearer schemes in the OpenAPI document: API keys everywhere but health (when
    set), admin keys on the admin routes."""
    schema = app.openapi()
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    if keys_required:
        schemes["bearerAuth"] = {"type": "http", "scheme": "bearer", "description": "An API key of this server."}
        schema["security"] = [{"bearerAuth": []}]
    if admin_only:
        schemes["adminBearerAuth"] = {"type": "http", "scheme": "bearer",
                                      "description": "An admin key of this server (never an API key)."}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if path in HEALTH_PATHS:
                operation["security"] = []
            elif path in admin_only or keys_required:
                if path in admin_only:
                    operation["security"] = [{"adminBearerAuth": []}]
                operation.setdefault("responses", {})["401"] = {
                    "description": f"Missing or invalid {'admin' if path in admin_only else 'API'} key",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                }
    components = schema["components"].setdefault("schemas", {})
    components.setdefault("ErrorBody", ErrorBody.model_json_schema())


def _validated_keys(api_keys: Collection[str], *, what: str = "API key") -> tuple[bytes, ...]:
    if isinstance(api_keys, str):
        raise TypeError(f"{what}s must be a collection of keys, not a single str")
    keys: list[bytes] = []
    for position, key in enumerate(api_keys, start=1):
        if not isinstance(key, str) or not key or not key.isascii() or not key.isprintable() \
                or any(ch.isspace() for ch in key):
            raise ValueError(f"{what} #{position} must be a non-empty printable ASCII string "
                             "without spaces")
        keys.append(key.encode("ascii"))
    return tuple(keys)


_OUTCOME = "task_matcher.outcome"


class _Observe:
    """Outermost ASGI layer: counts and times every HTTP request, refused ones included, by route
    template, method and status; a match adds its outcome type and scoring path (set by the route
    in the scope entry `_OUTCOME`)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        outcome: dict[str, str] = {}
        scope = {**scope, _OUTCOME: outcome}
        status = 500
        started = time.perf_counter()

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route, method = route_label(scope["path"]), str(scope["method"])
            self.metrics.request_seconds.labels(route, method).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, method, str(status), outcome.get("type", ""),
                                         outcome.get("matcher", "")).inc()


class _Slot:
    """One admitted match's hold on the cap (an `anyio.CapacityLimiter` borrower)."""


_SLOT = "task-matcher.slot"  # where `_MatchAdmission` notes its verdict, in the request's scope["state"]
_REFUSED = "refused"


class _MatchAdmission:
    """The cap on matches in flight per worker, shared by the HTTP protocol and `_RequestGate`.

    The protocol asks first, through `refusal`, once a match's whole request is in and before its
    app task runs: a refusal is then written in the read that brought the request, so under a burst
    every match over the cap gets its 503 before the server turns to the work it admitted. A slot
    taken there is noted in the request's state and released by the gate when the match is done.
    Requests the protocol does not screen (the h11 protocol, a pipelined request, one whose
    credentials or path the gate will refuse) are admitted by the gate itself.
    """

    def __init__(self, limit: int, *, keys: tuple[bytes, ...]) -> None:
        self.limiter = anyio.CapacityLimiter(limit)
        self.keys = keys
        self.detail = f"the server is at its limit of {limit} matches in flight; retry shortly"
        self.headers = {"Retry-After": str(OVERLOAD_RETRY_AFTER_SECONDS)}
        self.refused = error_response_bytes(503, self.detail, self.headers)

    @property
    def full(self) -> bool:
        return self.limiter.available_tokens < 1

    def take(self) -> _Slot | None:
        """A slot for one match, or None when the cap is full."""
        slot = _Slot()
        try:
            self.limiter.acquire_on_behalf_of_nowait(slot)
        except anyio.WouldBlock:
            return None
        return slot

    def release(self, slot: _Slot) -> None:
        self.limiter.release_on_behalf_of(slot)

    def refusal(self, scope: dict[str, Any]) -> bytes | None:
        """The protocol's question (see `matcher.connections.Admission`): the 503 for a match over the
        cap, or None after taking it a slot, or for any request that is not the gate's to admit yet."""
        if scope["method"] != "POST" or scope["path"] != MATCH_PATH or b"%" in scope["raw_path"]:
            return None
        if self.keys and _credential_problem(dict(scope["headers"][::-1]).get(b"authorization"), self.keys,
                                             "API key") is not None:
            return None  # the gate answers 401: a refused key learns nothing about the load
        slot = self.take()
        scope["state"][_SLOT] = slot if slot is not None else _REFUSED
        return None if slot is not None else self.refused


def _credential_problem(header: bytes | None, keys: tuple[bytes, ...], what: str) -> str | None:
    """Why a request with this Authorization `header` is not authenticated, or None; compares against
    every key in constant time."""
    if header is None:
        return f"missing {what}: send the header 'Authorization: Bearer <key>'"
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return "malformed Authorization header: expected 'Bearer <key>'"
    token = token.strip()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return None if matched else f"invalid {what}"


class _RequestGate:
    """Pure ASGI layer in front of the app: API keys, the path, the body-size limit, then the cap on matches.

    The body is read here, counted as it streams in, and replayed to the app, so an oversized
    body is refused (413) as soon as the limit is crossed, or at once from its Content-Length,
    and is never parsed. Unauthenticated requests are refused before their body is read.
    A path with an encoded slash is refused (404): uvicorn decodes ``%2F`` before routing, so
    ``/v1/tasks/a%2Fleaderboard`` would reach the leaderboard of task ``a`` instead of asking
    for a task whose id holds a slash (no id does). ``HEAD`` is answered as ``GET`` (uvicorn
    sends the headers only), so every GET route answers HEAD. A match is admitted while
    `admission` has a slot free, and otherwise refused with 503 at once, never parsed: refusing
    must cost next to nothing when the server is busiest. The HTTP protocol usually decides first
    (see `_MatchAdmission`); otherwise the gate refuses before the body is read when the cap is
    already full, and takes a slot only once the whole body is in, so connections that dribble a
    body cannot fill the cap.
    """

    def __init__(self, app: ASGIApp, *, keys: tuple[bytes, ...], max_body_bytes: int,
                 open_paths: frozenset[str], admission: _MatchAdmission, admin_keys: tuple[bytes, ...] = (),
                 admin_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.keys = keys
        self.admin_keys = admin_keys
        self.admin_paths = admin_paths
        self.max_body_bytes = max_body_bytes
        self.open_paths = open_paths
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"][::-1])  # the first of repeated headers wins
        if scope["path"] in self.admin_paths:  # admin keys only: an API key opens nothing here
            problem = _credential_problem(headers.get(b"authorization"), self.admin_keys, "admin key")
            if problem is not None:
                await _reject(scope, receive, send, 401, problem,
                              {"WWW-Authenticate": 'Bearer realm="task-matcher admin"'})
                return
        elif self.keys and scope["path"] not in self.open_paths:
            problem = _credential_problem(headers.get(b"authorization"), self.keys, "API key")
            if problem is not None:
                await _reject(scope, receive, send, 401, problem,
                              {"WWW-Authenticate": 'Bearer realm="task-matcher"'})
                return
        if b"%2f" in bytes(scope.get("raw_path") or b"").lower():
            await _reject(scope, receive, send, 404, "not found: the path holds an encoded '/' (%2F), and no "
                                                     "route takes one inside a path segment (task ids have none)")
            return
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        if (scope["method"], scope["path"]) != ("POST", MATCH_PATH):
            body = await self._read_body(scope, receive, send, headers)
            if body is not None:
                await self.app(scope, _replay(body, receive), send)
            return
        state = scope.setdefault("state", {})
        try:
            if _SLOT not in state and self.admission.full:  # full already: refused before its body is read
                await self._over_capacity(scope, receive, send)
                return
            body = await self._read_body(scope, receive, send, headers)
            if state.get(_SLOT) == _REFUSED:  # the protocol sent the 503; this one, dropped, keeps metrics true
                await self._over_capacity(scope, receive, send)
                return
            if body is None:
                return
            if _SLOT not in state:  # after the body: a slow sender holds a connection, never a slot
                slot = self.admission.take()
                if slot is None:
                    await self._over_capacity(scope, receive, send)
                    return
                state[_SLOT] = slot
            await self.app(scope, _replay(body, receive), send)
        finally:  # the slot, whether the protocol or the gate took it (the body may have come after the check)
            slot = state.get(_SLOT)
            if isinstance(slot, _Slot):
                self.admission.release(slot)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send,
                         headers: dict[bytes, bytes]) -> bytes | None:
        """The whole body, counted as it streams in; None when it was refused (400, 413) or never came."""
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reject(scope, receive, send, 400, "Content-Length must be a non-negative integer")
                return None
            if int(declared) > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _over_capacity(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _reject(scope, receive, send, 503, self.admission.detail, self.admission.headers)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _reject(scope, receive, send, 413,
                      f"request body is larger than the limit of {self.max_body_bytes:,} bytes",
                      {"Connection": "close"})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the buffered body once, then defers to the server's (disconnect)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reject(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                  headers: Mapping[str, str] | None = None) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("task-matcher")
    except PackageNotFoundError:
        return "0+unknown"


def load_api_keys(env_value: str | None = None, keys_file: str | Path | None = None, *,
                  variable: str = _ENV_KEYS, what: str = "API key") -> tuple[str, ...]:
    """Keys from a comma-separated string and/or a file with one key per line (blank and ``#`` lines skipped).

    A string (even an empty one) or a file that holds no key is an error: it would silently
    switch authentication off. Only no setting at all (None) means an open API (or, for admin
    keys, no admin route). `variable` and `what` name the setting in messages.
    """
    keys = [part.strip() for part in (env_value or "").split(",") if part.strip()]
    if env_value is not None and not keys:
        raise ValueError(f"{variable} is set but holds no {what}: set comma-separated keys, or unset it to run "
                         f"without {what}s")
    if keys_file is not None:
        path = Path(keys_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {what}s file {path}: {exc.__class__.__name__}") from None
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise ValueError(f"{what[0].upper()}{what[1:]}s file {path} holds no keys (one key per line)")
        keys.extend(from_file)
    return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class ServerSettings:
    """What a server process needs to build its app; read from ``MATCHER_*`` variables by workers.

    `generation` is the folder of a `GenerationStore` that workers serve from (the serve command
    sets it for several workers); without it, the catalog, config and leaderboards files are read.
    """

    catalog: Path | None = None
    config: Path | None = None
    semantic: str = "auto"
    model: Path | None = None
    api_keys_file: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT
    generation: Path | None = None
    leaderboards: Path | None = None
    admin_keys_file: Path | None = None
    log_queries: bool = False
    http: str = DEFAULT_HTTP

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Settings from ``MATCHER_CATALOG``, ``MATCHER_CONFIG``, ``MATCHER_LEADERBOARDS``,
        ``MATCHER_SEMANTIC``, ``MATCHER_MODEL`` (a model folder), ``MATCHER_API_KEYS_FILE``,
        ``MATCHER_ADMIN_KEYS_FILE``, ``MATCHER_MAX_BODY_BYTES``, ``MATCHER_MAX_CONCURRENCY``, the
        ``MATCHER_*_TIMEOUT`` variables, ``MATCHER_LOG_QUERIES`` (``1`` to log query text), ``MATCHER_HTTP``
        (the HTTP protocol) and the generation store, ``MATCHER_GENERATION`` (unset: defaults)."""
        env = os.environ if environ is None else environ
        semantic = env.get(_ENV_SEMANTIC) or "auto"
        if semantic not in SEMANTIC_CHOICES:
            raise ValueError(f"{_ENV_SEMANTIC} must be one of {', '.join(SEMANTIC_CHOICES)}; got {semantic!r}")
        log_queries = env.get(_ENV_LOG_QUERIES) or "0"
        if log_queries not in ("0", "1"):
            raise ValueError(f"{_ENV_LOG_QUERIES} must be 0 or 1, got {log_queries!r}")
        protocol = env.get(_ENV_HTTP) or DEFAULT_HTTP
        if protocol not in HTTP_CHOICES:
            raise ValueError(f"{_ENV_HTTP} must be one of {', '.join(HTTP_CHOICES)}; got {protocol!r}")
        return cls(
            catalog=_optional_path(env.get(_ENV_CATALOG)),
            config=_optional_path(env.get(_ENV_CONFIG)),
            semantic=semantic,
            model=_optional_path(env.get(_ENV_MODEL)),
            api_keys_file=_optional_path(env.get(_ENV_KEYS_FILE)),
            max_body_bytes=_positive_int(env, _ENV_MAX_BODY, DEFAULT_MAX_BODY_BYTES),
            max_concurrency=_positive_int(env, _ENV_MAX_CONCURRENCY, DEFAULT_MAX_CONCURRENCY),
            generation=_optional_path(env.get(_ENV_GENERATION)),
            leaderboards=_optional_path(env.get(_ENV_LEADERBOARDS)),
            admin_keys_file=_optional_path(env.get(_ENV_ADMIN_KEYS_FILE)),
            log_queries=log_queries == "1",
            http=protocol,
            **{name: _positive_seconds(env, variable, getattr(cls, name)) for name, variable in _ENV_TIMEOUTS.items()},
        )

    def to_env(self) -> dict[str, str]:
        """The variables `from_env` reads back (a key file's path, never the keys themselves)."""
        env = {_ENV_SEMANTIC: self.semantic, _ENV_MAX_BODY: str(self.max_body_bytes),
               _ENV_MAX_CONCURRENCY: str(self.max_concurrency), _ENV_LOG_QUERIES: "1" if self.log_queries else "0",
               _ENV_HTTP: self.http,
               **{variable: repr(getattr(self, name)) for name, variable in _ENV_TIMEOUTS.items()}}
        for name, value in ((_ENV_CATALOG, self.catalog), (_ENV_CONFIG, self.config), (_ENV_MODEL, self.model),
                            (_ENV_KEYS_FILE, self.api_keys_file), (_ENV_GENERATION, self.generation),
                            (_ENV_LEADERBOARDS, self.leaderboards), (_ENV_ADMIN_KEYS_FILE, self.admin_keys_file)):
            if value is not None:
                env[name] = str(value.resolve())
        return env

    def load_files(self) -> Generation:
        """Read and validate the catalog, config and leaderboards files now (what a reload does)."""
        return Generation.load(self.catalog, self.config, self.leaderboards)

    def load_generation(self) -> Generation:
        """The generation to serve: the store's current one when there is a store, else read from the files."""
        if self.generation is not None:
            return GenerationStore(self.generation).current()
        return self.load_files()

    def matcher_builder(self) -> Callable[[Generation], Matcher]:
        """Makes the matcher of a generation; later generations share the first one's embedder (a
        reload loads no second model). The first resolves the `semantic` option itself, so building it
        loads no model: that waits for the warm-up, after the port is open."""
        shared: list[Embedder | None] = []

        def build(generation: Generation) -> Matcher:
            if shared:
                embedder = shared[0]
                return Matcher(generation.catalog, semantic=embedder if embedder is not None else False,
                               config=generation.config)
            semantic = self.model if self.model is not None else SEMANTIC_CHOICES[self.semantic]
            first = Matcher(generation.catalog, semantic=semantic, config=generation.config)
            shared.append(first.embedder)
            return first

        return build

    def build_matcher(self, generation: Generation | None = None) -> Matcher:
        """The matcher these settings describe, over `generation` (default: `load_generation()`)."""
        return self.matcher_builder()(generation if generation is not None else self.load_generation())

    def build_app(self, environ: Mapping[str, str] | None = None, *, generation: Generation | None = None) -> FastAPI:
        """The app over a reloadable generation (default: `load_generation()`): API keys from
        ``MATCHER_API_KEYS`` in `environ` plus those in `api_keys_file`, admin keys likewise from
        ``MATCHER_ADMIN_KEYS`` and `admin_keys_file`."""
        env = os.environ if environ is None else environ
        keys = load_api_keys(env.get(_ENV_KEYS), self.api_keys_file)
        admin = load_api_keys(env.get(_ENV_ADMIN_KEYS), self.admin_keys_file, variable=_ENV_ADMIN_KEYS,
                              what="admin key")
        served = generation if generation is not None else self.load_generation()
        build = self.matcher_builder()
        store = GenerationStore(self.generation) if self.generation is not None else None
        live = Live(Served.of(served, build(served)), build=build, load=self.load_files, store=store)
        return create_app(live, api_keys=keys, max_body_bytes=self.max_body_bytes,
                          max_concurrency=self.max_concurrency, admin_keys=admin, log_queries=self.log_queries)

    def uvicorn_config(self, app: ASGIApp | str, **options: Any) -> LimitedConfig:
        """uvicorn's config for `app` (an app or a factory's import path) with this HTTP protocol and
        these connection timeouts."""
        return LimitedConfig(app, header_timeout=self.header_timeout, body_timeout=self.body_timeout,
                             keep_alive_timeout=self.keep_alive_timeout, http=self.http, **options)


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def _positive_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name) or repr(default)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def app_from_env() -> FastAPI:
    """uvicorn factory (``matcher.server:app_from_env``): each worker builds its own app from env.

    A worker that cannot build it (its generation, keys file or model cannot be loaded) logs why
    in one line, leaves a note beside its generation's snapshot, and exits with uvicorn's start-up
    failure status: the supervisor then stops the server instead of restarting the worker in a loop.
    """
    _thread_lock_for_progress_bars()
    settings = ServerSettings.from_env()
    try:
        return settings.build_app()
    except (MatcherError, ValueError, TypeError, ImportError, OSError) as exc:
        _log.error("task-matcher worker %d cannot serve: %s", os.getpid(), exc)
        if settings.generation is not None:
            report_failure(settings.generation / "worker", str(exc))
        raise SystemExit(STARTUP_FAILURE) from None


def _thread_lock_for_progress_bars() -> None:
    """Give tqdm a thread lock, so a worker process creates no semaphore that could leak.

    tqdm's default lock includes a `multiprocessing` lock, made on the first progress bar (and
    sentence-transformers makes a disabled one on every ``encode``). In a spawned worker that lock
    is a named semaphore that outlives a worker killed by SIGTERM (see the module docstring); the
    workers never share progress bars between processes, so a thread lock is all they need.
    """
    try:
        from tqdm import tqdm
    except ImportError:  # no semantic extra: nothing makes a progress bar
        return
    tqdm.set_lock(threading.RLock())


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket whose accepted connections get TCP_NODELAY.

    asyncio sets TCP_NODELAY only on sockets whose `proto` is IPPROTO_TCP, and uvicorn's own
    bind for several workers leaves it 0: Nagle's algorithm and delayed ACKs then add ~40 ms to
    every small response (measured: p50 of GET /healthz 44 ms with uvicorn's socket, 0.7 ms
    with this one).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@contextmanager
def serve_in_background(app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0,
                        startup_timeout: float = 300.0, wait_until_ready: bool = True,
                        settings: ServerSettings | None = None) -> Iterator[str]:
    """Run `app` under uvicorn on a daemon thread; yields its base URL once it serves, and warm.

    For tests, notebooks and embedding: the socket is bound first (port 0 picks a free one). With
    `wait_until_ready` (the default) and an app from `create_app`, the URL is handed out only after
    the matcher's background warm-up finished, and a failed warm-up raises `RuntimeError`; without
    it, as soon as uvicorn accepts connections (health then says ``starting`` until warm). The
    connection timeouts are those of `settings` (default: the defaults of `ServerSettings`).
    """
    sock = _listening_socket(host, port)
    config = (settings or ServerSettings()).uvicorn_config(app, lifespan="on", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="task-matcher-server")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    live = getattr(getattr(app, "state", None), "live", None)
    warm = live.current.warm if isinstance(live, Live) else None
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server stopped during start-up (see the log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {startup_timeout:g} s")
            time.sleep(0.01)
        if wait_until_ready and warm is not None:
            if not warm.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"the matcher did not warm up within {startup_timeout:g} s")
            if warm.error is not None:
                raise RuntimeError("the matcher failed to warm up") from warm.error
        bound_host, bound_port = sock.getsockname()[:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="task-matcher serve",
        description="Serve the task-matcher HTTP API (POST /v1/tasks/match and the catalog routes).",
        epilog="With --workers N, uvicorn binds the port once and N worker processes share it, each "
               "with its own matcher over the catalog and config read at start (later edits reach no "
               "worker until a reload: SIGHUP to this process, or POST /v1/admin/reload with an admin key; "
               "every worker then swaps to the new generation once it is warm, and a catalog that does "
               "not load is refused while the old one keeps serving); they share the embedding cache "
               "(~/.cache/task-matcher, or "
               "the directory in TASK_MATCHER_CACHE). API keys come from MATCHER_API_KEYS "
               "(comma-separated) and/or --api-keys-file; without either, the API is open, and a "
               "setting that holds no key refuses to start. Run it behind a reverse proxy in production.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument("--catalog", type=Path, help="a catalog file or directory (default: bundled)")
    parser.add_argument("--config", type=Path, help="a MatcherConfig JSON file (default: the shipped one)")
    parser.add_argument("--semantic", choices=tuple(SEMANTIC_CHOICES), default="auto", help=SEMANTIC_HELP)
    parser.add_argument("--model", type=Path, metavar="DIR",
                        help="a sentence-transformers model folder, such as `task-matcher finetune` writes "
                             "(default: the shipped MiniLM)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"intra-op threads of the embedding model per request (default: ${THREADS_ENV}, "
                             "else 1; 0: the backend's own default); workers inherit it")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--leaderboards", type=Path,
                        help="a leaderboards file (`task-matcher leaderboard import`; default: the catalog-side "
                             "<catalog>.leaderboards.json when it exists)")
    parser.add_argument("--api-keys-file", type=Path,
                        help="file with one API key per line; keys then guard every route but health")
    parser.add_argument("--admin-keys-file", type=Path,
                        help="file with one admin key per line (or MATCHER_ADMIN_KEYS): turns on POST "
                             "/v1/admin/reload, which takes only these keys; without admin keys the route is off")
    parser.add_argument("--log-queries", action="store_true",
                        help="put each query's text in the JSON decision logs (default: its length only)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"largest accepted request body (default {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--max-concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY,
                        help="matches in flight per worker; more get 503 with Retry-After at once "
                             f"(default {DEFAULT_MAX_CONCURRENCY})")
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT, metavar="SECONDS",
                        help="a request line and headers must arrive within this time, from the connection's "
                             "opening or the request's first byte; else 408 and close "
                             f"(default {DEFAULT_HEADER_TIMEOUT:g})")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT, metavar="SECONDS",
                        help="a request body must arrive within this time of its headers; else 408 and close "
                             f"(default {DEFAULT_BODY_TIMEOUT:g})")
    parser.add_argument("--keep-alive-timeout", type=float, default=DEFAULT_KEEP_ALIVE_TIMEOUT, metavar="SECONDS",
                        help="an idle connection between requests is closed after this time "
                             f"(default {DEFAULT_KEEP_ALIVE_TIMEOUT:g})")
    parser.add_argument("--http", choices=HTTP_CHOICES, default=DEFAULT_HTTP,
                        help="HTTP/1.1 parser: httptools (llhttp, in C; the default) or h11 (pure Python, slower); "
                             "both enforce the same deadlines")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"),
                        help="log level of uvicorn and of the matcher's own logs (default info)")
    return parser


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config plus the ``matcher`` loggers, printed like uvicorn's at `level`.

    uvicorn applies it in the supervisor and again in each worker process, so the library's
    warm-up lines (index, model, embeddings) show with one worker and with several. Access-log
    lines go through `_RedactQueryStrings`; decision logs (``matcher.decisions``) print as bare
    JSON lines.
    """
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["matcher"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["formatters"]["json_lines"] = {"format": "%(message)s"}
    config["handlers"]["decisions"] = {"class": "logging.StreamHandler", "formatter": "json_lines",
                                       "stream": "ext://sys.stderr"}
    config["loggers"][DECISIONS_LOGGER] = {"handlers": ["decisions"], "level": level.upper(), "propagate": False}
    config.setdefault("filters", {})["redact_query_strings"] = {"()": f"{__name__}._RedactQueryStrings"}
    config["handlers"]["access"]["filters"] = ["redact_query_strings"]
    return config


class _RedactQueryStrings(logging.Filter):
    """Access-log lines show a request's path, never its query string: keys or personal data may be in it.

    uvicorn logs ``'%s - "%s %s HTTP/%s" %d'`` with the path and query as its third argument;
    everything after ``?`` there becomes ``[redacted]``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].partition("?")[0] + "?[redacted]", *args[3:])
        return True


def serve_main(argv: Sequence[str] | None = None) -> int:
    """`task-matcher serve`: check the settings, run uvicorn until interrupted; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        for option in ("workers", "max_body_bytes", "max_concurrency"):
            if getattr(args, option) < 1:
                raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
        for option in _ENV_TIMEOUTS:
            if not math.isfinite(getattr(args, option)) or getattr(args, option) <= 0:
                raise ValueError(f"--{option.replace('_', '-')} must be a positive number of seconds, "
                                 f"got {getattr(args, option)}")
        if args.threads is not None:
            thread_count(args.threads)
            os.environ[THREADS_ENV] = str(args.threads)  # read by this process's matcher and the workers'
        settings = ServerSettings(catalog=args.catalog, config=args.config, semantic=args.semantic, model=args.model,
                                  api_keys_file=args.api_keys_file, max_body_bytes=args.max_body_bytes,
                                  max_concurrency=args.max_concurrency, header_timeout=args.header_timeout,
                                  body_timeout=args.body_timeout, keep_alive_timeout=args.keep_alive_timeout,
                                  leaderboards=args.leaderboards, admin_keys_file=args.admin_keys_file,
                                  log_queries=args.log_queries, http=args.http)
        generation = settings.load_files()  # read and validated once, for every worker
        app = settings.build_app(generation=generation)  # fails fast on a bad catalog, config or keys file
    except (MatcherError, ValueError, TypeError, ImportError) as exc:
        print(f"task-matcher serve: error: {exc}", file=sys.stderr)
        return 2
    for name, value in _SERVER_THREAD_ENV.items():
        os.environ.setdefault(name, value)  # before torch loads (at warm-up); workers inherit it
    common: dict[str, Any] = {"host": args.host, "port": args.port, "lifespan": "on",
                              "log_level": args.log_level, "log_config": _log_config(args.log_level)}
    if args.workers == 1:
        server = uvicorn.Server(settings.uvicorn_config(app, **common))
        live, metrics = app.state.live, app.state.metrics
        signal.signal(signal.SIGHUP, lambda _sig, _frame: threading.Thread(
            target=_reload_on_signal, args=(live, metrics), name="task-matcher-reload", daemon=True).start())
        with suppress(KeyboardInterrupt):
            server.run()
        return 0 if server.started else 1
    return _serve_workers(settings, generation, args.workers, common)


def _reload_on_signal(live: Live, metrics: Metrics | None) -> None:
    """SIGHUP in a one-process server: reload, and log why not when the files do not load."""
    _log.info("task-matcher received SIGHUP: reloading the catalog")
    try:
        outcome = live.reload()
    except (MatcherError, ValueError, OSError) as exc:
        _log.warning("task-matcher reload rejected, still serving generation %s: %s",
                     live.current.fingerprint[:12], exc)
        result = "rejected"
    except Exception:
        _log.exception("task-matcher reload failed, still serving generation %s", live.current.fingerprint[:12])
        result = "failed"
    else:
        result = outcome.status
    if metrics is not None:
        metrics.reloads.labels(result).inc()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, with SIGHUP as a reload instead of a restart of every worker: the parent
    loads and validates the files and publishes the new generation to the workers' store (a file
    that does not load is logged and changes nothing); and dead workers' live gauges are dropped."""

    def __init__(self, config: LimitedConfig, sockets: list[socket.socket], *, settings: ServerSettings,
                 store: GenerationStore, metrics_dir: Path | None) -> None:
        super().__init__(config, sockets)
        self._settings = settings
        self._store = store
        self._metrics_dir = metrics_dir

    def handle_hup(self) -> None:
        _log.info("task-matcher received SIGHUP: reloading the catalog for every worker")
        try:
            generation = self._settings.load_files()
            self._store.publish(generation)
        except (MatcherError, ValueError, OSError) as exc:
            _log.warning("task-matcher reload rejected, the workers keep their generation: %s", exc)
            return
        _log.info("task-matcher published generation %s (%d tasks); each worker swaps to it once warm",
                  generation.fingerprint[:12], len(generation.catalog))

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        if self._metrics_dir is not None:
            for pid in before - {process.pid for process in self.processes}:
                if pid is not None:
                    mark_worker_dead(pid, self._metrics_dir)


def _serve_workers(settings: ServerSettings, generation: Generation, workers: int, common: dict[str, Any]) -> int:
    """What uvicorn.run does for several workers, on a socket that keeps TCP_NODELAY, and with one
    catalog generation for all: the one the parent validated, pinned in a private snapshot that every
    worker, a restarted one too, reads (`matcher.generation`); edits to the files do not reach them."""
    try:
        sock = _listening_socket(common["host"], common["port"])
    except OSError as exc:
        print(f"task-matcher serve: error: cannot bind {common['host']}:{common['port']}: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="task-matcher-generation-") as folder:
        store = GenerationStore(Path(folder))
        store.publish(generation)
        pinned = replace(settings, generation=store.folder)
        os.environ.update(pinned.to_env())  # the worker processes inherit these
        metrics_dir: Path | None = None
        if not os.environ.get(MULTIPROCESS_ENV):  # one folder of samples for all workers' /metrics
            metrics_dir = store.folder / "metrics"
            metrics_dir.mkdir()
            os.environ[MULTIPROCESS_ENV] = str(metrics_dir)
        config = pinned.uvicorn_config("matcher.server:app_from_env", factory=True, workers=workers, **common)
        _log.info("task-matcher serving catalog generation %s (%d tasks) on http://%s:%d with %d workers "
                  "(Press CTRL+C to quit; SIGHUP reloads the catalog)", generation.fingerprint[:12],
                  len(generation.catalog), common["host"], sock.getsockname()[1], workers)
        supervisor = _Supervisor(config, sockets=[sock], settings=settings, store=store, metrics_dir=metrics_dir)
        try:
            supervisor.run()
        except KeyboardInterrupt:
            pass
        finally:
            sock.close()
        failures = reported_failures(Path(folder))
    if failures or any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        reason = failures[0] if failures else "see its log above"
        print(f"task-matcher serve: error: a worker could not start, so the server stopped: {reason}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(serve_main())
