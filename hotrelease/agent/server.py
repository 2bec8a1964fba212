"""The agent's HTTP server: uvicorn's httptools protocol, plus the bounds uvicorn lacks.

uvicorn bounds nothing before a request reaches the app: httptools has no header size limit
(uvicorn's `h11_max_incomplete_event_size` applies to its h11 protocol only), nothing times
a request head or body, a connection that never sends a byte is kept forever, and
`limit_concurrency` answers 503 only once a request's headers are in, so idle connections
still take every file descriptor. `GuardedProtocol` adds, per connection
(`[agent]` keys, defaults in `config.HttpLimits`):

- idle: nothing received for keep_alive_timeout, before the first request as uvicorn
  already does between requests -> closed without an answer;
- head (request line + headers): over max_header_bytes -> 431 header_too_large; not
  complete header_timeout after its first byte -> 408 header_timeout. Answered here (no
  request reached the app, so no plugin's history records it);
- body: each body_timeout window must bring body_min_rate x body_timeout bytes (at least
  one), unless the body ends first or the app is not reading (backpressure is ours, not
  the client's). A slower body is cut: the app's next read of it raises `BodyTimeout`
  (middleware.py), which removes a partial upload, records the refusal for the plugin and
  answers 408 body_timeout. Bytes that still arrive are dropped; the connection is closed
  after that answer, or CUT_GRACE seconds after the cut if the app gives none;
- answer: a client that stops reading our answer (the send buffer stays full) for
  body_timeout seconds -> connection closed;
- connections: max_connections already open -> a new one is answered 503
  too_many_connections at once, before it sends anything. `fit_connections` lowers the
  cap to fit the open-file limit at start-up.

A refusal sent from here (and the answer after a cut) is followed by a half-close: what the
client still sends is read and dropped for LINGER seconds (at most MAX_LINGERING connections
at a time), so it reads the answer instead of a connection reset. Built against uvicorn
0.55 (constraints.txt): it overrides the protocol's parser callbacks, and
tests/test_agent_http_limits.py checks each bound against a real agent.
"""

from __future__ import annotations

import asyncio
import json
import resource
from http import HTTPStatus
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hotrelease.agent.config import DEFAULT_HTTP_LIMITS, HttpLimits
from hotrelease.agent.middleware import CUT_SCOPE_KEY

RESERVED_FDS = 256  # kept below the open-file limit: data files, hooks, the refusals below
LINGER = 1.0  # seconds a refused connection is read (and dropped) before it is closed
MAX_LINGERING = 64  # refused connections lingering at once; beyond that, closed at once
CUT_GRACE = 5.0  # seconds the app has to answer a cut body before the connection is closed

_lingering: set[GuardedProtocol] = set()


def fit_connections(wanted: int) -> tuple[int, str | None]:
    """The connection cap that fits the open-file limit (RLIMIT_NOFILE): the soft limit is
    raised toward the hard one when `wanted` + RESERVED_FDS does not fit under it; if it
    still does not fit, the cap is lowered. Returns the cap and a note when it was lowered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    need = wanted + RESERVED_FDS
    if soft != unlimited and soft < need:
        target = need if hard == unlimited else min(need, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    if soft == unlimited or soft >= need:
        return wanted, None
    reserve = min(RESERVED_FDS, soft // 2)
    cap = max(1, soft - reserve)
    return cap, (f"max_connections {wanted} lowered to {cap}: the open-file limit is {soft} "
                 f"(hard limit {hard}), {reserve} kept for files, hooks and refusals")


def refusal(status: int, code: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response in the agent's error format, with `connection: close`."""
    body = json.dumps({"error": {"code": code, "message": message}},
                      separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n").encode()
    return head + extra + b"\r\n" + body


def protocol_for(limits: HttpLimits) -> type[GuardedProtocol]:
    """The protocol class uvicorn runs (`uvicorn.run(http=...)`), bound to `limits`."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


class GuardedProtocol(HttpToolsProtocol):
    limits: HttpLimits = DEFAULT_HTTP_LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False  # answered (or to be closed): what arrives now is dropped
        self._close_after_response = False  # a refusal waits for the answer under way
        self._in_head = True  # between requests or inside a request's head
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._window_bytes = 0
        self._cut = False  # the current body was cut for time
        self._close_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    # --- connections --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport  # never counted in uvicorn's connections
            self._refuse(503, "too_many_connections",
                         f"the agent serves at most {self.limits.max_connections} "
                         "connections at once; try again shortly", b"retry-after: 1\r\n")
            return
        super().connection_made(transport)
        # Idle before the first request, as uvicorn already times idle between requests.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        _lingering.discard(self)
        self._cancel_timers()
        if self.flow is None:  # refused in connection_made: uvicorn never saw it
            return
        super().connection_lost(exc)

    # --- the request head ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        limit = self.limits.max_header_bytes
        while self._in_head and data:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.limits.header_timeout,
                                                        self._head_too_slow)
            part, data = data[:limit - self._head_bytes], data[limit - self._head_bytes:]
            self._head_bytes += len(part)
            super().data_received(part)
            if self._refused or self.transport.is_closing():
                return
            if self._in_head and self._head_bytes >= limit:
                self._refuse(431, "header_too_large",
                             f"request line and headers are over {limit} bytes")
                return
        if data:  # a body (and at most what follows it in the same read)
            super().data_received(data)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self._in_head or self._refused:
            return
        self._refuse(408, "header_timeout", "request headers not complete within "
                     f"{self.limits.header_timeout:g} seconds")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        self._cut = False
        self._window_bytes = 0
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._check_body)

    # --- the request body ---------------------------------------------------------------
    def on_body(self, body: bytes) -> None:
        self._window_bytes += len(body)
        if not self._cut:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if not self._cut:
            super().on_message_complete()

    def _check_body(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        not_theirs = self.flow.read_paused or (cycle is not None
                                               and cycle.waiting_for_100_continue)
        need = max(1, self.limits.body_min_rate * self.limits.body_timeout)
        if not_theirs or self._window_bytes >= need:
            self._window_bytes = 0
            self._body_timer = self.loop.call_later(self.limits.body_timeout,
                                                    self._check_body)
            return
        self._cut = True
        if cycle is None or cycle.response_started:  # answered already: nothing to say
            self.transport.close()
            return
        message = (f"request body slower than {self.limits.body_min_rate} bytes/s over "
                   f"{self.limits.body_timeout:g} seconds")
        cast(dict[str, Any], cycle.scope).setdefault("extensions", {})[CUT_SCOPE_KEY] = message
        cycle.message_event.set()  # wake a read that is waiting for more body
        self._close_after_response = True
        self._close_timer = self.loop.call_later(CUT_GRACE, self.transport.close)

    def on_response_complete(self) -> None:
        if self._close_after_response:
            self.server_state.total_requests += 1
            self._linger()
            return
        super().on_response_complete()

    # --- refusing -----------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """The HTTP parser refused the bytes (a malformed request line or header, say a
        Content-Length that is not a number): answered in the agent's error format like
        every other refusal, not with uvicorn's text/plain."""
        self._refuse(400, "bad_request", msg)

    def _refuse(self, status: int, code: str, message: str, extra: bytes = b"") -> None:
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head while an answer is under way: never write into that
            # answer; close the connection after it instead.
            self._close_after_response = True
            for timer in (self._head_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._body_timer = None
            return
        self.transport.write(refusal(status, code, message, extra))
        self._linger()

    def _linger(self) -> None:
        self._refused = True
        self._cancel_timers()
        if self.transport.is_closing():
            return
        if len(_lingering) >= MAX_LINGERING:
            self.transport.close()
            return
        _lingering.add(self)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()
        self._close_timer = self.loop.call_later(LINGER, self.transport.close)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._close_timer,
                      self._write_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._close_timer = self._write_timer = None
        self._unset_keepalive_if_required()

    # --- the answer ---------------------------------------------------------------------
    def pause_writing(self) -> None:
        """The client does not read our answer: it has body_timeout seconds to start again."""
        if self.flow is None:
            return
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.body_timeout,
                                                     self.transport.abort)

    def resume_writing(self) -> None:
        if self.flow is None:
            return
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
