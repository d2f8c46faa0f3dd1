"""Connection deadlines for the server: uvicorn's h11 protocol, with the timeouts it lacks.

uvicorn closes a kept-alive connection that stays idle after a response, but nothing else: a
connection that never sends a byte, or sends its request head or body one byte at a time (each
byte cancels the keep-alive timer), stays open for ever, and a few hundred of them exhaust a
worker's file descriptors without a single complete request (authentication never runs, since it
needs the headers). `GuardedH11Protocol` gives every connection one deadline at a time:

- **head**: the request line and headers must arrive in full within `header_timeout` seconds,
  counted from the connection's opening or, on a kept-alive connection, from the first byte of
  the next request;
- **body**: the whole body within `body_timeout` seconds of its head, whether or not the app
  reads it (a refused request's body is still on the wire);
- **idle**: between requests, the connection closes after `keep_alive_timeout` seconds.

A deadline is never extended by the bytes that arrive, so a slow sender gains nothing. A request
cut short gets ``408`` with a JSON ``{"detail": ...}`` body before the connection closes; an idle
one is closed silently, as HTTP allows. Malformed requests get uvicorn's 400, but as JSON too.
While the app computes a response, no deadline runs: that work is bounded by the app itself.

`LimitedConfig` is uvicorn's `Config` with this protocol and the three timeouts; it is pickled
to worker processes like uvicorn's own, so every worker enforces the same deadlines.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import math
from typing import Any, Literal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEP_ALIVE_TIMEOUT",
    "GuardedH11Protocol",
    "LimitedConfig",
    "error_response_bytes",
]

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0
Phase = Literal["head", "body", "idle"]
_log = logging.getLogger(__name__)


def error_response_bytes(status: int, detail: str) -> bytes:
    """A complete HTTP/1.1 response with a JSON ``{"detail": ...}`` body that closes the connection."""
    body = json.dumps({"detail": detail}).encode("utf-8")
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class LimitedConfig(uvicorn.Config):
    """uvicorn's `Config` serving with `GuardedH11Protocol` and its header, body and keep-alive timeouts."""

    def __init__(self, app: Any, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT,
                 keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT, **kwargs: Any) -> None:
        for name, value in (("header_timeout", header_timeout), ("body_timeout", body_timeout),
                            ("keep_alive_timeout", keep_alive_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        super().__init__(app, http=GuardedH11Protocol, **kwargs)
        self.header_timeout = float(header_timeout)
        self.body_timeout = float(body_timeout)
        self.keep_alive_timeout = float(keep_alive_timeout)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with head, body and idle deadlines (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._timeouts: dict[Phase, float] = {
            "head": float(getattr(config, "header_timeout", DEFAULT_HEADER_TIMEOUT)),
            "body": float(getattr(config, "body_timeout", DEFAULT_BODY_TIMEOUT)),
            "idle": float(getattr(config, "keep_alive_timeout", DEFAULT_KEEP_ALIVE_TIMEOUT)),
        }
        self._phase: Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter("head")  # a new connection owes its first request head at once

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._unset_keepalive_if_required()  # uvicorn's idle timer: replaced by the "idle" deadline
        self._follow()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's reply to a request h11 cannot parse, with a JSON body instead of plain text."""
        self.transport.write(error_response_bytes(
            400, f"{msg.rstrip('.')}: the request line or headers are malformed, or larger than the server "
                 "accepts"))
        self.transport.close()

    def _follow(self) -> None:
        """Set the deadline for what the connection waits for now: a head, a body, or nothing (idle)."""
        if self.transport.is_closing():
            self._enter(None)
            return
        state = self.conn.their_state
        wanted: Phase | None
        if state is h11.IDLE:
            wanted = "head" if self._phase == "head" or self.conn.trailing_data[0] else "idle"
        elif state is h11.SEND_BODY:
            wanted = "body"
        else:  # the request is in: the app's turn, bounded by the app
            wanted = None
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
        cycle = self.cycle
        detail = None
        if phase == "head" and self.conn.trailing_data[0]:  # part of a head arrived
            detail = f"the request head did not arrive within {self._timeouts['head']:g} s"
        elif phase == "body" and cycle is not None and not cycle.response_started:
            detail = f"the request body did not arrive within {self._timeouts['body']:g} s"
        if detail is not None:
            self.transport.write(error_response_bytes(408, f"{detail}; the connection is closed"))
        _log.debug("closing a connection from %s: its %s deadline passed", self.client, phase)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() returns http.disconnect, its sends are dropped
            cycle.message_event.set()
        self.transport.close()
