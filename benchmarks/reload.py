"""Hot reload under load: `task-matcher serve --workers 2` keeps answering while its catalog is reloaded.

Starts the server in a child process with a copy of the bundled catalog and an admin key (once
keyword-only, once with the semantic backstop unless ``--skip-semantic``), sends ``POST
/v1/tasks/match`` (labelled corpus queries) and ``GET /v1/tasks`` from `--concurrency` kept-alive
clients, and meanwhile reloads `--reloads` times, alternately by the admin route and by SIGHUP to
the server, between the catalog and the catalog with one task more. After each reload it waits
until the ``/metrics`` generation gauge shows every worker on the new generation. An error is a
non-200 answer, a transport error, or a task list that belongs to neither catalog. Prints a
Markdown section: errors, requests, reload time until every worker serves the new generation,
and latency quiet against latency while reloading.

    python -m benchmarks.reload
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from matcher import default_catalog
from matcher.metrics import latency_summary

from .load import corpus_queries, machine_facts, server_process

ADMIN_KEY = "benchmark-admin-key"
EXTRA_TASK = {"id": "benchmark-extra-task", "title": "Benchmark extra task",
              "description": "A task added by a reload of the reload benchmark.",
              "keywords": {"reload benchmark": 1.0}, "phrases": ["the reload benchmark added this task"]}
_WORKERS = 2


@dataclass
class Run:
    """One server's run: every answer, and the reload windows."""

    server: str
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (sent at, ms) of good answers
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    generations: dict[str, int] = field(default_factory=dict)
    reloads: list[tuple[str, float, float]] = field(default_factory=list)  # (how, started, seconds to all workers)

    def during_reloads(self) -> list[float]:
        windows = [(start, start + seconds) for _, start, seconds in self.reloads]
        return [ms for sent, ms in self.latencies if any(a <= sent <= b for a, b in windows)]

    def quiet(self) -> list[float]:
        first = min((start for _, start, _ in self.reloads), default=float("inf"))
        return [ms for sent, ms in self.latencies if sent < first]


def served(url: str) -> dict[int, str]:
    """Worker pid -> the generation it serves, from the /metrics gauge."""
    found: dict[int, str] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("task_matcher_catalog_generation{") and line.endswith(" 1.0"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            found[int(labels["pid"])] = labels["fingerprint"]
    return found


def _wait_all_on(url: str, fingerprint: str | None, previous: str, timeout: float = 300) -> str:
    """Until both workers serve `fingerprint` (None: any generation other than `previous`); returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = served(url)
        values = set(now.values())
        if len(now) == _WORKERS and len(values) == 1:
            only = next(iter(values))
            if (fingerprint is None and only != previous) or only == fingerprint:
                return only
        time.sleep(0.05)
    raise TimeoutError(f"the workers did not all reach the new generation within {timeout:g} s: {served(url)}")


async def _load(url: str, queries: Sequence[str], concurrency: int, lists: dict[int, list[str]], run: Run,
                stop: threading.Event) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, limits=limits, timeout=120))
                   for _ in range(concurrency)]

        async def slot(number: int, http: httpx.AsyncClient) -> None:
            issued = number
            while not stop.is_set():
                issued += concurrency
                sent = time.perf_counter()
                run.requests += 1
                try:
                    if issued % 4 == 0:
                        response = await http.get("/v1/tasks")
                        good = response.status_code == 200
                        if good:
                            names = [t["id"] for t in response.json()["tasks"]]
                            good = names == lists.get(len(names))
                    else:
                        response = await http.post("/v1/tasks/match", json={"query": queries[issued % len(queries)]})
                        good = response.status_code == 200 and "candidates" in response.json()
                except httpx.HTTPError as exc:
                    run.errors.append(repr(exc))
                    continue
                if not good:
                    run.errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                run.latencies.append((sent, (time.perf_counter() - sent) * 1000))
                generation = response.headers.get("x-task-matcher-generation", "?")
                run.generations[generation] = run.generations.get(generation, 0) + 1

        await asyncio.gather(*(slot(n, http) for n, http in enumerate(clients)))


def measure(label: str, semantic: str, cache: Path, folder: Path, *, reloads: int, concurrency: int,
            quiet_seconds: float, pause_seconds: float) -> Run:
    """One server: quiet load, then `reloads` reloads under the same load."""
    catalog = folder / "catalog"
    shutil.rmtree(catalog, ignore_errors=True)
    shutil.copytree(Path(default_catalog().source), catalog)
    extra = catalog / "zz-benchmark-extra.json"
    admin = folder / "admin-keys"
    admin.write_text(ADMIN_KEY + "\n", encoding="utf-8")
    base = sorted(task.id for task in default_catalog().list())
    lists = {len(base): base, len(base) + 1: sorted([*base, EXTRA_TASK["id"]])}
    run = Run(label)
    queries = corpus_queries()
    with server_process(semantic, _WORKERS, cache, ("--catalog", str(catalog), "--admin-keys-file", str(admin))) \
            as (url, process):
        current = _wait_all_on(url, None, "")
        stop = threading.Event()
        loader = threading.Thread(target=lambda: asyncio.run(_load(url, queries, concurrency, lists, run, stop)))
        loader.start()
        try:
            time.sleep(quiet_seconds)
            for number in range(reloads):
                if number % 2 == 0:
                    extra.write_text(json.dumps([EXTRA_TASK]), encoding="utf-8")
                else:
                    extra.unlink()
                started = time.perf_counter()
                if number % 2 == 0:
                    how = "admin route"
                    response = httpx.post(url + "/v1/admin/reload", timeout=600,
                                          headers={"Authorization": f"Bearer {ADMIN_KEY}"})
                    response.raise_for_status()
                    target: str | None = response.json()["generation"][:16]
                else:
                    how = "SIGHUP"
                    process.send_signal(signal.SIGHUP)
                    target = None
                current = _wait_all_on(url, target, current)
                run.reloads.append((how, started, time.perf_counter() - started))
                print(f"  {label}: reload {number + 1} by {how}: every worker on {current[:12]} after "
                      f"{run.reloads[-1][2]:.2f} s", file=sys.stderr)
                time.sleep(pause_seconds)
        finally:
            stop.set()
            loader.join()
    return run


def render(runs: Sequence[Run]) -> str:
    """The Markdown table, one column per server."""
    def row(name: str, cells: Sequence[str]) -> str:
        return f"| {name} | " + " | ".join(cells) + " |"

    lines = [row("figure", [r.server for r in runs]), "|---|" + "---|" * len(runs)]
    lines.append(row("**reload under load: errors**", [f"**{len(r.errors)}** of {r.requests} requests" for r in runs]))
    lines.append(row("reloads (admin route / SIGHUP)", [
        f"{sum(h == 'admin route' for h, _, _ in r.reloads)} / {sum(h == 'SIGHUP' for h, _, _ in r.reloads)}"
        for r in runs]))
    lines.append(row("answers per generation", [", ".join(f"{g[:8]}: {n}" for g, n in sorted(r.generations.items()))
                                               for r in runs]))
    lines.append(row("time until every worker serves the new generation, median / max", [
        f"{latency_summary([s for *_, s in r.reloads])[0]:.2f} s / {max(s for *_, s in r.reloads):.2f} s"
        for r in runs]))
    for name, part in (("quiet", Run.quiet), ("while reloading", Run.during_reloads)):
        lines.append(row(f"latency median / p99, {name}", [
            "{:.1f} / {:.1f} ms".format(*latency_summary(part(r))[:2]) for r in runs]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the Markdown section; exit 1 if any request failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reloads", type=int, default=4, help="reloads per server (default 4)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients in flight (default 16)")
    parser.add_argument("--quiet-seconds", type=float, default=5.0, help="load before the first reload (default 5)")
    parser.add_argument("--pause-seconds", type=float, default=2.0, help="load between reloads (default 2)")
    parser.add_argument("--skip-semantic", action="store_true", help="only the keyword-only server")
    args = parser.parse_args(argv)
    facts = machine_facts(_WORKERS, client=False)
    started = time.perf_counter()
    runs = []
    servers = [("keyword-only", "off")] + ([] if args.skip_semantic else [("semantic", "auto")])
    with tempfile.TemporaryDirectory(prefix="task-matcher-reload-") as folder:
        for label, semantic in servers:
            print(f"reload under load: the {label} server ({_WORKERS} workers)...", file=sys.stderr)
            runs.append(measure(label, semantic, Path(folder) / "cache", Path(folder), reloads=args.reloads,
                                concurrency=args.concurrency, quiet_seconds=args.quiet_seconds,
                                pause_seconds=args.pause_seconds))
    print(f"## task-matcher reload under load, {_WORKERS} workers\n")
    print(facts)
    print(f"- server: `task-matcher serve --workers {_WORKERS}` on 127.0.0.1 over a copy of the bundled catalog; "
          f"client: {args.concurrency} kept-alive httpx clients in one process on the same cores (3 matches to 1 "
          f"task list); {args.reloads} reloads alternating between the catalog and the catalog with one task more, "
          "by the admin route and by SIGHUP. A reload builds and warms the new generation in each worker while "
          "the old one serves: the catalog with one task more has no tuned config, so it self-calibrates (and the "
          "semantic server encodes its task texts anew); the way back finds the shipped config\n")
    print(render(runs))
    if any(r.errors for r in runs):
        print("\nerrors (first 5): " + "; ".join(e for r in runs for e in r.errors[:5]))
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
