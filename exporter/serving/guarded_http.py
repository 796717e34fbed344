"""uvicorn's httptools protocol held to the limits of :mod:`exporter.serving.http_limits` (described there).

A module of its own because subclassing uvicorn's ``HttpToolsProtocol`` imports uvicorn, which only a starting
server needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from exporter.serving.http_limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_HEADER_BYTES,
    HttpLimits,
    raw_error,
)

#: the request log's logger: answers given here, before any application sees the request, are logged there too
log = logging.getLogger("exporter.serve")


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that was already answered."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header/body timeouts and a header size limit (:attr:`limits`)."""

    #: the limits; :func:`guarded_protocol` makes subclasses with others
    limits = HttpLimits()
    #: called with the reason of every refusal (``header_timeout``, ``body_timeout``, ``headers_too_large``,
    #: ``not_http``): the rejected-requests metric; None: nobody counts
    on_refuse: Callable[[str], None] | None = None

    def connection_made(self, transport: Any) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = True  # for the headers of a request
        self._header_bytes = 0
        self._partial = False  # bytes of a request arrived since the last answer
        self._refused = False
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, self._headers_too_slow)

    # -------------------------------------------------------------- timers
    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: int, message: str, reason: str) -> None:
        self._disarm()
        self._refused = True
        if not self.transport.is_closing():
            if self.on_refuse is not None:
                self.on_refuse(reason)
            # logged before the answer goes out, so the line is there by the time the client sees the close
            client = getattr(self, "client", None)
            peer = f"{client[0]}:{client[1]}" if client else "-"
            log.info("- - client=%s status=%d %s", peer, status, message)
            self.transport.write(raw_error(status, message))
            self.transport.close()

    def _headers_too_slow(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._partial:
            self._refuse(
                408,
                f"request headers not received within {self.limits.header_timeout:g}s; connection closed",
                "header_timeout",
            )
        else:  # an idle connection that never started a request: just close it
            self._refused = True
            self.transport.close()

    def _body_too_slow(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        if not cycle.response_started:
            cycle.disconnected = True  # the application's late answer goes nowhere
            cycle.message_event.set()
            self._refuse(
                408,
                f"request body not received within {self.limits.body_timeout:g}s of the headers; connection closed",
                "body_timeout",
            )
        else:
            self._refused = True
            self.transport.close()

    # -------------------------------------------------------------- protocol events
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._waiting:
            self._partial = True
            if self._timer is None:  # first bytes after an idle keep-alive period
                self._arm(self.limits.header_timeout, self._headers_too_slow)
        try:
            super().data_received(data)
        except _Refused:
            pass

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP (plain text there), as a JSON error body."""
        if not self._refused:  # a refused request already has its answer
            self._refuse(
                400,
                f"{msg.rstrip('.')}: the request line or headers are not valid HTTP/1.1; expected "
                "'<METHOD> <path> HTTP/1.1' and 'Name: value' header lines, each ending in CRLF",
                "not_http",
            )

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(
                431,
                f"request line and headers exceed {self.limits.max_header_bytes} bytes; connection closed",
                "headers_too_large",
            )
            raise _Refused

    def on_headers_complete(self) -> None:
        self._waiting = False
        self._arm(self.limits.body_timeout, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if not self.pipeline:  # no request queued behind this one: wait for the next request's headers
            self._waiting = True
            self._partial = False
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle period

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_protocol(
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    on_refuse: Callable[[str], None] | None = None,
) -> type:
    """uvicorn's httptools protocol class held to these limits (pass it as ``uvicorn.Config(http=...)``).

    uvicorn instantiates the class itself, so the limits (and ``on_refuse``, told the reason of each refusal)
    travel as class attributes of a subclass.
    """
    limits = HttpLimits(header_timeout, body_timeout, max_header_bytes)
    attributes = {"limits": limits, "on_refuse": staticmethod(on_refuse) if on_refuse is not None else None}
    return type(GuardedHttpToolsProtocol.__name__, (GuardedHttpToolsProtocol,), attributes)
