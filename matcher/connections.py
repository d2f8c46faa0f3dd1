"""Connection deadlines for the server: uvicorn's HTTP protocols, with the timeouts they lack.

The server parses HTTP with uvicorn's httptools protocol (llhttp, in C) on uvloop's event loop
by default; ``--http h11`` selects uvicorn's pure-Python h11 protocol instead, with the same
deadlines and error bodies (slower per request, but with no compiled parser).

uvicorn closes a kept-alive connection that stays idle after a response, but nothing else: a
connection that never sends a byte, or sends its request head or body one byte at a time (each
byte cancels the keep-alive timer), stays open for ever, and a few hundred of them exhaust a
worker's file descriptors without a single complete request (authentication never runs, since it
needs the headers). `GuardedHttpToolsProtocol` and `GuardedH11Protocol` give every connection one
deadline at a time:

- **head**: the request line and headers must arrive in full within `header_timeout` seconds,
  counted from the connection's opening or, on a kept-alive connection, from the first byte of
  the next request;
- **body**: the whole body within `body_timeout` seconds of its head, whether or not the app
  reads it (a refused request's body is still on the wire);
- **idle**: between requests, the connection closes after `keep_alive_timeout` seconds.

A deadline is never extended by the bytes that arrive, so a slow sender gains nothing. A request
cut short gets ``408`` with a JSON ``{"detail": ...}`` body before the connection closes; an idle
one is closed silently, as HTTP allows. Malformed requests get uvicorn's 400, but as JSON too, and
so do two that llhttp would let through but h11 refuses, which the httptools protocol checks
itself: an HTTP/1.1 request without a Host header, and a request head larger than
`MAX_HEAD_BYTES` (counted over the reads of an unfinished head; one that began behind pipelined
requests is counted from the next read). While the app computes a response, no deadline runs:
that work is bounded by the app itself.

**Admission.** An app may put an `Admission` in its lifespan state under `ADMISSION_STATE`. The
httptools protocol then asks it about each request as soon as the whole request is in, before the
request's app task runs, and writes the refusal it returns at once (closing the connection). A
refusal then costs one parser callback, however busy the app is: under a burst, every request over
the app's cap is answered in the read that brought it, ahead of the work admitted before it. The
h11 protocol, and a pipelined request (whose answer must wait for the ones before it), leave the
decision to the app.

`LimitedConfig` is uvicorn's `Config` with one of these protocols, the three timeouts and uvicorn's
``auto`` loop (uvloop, which the ``server`` extra installs; asyncio's own loop without it); it is
pickled to worker processes like uvicorn's own, so every worker enforces the same deadlines.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Literal, Protocol, cast

import h11
import uvicorn
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = [
    "ADMISSION_STATE",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_HTTP",
    "DEFAULT_KEEP_ALIVE_TIMEOUT",
    "HTTP_CHOICES",
    "MAX_HEAD_BYTES",
    "Admission",
    "GuardedH11Protocol",
    "GuardedHttpToolsProtocol",
    "LimitedConfig",
    "error_response_bytes",
]

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0
# The largest request head (request line and headers) either protocol accepts: h11's own bound.
MAX_HEAD_BYTES = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
HTTP_CHOICES = ("httptools", "h11")
DEFAULT_HTTP = "httptools"
_INVALID_REQUEST = "Invalid HTTP request received."
# The lifespan-state key under which an app hands the protocol its `Admission`.
ADMISSION_STATE = "task-matcher.admission"
Phase = Literal["head", "body", "idle"]
_log = logging.getLogger(__name__)


def error_response_bytes(status: int, detail: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response with a JSON ``{"detail": ...}`` body and `headers` that closes the
    connection."""
    body = json.dumps({"detail": detail}).encode("utf-8")
    extra = "".join(f"{name.lower()}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n")
    return head.encode("ascii") + body


class Admission(Protocol):
    """An app's say over a request before its task runs (see the module docstring)."""

    def refusal(self, scope: dict[str, Any]) -> bytes | None:
        """The complete response refusing the request of `scope` (method, path, headers and state are
        set), or None to hand it to the app, which may keep a note in ``scope["state"]``."""


def _bad_request_bytes(msg: str) -> bytes:
    """uvicorn's 400 for a request it cannot parse, as JSON."""
    return error_response_bytes(400, f"{msg.rstrip('.')}: the request line or headers are malformed, or larger "
                                     "than the server accepts")


class LimitedConfig(uvicorn.Config):
    """uvicorn's `Config` serving with a guarded protocol (`http`: ``httptools`` or ``h11``) and its
    header, body and keep-alive timeouts."""

    def __init__(self, app: Any, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT,
                 keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT, http: str = DEFAULT_HTTP,
                 **kwargs: Any) -> None:
        for name, value in (("header_timeout", header_timeout), ("body_timeout", body_timeout),
                            ("keep_alive_timeout", keep_alive_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if http not in HTTP_CHOICES:
            raise ValueError(f"http must be one of {', '.join(HTTP_CHOICES)}, got {http!r}")
        protocol = GuardedHttpToolsProtocol if http == "httptools" else GuardedH11Protocol
        super().__init__(app, http=protocol, **kwargs)
        self.header_timeout = float(header_timeout)
        self.body_timeout = float(body_timeout)
        self.keep_alive_timeout = float(keep_alive_timeout)


class _Deadlines:
    """The one-deadline-at-a-time bookkeeping and the connection hooks both protocols share, placed
    before uvicorn's protocol class in their bases; each says what it waits for (`_wanted`) and
    whether part of a request head had arrived (`_head_cut_short`)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None
    cycle: Any  # the request's uvicorn RequestResponseCycle (each protocol has its own class), or None

    def _init_deadlines(self, config: uvicorn.Config) -> None:
        self._timeouts: dict[Phase, float] = {
            "head": float(getattr(config, "header_timeout", DEFAULT_HEADER_TIMEOUT)),
            "body": float(getattr(config, "body_timeout", DEFAULT_BODY_TIMEOUT)),
            "idle": float(getattr(config, "keep_alive_timeout", DEFAULT_KEEP_ALIVE_TIMEOUT)),
        }
        self._phase: Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]  # the protocol class after this mixin
        self._enter("head")  # a new connection owes its first request head at once

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # uvicorn's idle timer, replaced by the "idle" deadline
        self._unset_keepalive_if_required()  # type: ignore[attr-defined]
        self._follow()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's reply to a request it cannot parse, with a JSON body instead of plain text."""
        self.transport.write(_bad_request_bytes(msg))
        self.transport.close()

    def _wanted(self) -> Phase | None:
        """What the connection waits for now: a head, a body, nothing (idle), or None (the app's turn)."""
        raise NotImplementedError

    def _head_cut_short(self) -> bool:
        """Whether part of a request head had arrived when its deadline passed."""
        raise NotImplementedError

    def _cut_short(self, phase: Phase) -> bool:
        """Whether a request was under way when `phase`'s deadline passed (it then gets a 408)."""
        if phase == "head":
            return self._head_cut_short()
        cycle = self.cycle
        return phase == "body" and cycle is not None and not cycle.response_started

    def _abandon(self) -> None:
        """Tell a request's app that its client is gone: receive() returns http.disconnect, sends are dropped."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()

    def _follow(self) -> None:
        """Set the deadline for what the connection waits for now, unless it is already running."""
        wanted = None if self.transport.is_closing() else self._wanted()
        if wanted != self._phase:
            self._enter(wanted)

    def _enter(self, phase: Phase | None) -> None:
        """Start `phase`'s deadline (None: no deadline), replacing the previous one."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            self._deadline = self.loop.call_later(self._timeouts[phase], self._expire, phase)

    def _expire(self, phase: Phase) -> None:
        """Close the connection whose deadline passed, with a 408 when a request was cut short."""
        self._deadline = None
        self._phase = None
        if self.transport.is_closing():
            return
        if self._cut_short(phase):
            what = "head" if phase == "head" else "body"
            self.transport.write(error_response_bytes(
                408, f"the request {what} did not arrive within {self._timeouts[phase]:g} s; the connection is closed"))
        _log.debug("closing a connection from %s: its %s deadline passed", self.client, phase)
        self._abandon()
        self.transport.close()


class GuardedHttpToolsProtocol(_Deadlines, HttpToolsProtocol):
    """uvicorn's httptools protocol with head, body and idle deadlines and a bound on the head's size
    (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._init_deadlines(config)
        # Where the latest request stands: nothing of it yet, its head, its body, or all of it in.
        self._request: Literal["none", "head", "body", "done"] = "none"
        self._requests_begun = 0
        self._head_bytes = 0  # bytes received since the unfinished head began (an upper bound)

    def data_received(self, data: bytes) -> None:
        before, begun = self._request, self._requests_begun
        super().data_received(data)
        if self._request == "head" and not self.transport.is_closing():
            self._head_bytes = self._unfinished_head_bytes(len(data), before, self._requests_begun - begun)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.send_400_response(_INVALID_REQUEST)
        self._follow()

    def _unfinished_head_bytes(self, received: int, before: str, begun: int) -> int:
        """Bytes of the unfinished head so far, never more than it holds: when it began after other
        requests in the same read, where it began is unknown, so it is counted from the next read."""
        if begun == 0:
            return self._head_bytes + received
        return received if begun == 1 and before in ("none", "done") else 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request = "head"
        self._requests_begun += 1

    def on_headers_complete(self) -> None:
        """An HTTP/1.1 request without a Host header is malformed (RFC 9112), as h11 holds and llhttp does
        not: raising here fails the parse, and uvicorn answers with `send_400_response`."""
        self._request = "body"
        if self.parser.get_http_version() == "1.1" and not any(name == b"host" for name, _ in self.headers):
            raise ValueError("an HTTP/1.1 request needs a Host header")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._request = "done"
        super().on_message_complete()
        self._admit()

    def _admit(self) -> None:
        """Ask the app's `Admission`, if it gave one, about the request now in full; write its refusal at
        once, and the app's own answer to the request is dropped."""
        admission: Admission | None = self.app_state.get(ADMISSION_STATE)
        cycle = self.cycle
        if admission is None or cycle is None or cycle.response_started or self.pipeline \
                or self.transport.is_closing():
            return
        refusal = admission.refusal(cast(dict[str, Any], self.scope))
        if refusal is not None:
            self.transport.write(refusal)
            if self.transport.can_write_eof():
                self.transport.write_eof()  # the FIN now, not once the loop reaches the close
            self._abandon()
            self.transport.close()

    def _wanted(self) -> Phase | None:
        if self._request in ("none", "head"):
            return "head" if self._phase == "head" or self._request == "head" else "idle"
        if self._request == "body":
            return "body"
        cycle = self.cycle
        return "idle" if cycle is not None and cycle.response_complete and not self.pipeline else None

    def _head_cut_short(self) -> bool:
        return self._request == "head"


class GuardedH11Protocol(_Deadlines, H11Protocol):
    """uvicorn's h11 protocol with head, body and idle deadlines (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._init_deadlines(config)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def _wanted(self) -> Phase | None:
        state = self.conn.their_state
        if state is h11.IDLE:
            return "head" if self._phase == "head" or self.conn.trailing_data[0] else "idle"
        if state is h11.SEND_BODY:
            return "body"
        return None  # the request is in: the app's turn, bounded by the app

    def _head_cut_short(self) -> bool:
        return bool(self.conn.trailing_data[0])
