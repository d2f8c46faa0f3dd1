"""Bounded HTTP load benchmark of `task-matcher serve` on loopback.

Starts the server in a child process (``python -m matcher.server``), once keyword-only and once
with the default semantic backstop, then for each concurrency level sends a bounded number of
``POST /v1/tasks/match`` requests with httpx (async) and prints a markdown table: requests/s,
p50 and p99 latency, errors. Queries come from the labelled corpus and are split by the path
the server answers them on (``matcher == "keyword"`` or ``"semantic"``); a response on the
other path, a non-200 status or a transport error counts as an error.

The load generator shares the machine with the server, so the numbers are for the whole box.
A shared machine's speed drifts by tens of percent within minutes, so every (level, path) is
measured `--rounds` times, the paths of one level back to back within a round: a row reports the
median round, and the keyword path's share of the healthz ceiling is the median of the rounds'
own ratios (each from two measurements seconds apart).

    python -m benchmarks.load                 # one worker
    python -m benchmarks.load --workers 2     # two workers behind one port
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "corpora" / "queries" / "tune.jsonl"
_PACKAGES = ("task-matcher", "fastapi", "starlette", "uvicorn", "httptools", "uvloop", "httpx", "pydantic", "torch",
             "sentence-transformers")
_MAX_QUERIES_PER_PATH = 80


@dataclass(frozen=True)
class Level:
    """The outcome of one concurrency level on one query path."""

    server: str
    concurrency: int
    path: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: tuple[float, ...]
    round: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the successful latencies (nan when there are none)."""
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_server(semantic: str, workers: int, cache_dir: Path, extra: Sequence[str] = ()) -> Iterator[str]:
    """A `task-matcher serve` child process (with `extra` options); yields its URL once /healthz answers ``ok``."""
    with server_process(semantic, workers, cache_dir, extra) as (url, _):
        yield url


@contextmanager
def server_process(semantic: str, workers: int, cache_dir: Path,
                   extra: Sequence[str] = ()) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`running_server`, yielding the child process too (to signal it)."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TASK_MATCHER_CACHE": str(cache_dir)}
    env.pop("MATCHER_API_KEYS", None)
    command = [sys.executable, "-m", "matcher.server", "--port", str(port), "--semantic", semantic,
               "--workers", str(workers), "--log-level", "warning", *extra]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, process, log)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: IO[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json().get("status") == "ok":
                return
        except (httpx.TransportError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"server did not become ready within {timeout:g} s")
        time.sleep(0.2)


def corpus_queries() -> list[str]:
    """Distinct request texts of the tuning corpus, in file order."""
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(json.loads(line)["text"] for line in lines if line.strip()))


def split_by_path(url: str, queries: Sequence[str]) -> dict[str, list[str]]:
    """Ask the server once per query (this also warms it) and group the queries by answering path."""
    paths: dict[str, list[str]] = {"keyword": [], "semantic": [], "healthz": ["-"]}
    with httpx.Client(base_url=url, timeout=60) as http:
        for query in queries:
            if all(len(paths[name]) >= _MAX_QUERIES_PER_PATH for name in ("keyword", "semantic")):
                break
            body = http.post("/v1/tasks/match", json={"query": query}).raise_for_status().json()
            found = paths.setdefault(body["matcher"], [])
            if len(found) < _MAX_QUERIES_PER_PATH:
                found.append(query)
    return paths


async def _load(url: str, queries: Sequence[str], path: str, concurrency: int, total: int,
                time_cap: float) -> tuple[int, int, float, list[float]]:
    """Send up to `total` requests with `concurrency` in flight; stop early after `time_cap` s.

    Each in-flight slot has its own one-connection client, created and connected before the
    clock starts: one shared httpx pool of 64 connections costs the load generator more CPU
    than the server spends per request. Path ``healthz`` sends ``GET /healthz`` instead: the
    ceiling of this client and the HTTP stack.
    """
    latencies: list[float] = []
    errors = 0
    issued = 0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, limits=limits, timeout=60))
                   for _ in range(concurrency)]
        await asyncio.gather(*(http.get("/healthz") for http in clients))
        started = time.perf_counter()
        deadline = started + time_cap

        async def slot(http: httpx.AsyncClient) -> None:
            nonlocal errors, issued
            while issued < total and time.perf_counter() < deadline:
                query = queries[issued % len(queries)]
                issued += 1
                sent = time.perf_counter()
                try:
                    if path == "healthz":
                        response = await http.get("/healthz")
                        ok = response.status_code == 200
                    else:
                        response = await http.post("/v1/tasks/match", json={"query": query})
                        ok = response.status_code == 200 and response.json().get("matcher") == path
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    errors += 1

        await asyncio.gather(*(slot(http) for http in clients))
        elapsed = time.perf_counter() - started
    return issued, errors, elapsed, latencies


def measure(server: str, url: str, queries: dict[str, list[str]], paths: Sequence[str],
            levels: Sequence[int], total: int, time_cap: float, *, rounds: int = 1) -> list[Level]:
    """One row per (round, concurrency level, query path) against the server at `url`; within a
    round the paths of a level run back to back, so their ratio sees one machine speed."""
    runnable = []
    for path in paths:
        if queries.get(path):
            runnable.append(path)
        else:
            print(f"  ({server}: no corpus query is answered on the {path} path; skipped)", file=sys.stderr)
    rows = []
    for round_ in range(rounds):
        for concurrency in levels:
            for path in runnable:
                sent, errors, elapsed, latencies = asyncio.run(
                    _load(url, queries[path], path, concurrency, total, time_cap))
                row = Level(server, concurrency, path, sent, errors, elapsed, tuple(latencies), round_)
                print(f"  round {round_ + 1}/{rounds} {server:<13} c={concurrency:<3} {path:<8} "
                      f"{row.rate:7.1f} req/s", file=sys.stderr)
                rows.append(row)
    return rows


def _groups(rows: Sequence[Level]) -> dict[tuple[str, int, str], list[Level]]:
    """Rows by (server, concurrency, path), in first-seen order."""
    grouped: dict[tuple[str, int, str], list[Level]] = {}
    for row in rows:
        grouped.setdefault((row.server, row.concurrency, row.path), []).append(row)
    return grouped


def package_versions(names: Sequence[str]) -> list[str]:
    """``"name version"`` of each installed package, ``"name (not installed)"`` of the others."""
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return found


def machine_facts(workers: int, *, client: bool = True) -> str:
    """Cores, CPU, Python and package versions (with `client`, the load client too), as markdown bullet lines."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    versions = package_versions(_PACKAGES)
    lines = [
        f"- cores: {os.cpu_count()} logical, {usable} usable; CPU: {cpu}; load average at start {load}",
        f"- Python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"- {', '.join(versions)}",
    ]
    if client:
        lines.append(f"- server: `python -m matcher.server --workers {workers}` (uvicorn, its httptools protocol, "
                     f"{'uvloop' if find_spec('uvloop') else 'asyncio'} loop) on 127.0.0.1; "
                     "client: httpx.AsyncClient (one connection per in-flight request) in one process on the "
                     "same cores; the `healthz` rows are the ceiling of that client and the HTTP stack")
    return "\n".join(lines)


def render(rows: Sequence[Level]) -> str:
    """The markdown results table: per (server, level, path) the median round's requests/s and the
    range over rounds; requests, errors and latency percentiles pooled over the rounds."""
    lines = ["| server | concurrency | path | rounds | requests | errors | requests/s (median round) | "
             "range over rounds | p50 ms | p99 ms |",
             "|---|---:|---|---:|---:|---:|---:|---|---:|---:|"]
    for (server, concurrency, path), group in _groups(rows).items():
        rates = [row.rate for row in group]
        pooled = Level(server, concurrency, path, sum(row.requests for row in group),
                       sum(row.errors for row in group), sum(row.seconds for row in group),
                       tuple(latency for row in group for latency in row.latencies_ms))
        lines.append(f"| {server} | {concurrency} | {path} | {len(group)} | {pooled.requests} | {pooled.errors} | "
                     f"{statistics.median(rates):.1f} | {min(rates):.0f}-{max(rates):.0f} | "
                     f"{pooled.percentile(50):.1f} | {pooled.percentile(99):.1f} |")
    return "\n".join(lines)


def keyword_share_of_ceiling(rows: Sequence[Level]) -> str:
    """The keyword-only server's keyword path as a share of its healthz ceiling, level by level:
    the median over rounds of each round's keyword rate / healthz rate (measured back to back)."""
    rate = {(row.server, row.round, row.concurrency, row.path): row.rate for row in rows}
    parts = []
    for concurrency in sorted({row.concurrency for row in rows if row.server == "keyword-only"}):
        pairs = [(rate[("keyword-only", round_, c, "keyword")], ceiling)
                 for (server, round_, c, path), ceiling in sorted(rate.items())
                 if server == "keyword-only" and c == concurrency and path == "healthz" and ceiling > 0
                 and ("keyword-only", round_, c, "keyword") in rate]
        if not pairs:
            continue
        shares = [keyword / ceiling for keyword, ceiling in pairs]
        if len(pairs) == 1:
            parts.append(f"c = {concurrency}: {pairs[0][0]:.0f} / {pairs[0][1]:.0f} rps = **{shares[0]:.0%}**")
        else:
            rounds = ", ".join(f"{share:.0%}" for share in shares)
            parts.append(f"c = {concurrency}: **{statistics.median(shares):.0%}** (rounds: {rounds})")
    return "Keyword path as a share of the healthz ceiling, same run: " + "; ".join(parts) if parts else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the machine facts and the table; exit 1 if any request failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests per level (default 2000: shorter levels last under a second and are noisy)")
    parser.add_argument("--time-cap", type=float, default=20.0,
                        help="seconds per level before stopping early (default 20)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels (default 1,16,64)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times each level is measured, paths back to back within a round (default 3)")
    parser.add_argument("--skip-semantic", action="store_true", help="only the keyword-only server")
    args = parser.parse_args(argv)
    levels = [int(part) for part in args.concurrency.split(",") if part.strip()]
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    queries = corpus_queries()
    facts = machine_facts(args.workers)  # before the load, so the load average is the machine's own
    started = time.perf_counter()
    rows: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="task-matcher-cache-") as cache:
        servers: list[tuple[str, str, tuple[str, ...]]] = [("keyword-only", "off", ("healthz", "keyword"))]
        if not args.skip_semantic:
            servers.append(("semantic", "auto", ("keyword", "semantic")))
        for label, semantic, paths in servers:
            print(f"starting the {label} server ({args.workers} worker(s))...", file=sys.stderr)
            with running_server(semantic, args.workers, Path(cache)) as url:
                by_path = split_by_path(url, queries)
                rows.extend(measure(label, url, by_path, paths, levels, args.requests, args.time_cap,
                                     rounds=args.rounds))
    print(f"## task-matcher HTTP load, {args.workers} worker(s)\n")
    print(facts)
    print(f"- {args.requests} requests per level and round (capped at {args.time_cap:g} s), {args.rounds} rounds "
          f"(each level's paths back to back), up to {_MAX_QUERIES_PER_PATH} distinct corpus queries per path, "
          "cycled\n")
    print(render(rows))
    ratio = keyword_share_of_ceiling(rows)
    if ratio:
        print(f"\n{ratio}")
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    return 1 if any(row.errors for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
