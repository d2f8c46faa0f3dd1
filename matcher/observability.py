"""Server observability: Prometheus metrics (prometheus-client) and structured JSON decision logs.

`Metrics` counts every HTTP request by route template, method, status and, for matches, the
outcome `type` and scoring path (`matcher`); it times requests and engine work in histograms,
counts the fuzzy word-lookup cache's hits and misses and the task-embedding cache's reads, counts
reloads by result, and exposes the served catalog generation as a gauge labelled with its
fingerprints. With several workers, set ``PROMETHEUS_MULTIPROC_DIR`` to a fresh folder before the
workers start (``task-matcher serve`` does): each worker then writes its samples there and any
worker's ``/metrics`` reports the sum over all of them (the generation gauge once per live worker,
labelled with its pid).

`DecisionLog` writes one JSON object per match on the ``matcher.decisions`` logger: outcome,
chosen task, top candidates, timing and generation. The query's text appears only when the
server was started with ``log_queries`` (its length always); request headers, and so keys, never.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

from .engine import Matcher
from .results import TaskMatch

__all__ = ["MULTIPROCESS_ENV", "DecisionLog", "Metrics", "route_label"]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROUTES = (
    ("/v1/tasks/match", "/v1/tasks/match"),
    ("/v1/tasks", "/v1/tasks"),
    ("/v1/admin/reload", "/v1/admin/reload"),
    ("/healthz", "/healthz"),
    ("/v1/health", "/v1/health"),
    ("/metrics", "/metrics"),
    ("/openapi.json", "/openapi.json"),
)
_TOP_LOGGED = 3
_SCRAPE_ATTEMPTS = 5
DECISIONS_LOGGER = "matcher.decisions"


def route_label(path: str) -> str:
    """The route template a path belongs to (ids replaced by ``{task_id}``), or ``other``: bounded label values."""
    for exact, label in _ROUTES:
        if path == exact:
            return label
    if path.startswith("/v1/tasks/"):
        rest = path.removeprefix("/v1/tasks/")
        if rest and "/" not in rest:
            return "/v1/tasks/{task_id}"
        if rest.endswith("/leaderboard") and rest.count("/") == 1:
            return "/v1/tasks/{task_id}/leaderboard"
    return "other"


class Metrics:
    """One app's metrics, in its own registry (or, with ``PROMETHEUS_MULTIPROC_DIR``, the workers' shared folder)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        folder = env.get(MULTIPROCESS_ENV)
        self.multiprocess = bool(folder)
        self._registry = CollectorRegistry()
        if folder:
            prometheus_multiprocess.MultiProcessCollector(self._registry, path=folder)  # type: ignore[no-untyped-call]
        target = None if folder else self._registry
        self.requests = Counter("task_matcher_requests", "HTTP requests by route, method, status and, for "
                                "matches, the outcome type and scoring path",
                                ["route", "method", "status", "type", "matcher"], registry=target)
        self.request_seconds = Histogram("task_matcher_request_duration_seconds", "HTTP request latency",
                                         ["route", "method"], buckets=_LATENCY_BUCKETS, registry=target)
        self.match_seconds = Histogram("task_matcher_match_duration_seconds", "Engine time of one match by "
                                       "scoring path", ["matcher"], buckets=_LATENCY_BUCKETS, registry=target)
        self.fuzzy_lookups = Counter("task_matcher_fuzzy_lookups", "Fuzzy word lookups of queries, by cache result",
                                     ["result"], registry=target)
        self.embedding_cache = Counter("task_matcher_embedding_cache_reads", "Task-embedding loads at warm-up and "
                                       "reload, by whether the on-disk cache held them", ["result"], registry=target)
        self.reloads = Counter("task_matcher_reloads", "Reload attempts by result", ["result"], registry=target)
        self.generation = Gauge("task_matcher_catalog_generation", "1 for the catalog generation served (0 for one "
                                "served before)", ["fingerprint", "catalog_fingerprint", "tasks"],
                                registry=target, multiprocess_mode="liveall")
        self.in_flight = Gauge("task_matcher_matches_in_flight", "Matches being computed now", registry=target,
                               multiprocess_mode="livesum")
        self._seen: dict[int, tuple[Matcher, int, int]] = {}
        self._lock = threading.Lock()

    def exposition(self) -> bytes:
        """The text format a Prometheus scrape reads.

        A worker that is starting creates its samples file empty and then sizes it; a scrape that
        reads it in between fails to unpack it, so it is read again a moment later.
        """
        for _ in range(_SCRAPE_ATTEMPTS - 1):
            try:
                return generate_latest(self._registry)
            except struct.error:
                time.sleep(0.05)
        return generate_latest(self._registry)

    def served(self, old: Any, new: Any) -> None:
        """A `matcher.live` swap: the gauge moves to the new generation; its embedding-cache read is counted."""
        if old is not None:
            labels = self._generation_labels(old)
            self.generation.labels(*labels).set(0)
            if not self.multiprocess:
                self.generation.remove(*labels)
            with self._lock:
                self._seen.pop(id(old.matcher), None)
        self.generation.labels(*self._generation_labels(new)).set(1)
        if old is not None:
            self.warmed(new.matcher)

    def warmed(self, matcher: Matcher) -> None:
        """Count the task-embedding cache read of a warm matcher (none without the semantic backstop)."""
        from_cache = matcher.cache_info().embeddings_from_cache
        if from_cache is not None:
            self.embedding_cache.labels("hit" if from_cache else "miss").inc()

    def matched(self, matcher: Matcher, result: TaskMatch, seconds: float) -> None:
        """One match: its engine time, and the fuzzy-cache hits and misses it added."""
        self.match_seconds.labels(result.matcher).observe(seconds)
        info = matcher.cache_info()
        with self._lock:
            _, hits, misses = self._seen.get(id(matcher), (matcher, 0, 0))
            self._seen[id(matcher)] = (matcher, info.fuzzy_hits, info.fuzzy_misses)
        if info.fuzzy_hits > hits:
            self.fuzzy_lookups.labels("hit").inc(info.fuzzy_hits - hits)
        if info.fuzzy_misses > misses:
            self.fuzzy_lookups.labels("miss").inc(info.fuzzy_misses - misses)

    @staticmethod
    def _generation_labels(served: Any) -> tuple[str, str, str]:
        generation = served.generation
        return generation.fingerprint[:16], generation.catalog.fingerprint[:16], str(len(generation.catalog))


def mark_worker_dead(pid: int, folder: Path) -> None:
    """Drop a dead worker's live gauges from the shared folder (its counters stay in the sums)."""
    prometheus_multiprocess.mark_process_dead(pid, path=str(folder))  # type: ignore[no-untyped-call]


class DecisionLog:
    """One JSON line per match on the ``matcher.decisions`` logger (query text only with `log_queries`)."""

    def __init__(self, *, log_queries: bool = False) -> None:
        self.log_queries = log_queries
        self._logger = logging.getLogger(DECISIONS_LOGGER)

    def record(self, query: str, top_k: int, result: TaskMatch, *, seconds: float, generation: str) -> None:
        """Log the decision on `query` (nothing is built when the logger is off)."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        entry: dict[str, Any] = {
            "event": "match", "time": round(time.time(), 3), "pid": os.getpid(), "generation": generation[:16],
            "type": result.type, "matched": result.matched, "matcher": result.matcher,
            "confidence": result.confidence, "ambiguous": result.ambiguous,
            "chosen": None if result.chosen is None else result.chosen.task_id,
            "candidates": [[c.task_id, c.score] for c in result.candidates[:_TOP_LOGGED]],
            "top_k": top_k, "query_chars": len(query), "ms": round(seconds * 1000, 3),
        }
        if self.log_queries:
            entry["query"] = query
        self._logger.info(json.dumps(entry, ensure_ascii=False, sort_keys=True))
