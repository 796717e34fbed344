"""Limits on slow and oversized clients for ``serve``, which uvicorn's httptools protocol does not have.

uvicorn closes a connection only when it stays idle ``timeout_keep_alive`` seconds *after* a response: a client
that connects and never finishes its request headers, or trickles them a byte at a time (slowloris), or
announces a body and never sends it, holds its connection forever, and httptools accepts request headers of
any size. :func:`guarded_protocol` returns uvicorn's ``HttpToolsProtocol`` with three limits added:

* ``header_timeout``: the request line and headers must arrive within this many seconds of the connection
  opening (or of the first byte after an idle keep-alive period); else ``408`` and the connection closes;
* ``body_timeout``: the whole body must arrive within this many seconds of the headers; else ``408`` (when no
  answer was started) and the connection closes;
* ``max_header_bytes``: request line plus headers larger than this are answered ``431`` and closed.

Idle keep-alive connections keep uvicorn's own ``timeout_keep_alive``. Answers are JSON ``{"error": ...}``
bodies like every other error of the server.
"""

from __future__ import annotations

import json
from typing import Any

#: defaults of ``serve --header-timeout``, ``--body-timeout``, ``--keep-alive-timeout``, ``--max-header-bytes``
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_KEEP_ALIVE_TIMEOUT = 30
DEFAULT_MAX_HEADER_BYTES = 64 * 1024

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that was already answered."""


def _raw_error(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, _REASONS[status], len(body))
    ) + body


def guarded_protocol(
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> type:
    """uvicorn's httptools protocol class with the limits above (pass it as ``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            self._timer: Any = None
            self._waiting = True  # for the headers of a request
            self._header_bytes = 0
            self._partial = False  # bytes of a request arrived since the last answer
            self._refused = False
            super().connection_made(transport)
            self._arm(header_timeout, self._headers_too_slow)

        # -------------------------------------------------------------- timers
        def _arm(self, seconds: float, callback: Any) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _refuse(self, status: int, message: str) -> None:
            self._disarm()
            self._refused = True
            if not self.transport.is_closing():
                self.transport.write(_raw_error(status, message))
                self.transport.close()

        def _headers_too_slow(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self._partial:
                self._refuse(408, f"request headers not received within {header_timeout:g}s; connection closed")
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
                    408, f"request body not received within {body_timeout:g}s of the headers; connection closed"
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
                    self._arm(header_timeout, self._headers_too_slow)
            try:
                super().data_received(data)
            except _Refused:
                pass

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # a refused request already has its answer
                super().send_400_response(msg)

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
            if self._header_bytes > max_header_bytes:
                self._refuse(431, f"request line and headers exceed {max_header_bytes} bytes; connection closed")
                raise _Refused

        def on_headers_complete(self) -> None:
            self._waiting = False
            self._arm(body_timeout, self._body_too_slow)
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

    return GuardedHttpToolsProtocol
