"""``python -m exporter serve``: every exported model behind TorchServe-style routes (contract section 5).

Starlette routing on uvicorn (uvloop + httptools). The prediction route is a bare ASGI endpoint: it reads the
body under a byte limit (413 on ``Content-Length`` alone when it announces too much), hands the bytes (and
``Inference-Header-Content-Length`` for binary tensor data) to :meth:`exporter.runtime.handler.ModelHandler.handle_http`
and sends the bytes back, so the per-request cost is the handler's plus a few microseconds. Models are looked
up only in the in-memory view of :mod:`exporter.serving.live_registry` (replaced whole by ``--poll``/SIGHUP reloads),
never on disk, so no request can reach a file. The per-request log line is queued and written by a background
thread (:mod:`exporter.serving.access_log`).

Heavy imports (starlette, uvicorn, onnxruntime) happen inside functions. The command line (options, SIGHUP,
``--poll``) is :mod:`exporter.commands.serve`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.serving.live_registry import LiveRegistry, ModelRegistry  # noqa: F401  (ModelRegistry re-exported)

if TYPE_CHECKING:  # pragma: no cover
    from exporter.serving.access_log import AccessLog

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: bodies above this size are answered in a worker thread so that small requests keep flowing meanwhile
THREAD_OFFLOAD_BYTES = 256 * 1024

log = logging.getLogger("exporter.serve")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


# ---------------------------------------------------------------------------------------------- registry
# ModelRegistry (one view of the served models) and its live reloading live in exporter.serving.live_registry.


# ---------------------------------------------------------------------------------------------- app
async def _send_json(send: Send, status: int, body: bytes, header_length: int | None = None) -> None:
    """Send an answer: JSON, or (``header_length`` given) a JSON header followed by binary tensor data."""
    if header_length is None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    else:
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(header_length).encode()),
            (b"content-length", str(len(body)).encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error(message: str) -> bytes:
    import orjson

    return orjson.dumps({"error": message})


#: longest piece of client text (model name, version, path, header) quoted in an error (as the handler's)
_QUOTE_CHARS = 40


def _shown(name: str) -> str:
    """Client text quoted for an error message: quoted whole when short, else a prefix and its length."""
    import json

    if len(name) <= _QUOTE_CHARS:
        return json.dumps(name)
    return f"{json.dumps(name[:_QUOTE_CHARS])}... ({len(name)} characters)"


def _content_encoding(scope: dict[str, Any]) -> str | None:
    """The request's Content-Encoding when it is not identity (a compressed body), else ``None``."""
    for key, value in scope["headers"]:
        if key == b"content-encoding":
            text = value.decode("latin-1").strip()
            return None if text.lower() in ("", "identity") else text
    return None


def _log_path(scope: Mapping[str, Any]) -> str:
    """The request path as sent (still percent-encoded), safe for a one-line log record."""
    raw = scope.get("raw_path")
    text = raw.decode("latin-1") if raw else str(scope.get("path", ""))
    return text if text.isprintable() else repr(text)


def _encoded_separator(raw_path: bytes) -> bool:
    """Whether the undecoded path hides a '/' or '\\' inside a segment (%2F, %5C)."""
    lowered = raw_path.lower()
    return b"%2f" in lowered or b"%5c" in lowered


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    """The client went away (or was cut off by a timeout) before its body arrived: nobody to answer."""


async def _read_body(content_length: bytes | None, receive: Receive, limit: int) -> bytes:
    """The request body, refusing (``_TooLarge``) as soon as it is known to exceed ``limit`` bytes."""
    if content_length is not None:
        try:
            if int(content_length) > limit:
                raise _TooLarge(f"Content-Length {int(content_length)}")
        except ValueError:
            pass
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _TooLarge(f"{len(body)} bytes")
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    registry: ModelRegistry | LiveRegistry,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    access_log: AccessLog | None = None,
) -> Any:
    """The Starlette application (routes exactly as in contract section 5).

    ``registry`` is a fixed :class:`ModelRegistry` or a :class:`LiveRegistry` whose view reloads replace;
    every request reads the current view once. ``access_log``: where the per-request lines go (None: none).
    """
    import orjson
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    live = registry if isinstance(registry, LiveRegistry) else LiveRegistry(registry, Path("."))
    add_line = access_log.add if access_log is not None else None
    now = time.time
    perf = time.perf_counter
    ping_body = orjson.dumps({"status": "Healthy"})

    class Predict:
        """ASGI endpoint of ``POST /predictions/{model_name}[/{version}]`` (a class: Starlette calls it raw)."""

        async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
            start = perf()
            view = live.current
            params = scope["path_params"]
            name = params["model_name"]
            version = params.get("version")
            rows = 0
            answer_header = None
            raw_path = scope.get("raw_path") or b""
            if b"%" in raw_path and _encoded_separator(raw_path):
                handler = None  # "xgb%2F1" is the model name "xgb/1", not model xgb version 1
            elif version is None:
                handler = view.latest.get(name)
            else:
                handler = view.versions.get(name, {}).get(version)
            if handler is None:
                status = 404
                if b"%" in raw_path and _encoded_separator(raw_path):
                    answer = _error(
                        f"model names cannot contain '/' or '\\' (got {_shown(scope['path'])}); "
                        f"loaded models: {view.loaded_names}"
                    )
                elif name not in view.latest:
                    answer = _error(f"model {_shown(name)} not found; loaded models: {view.loaded_names}")
                else:
                    answer = _error(
                        f"model {_shown(name)} has no version {_shown(version or '')}; loaded versions: "
                        f"{', '.join(sorted(view.versions[name], key=int))}"
                    )
            elif _content_encoding(scope) is not None:  # say so instead of failing to decode
                status, answer = (
                    415,
                    _error(
                        f"request body has Content-Encoding {_shown(_content_encoding(scope) or '')}; this server "
                        "accepts only uncompressed JSON bodies (Content-Encoding identity or none): "
                        "send it uncompressed"
                    ),
                )
            else:
                content_length = header_length = None
                for key, value in scope["headers"]:
                    if key == b"content-length":
                        content_length = value
                    elif key == b"inference-header-content-length":
                        header_length = _header_int(value)
                try:
                    body = await _read_body(content_length, receive, max_body_bytes)
                except _Disconnected:
                    if add_line is not None:
                        add_line(
                            (
                                now(),
                                "POST %s model=%s version=%s rows=0 status=- time_ms=%.2f client disconnected "
                                "before sending its body",
                                _log_path(scope),
                                handler.model_name,
                                handler.version,
                                (perf() - start) * 1000.0,
                            )
                        )
                    return
                except _TooLarge as exc:
                    status, answer = (
                        413,
                        _error(
                            f"request body is too large ({exc}); this server accepts at most {max_body_bytes} bytes "
                            "(--max-body-bytes): split the rows over several requests"
                        ),
                    )
                else:
                    if len(body) > THREAD_OFFLOAD_BYTES:
                        status, answer, rows, answer_header = await run_in_threadpool(
                            handler.handle_http, body, header_length
                        )
                    else:
                        status, answer, rows, answer_header = handler.handle_http(body, header_length)
            await _send_json(send, status, answer, answer_header)
            if add_line is not None:
                if handler is not None:
                    add_line(
                        (
                            now(),
                            "POST %s model=%s version=%s rows=%d status=%d time_ms=%.2f",
                            _log_path(scope),
                            handler.model_name,
                            handler.version,
                            rows,
                            status,
                            (perf() - start) * 1000.0,
                        )
                    )
                else:
                    add_line(
                        (
                            now(),
                            "POST %s model=- version=- rows=0 status=%d time_ms=%.2f",
                            _log_path(scope),
                            status,
                            (perf() - start) * 1000.0,
                        )
                    )

    def _plain(status: int, body: bytes, request: Request, start: float) -> Response:
        if add_line is not None:
            add_line(
                (
                    now(),
                    "%s %s status=%d time_ms=%.2f",
                    request.method,
                    _log_path(request.scope),
                    status,
                    (perf() - start) * 1000.0,
                )
            )
        return Response(body, status_code=status, media_type="application/json")

    async def ping(request: Request) -> Response:
        return _plain(200, ping_body, request, perf())

    async def list_models(request: Request) -> Response:
        return _plain(200, live.current.models_body, request, perf())

    async def describe_model(request: Request) -> Response:
        start = perf()
        view = live.current
        name = request.path_params["model_name"]
        raw_path = request.scope.get("raw_path") or b""
        body = None if _encoded_separator(raw_path) else view.metadata_bodies.get(name)
        if body is None:
            return _plain(
                404, _error(f"model {_shown(name)} not found; loaded models: {view.loaded_names}"), request, start
            )
        return _plain(200, body, request, start)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        if status == 404:
            message = (
                f"no route for {request.method} {_shown(request.url.path)}; routes: GET /ping, GET /models, "
                "GET /models/{model_name}, POST /predictions/{model_name}, POST /predictions/{model_name}/{version}"
            )
        elif status == 405:
            allowed = (getattr(exc, "headers", None) or {}).get("Allow", "")
            message = (
                f"method {_shown(request.method)} is not allowed on {_shown(request.url.path)}; allowed: {allowed}"
            )
        else:
            message = str(getattr(exc, "detail", "")) or "bad request"
        if add_line is not None:
            add_line((now(), "%s %s status=%d", request.method, _log_path(request.scope), status))
        return Response(
            _error(message), status_code=status, media_type="application/json", headers=getattr(exc, "headers", None)
        )

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, _log_path(request.scope))
        return Response(
            _error(f"internal server error: {type(exc).__name__}"), status_code=500, media_type="application/json"
        )

    predict = Predict()
    routes = [
        Route("/ping", ping, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/models/{model_name}", describe_model, methods=["GET"]),
        Route("/predictions/{model_name}", predict, methods=["POST"]),
        Route("/predictions/{model_name}/{version}", predict, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.router.redirect_slashes = False  # "/predictions/xgb/" is a 404 that says so, not a redirect of a POST
    return app


def _header_int(value: bytes) -> int | str:
    """A numeric header as an int, or its text (the handler answers 400 quoting it)."""
    try:
        return int(value)
    except ValueError:
        return value.decode("latin-1")
