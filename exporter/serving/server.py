"""``python -m exporter serve``: every exported model behind TorchServe-style routes (contract section 5).

Starlette routing on uvicorn (uvloop + httptools). The prediction route is a bare ASGI endpoint: it reads the
body under a byte limit (413 on ``Content-Length`` alone when it announces too much), hands the bytes (and
``Inference-Header-Content-Length`` for binary tensor data) to :meth:`exporter.runtime.handler.ModelHandler.handle_http`
in a worker thread of :mod:`exporter.serving.workers` (never on the event loop; 504 past ``--request-timeout``,
503 when no thread was free in time) and sends the bytes back. Models are looked
up only in the in-memory view of :mod:`exporter.serving.live_registry` (replaced whole by ``--poll``/SIGHUP reloads),
never on disk, so no request can reach a file. The per-request log line is queued and written by a background
thread (:mod:`exporter.serving.access_log`); each prediction also updates the Prometheus metrics of
:mod:`exporter.serving.metrics` (``GET /metrics``). ``GET /health/live`` and ``GET /health/ready`` are the
Kubernetes probes (``/ping`` stays TorchServe's).

Why this module is long: it is the one place a request passes through (routes, the prediction path with its
limits, deadline, metrics and drift sampling, the error answers); split, each piece would need the others' state.

Heavy imports (starlette, uvicorn, onnxruntime) happen inside functions. The command line (options, SIGHUP,
``--poll``) is :mod:`exporter.commands.serve`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.runtime.handler import Answer
from exporter.serving.live_registry import LiveRegistry, ModelRegistry  # noqa: F401  (ModelRegistry re-exported)
from exporter.serving.probes import metrics_route_for, probe_routes
from exporter.serving.workers import DEFAULT_REQUEST_TIMEOUT, Busy, Expired, WorkerPool

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from exporter.runtime.handler import Decoded, ModelHandler
    from exporter.serving.access_log import AccessLog
    from exporter.serving.drift import DriftMonitor
    from exporter.serving.metrics import Metrics

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

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


@dataclass(frozen=True)
class _Served:
    """What every route reads: the live view of the models, the body limit, where access-log lines go, the
    threads predictions run in and how long a request may take there."""

    live: LiveRegistry
    max_body_bytes: int
    add_line: Callable[[tuple[Any, ...]], None] | None
    workers: WorkerPool
    request_timeout: float
    #: Prometheus metrics of this process (None: ``serve --no-metrics``)
    metrics: Metrics | None = None
    #: input drift windows (serving/drift.py); None: off
    drift: DriftMonitor | None = None


#: ``(status, answer, rows, answer_header_length, request form)``: :meth:`ModelHandler.handle_http`'s answer and
#: the form (label of the request metrics, ``unknown`` when refused before the form was known)
_Answer = tuple[int, bytes, int, int | None, str]


def _form(decoded: Decoded, handler: ModelHandler, header_length: int | str | None) -> str:
    """The request form of a decoded request (metrics label): TorchServe, v2 JSON or v2 binary tensor data."""
    if decoded.envelope is handler.torchserve:
        return "torchserve"
    return "v2_binary" if header_length is not None else "v2_json"


def _lookup(view: ModelRegistry, scope: dict[str, Any]) -> ModelHandler | None:
    """The handler a prediction path names, or None (unknown model or version, or an encoded '/')."""
    params = scope["path_params"]
    version = params.get("version")
    raw_path = scope.get("raw_path") or b""
    if b"%" in raw_path and _encoded_separator(raw_path):
        return None  # "xgb%2F1" is the model name "xgb/1", not model xgb version 1
    if version is None:
        return view.latest.get(params["model_name"])
    return view.versions.get(params["model_name"], {}).get(version)


def _not_found(view: ModelRegistry, scope: dict[str, Any]) -> bytes:
    """The 404 body for a prediction path that names no loaded model version, saying what is loaded."""
    params = scope["path_params"]
    name = params["model_name"]
    raw_path = scope.get("raw_path") or b""
    if b"%" in raw_path and _encoded_separator(raw_path):
        return _error(
            f"model names cannot contain '/' or '\\' (got {_shown(scope['path'])}); loaded models: {view.loaded_names}"
        )
    if name not in view.latest:
        return _error(f"model {_shown(name)} not found; loaded models: {view.loaded_names}")
    return _error(
        f"model {_shown(name)} has no version {_shown(params.get('version') or '')}; loaded versions: "
        f"{', '.join(sorted(view.versions[name], key=int))}"
    )


def _unsupported_encoding(encoding: str) -> bytes:
    """The 415 body for a compressed request: say so instead of failing to decode it."""
    return _error(
        f"request body has Content-Encoding {_shown(encoding)}; this server "
        "accepts only uncompressed JSON bodies (Content-Encoding identity or none): "
        "send it uncompressed"
    )


def _length_headers(scope: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """``Content-Length`` (raw) and ``Inference-Header-Content-Length`` (its text), None if absent."""
    content_length = header_length = None
    for key, value in scope["headers"]:
        if key == b"content-length":
            content_length = value
        elif key == b"inference-header-content-length":
            header_length = value.decode("latin-1")  # the handler reads it (ASCII digits only)
    return content_length, header_length


def _log_prediction(
    add_line: Callable[[tuple[Any, ...]], None],
    scope: dict[str, Any],
    handler: ModelHandler | None,
    rows: int,
    status: int,
    start: float,
) -> None:
    """Queue a prediction's access-log line (model and version ``-`` when the path named none)."""
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    if handler is not None:
        add_line(
            (
                time.time(),
                "POST %s model=%s version=%s rows=%d status=%d time_ms=%.2f",
                _log_path(scope),
                handler.model_name,
                handler.version,
                rows,
                status,
                elapsed_ms,
            )
        )
    else:
        add_line(
            (
                time.time(),
                "POST %s model=- version=- rows=0 status=%d time_ms=%.2f",
                _log_path(scope),
                status,
                elapsed_ms,
            )
        )


class Predict:
    """ASGI endpoint of ``POST /predictions/{model_name}[/{version}]`` (a class: Starlette calls it raw)."""

    def __init__(self, served: _Served) -> None:
        self.served = served

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        view = self.served.live.current
        handler = _lookup(view, scope)
        if handler is None:
            answer: _Answer = (404, _not_found(view, scope), 0, None, "unknown")
        elif (encoding := _content_encoding(scope)) is not None:
            answer = (415, _unsupported_encoding(encoding), 0, None, "unknown")
        else:
            answered = await self._answer(handler, scope, receive, start)
            if answered is None:  # the client went away: nobody to answer
                return
            answer = answered
        status, body, rows, answer_header, form = answer
        await _send_json(send, status, body, answer_header)
        if self.served.add_line is not None:
            _log_prediction(self.served.add_line, scope, handler, rows, status, start)
        metrics = self.served.metrics
        if metrics is not None:  # labels from what is loaded, never from the client's path
            model, version = (handler.model_name, handler.version) if handler is not None else ("unknown", "unknown")
            if handler is None and scope["path_params"].get("model_name") in view.latest:
                model = scope["path_params"]["model_name"]  # a loaded model, a version it does not have
            metrics.request(model, version, form, status, time.perf_counter() - start, rows)

    async def _answer(
        self, handler: ModelHandler, scope: dict[str, Any], receive: Receive, start: float
    ) -> _Answer | None:
        """The handler's answer to the body, a 413 when the body is too large, None when the client left."""
        limit = self.served.max_body_bytes
        content_length, header_length = _length_headers(scope)
        try:
            body = await _read_body(content_length, receive, limit)
        except _Disconnected:
            if self.served.add_line is not None:
                self.served.add_line(
                    (
                        time.time(),
                        "POST %s model=%s version=%s rows=0 status=- time_ms=%.2f client disconnected "
                        "before sending its body",
                        _log_path(scope),
                        handler.model_name,
                        handler.version,
                        (time.perf_counter() - start) * 1000.0,
                    )
                )
            return None
        except _TooLarge as exc:
            message = (
                f"request body is too large ({exc}); this server accepts at most {limit} bytes "
                "(--max-body-bytes): split the rows over several requests"
            )
            if self.served.metrics is not None:
                self.served.metrics.reject("body_too_large")
            return 413, _error(message), 0, None, "unknown"
        return await self._run(handler, body, header_length)

    async def _run(self, handler: ModelHandler, body: bytes, header_length: int | str | None) -> _Answer:
        """The handler's answer: the request is decoded and the answer encoded here on the event loop; the
        model's run (onnxruntime, which releases the GIL) goes to a worker thread, or stays on the loop for a
        small request to a model that proved fast (:meth:`WorkerPool.predict`): 503 when no thread was free in
        time, 504 past the deadline. (The whole answer in the thread cost about twice the server CPU per batch-1
        request: the loop and the worker contended for the GIL; see docs/benchmark-history.md.)"""
        timeout = self.served.request_timeout
        form = "unknown"
        try:
            decoded = handler.decode(body, header_length=header_length, http=True)
            if isinstance(decoded, Answer):
                if decoded.status == 413 and self.served.metrics is not None:
                    self.served.metrics.reject("too_many_rows")
                return decoded.status, decoded.body, decoded.rows, decoded.header_length, form
            form = _form(decoded, handler, header_length)
            rows = len(decoded.matrix)
            if self.served.drift is not None:
                self.served.drift.observe(handler, decoded.matrix)
            out, seconds = await self.served.workers.predict(
                handler.model_name, timeout, handler.run, decoded.matrix, rows
            )
            if self.served.metrics is not None:
                self.served.metrics.inference(handler.model_name, seconds)
            answer = handler.encode(decoded, out)
        except Busy as exc:
            log.error("%s", exc)
            return 503, _error(str(exc)), 0, None, form
        except Expired:
            message = (
                f"model {_shown(handler.model_name)} version {handler.version} did not answer within {timeout:g}s "
                "(serve --request-timeout); the run goes on in the background and holds one of the model's "
                "--model-concurrency threads until it ends"
            )
            log.error("%s", message)
            return 504, _error(message), 0, None, form
        except Exception as exc:  # noqa: BLE001 - answered (and logged) as a 500, never a dropped connection
            log.error("internal error answering model %s version %s", handler.model_name, handler.version, exc_info=exc)
            return 500, _error(f"internal server error: {type(exc).__name__}"), 0, None, form
        return answer.status, answer.body, answer.rows, answer.header_length, form


class _Routes:
    """The plain request/response routes and the error handlers (bound methods are Starlette endpoints)."""

    def __init__(self, served: _Served) -> None:
        import orjson
        from starlette.responses import Response

        self.served = served
        self.response = Response
        self.ping_body = orjson.dumps({"status": "Healthy"})

    def plain(self, status: int, body: bytes, request: Request, start: float) -> Response:
        """A JSON answer, with its access-log line."""
        add_line = self.served.add_line
        if add_line is not None:
            add_line(
                (
                    time.time(),
                    "%s %s status=%d time_ms=%.2f",
                    request.method,
                    _log_path(request.scope),
                    status,
                    (time.perf_counter() - start) * 1000.0,
                )
            )
        return self.response(body, status_code=status, media_type="application/json")

    async def ping(self, request: Request) -> Response:
        return self.plain(200, self.ping_body, request, time.perf_counter())

    async def list_models(self, request: Request) -> Response:
        return self.plain(200, self.served.live.current.models_body, request, time.perf_counter())

    async def describe_model(self, request: Request) -> Response:
        start = time.perf_counter()
        view = self.served.live.current
        name = request.path_params["model_name"]
        raw_path = request.scope.get("raw_path") or b""
        body = None if _encoded_separator(raw_path) else view.metadata_bodies.get(name)
        if body is None:
            return self.plain(
                404, _error(f"model {_shown(name)} not found; loaded models: {view.loaded_names}"), request, start
            )
        return self.plain(200, body, request, start)

    async def drift(self, request: Request) -> Response:
        """``GET /models/{model_name}/drift``: every served version's window against its training statistics."""
        import orjson

        start = time.perf_counter()
        view = self.served.live.current
        name = request.path_params["model_name"]
        by_version = None if _encoded_separator(request.scope.get("raw_path") or b"") else view.versions.get(name)
        if by_version is None:
            return self.plain(
                404, _error(f"model {_shown(name)} not found; loaded models: {view.loaded_names}"), request, start
            )
        monitor = self.served.drift
        handlers = [by_version[v] for v in sorted(by_version, key=int)]
        versions = monitor.report(handlers) if monitor is not None else []
        body = orjson.dumps({"model": name, "enabled": monitor is not None, "versions": versions})
        return self.plain(200, body, request, start)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own errors (no route, method not allowed) as JSON that says what would have worked."""
        status = getattr(exc, "status_code", 500)
        if status == 404:
            message = (
                f"no route for {request.method} {_shown(request.url.path)}; routes: GET /ping, GET /health/live, "
                "GET /health/ready, GET /metrics, GET /models, GET /models/{model_name}, "
                "GET /models/{model_name}/drift, POST /predictions/{model_name}, "
                "POST /predictions/{model_name}/{version}"
            )
        elif status == 405:
            allowed = (getattr(exc, "headers", None) or {}).get("Allow", "")
            message = (
                f"method {_shown(request.method)} is not allowed on {_shown(request.url.path)}; allowed: {allowed}"
            )
        else:
            message = str(getattr(exc, "detail", "")) or "bad request"
        if self.served.add_line is not None:
            self.served.add_line((time.time(), "%s %s status=%d", request.method, _log_path(request.scope), status))
        return self.response(
            _error(message), status_code=status, media_type="application/json", headers=getattr(exc, "headers", None)
        )

    async def internal_error(self, request: Request, exc: Exception) -> Response:
        """An unexpected exception: a 500 with a JSON body, and its request-log line like every other answer."""
        log.error("internal error on %s %s", request.method, _log_path(request.scope), exc_info=exc)
        if self.served.add_line is not None:
            self.served.add_line((time.time(), "%s %s status=500", request.method, _log_path(request.scope)))
        return self.response(
            _error(f"internal server error: {type(exc).__name__}"), status_code=500, media_type="application/json"
        )


def create_app(
    registry: ModelRegistry | LiveRegistry,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    access_log: AccessLog | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    workers: WorkerPool | None = None,
    metrics: Metrics | None = None,
    metrics_route: bool = True,
    drift: DriftMonitor | None = None,
) -> Starlette:
    """The Starlette application (routes exactly as in contract section 5).

    ``registry`` is a fixed :class:`ModelRegistry` or a :class:`LiveRegistry` whose view reloads replace;
    every request reads the current view once. ``access_log``: where the per-request lines go (None: none).
    Predictions run in ``workers`` (default: a :class:`WorkerPool` with its default bounds) and are answered
    504 after ``request_timeout`` seconds. ``metrics``: the Prometheus metrics requests update (None: none),
    served at ``GET /metrics`` unless ``metrics_route`` is false (``serve --metrics-port`` serves them apart).
    ``drift``: where each decoded request's rows are sampled for ``GET /models/{model_name}/drift`` and the drift
    gauges (None: no drift monitoring).
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    live = registry if isinstance(registry, LiveRegistry) else LiveRegistry(registry, Path("."))
    served = _Served(
        live,
        max_body_bytes,
        access_log.add if access_log is not None else None,
        workers if workers is not None else WorkerPool(),
        request_timeout,
        metrics,
        drift,
    )
    if metrics is not None:
        metrics.models(live.current)
    routes, predict = _Routes(served), Predict(served)
    table = [
        Route("/ping", routes.ping, methods=["GET"]),
        *probe_routes(lambda: served.live.current, routes.plain),
        Route("/models", routes.list_models, methods=["GET"]),
        Route("/models/{model_name}", routes.describe_model, methods=["GET"]),
        Route("/models/{model_name}/drift", routes.drift, methods=["GET"]),
        Route("/predictions/{model_name}", predict, methods=["POST"]),
        Route("/predictions/{model_name}/{version}", predict, methods=["POST"]),
    ]
    if metrics is not None and metrics_route:
        table.append(metrics_route_for(metrics))
    app = Starlette(
        routes=table, exception_handlers={HTTPException: routes.http_error, Exception: routes.internal_error}
    )
    app.router.redirect_slashes = False  # "/predictions/xgb/" is a 404 that says so, not a redirect of a POST
    return app
