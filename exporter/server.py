"""``python -m exporter serve``: every exported model behind TorchServe-style routes (contract section 5).

Starlette routing on uvicorn (uvloop + httptools). The prediction route is a bare ASGI endpoint: it reads the
body under a byte limit (413 on ``Content-Length`` alone when it announces too much), hands the bytes to
:meth:`exporter.handler.ModelHandler.handle_request` and sends the bytes back, so the per-request cost is the
handler's plus a few microseconds. Models are looked up only in an in-memory dict built at startup, never on
disk, so no request can reach a file.

Heavy imports (starlette, uvicorn, onnxruntime) happen inside functions: ``python -m exporter --help`` imports
this module.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from exporter.contract import version_dirs
from exporter.errors import ExporterError

if TYPE_CHECKING:  # pragma: no cover
    from exporter.handler import ModelHandler


DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: bodies above this size are answered in a worker thread so that small requests keep flowing meanwhile
THREAD_OFFLOAD_BYTES = 256 * 1024

log = logging.getLogger("exporter.serve")

_JSON_HEADERS = [(b"content-type", b"application/json")]

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


# ---------------------------------------------------------------------------------------------- registry
@dataclass
class ModelRegistry:
    """The loaded models: ``versions[name][version] -> handler`` and the latest version per name."""

    versions: dict[str, dict[str, "ModelHandler"]] = field(default_factory=dict)
    latest: dict[str, "ModelHandler"] = field(default_factory=dict)

    @classmethod
    def from_artifacts(
        cls, artifacts: Path, *, max_rows: int | None = None, threads: int | None = None
    ) -> "ModelRegistry":
        """Load every version of every model under ``artifacts``; raises ExporterError listing every failure."""
        from exporter.handler import DEFAULT_MAX_ROWS, HandlerError, ModelHandler

        artifacts = Path(artifacts)
        if artifacts.exists() and not artifacts.is_dir():
            raise ExporterError(
                f"--artifacts {str(artifacts)!r} is a file, not a directory; expected the artifacts tree "
                "(<model_name>/<version>/) written by python -m exporter export"
            )
        if not artifacts.is_dir():
            raise ExporterError(
                f"artifacts directory {str(artifacts)!r} does not exist; export a model first "
                "(python -m exporter export xgb) or pass --artifacts DIR"
            )
        registry = cls()
        problems: list[str] = []
        for model_dir in sorted(artifacts.iterdir()):
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            for vdir in version_dirs(model_dir):
                try:
                    handler = ModelHandler.load(vdir, max_rows=max_rows or DEFAULT_MAX_ROWS, threads=threads)
                except HandlerError as exc:
                    problems.append(f"{vdir}: {exc.message}")
                    continue
                if handler.model_name != model_dir.name:
                    problems.append(
                        f"{vdir}: metadata.json names the model {handler.model_name!r}, "
                        f"but it sits in directory {model_dir.name!r}"
                    )
                    continue
                registry.versions.setdefault(model_dir.name, {})[vdir.name] = handler
                registry.latest[model_dir.name] = handler  # ascending order: the last one wins
        if problems:
            raise ExporterError("cannot serve; some artifacts failed to load:\n  " + "\n  ".join(problems))
        if not registry.latest:
            raise ExporterError(
                f"no model found under {str(artifacts)!r}; expected <model_name>/<version>/metadata.json "
                "(a Triton-style model repository written by python -m exporter export)"
            )
        return registry

    def describe(self) -> dict[str, Any]:
        """Answer of ``GET /models``."""
        return {
            "models": [
                {
                    "name": name,
                    "versions": sorted(versions, key=int),
                    "latest_version": self.latest[name].version,
                    "prediction_format": self.latest[name].prediction_format,
                    "feature_columns": self.latest[name].feature_columns,
                }
                for name, versions in sorted(self.versions.items())
            ]
        }


# ---------------------------------------------------------------------------------------------- app
async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
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


def _log_path(scope: dict[str, Any]) -> str:
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


async def _read_body(scope: dict[str, Any], receive: Receive, limit: int) -> bytes:
    """The request body, refusing (``_TooLarge``) as soon as it is known to exceed ``limit`` bytes."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                if int(value) > limit:
                    raise _TooLarge(f"Content-Length {int(value)}")
            except ValueError:
                pass
            break
    message = await receive()
    body = message.get("body", b"")
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


def create_app(registry: ModelRegistry, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """The Starlette application for ``registry`` (routes exactly as in contract section 5)."""
    import orjson
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    versions = registry.versions
    latest = registry.latest
    info = log.info
    perf = time.perf_counter
    models_body = orjson.dumps(registry.describe())
    metadata_bodies = {name: orjson.dumps(h.metadata) for name, h in latest.items()}
    ping_body = orjson.dumps({"status": "Healthy"})
    loaded = ", ".join(sorted(latest))

    class Predict:
        """ASGI endpoint of ``POST /predictions/{model_name}[/{version}]`` (a class: Starlette calls it raw)."""

        async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
            start = perf()
            params = scope["path_params"]
            name = params["model_name"]
            version = params.get("version")
            rows = 0
            raw_path = scope.get("raw_path") or b""
            if b"%" in raw_path and _encoded_separator(raw_path):
                handler = None  # "xgb%2F1" is the model name "xgb/1", not model xgb version 1
            elif version is None:
                handler = latest.get(name)
            else:
                handler = versions.get(name, {}).get(version)
            if handler is None:
                status = 404
                if b"%" in raw_path and _encoded_separator(raw_path):
                    answer = _error(
                        f"model names cannot contain '/' or '\\' (got {_shown(scope['path'])}); loaded models: {loaded}"
                    )
                elif name not in latest:
                    answer = _error(f"model {_shown(name)} not found; loaded models: {loaded}")
                else:
                    answer = _error(
                        f"model {_shown(name)} has no version {_shown(version or '')}; loaded versions: "
                        f"{', '.join(sorted(versions[name], key=int))}"
                    )
            elif _content_encoding(scope) is not None:  # issue 10: say so instead of failing to decode
                status, answer = 415, _error(
                    f"request body has Content-Encoding {_shown(_content_encoding(scope) or '')}; this server "
                    "accepts only uncompressed JSON bodies (Content-Encoding identity or none): send it uncompressed"
                )
            else:
                try:
                    body = await _read_body(scope, receive, max_body_bytes)
                except _Disconnected:
                    info("POST %s model=%s version=%s rows=0 status=- client disconnected before sending its body",
                         _log_path(scope), handler.model_name, handler.version)
                    return
                except _TooLarge as exc:
                    status, answer = 413, _error(
                        f"request body is too large ({exc}); this server accepts at most {max_body_bytes} bytes "
                        "(--max-body-bytes): split the rows over several requests"
                    )
                else:
                    if len(body) > THREAD_OFFLOAD_BYTES:
                        status, answer, rows = await run_in_threadpool(handler.handle_request, body)
                    else:
                        status, answer, rows = handler.handle_request(body)
            await _send_json(send, status, answer)
            if handler is not None:
                info("POST %s model=%s version=%s rows=%d status=%d time_ms=%.2f", _log_path(scope),
                     handler.model_name, handler.version, rows, status, (perf() - start) * 1000.0)
            else:
                info("POST %s model=- version=- rows=0 status=%d time_ms=%.2f", _log_path(scope), status,
                     (perf() - start) * 1000.0)

    def _plain(status: int, body: bytes, request: Request, start: float) -> Response:
        info("%s %s status=%d time_ms=%.2f", request.method, _log_path(request.scope), status,
             (perf() - start) * 1000.0)
        return Response(body, status_code=status, media_type="application/json")

    async def ping(request: Request) -> Response:
        return _plain(200, ping_body, request, perf())

    async def list_models(request: Request) -> Response:
        return _plain(200, models_body, request, perf())

    async def describe_model(request: Request) -> Response:
        start = perf()
        name = request.path_params["model_name"]
        raw_path = request.scope.get("raw_path") or b""
        body = None if _encoded_separator(raw_path) else metadata_bodies.get(name)
        if body is None:
            return _plain(404, _error(f"model {_shown(name)} not found; loaded models: {loaded}"), request, start)
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
            message = f"method {_shown(request.method)} is not allowed on {_shown(request.url.path)}; allowed: {allowed}"
        else:
            message = str(getattr(exc, "detail", "")) or "bad request"
        log.info("%s %s status=%d", request.method, _log_path(request.scope), status)
        return Response(_error(message), status_code=status, media_type="application/json",
                        headers=getattr(exc, "headers", None))

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, _log_path(request.scope))
        return Response(_error(f"internal server error: {type(exc).__name__}"), status_code=500,
                        media_type="application/json")

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


# ---------------------------------------------------------------------------------------------- CLI


