"""Connection deadlines and uvicorn's own error replies, on loopback with real sockets.

Every wait here is bounded: a connection that the server fails to close fails its test after a
few seconds instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import matcher
from matcher.connections import HTTP_CHOICES, MAX_HEAD_BYTES
from matcher.server import ServerSettings, create_app, serve_in_background

TIMEOUT = 0.5  # every deadline of the server under test, in seconds
GRACE = 2.5  # how much later than its deadline a connection may close (a loaded machine is slow)
KEY = "connection-test-key"
HEAD = b"POST /v1/tasks/match HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module", params=HTTP_CHOICES)
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A server with short deadlines, once per HTTP protocol: both must behave alike."""
    settings = ServerSettings(header_timeout=TIMEOUT, body_timeout=TIMEOUT, keep_alive_timeout=TIMEOUT,
                              http=request.param)
    with serve_in_background(create_app(matcher.Matcher(semantic=False), api_keys=[KEY]), settings=settings) as base:
        yield base


@dataclass(frozen=True)
class Closed:
    """What the server sent on a connection before it closed it, and after how many seconds."""

    received: bytes
    seconds: float

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of the one response received."""
        head, _, body = self.received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), headers, body


def until_closed(base: str, payload: bytes = b"", *, drip: bytes = b"", every: float = 0.1,
                 limit: float = TIMEOUT + GRACE) -> Closed:
    """Open a connection, send `payload`, then `drip` every `every` seconds until the server closes it.

    Fails when the server still holds the connection after `limit` seconds.
    """
    host, port = base.removeprefix("http://").rsplit(":", 1)
    received = b""
    with socket.create_connection((host, int(port)), timeout=limit) as conn:
        started = time.monotonic()
        conn.sendall(payload)
        conn.settimeout(every)
        while time.monotonic() - started < limit:
            try:
                if drip:
                    conn.sendall(drip)
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return Closed(received, time.monotonic() - started)
            if not chunk:
                return Closed(received, time.monotonic() - started)
            received += chunk
    pytest.fail(f"the server still held the connection after {limit:g} s; it sent {received[:200]!r}")


def assert_closed_at_its_deadline(closed: Closed) -> None:
    assert TIMEOUT * 0.8 <= closed.seconds <= TIMEOUT + GRACE, closed.seconds


def test_a_connection_that_sends_nothing_is_closed_silently(url: str) -> None:
    closed = until_closed(url)
    assert_closed_at_its_deadline(closed)
    assert closed.received == b""


def test_a_head_sent_byte_by_byte_gets_408_at_its_deadline(url: str) -> None:
    closed = until_closed(url, b"GET /healthz HTTP/1.1\r\nHost: test\r\n", drip=b"X")  # each byte extends nothing
    assert_closed_at_its_deadline(closed)
    status, headers, body = closed.response()
    assert (status, headers["content-type"], headers["connection"]) == (408, "application/json", "close")
    assert json.loads(body) == {"detail": f"the request head did not arrive within {TIMEOUT:g} s; "
                                          "the connection is closed"}


def test_a_body_sent_byte_by_byte_gets_408_at_its_deadline(url: str) -> None:
    head = HEAD + f"Authorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n".encode()
    closed = until_closed(url, head + b'{"query": "', drip=b"a")
    assert_closed_at_its_deadline(closed)
    status, _, body = closed.response()
    assert status == 408
    assert json.loads(body)["detail"].startswith(f"the request body did not arrive within {TIMEOUT:g} s")


def test_a_refused_request_cannot_hold_the_connection_with_its_body(url: str) -> None:
    # 401 goes out before the body is read; the rest of the body still has to arrive in time
    closed = until_closed(url, HEAD + b"Content-Length: 100000\r\n\r\n", drip=b"a")
    assert_closed_at_its_deadline(closed)
    status, _, body = closed.response()
    assert status == 401
    assert json.loads(body)["detail"].startswith("missing API key")


def test_an_idle_kept_alive_connection_closes_after_the_keep_alive_timeout(url: str) -> None:
    closed = until_closed(url, b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    assert_closed_at_its_deadline(closed)
    assert closed.response()[0] == 200


def test_the_head_deadline_of_a_kept_alive_connection_starts_at_its_next_request(url: str) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with httpx.Client(base_url=url) as http:
        for _ in range(5):  # one connection, several requests, each well within its deadlines
            assert http.get("/healthz").status_code == 200
            time.sleep(TIMEOUT / 2)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        started = time.monotonic()
        conn.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(TIMEOUT / 2)
        conn.sendall(b"Host: test\r\n\r\n")  # the head is complete in time
        assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert time.monotonic() - started < TIMEOUT + GRACE


def test_the_server_answers_while_slow_connections_wait(url: str) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    holders = [socket.create_connection((host, int(port))) for _ in range(50)]
    try:
        for index, conn in enumerate(holders):
            conn.sendall(b"GET /healthz HTTP/1.1\r\n" if index % 2 else b"")
        with httpx.Client(base_url=url, timeout=5) as http:
            assert http.get("/healthz").status_code == 200
        time.sleep(TIMEOUT + GRACE)
        for conn in holders:  # every one of them was closed by its deadline
            conn.settimeout(1)
            while chunk := conn.recv(65536):
                assert chunk.startswith(b"HTTP/1.1 408 ")
    finally:
        for conn in holders:
            conn.close()


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: test\r\nBad Header Name: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: abc\r\n\r\n",
    b"GET /health z HTTP/1.1\r\nHost: test\r\n\r\n",
    b"POST /v1/tasks/match HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"GET /healthz HTTP/1.1\r\n\r\n",
], ids=["not http", "bad header name", "bad length", "space in target", "two lengths", "no host"])
def test_requests_uvicorn_cannot_parse_get_a_json_400(url: str, request_bytes: bytes) -> None:
    closed = until_closed(url, request_bytes)
    status, headers, body = closed.response()
    assert (status, headers["content-type"]) == (400, "application/json")
    assert json.loads(body)["detail"].startswith("Invalid HTTP request received: ")


def test_a_head_larger_than_the_limit_gets_a_json_400_before_its_deadline(url: str) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1000)  # never ends
    status, headers, body = until_closed(url, head).response()
    assert (status, headers["content-type"]) == (400, "application/json")  # not the head deadline's 408
    assert json.loads(body)["detail"].startswith("Invalid HTTP request received: ")


def test_a_head_within_the_limit_is_served(url: str) -> None:
    closed = until_closed(url, b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES // 2)
                          + b"\r\nConnection: close\r\n\r\n")
    assert closed.response()[0] == 200


def test_pipelined_requests_larger_together_than_the_head_limit_are_all_answered(url: str) -> None:
    one = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"
    count = 2 * MAX_HEAD_BYTES // len(one)
    closed = until_closed(url, one * count)  # then idle until the keep-alive deadline
    assert closed.received.count(b"HTTP/1.1 200 OK\r\n") == count
    assert b" 400 " not in closed.received


@pytest.mark.parametrize("http", HTTP_CHOICES)
def test_the_server_runs_on_uvloop_with_either_protocol(http: str) -> None:
    seen: list[str] = []

    async def report_loop(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append(type(asyncio.get_running_loop()).__module__)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with serve_in_background(report_loop, settings=ServerSettings(http=http)) as base:
        assert httpx.get(base + "/").status_code == 204
    assert seen == ["uvloop"]


def test_the_protocol_must_be_one_uvicorn_guards() -> None:
    from matcher.connections import LimitedConfig

    with pytest.raises(ValueError, match="http must be one of httptools, h11, got 'auto'"):
        LimitedConfig(create_app, http="auto")


def test_timeouts_must_be_positive() -> None:
    from matcher.connections import LimitedConfig

    for bad in (0, -1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="header_timeout must be a positive number of seconds"):
            LimitedConfig(create_app, header_timeout=bad)  # type: ignore[arg-type]
