"""Hot reload, over real HTTP on loopback: the admin route, SIGHUP, atomic swaps, and every worker under load."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import matcher
from matcher.generation import Generation, GenerationStore
from matcher.live import Live, Served
from matcher.server import GENERATION_HEADER, ServerSettings, create_app, serve_in_background

from .test_observability import samples
from .test_server import MATCHED, ServeProcess, serve_process, wait_for, worker_pids

__all__ = ["serve_process"]  # the fixture, shared with test_server

ADMIN = "admin-secret-key"
API = "api-secret-key"
RECORDS: list[dict[str, Any]] = [
    {"id": "contract-key-fields", "title": "Contract key fields",
     "description": "Extract parties, dates and clauses from contracts.",
     "keywords": {"contract": 1.0, "key fields": 1.0, "clause": 0.8},
     "phrases": ["extract key fields from contracts", "pull the parties and dates out of agreements"]},
    {"id": "invoice-extraction", "title": "Invoice extraction",
     "description": "Extract header fields, line items and totals from vendor invoices.",
     "keywords": {"invoice": 1.0, "line items": 1.0}, "phrases": ["pull totals out of supplier invoices"]},
    {"id": "sentiment-analysis", "title": "Sentiment analysis",
     "description": "Label reviews as positive, negative or neutral.",
     "keywords": {"sentiment": 1.0, "polarity": 0.8}, "phrases": ["are customers happy with our app"]},
]
EXTRA = {"id": "receipt-extraction", "title": "Receipt extraction",
         "description": "Read merchant, date and total from shop receipts.",
         "keywords": {"receipt": 1.0, "merchant": 0.8}, "phrases": ["scan restaurant receipts"]}
CONFIG = matcher.MatcherConfig()  # given, so no generation self-calibrates: the files alone decide


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A catalog file and a config file, both editable by the test."""
    catalog, config = tmp_path / "catalog.json", tmp_path / "config.json"
    catalog.write_text(json.dumps(RECORDS), encoding="utf-8")
    CONFIG.save(config)
    return catalog, config


def ids(body: dict[str, Any]) -> list[str]:
    return [task["id"] for task in body["tasks"]]


def admin_reload(url: str, key: str = ADMIN) -> httpx.Response:
    return httpx.post(f"{url}/v1/admin/reload", headers={"Authorization": f"Bearer {key}"}, timeout=120)


class HeldMatcher(matcher.Matcher):
    """A keyword-only matcher whose matches wait in flight until the test lets them go."""

    def __init__(self, catalog: matcher.Catalog) -> None:
        super().__init__(catalog, semantic=False, config=CONFIG)
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def match(self, query: str, top_k: int = 5, *, tasks: Iterable[str] | None = None,
              categories: Iterable[str] | None = None) -> matcher.TaskMatch:
        self.entered.release()
        assert self.release.wait(60), "the test never released the held match"
        return super().match(query, top_k, tasks=tasks, categories=categories)


@pytest.fixture
def reloadable(files: tuple[Path, Path]) -> Iterator[tuple[str, HeldMatcher, Path]]:
    """An in-process server whose first generation's matcher holds its matches; reloads read `files`."""
    catalog, config = files
    settings = ServerSettings(catalog=catalog, config=config, semantic="off")
    first = settings.load_files()
    held = HeldMatcher(first.catalog)
    live = Live(Served.of(first, held), build=settings.matcher_builder(), load=settings.load_files)
    with serve_in_background(create_app(live, admin_keys=[ADMIN], api_keys=[API])) as url:
        yield url, held, catalog


def test_a_reload_swaps_atomically_and_in_flight_requests_finish_on_the_old_matcher(
        reloadable: tuple[str, HeldMatcher, Path]) -> None:
    url, held, catalog = reloadable
    auth = {"Authorization": f"Bearer {API}"}
    old_answer = matcher.Matcher(matcher.Catalog.from_records(RECORDS), semantic=False, config=CONFIG)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(httpx.post, f"{url}/v1/tasks/match", json={"query": MATCHED, "top_k": 10},
                                headers=auth, timeout=60)
        assert held.entered.acquire(timeout=30)  # the match is inside the old matcher now
        old = httpx.get(f"{url}/v1/tasks", headers=auth)
        catalog.write_text(json.dumps([*RECORDS, EXTRA]), encoding="utf-8")
        reloaded = admin_reload(url)
        assert reloaded.status_code == 200, reloaded.text
        body = reloaded.json()
        assert body["status"] == "reloaded" and body["tasks"] == 4
        assert body["previous"].startswith(old.headers[GENERATION_HEADER])
        new = httpx.get(f"{url}/v1/tasks", headers=auth)
        assert ids(new.json()) == sorted([*ids(old.json()), EXTRA["id"]])  # served before the held match ends
        assert body["generation"].startswith(new.headers[GENERATION_HEADER])
        held.release.set()
        finished = in_flight.result()
    assert finished.status_code == 200
    assert finished.headers[GENERATION_HEADER] == old.headers[GENERATION_HEADER]
    assert finished.json() == old_answer.match(MATCHED, 10).to_dict()  # three candidates: the old catalog
    fresh = httpx.post(f"{url}/v1/tasks/match", json={"query": MATCHED, "top_k": 10}, headers=auth)
    assert len(fresh.json()["candidates"]) == 4
    again = admin_reload(url)
    assert again.json()["status"] == "unchanged"


def test_a_broken_catalog_is_rejected_with_the_loaders_error_and_the_old_one_keeps_serving(
        reloadable: tuple[str, HeldMatcher, Path]) -> None:
    url, held, catalog = reloadable
    held.release.set()
    auth = {"Authorization": f"Bearer {API}"}
    before = httpx.get(f"{url}/v1/tasks", headers=auth)
    broken = [*RECORDS, {"id": "Not-Kebab", "title": "x"}]
    catalog.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(matcher.CatalogError) as loader:
        matcher.load_catalog(catalog)
    refused = admin_reload(url)
    assert refused.status_code == 422
    assert refused.json()["detail"] == (f"reload rejected: {loader.value}; still serving generation "
                                        f"{before.headers[GENERATION_HEADER][:12]}")
    after = httpx.get(f"{url}/v1/tasks", headers=auth)
    assert (after.json(), after.headers[GENERATION_HEADER]) == (before.json(), before.headers[GENERATION_HEADER])
    assert httpx.post(f"{url}/v1/tasks/match", json={"query": MATCHED}, headers=auth).status_code == 200


def test_the_admin_route_takes_admin_keys_only(reloadable: tuple[str, HeldMatcher, Path]) -> None:
    url, held, _ = reloadable
    held.release.set()
    for key in (API, "wrong"):
        response = admin_reload(url, key)
        assert response.status_code == 401
        assert response.json()["detail"] == "invalid admin key"
    assert httpx.post(f"{url}/v1/admin/reload").json()["detail"].startswith("missing admin key")
    assert httpx.get(f"{url}/v1/tasks", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 401
    assert admin_reload(url).status_code == 200


def test_without_admin_keys_there_is_no_admin_route(files: tuple[Path, Path]) -> None:
    catalog, config = files
    app = ServerSettings(catalog=catalog, config=config, semantic="off").build_app({})
    with serve_in_background(app) as url:
        assert admin_reload(url).status_code == 404
        assert "/v1/admin/reload" not in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_admin_keys_are_refused_when_they_cannot_be_separate_or_used(files: tuple[Path, Path]) -> None:
    catalog, config = files
    settings = ServerSettings(catalog=catalog, config=config, semantic="off")
    with pytest.raises(ValueError, match="an admin key must not also be an API key"):
        settings.build_app({"MATCHER_API_KEYS": "same-key", "MATCHER_ADMIN_KEYS": "same-key"})
    with pytest.raises(ValueError, match="MATCHER_ADMIN_KEYS is set but holds no admin key"):
        settings.build_app({"MATCHER_ADMIN_KEYS": " , "})
    with pytest.raises(ValueError, match="admin keys need a server that can reload"):
        create_app(matcher.Matcher(semantic=False), admin_keys=[ADMIN])


def test_the_store_hands_every_reader_the_last_published_generation(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path / "store")
    first = Generation(matcher.Catalog.from_records(RECORDS))
    second = Generation(matcher.Catalog.from_records([*RECORDS, EXTRA]))
    third = Generation(second.catalog, CONFIG)
    with pytest.raises(matcher.CatalogError, match="no catalog generation has been published"):
        store.current()
    for generation in (first, second, third):
        store.publish(generation)
        assert store.current().fingerprint == store.pointer()[0] == generation.fingerprint
    assert len(list(store.folder.glob("generation-*.json"))) == 2  # the current one and the one it replaced


def test_sighup_reloads_a_one_process_server_and_a_broken_file_changes_nothing(
        files: tuple[Path, Path], serve_process: Callable[..., ServeProcess]) -> None:
    catalog, config = files
    server = serve_process("--semantic", "off", "--catalog", str(catalog), "--config", str(config))
    try:
        server.wait_until_ready(timeout=120)
        catalog.write_text(json.dumps([*RECORDS, EXTRA]), encoding="utf-8")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: len(ids(httpx.get(server.url + "/v1/tasks").json())) == 4, 60, "the reload")
        catalog.write_text("[{", encoding="utf-8")
        served = httpx.get(server.url + "/v1/tasks")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload rejected" in server.output, 60, "the rejection in the log")
        after = httpx.get(server.url + "/v1/tasks")
        assert after.headers[GENERATION_HEADER] == served.headers[GENERATION_HEADER]
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert "cannot parse catalog file" in server.output, server.output


def served_generations(url: str) -> dict[int, str]:
    """Worker pid -> generation fingerprint (16 characters) it serves, from the /metrics gauge."""
    text = httpx.get(url + "/metrics", timeout=10).text
    found: dict[int, str] = {}
    for line in text.splitlines():
        if line.startswith("task_matcher_catalog_generation{") and line.endswith(" 1.0"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            found[int(labels["pid"])] = labels["fingerprint"]
    return found


@pytest.mark.slow
def test_every_worker_reloads_under_load_with_no_error_and_nothing_lost(
        files: tuple[Path, Path], tmp_path: Path, serve_process: Callable[..., ServeProcess]) -> None:
    catalog, config = files
    admin_file = tmp_path / "admin-keys"
    admin_file.write_text(f"{ADMIN}\n", encoding="utf-8")
    server = serve_process("--workers", "2", "--semantic", "off", "--catalog", str(catalog), "--config", str(config),
                           "--admin-keys-file", str(admin_file), "--log-level", "info")
    versions = {3: RECORDS, 4: [*RECORDS, EXTRA]}
    expected_lists = {len(records): sorted(r["id"] for r in records) for records in versions.values()}
    outcomes: list[tuple[str, int, str, int]] = []  # (route, status, generation, tasks or candidates)
    errors: list[str] = []
    stop = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                try:  # a new connection each time, so requests reach both workers
                    if number % 2:
                        response = http.get("/v1/tasks", headers={"Connection": "close"})
                        size = len(response.json()["tasks"]) if response.status_code == 200 else -1
                        if response.status_code == 200 and ids(response.json()) != expected_lists[size]:
                            errors.append(f"a task list of neither generation: {ids(response.json())}")
                    else:
                        response = http.post("/v1/tasks/match", json={"query": MATCHED, "top_k": 10},
                                             headers={"Connection": "close"})
                        size = len(response.json()["candidates"]) if response.status_code == 200 else -1
                    outcomes.append(("match" if number % 2 == 0 else "list", response.status_code,
                                     response.headers.get(GENERATION_HEADER, ""), size))
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    try:
        server.wait_until_ready(workers=2, timeout=120)
        pids = worker_pids(server)
        wait_for(lambda: set(served_generations(server.url)) == set(pids), 30, "both workers in /metrics")
        first = set(served_generations(server.url).values())
        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(client, n) for n in range(4)]
            time.sleep(1.0)
            catalog.write_text(json.dumps(versions[4]), encoding="utf-8")
            reloaded = admin_reload(server.url)  # reaches one worker; the other follows the store
            assert reloaded.status_code == 200, reloaded.text
            new = reloaded.json()["generation"][:16]
            wait_for(lambda: served_generations(server.url) == dict.fromkeys(pids, new), 60, "every worker on it")
            time.sleep(1.0)
            catalog.write_text(json.dumps(versions[3]), encoding="utf-8")
            os.kill(server.process.pid, signal.SIGHUP)  # the supervisor publishes; every worker swaps
            wait_for(lambda: served_generations(server.url) == dict.fromkeys(pids, next(iter(first))), 60,
                     "every worker back on the first generation")
            time.sleep(1.0)
            stop.set()
            for future in running:
                future.result()

        def counted() -> float:  # any worker's /metrics sums the samples of both
            return sum(v for labels, v in samples(server.url, "task_matcher_requests_total")
                       if labels["route"] in ("/v1/tasks", "/v1/tasks/match"))

        wait_for(lambda: counted() == len(outcomes), 10, "every request counted in /metrics")
        assert worker_pids(server) == pids  # reloaded in place: no worker was restarted
    finally:
        stop.set()
        code = server.stop()
    assert code == 0, server.output
    assert errors == []
    assert outcomes and all(status == 200 for _, status, _, _ in outcomes), [o for o in outcomes if o[1] != 200]
    by_generation: dict[str, set[int]] = {}
    for _, _, generation, size in outcomes:
        by_generation.setdefault(generation, set()).add(size)
    assert by_generation == {next(iter(first)): {3}, new: {4}}  # each answer is whole, from one generation
    assert "Traceback" not in server.output, server.output
