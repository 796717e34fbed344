"""Limits on slow and oversized clients for ``serve``, which uvicorn's httptools protocol does not have.

uvicorn closes a connection only when it stays idle ``timeout_keep_alive`` seconds *after* a response: a client
that connects and never finishes its request headers, or trickles them a byte at a time (slowloris), or
announces a body and never sends it, holds its connection forever, and httptools accepts request headers of
any size. :func:`exporter.serving.guarded_http.guarded_protocol` returns uvicorn's ``HttpToolsProtocol`` with
three limits added:

* ``header_timeout``: the request line and headers must arrive within this many seconds of the connection
  opening (or of the first byte after an idle keep-alive period); else ``408`` and the connection closes;
* ``body_timeout``: the whole body must arrive within this many seconds of the headers; else ``408`` (when no
  answer was started) and the connection closes;
* ``max_header_bytes``: request line plus headers larger than this are answered ``431`` and closed.

Idle keep-alive connections keep uvicorn's own ``timeout_keep_alive``. Answers are JSON ``{"error": ...}``
bodies like every other error of the server, and so is the 400 to a request that is not valid HTTP (uvicorn's
own answer is plain text); each such answer has its line in the request log. This module holds the limits and
the answers; the protocol class is in :mod:`exporter.serving.guarded_http`, imported only when a server starts
(uvicorn is a heavy import for every other command).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: defaults of ``serve --header-timeout``, ``--body-timeout``, ``--keep-alive-timeout``, ``--max-header-bytes``
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_KEEP_ALIVE_TIMEOUT = 30
DEFAULT_MAX_HEADER_BYTES = 64 * 1024

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class HttpLimits:
    """The three limits one server's connections are held to (see the module docstring)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES


def raw_error(status: int, message: str) -> bytes:
    """A whole HTTP response (JSON error body, connection closed), written straight to the transport."""
    body = json.dumps({"error": message}).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, _REASONS[status], len(body))
    ) + body
