"""The server under attack: normal-request latency while attackers run, against the same server quiet.

Starts `task-matcher serve` (keyword-only, one worker, default limits) in a child process, then:

1. **quiet**: normal ``POST /v1/tasks/match`` requests (labelled corpus queries), one every
   `--pace` seconds on one kept-alive connection, for `--quiet-seconds`;
2. **under attack**: the same, for `--attack-seconds`, while another process attacks the server:
   amplification clients (each sends, once a second, the costliest
   4,096-character inputs: fresh unknown words for the fuzzy repair, text that NFKC normalization
   expands 18-fold) and slow-connection clients (connections that send nothing, a request head a
   byte at a time, or a body a byte at a time, each reopened as soon as the server closes it);
3. **over capacity**: a server with the default cap of 64 matches in flight (the semantic one when
   the model is installed: its requests are the slow ones), kept at its cap by 80 clients while
   further matches arrive, then hit by bursts of 256 matches at once; how fast the requests over
   the cap get their 503;
4. **cost per input**: in this process, the CPU time of one match of each attack input against
   a plain 4,096-character ASCII query, cold caches (fresh words every time).

Prints a Markdown section with the medians and the ratios, each against its target: attack
median within 3x of the quiet one, 503s under 50 ms, no input over 20x the ASCII query's cost.
Clients talk raw HTTP/1.1 over sockets, so the client's own cost stays small beside the server's;
all of it shares the machine's cores with the server.

    python -m benchmarks.attack
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import selectors
import socket
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .load import corpus_queries, machine_facts, running_server

ASCII_QUERY = ("extract invoice totals from vendor bills and read the line items of each one " * 60)[:4096]
LIMIT = 4096
TARGET_RATIO = 3.0
TARGET_REFUSAL_MS = 50.0
TARGET_COST_RATIO = 20.0
_RNG = random.Random(20260101)


def fresh_unknown_words() -> str:
    """4,096 characters of words no catalog knows, new every call: every one a cold fuzzy lookup."""
    words: list[str] = []
    while sum(len(w) + 1 for w in words) <= LIMIT:
        words.append("".join(_RNG.choice(string.ascii_lowercase) for _ in range(_RNG.randint(5, 12))))
    return " ".join(words)[:LIMIT]


def nfkc_expanding() -> str:
    """A ligature that NFKC expands 18-fold into four words, as much of it as the limits let through."""
    return "\ufdfa" * 455


def mixed() -> str:
    """Fresh unknown words and expanding ligatures together."""
    return (fresh_unknown_words()[:2000] + " " + "\ufdfa" * 200)[:LIMIT]


ATTACK_INPUTS: dict[str, Callable[[], str]] = {
    "fresh unknown words (4,096 chars)": fresh_unknown_words,
    "NFKC-expanding ligatures (455 x U+FDFA)": nfkc_expanding,
    "both mixed": mixed,
}


def _request(path: str, body: bytes, *, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + connection + b"\r\n" + body


def _match_request(query: str, *, close: bool = False) -> bytes:
    return _request("/v1/tasks/match", json.dumps({"query": query}).encode(), close=close)


def _read_response(sock: socket.socket, buffered: bytes = b"") -> tuple[int, dict[str, str], bytes, bytes]:
    """One HTTP/1.1 response from `sock`: status, headers, body, and bytes left over."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-body")
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length], rest[length:]


def paced_latencies(host: str, port: int, queries: Sequence[str], seconds: float,
                    pace: float) -> tuple[list[float], int]:
    """Send one normal match every `pace` seconds for `seconds` on one kept-alive connection.

    Returns the latencies (ms) of the 200 responses and the count of anything else. A connection
    the server closes (its keep-alive deadline) is reopened outside the timed span.
    """
    latencies: list[float] = []
    errors = 0
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        deadline = time.monotonic() + seconds
        issued = 0
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            payload = _match_request(queries[issued % len(queries)])
            issued += 1
            started = time.perf_counter()
            try:
                sock.sendall(payload)
                status, _, _, _ = _read_response(sock)
            except OSError:
                errors += 1
                sock.close()
                sock = socket.create_connection((host, port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                continue
            if status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors += 1
            next_at += pace
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        sock.close()
    return latencies, errors


@dataclass
class AttackStats:
    """What the attackers saw: per kind of slow connection, how long the server let each stay open."""

    held_seconds: dict[str, list[float]] = field(default_factory=dict)
    amplification: list[tuple[int, float]] = field(default_factory=list)


async def _slow_connection(host: str, port: int, kind: str, stop_at: float, stats: AttackStats) -> None:
    """One attacker: reopen a connection of `kind` whenever the server closes it, until `stop_at`."""
    head = {"idle": b"",
            "slow head": b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: ",
            "slow body": b"POST /v1/tasks/match HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                         b'Content-Length: 10000\r\n\r\n{"query": "'}[kind]
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        opened = time.monotonic()
        closed_by_server = False
        try:
            writer.write(head)
            while time.monotonic() < stop_at:
                if kind != "idle":
                    writer.write(b"a")
                    await writer.drain()
                try:
                    if not await asyncio.wait_for(reader.read(65536), 0.5):
                        closed_by_server = True
                        break
                except asyncio.TimeoutError:
                    continue
                # a 408 arrived: read on until the close that follows it
        except (ConnectionError, OSError):
            closed_by_server = True
        finally:
            writer.close()
        if closed_by_server:
            stats.held_seconds.setdefault(kind, []).append(time.monotonic() - opened)


async def _amplifier(host: str, port: int, stop_at: float, stats: AttackStats, offset: float) -> None:
    """One attacker sending a costly input once a second, each on a new connection."""
    await asyncio.sleep(offset)
    makers = list(ATTACK_INPUTS.values())
    sent = 0
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_match_request(makers[sent % len(makers)](), close=True))
            response = await reader.read()  # until the server closes
            writer.close()
            status = int(response.split(b" ", 2)[1]) if response else 0
        except (OSError, ValueError, IndexError):
            status = 0
        stats.amplification.append((status, (time.perf_counter() - started) * 1000))
        sent += 1
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))


async def _attack(host: str, port: int, seconds: float, slow: int, amplifiers: int) -> AttackStats:
    stats = AttackStats()
    stop_at = time.monotonic() + seconds
    tasks = [_slow_connection(host, port, kind, stop_at, stats)
             for kind in ("idle", "slow head", "slow body") for _ in range(slow)]
    tasks += [_amplifier(host, port, stop_at, stats, i / max(amplifiers, 1)) for i in range(amplifiers)]
    await asyncio.gather(*tasks)
    return stats


def _attack_process(host: str, port: int, seconds: float, slow: int, amplifiers: int, out: str) -> None:
    stats = asyncio.run(_attack(host, port, seconds, slow, amplifiers))
    Path(out).write_text(json.dumps({"held": stats.held_seconds, "amplification": stats.amplification}))


def _complete(response: bytes) -> bool:
    """Whether `response` holds a whole HTTP response: its head and the Content-Length bytes of body."""
    head, separator, body = response.partition(b"\r\n\r\n")
    if not separator:
        return False
    length = next((int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), 0)
    return len(body) >= length


def _burst(host: str, port: int, size: int, bursts: int, queries: Sequence[str]) -> list[tuple[int, float, bool]]:
    """`bursts` times, `size` matches sent at the same moment on connections opened beforehand.

    Returns (status, ms from the burst's start to the whole response by its Content-Length, as an
    HTTP client reads it, Retry-After sent) per request: the server admits up to its cap, and every
    request beyond it is an over-capacity request. One thread writes every request, then waits on
    all the sockets at once with a selector, so the client adds microseconds per response, not an
    event loop's task switches.
    """
    results: list[tuple[int, float, bool]] = []
    for number in range(bursts):
        connections = [socket.create_connection((host, port)) for _ in range(size)]
        payloads = [_match_request(queries[(number * size + i) % len(queries)], close=True) for i in range(size)]
        time.sleep(0.5)  # the server has accepted them all
        with selectors.DefaultSelector() as selector:
            received: dict[socket.socket, list[bytes]] = {}
            for conn in connections:
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
                received[conn] = []
            started = time.perf_counter()
            for conn, payload in zip(connections, payloads, strict=True):
                conn.sendall(payload)  # a few hundred bytes: the socket buffer takes it at once
            done: dict[socket.socket, float] = {}
            while len(done) < size:
                ready = selector.select(timeout=60)
                if not ready:
                    raise RuntimeError(f"{size - len(done)} burst requests unanswered after 60 s")
                for key, _ in ready:
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    try:
                        chunk = conn.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    received[conn].append(chunk)
                    if chunk and not _complete(b"".join(received[conn])):
                        continue
                    done[conn] = (time.perf_counter() - started) * 1000
                    selector.unregister(conn)
        for conn in connections:
            conn.close()
            head = b"".join(received[conn]).split(b"\r\n\r\n", 1)[0].lower()
            status = int(head.split(b" ", 2)[1]) if head else 0
            results.append((status, done[conn], b"\r\nretry-after: " in head))
        time.sleep(1.0)
    return results


async def _at_capacity(host: str, port: int, holders: int, seconds: float, pace: float,
                      queries: Sequence[str]) -> tuple[list[tuple[int, float, bool]], int]:
    """Requests that arrive while the server is at its cap: (status, ms, Retry-After sent) of each.

    `holders` clients, more than the cap, keep matches in flight back to back, so the cap stays
    full; like well-behaved clients, those refused wait the Retry-After they are sent. Meanwhile a
    probe sends a match every `pace` seconds, each on a new connection: the requests timed.
    Returns the probes' outcomes and how many matches the holders got answered.
    """
    stop_at = time.monotonic() + seconds
    probes: list[tuple[int, float, bool]] = []
    answered = 0

    async def send(query: str) -> tuple[int, float, float]:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(_match_request(query, close=True))
        response = await reader.read()
        writer.close()
        head = response.split(b"\r\n\r\n", 1)[0].lower()
        status = int(head.split(b" ", 2)[1]) if head else 0
        retry = next((float(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.startswith(b"retry-after:")), -1.0)
        return status, (time.perf_counter() - started) * 1000, retry

    async def holder(number: int) -> None:
        nonlocal answered
        while time.monotonic() < stop_at:
            try:
                status, _, retry = await send(queries[number % len(queries)])
            except OSError:
                continue
            answered += status == 200
            number += holders
            if status == 503:
                await asyncio.sleep(max(retry, 0.0))

    async def one_probe(query: str) -> None:
        try:
            status, ms, retry = await send(query)
            probes.append((status, ms, retry >= 0))
        except OSError:
            probes.append((0, float("nan"), False))

    async def probe() -> None:
        await asyncio.sleep(2.0)  # the holders fill the cap first
        sent: list[asyncio.Task[None]] = []
        next_at = time.monotonic()
        while time.monotonic() < stop_at:
            sent.append(asyncio.create_task(one_probe(queries[len(sent) % len(queries)])))  # open loop
            next_at += pace
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*sent)

    await asyncio.gather(probe(), *(holder(i) for i in range(holders)))
    return probes, answered


def input_costs(repeats: int, semantic: bool) -> list[tuple[str, str, float, float]]:
    """(path, input, median CPU ms, ratio to the ASCII query) per attack input, cold caches each time."""
    import matcher

    rows = []
    for label, choice in (("keyword", False), ("semantic", True)):
        if choice and not semantic:
            continue
        if choice:
            import torch

            torch.set_num_threads(1)  # as the server runs it; CPU time then counts one thread's work
        engine = matcher.Matcher(semantic=choice)
        engine.warm_up()

        def cost(make: Callable[[], str], engine: matcher.Matcher = engine) -> float:
            spent = []
            for _ in range(repeats):
                query = make()
                started = time.process_time()
                engine.match(query)
                spent.append((time.process_time() - started) * 1000)
            return statistics.median(spent)

        base = cost(lambda: ASCII_QUERY)
        rows.append((label, "plain 4,096-character ASCII query", base, 1.0))
        for name, make in ATTACK_INPUTS.items():
            spent = cost(make)
            rows.append((label, name, spent, spent / base))
    return rows


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))] if ordered else float("nan")


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its Markdown section; exit 1 if a normal request failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quiet-seconds", type=float, default=10.0, help="quiet phase length (default 10)")
    parser.add_argument("--attack-seconds", type=float, default=25.0,
                        help="attack phase length (default 25: longer than the 10 s header timeout, so "
                             "slow connections are closed and reopened during it)")
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between normal requests (default 0.05)")
    parser.add_argument("--slow", type=int, default=200,
                        help="slow connections of each kind: idle, slow head, slow body (default 200)")
    parser.add_argument("--amplifiers", type=int, default=4, help="amplification clients at 1 request/s (default 4)")
    parser.add_argument("--burst", type=int, default=256, help="concurrent matches per burst (default 256)")
    parser.add_argument("--bursts", type=int, default=5, help="bursts in the over-capacity phase (default 5)")
    parser.add_argument("--holders", type=int, default=80,
                        help="clients that keep the server at its cap of 64 (default 80)")
    parser.add_argument("--probe-pace", type=float, default=0.02,
                        help="seconds between requests sent to the server at its cap (default 0.02)")
    parser.add_argument("--capacity-seconds", type=float, default=12.0,
                        help="length of the at-capacity run (default 12)")
    parser.add_argument("--repeats", type=int, default=15, help="matches per input in the cost table (default 15)")
    parser.add_argument("--skip-semantic", action="store_true",
                        help="no model: a keyword-only server for the bursts, the keyword path in the cost table")
    args = parser.parse_args(argv)
    facts = machine_facts(1, client=False)
    queries = corpus_queries()[:200]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="task-matcher-cache-") as cache:
        print("starting the keyword-only server...", file=sys.stderr)
        with running_server("off", 1, Path(cache)) as url:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            paced_latencies(host, int(port), queries, 2.0, args.pace)  # warm both sides
            print("quiet phase...", file=sys.stderr)
            quiet, quiet_errors = paced_latencies(host, int(port), queries, args.quiet_seconds, args.pace)
            print("attack phase...", file=sys.stderr)
            out = Path(cache) / "attack.json"
            attacker = multiprocessing.get_context("spawn").Process(
                target=_attack_process, args=(host, int(port), args.attack_seconds, args.slow, args.amplifiers,
                                              str(out)))
            attacker.start()
            time.sleep(2.0)  # let the attackers connect before the clock starts
            attacked, attack_errors = paced_latencies(host, int(port), queries, args.attack_seconds - 3.0, args.pace)
            attacker.join(timeout=args.attack_seconds + 60)
            stats = json.loads(out.read_text()) if out.exists() else {"held": {}, "amplification": []}
            after, after_errors = paced_latencies(host, int(port), queries, args.quiet_seconds / 2, args.pace)
        burst_server = "auto" if not args.skip_semantic else "off"
        print(f"over-capacity phase ({'semantic' if burst_server == 'auto' else 'keyword-only'} server)...",
              file=sys.stderr)
        with running_server(burst_server, 1, Path(cache)) as url:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            paced_latencies(host, int(port), queries, 2.0, args.pace)  # warm it
            burst = _burst(host, int(port), args.burst, args.bursts, queries)
            probes, answered = asyncio.run(_at_capacity(host, int(port), args.holders, args.capacity_seconds,
                                                        args.probe_pace, queries))
    print("input costs...", file=sys.stderr)
    costs = input_costs(args.repeats, semantic=not args.skip_semantic)

    ratio = _median(attacked) / _median(quiet)
    burst_refused = [ms for status, ms, _ in burst if status == 503]
    burst_admitted = [ms for status, ms, _ in burst if status == 200]
    refused = [ms for status, ms, _ in probes if status == 503]
    admitted = [ms for status, ms, _ in probes if status == 200]
    retry_after = all(has for status, _, has in (*burst, *probes) if status == 503)
    worst_cost = max(row[3] for row in costs)
    lines = ["## task-matcher under attack\n", facts,
             "- keyword-only server, 1 worker, default limits (header and body timeouts 10 s, keep-alive 5 s); a "
             f"normal request every {args.pace * 1000:g} ms on one kept-alive connection; attackers in a separate "
             f"process: {args.amplifiers} amplification clients at 1 request/s and {args.slow} slow connections of "
             "each kind\n",
             "| phase | normal requests | failed | median ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for name, values, errors in (("quiet", quiet, quiet_errors), ("under attack", attacked, attack_errors),
                                 ("quiet again", after, after_errors)):
        lines.append(f"| {name} | {len(values)} | {errors} | {_median(values):.2f} | {_p99(values):.2f} |")
    lines.append(f"\nMedian under attack / quiet median: **{ratio:.2f}x** (target at most {TARGET_RATIO:g}x: "
                 f"{_verdict(ratio <= TARGET_RATIO)}).\n")
    lines += ["| slow connection | closed by the server | median seconds held | longest |", "|---|---:|---:|---:|"]
    for kind in ("idle", "slow head", "slow body"):
        held = stats["held"].get(kind, [])
        lines.append(f"| {kind} | {len(held)} | {_median(held):.1f} | {max(held, default=float('nan')):.1f} |")
    amplified = stats["amplification"]
    amplified_ok = [ms for status, ms in amplified if status == 200]
    lines.append(f"\nAmplification requests: {len(amplified)} sent, {len(amplified_ok)} answered 200, median "
                 f"{_median(amplified_ok):.1f} ms each, end to end.\n")
    kind = "semantic" if burst_server == "auto" else "keyword-only"
    lines += [f"Over capacity, at a {kind} server with the default `--max-concurrency` of 64 matches in flight. "
              f"*At the cap*: {args.holders} clients keep matches in flight back to back (refused ones wait their "
              f"Retry-After; {answered} matches answered) while a further match arrives every "
              f"{args.probe_pace * 1000:g} ms on a new connection, for {args.capacity_seconds:g} s. *Burst*: "
              f"{args.bursts} times, {args.burst} matches written at the same moment on connections opened "
              "beforehand, timed from that moment, so the later ones include the server's "
              "work on those before them:\n",
              "| run | answer | count | median ms | p99 ms |", "|---|---|---:|---:|---:|",
              f"| at the cap | 503 with Retry-After | {len(refused)} | {_median(refused):.1f} | {_p99(refused):.1f} |",
              f"| at the cap | 200 (a slot was free) | {len(admitted)} | {_median(admitted):.1f} | "
              f"{_p99(admitted):.1f} |",
              f"| burst | 503 with Retry-After | {len(burst_refused)} | {_median(burst_refused):.1f} | "
              f"{_p99(burst_refused):.1f} |",
              f"| burst | 200 (admitted) | {len(burst_admitted)} | {_median(burst_admitted):.1f} | "
              f"{_p99(burst_admitted):.1f} |",
              f"\nAt the cap, a refused request's 503 takes {_median(refused):.1f} ms (median; p99 "
              f"{_p99(refused):.1f} ms; target under {TARGET_REFUSAL_MS:g} ms: "
              f"{_verdict(_median(refused) < TARGET_REFUSAL_MS)}); every 503 carried Retry-After: "
              f"{'yes' if retry_after else 'no'}. In a burst, the median 503 takes {_median(burst_refused):.1f} ms "
              f"(target under {TARGET_REFUSAL_MS:g} ms: {_verdict(_median(burst_refused) < TARGET_REFUSAL_MS)}).\n",
              f"Cost of one match per input, CPU time in this process, median of {args.repeats}, cold caches:\n",
              "| path | input | CPU ms | x the ASCII query |", "|---|---|---:|---:|"]
    lines += [f"| {path} | {name} | {spent:.2f} | {share:.1f} |" for path, name, spent, share in costs]
    lines.append(f"\nCostliest input: {worst_cost:.1f}x the ASCII query (target at most {TARGET_COST_RATIO:g}x: "
                 f"{_verdict(worst_cost <= TARGET_COST_RATIO)}).")
    lines.append(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    print("\n".join(lines))
    return 1 if quiet_errors or attack_errors or after_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
