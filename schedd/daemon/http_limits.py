"""The HTTP layer under the app: what a client can make the daemon hold or log
before its request reaches a handler — bounded, and answered as any API error.

aiohttp parses requests in a protocol object, one per connection
(:class:`aiohttp.web_protocol.RequestHandler`). Left as it is, it answers a
malformed request (a request line over 8190 bytes, too many headers, a bad
method, version or chunk) with a plain-text 400 and logs a traceback; keeps an
idle connection for an hour; waits for a request's head for as long as a
slow-loris client trickles it; reads a body up to ``max_body_mb`` into memory
before refusing it; and takes any number of connections. The protocol here,
made by :class:`LimitedRunner` for both listeners, changes that:

- errors: ``{"error": {"code", "message"}}`` with the status that fits (400,
  408, 413, 414, 431, 503, 505), one log line and no traceback; only a bug (500)
  is logged with its traceback.
- connections: at most ``[http] max_connections`` open on each listener, the
  TCP/TLS port and the Unix socket counted apart — local users, root and
  ``schedd up``'s agents come by the socket, so a flood on the port cannot lock
  them out. One more is answered 503 at once and closed; the open ones go on.
  On the socket, root and the daemon's own user (admins there, as the API
  says) are let in past the limit: a local user's flood cannot lock out the
  administrator or the local agents either.
- idle: a connection with no request under way is closed after
  ``idle_timeout_s`` (aiohttp's keep-alive timer, which also runs from the
  connection's start).
- head: a request's line and headers must all arrive within
  ``header_timeout_s`` of its first byte, else 408 and closed (slow-loris).
- body: a Content-Length over ``max_body_mb`` is refused with 413 before any of
  the body is read; aiohttp then reads and drops what the client still sends,
  for a while, so that the client sees the answer, and closes. A body that
  turns out malformed half-way (a bad chunk) fails the handler's read at once
  with a 400 — aiohttp would have it wait until the client hangs up.
- version: HTTP/1.0 and HTTP/1.1 only (505).

The protocol reads a few of RequestHandler's private attributes, each named
where it is used: aiohttp has no public hook for "waiting for a request's head"
or "the request being handled". tests/daemon/test_http_limits.py drives every
rule through a real daemon, so an aiohttp that changes them fails there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import HttpVersion10, HttpVersion11
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from schedd.api.app import error_body
from schedd.config import Settings

__all__ = ["Limits", "LimitedRunner", "fit_open_files"]

log = logging.getLogger("schedd.http")
Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]

#: How long a refused connection (past max_connections) is kept to deliver its 503.
REFUSAL_GRACE_S = 2.0
#: The longest message taken from a client's bytes into an answer or the log.
MESSAGE_CHARS = 200


@dataclass(frozen=True)
class Limits:
    """The HTTP layer's bounds, from ``[http]`` and ``max_body_mb``."""

    max_connections: int
    idle_timeout_s: float
    header_timeout_s: float
    max_body_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        h = settings.http
        return cls(h.max_connections, h.idle_timeout_s, h.header_timeout_s, settings.max_body_mb * 1024 * 1024)


def fit_open_files(max_connections: int) -> None:
    """Raise the soft open-file limit to fit both listeners full, and the rest
    (store, agents' sockets, jobs' files), as far as the hard limit allows: past
    it, accept() fails and asyncio logs the failure with a traceback."""
    want = 2 * max_connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < want:
        log.warning("open files limited to %d (hard limit): fewer than the %d that [http] max_connections = %d "
                    "on two listeners may need", new, want, max_connections)


def _tidy(text: str) -> str:
    """One line, bounded: aiohttp's messages quote the client's bytes over several lines."""
    one = " ".join(text.split())
    return one if len(one) <= MESSAGE_CHARS else one[:MESSAGE_CHARS] + "..."


def _json_bytes(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})


def _raw_answer(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    """A whole response, written straight to a transport that has no request to answer."""
    body = _json_bytes(code, message)
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode() + body


def classify(exc: BaseException | None, status: int, max_headers: int) -> tuple[int, str, str]:
    """The answer to a request aiohttp could not parse: (status, code, message)."""
    if isinstance(exc, LineTooLong):
        raw, limit = exc.args[0], exc.args[1]
        line = raw.encode(errors="replace") if isinstance(raw, str) else bytes(raw)
        if line.lstrip().startswith((b"/", b"http:", b"https:", b"*")):  # the request target
            return 414, "uri_too_long", f"the request target is longer than {limit} bytes"
        return 431, "header_too_large", f"a header field is longer than {limit} bytes"
    text = _tidy(exc.message if isinstance(exc, HttpProcessingError) else str(exc or ""))
    if "Too many headers" in text:
        return 431, "header_too_large", f"more than {max_headers} header fields"
    return status, "bad_request", f"malformed HTTP request: {text or 'unreadable'}"


def _guarded(handler: Handler, limits: Limits) -> Handler:
    """The app's handler behind what can be refused from the head alone."""
    too_large = f"the request body is larger than max_body_mb ({limits.max_body_bytes // (1024 * 1024)} MiB)"

    async def guard(request: BaseRequest) -> web.StreamResponse:
        if request.version not in (HttpVersion10, HttpVersion11):
            resp = error_body(505, "http_version_not_supported", f"HTTP/{request.version.major}.{request.version.minor}: "
                              "only HTTP/1.0 and HTTP/1.1 are served")
        elif (request.content_length or 0) > limits.max_body_bytes:
            log.info("refused a %d-byte body for %s %s: over max_body_mb", request.content_length, request.method,
                     request.path)
            resp = error_body(413, "too_large", too_large)
        else:
            return await handler(request)
        resp.force_close()
        return resp

    return guard


@dataclass
class _Listeners:
    """Open connections on each listener ("tcp" — TLS too — and "unix"), and
    how many were refused since each last filled up."""

    open: dict[str, int] = field(default_factory=lambda: {"tcp": 0, "unix": 0})
    refused: dict[str, int] = field(default_factory=lambda: {"tcp": 0, "unix": 0})


def _kind(transport: asyncio.BaseTransport) -> str:
    sock = transport.get_extra_info("socket")
    return "unix" if sock is not None and sock.family == socket.AF_UNIX else "tcp"


def _admin(transport: asyncio.BaseTransport) -> bool:
    """A Unix-socket peer the API takes as admin (root, the daemon's own user: schedd.api.auth)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return False
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid in (0, os.getuid())


def _peer(transport: asyncio.BaseTransport | None) -> str:
    name = transport.get_extra_info("peername") if transport is not None else None
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "the unix socket"


class _Refusal(asyncio.Protocol):
    """A connection past max_connections: answered 503 at once. The writing
    half is closed after the answer and whatever the client sends is dropped
    until it closes too (or REFUSAL_GRACE_S passes) — closing with its request
    unread would reset the connection and lose the answer."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        else:  # TLS: no half-close
            transport.close()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_GRACE_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None  # the client is done too: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _Protocol(RequestHandler):
    """aiohttp's protocol with the limits of this module (see its docstring)."""

    def __init__(self, manager: web.Server, limits: Limits, listeners: _Listeners, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._listeners = listeners
        self._listener: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    # -- connections -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        kind, ls = _kind(transport), self._listeners
        if ls.open[kind] >= self._limits.max_connections and not _admin(transport):
            if ls.refused[kind] == 0:
                log.warning("%s listener full: %d connections open ([http] max_connections); new ones get 503",
                            kind, ls.open[kind])
            ls.refused[kind] += 1
            refusal = _Refusal(_raw_answer(
                503, "Service Unavailable", "too_many_connections",
                f"the server has {ls.open[kind]} connections open on this listener, its limit "
                "([http] max_connections); retry later", "Retry-After: 1\r\n"))
            transport.set_protocol(refusal)
            refusal.connection_made(transport)
            return
        self._listener = kind
        ls.open[kind] += 1
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        kind, ls = self._listener, self._listeners
        if kind is not None:
            self._listener = None
            ls.open[kind] -= 1
            if ls.refused[kind] and ls.open[kind] < self._limits.max_connections:
                log.warning("%s listener takes connections again; refused meanwhile: %d", kind, ls.refused[kind])
                ls.refused[kind] = 0
        self._stop_head_timer()
        handling = self._current_request  # private: the request being handled
        if handling is not None and not handling.content.is_eof():
            # aiohttp fails the handler's read with ConnectionResetError, which the app's error
            # middleware would log as a bug with its traceback; it is the client's doing
            log.info("the client on %s went away during %s %s before its whole body came",
                     _peer(self.transport), handling.method, handling.path)
            handling.content.set_exception(web.HTTPBadRequest(text="the client went away before the whole body came"))
        super().connection_lost(exc)

    # -- the request's head, and a body that breaks half-way ---------------

    def _waiting_for_head(self) -> bool:
        """Between requests: start() awaits the next head (aiohttp's private ``_waiter``)."""
        return self._waiter is not None and not self._waiter.done()

    def data_received(self, data: bytes) -> None:
        if data and self._head_timer is None and self._waiting_for_head():
            self._head_timer = self._loop.call_later(self._limits.header_timeout_s, self._head_too_slow)
        handling = self._current_request  # private: the request whose body may still be arriving
        queued = len(self._messages)  # private: parsed requests (or parse errors) not yet handled
        super().data_received(data)
        if self._head_timer is not None and not self._waiting_for_head():
            self._stop_head_timer()
        if handling is not None and len(self._messages) > queued:
            msg = self._messages[-1][0]
            if not isinstance(msg, RawRequestMessage):  # the body failed to parse: fail its read now
                self._messages.pop()
                self.close()  # no further request on this connection
                handling.content.set_exception(web.HTTPBadRequest(text=f"malformed request body: {_tidy(msg.message)}"))

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self._waiting_for_head() or self.transport is None:
            return
        t = self._limits.header_timeout_s
        log.info("closed the connection of %s: its request's head was not whole %g s after its first byte "
                 "([http] header_timeout_s)", _peer(self.transport), t)
        self.transport.write(_raw_answer(408, "Request Timeout", "request_timeout",
                                         f"the request line and headers did not arrive within {t:g} s"))
        self.force_close()

    # -- errors --------------------------------------------------------------

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Every error aiohttp answers itself (a request it cannot parse, a
        handler that raised past the app's error middleware) as JSON; a
        client's error in one log line, a bug with its traceback."""
        if request.writer.output_size > 0:  # as aiohttp: an answer is half-sent, the connection is lost
            raise ConnectionError("an error after the response started")
        if isinstance(exc, ConnectionError):
            log.debug("%s went away during %s %s", _peer(self.transport), request.method, request.path)
            resp = error_body(400, "bad_request", "connection lost")
        elif status < 500 or isinstance(exc, HttpProcessingError):
            status, code, text = classify(exc, status if status < 500 else 400, self.max_headers)
            log.info("answered %d to %s: %s", status, _peer(self.transport), text)
            resp = error_body(status, code, text)
        elif status == 504:  # a handler's own timeout (asyncio.TimeoutError): no bug, no traceback
            log.warning("%s %s timed out", request.method, request.path)
            resp = error_body(504, "timeout", "the server timed out answering the request")
        else:
            log.error("error on %s %s", request.method, request.path, exc_info=exc)
            resp = error_body(500, "internal", "internal error (logged by schedd)")
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A client's doing (gone, malformed) in one line; anything else with its traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, (ConnectionError, HttpProcessingError, web.HTTPException)):
            text = exc.text if isinstance(exc, web.HTTPException) and exc.text else str(exc)
            log.info("connection of %s: %s", _peer(self.transport), _tidy(text or type(exc).__name__))
        else:
            log.error(*args, **kw)


class _Server(web.Server):
    """aiohttp's Server making :class:`_Protocol`; one for both listeners, counted apart."""

    def __init__(self, base: web.Server, limits: Limits) -> None:
        kwargs = dict(base._kwargs)  # private: the protocol's settings aiohttp gathered (app and runner)
        super().__init__(_guarded(base.request_handler, limits), request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, **kwargs)
        self._limits = limits
        self._listeners = _Listeners()

    def __call__(self) -> RequestHandler:
        return _Protocol(self, self._limits, self._listeners, loop=self._loop, **self._kwargs)


class LimitedRunner(web.AppRunner):
    """An AppRunner whose connections follow :class:`Limits`."""

    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.idle_timeout_s, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        return _Server(await super()._make_server(), self._limits)
