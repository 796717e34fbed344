"""``python -m exporter serve``: every exported model behind TorchServe-style routes (contract section 5).

Starlette routing on uvicorn (uvloop + httptools). The prediction route is a bare ASGI endpoint: it reads the
body under a byte limit (413 on ``Content-Length`` alone when it announces too much), hands the bytes (and
``Inference-Header-Content-Length`` for binary tensor data) to :meth:`exporter.handler.ModelHandler.handle_http`
and sends the bytes back, so the per-request cost is the handler's plus a few microseconds. Models are looked
up only in the in-memory view of :mod:`exporter.live_registry` (replaced whole by ``--poll``/SIGHUP reloads),
never on disk, so no request can reach a file. The per-request log line is queued and written by a background
thread (:mod:`exporter.access_log`).

Heavy imports (starlette, uvicorn, onnxruntime) happen inside functions: ``python -m exporter --help`` imports
this module.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from exporter.errors import ExporterError
from exporter.live_registry import LiveRegistry, ModelRegistry, Reloader

if TYPE_CHECKING:  # pragma: no cover
    from exporter.access_log import AccessLog

HELP = "serve every exported model over HTTP with TorchServe-style routes"
DESCRIPTION = """\
Serve every model of an artifacts tree (a Triton-style model repository) over HTTP.

Routes:
  GET  /ping                                  {"status": "Healthy"} once every model is loaded
  POST /predictions/{model_name}              latest version
  POST /predictions/{model_name}/{version}    that version
  GET  /models                                loaded models and versions, and versions that failed to load
  GET  /models/{model_name}                   metadata.json of the latest version

Request bodies: TorchServe {"data": [{"<column>": <number>, ...}, ...]} or an Open Inference
Protocol body {"inputs": [{"name": "features", "shape": [rows, columns], "datatype": "FP64", "data": [...]}]},
also with Triton's binary tensor data extension (Inference-Header-Content-Length header, binary_data_size
on the input, binary_data on the requested output; answered as application/octet-stream with the header).
Errors are 4xx with {"error": "..."}; one log line per request on stderr.

Live versions: on SIGHUP, and every --poll SECONDS, the tree is scanned again: new versions become
servable, removed ones go away, requests in flight finish on the version they started with. A new
version that fails to load is logged and listed under "failed" in GET /models; the versions already
serving stay. (At startup any broken version stops serve with every problem listed.)

Example:
  python -m exporter serve --artifacts artifacts --port 8080 --poll 10
  curl -s localhost:8080/predictions/xgb -d @artifacts/xgb/1/sample_request.json
  kill -HUP <pid>    # pick up new versions now
"""

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: bodies above this size are answered in a worker thread so that small requests keep flowing meanwhile
THREAD_OFFLOAD_BYTES = 256 * 1024

log = logging.getLogger("exporter.serve")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``serve``."""
    parser.add_argument("--artifacts", default="artifacts", type=Path, help="artifacts tree (default: artifacts)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", default=8080, type=int, help="port (default: 8080; 0 picks a free port)")
    parser.add_argument(
        "--max-body-bytes",
        default=DEFAULT_MAX_BODY_BYTES,
        type=_positive_int,
        help=f"largest request body accepted, else 413 (default: {DEFAULT_MAX_BODY_BYTES})",
    )
    parser.add_argument(
        "--max-rows", default=None, type=_positive_int, help="most rows per request, else 413 (default: 10000)"
    )
    parser.add_argument(
        "--threads", default=None, type=_positive_int, help="onnxruntime intra-op threads per model (default: 1)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="'warning' silences the per-request lines (default: info)",
    )
    parser.add_argument(
        "--poll", default=0.0, type=_non_negative_float, metavar="SECONDS",
        help="rescan the artifacts tree every SECONDS: new versions become servable, removed ones go away "
             "(default: 0, only on SIGHUP)",
    )


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"expected a non-negative number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------- registry
# ModelRegistry (one view of the served models) and its live reloading live in exporter.live_registry.


# ---------------------------------------------------------------------------------------------- app
async def _send_json(send: Send, status: int, body: bytes, header_length: int | None = None) -> None:
    """Send an answer: JSON, or (``header_length`` given) a JSON header followed by binary tensor data."""
    if header_length is None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    else:
        headers = [(b"content-type", b"application/octet-stream"),
                   (b"inference-header-content-length", str(header_length).encode()),
                   (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error(message: str) -> bytes:
    import orjson

    return orjson.dumps({"error": message})


def _shown(name: str) -> str:
    """A path parameter quoted for an error message, shortened if huge."""
    return repr(name if len(name) <= 80 else name[:77] + "...")


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


async def _read_body(content_length: bytes | None, receive: Receive, limit: int) -> bytes:
    """The request body, refusing (``_TooLarge``) as soon as it is known to exceed ``limit`` bytes."""
    if content_length is not None:
        try:
            if int(content_length) > limit:
                raise _TooLarge(f"Content-Length {int(content_length)}")
        except ValueError:
            pass
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
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    registry: "ModelRegistry | LiveRegistry",
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    access_log: "AccessLog | None" = None,
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
            else:
                content_length = header_length = None
                for key, value in scope["headers"]:
                    if key == b"content-length":
                        content_length = value
                    elif key == b"inference-header-content-length":
                        header_length = _header_int(value)
                try:
                    body = await _read_body(content_length, receive, max_body_bytes)
                except _TooLarge as exc:
                    status, answer = 413, _error(
                        f"request body is too large ({exc}); this server accepts at most {max_body_bytes} bytes "
                        "(--max-body-bytes): split the rows over several requests"
                    )
                else:
                    if len(body) > THREAD_OFFLOAD_BYTES:
                        status, answer, rows, answer_header = await run_in_threadpool(
                            handler.handle_http, body, header_length)
                    else:
                        status, answer, rows, answer_header = handler.handle_http(body, header_length)
            await _send_json(send, status, answer, answer_header)
            if add_line is not None:
                if handler is not None:
                    add_line((now(), "POST %s model=%s version=%s rows=%d status=%d time_ms=%.2f", _log_path(scope),
                              handler.model_name, handler.version, rows, status, (perf() - start) * 1000.0))
                else:
                    add_line((now(), "POST %s model=- version=- rows=0 status=%d time_ms=%.2f", _log_path(scope),
                              status, (perf() - start) * 1000.0))

    def _plain(status: int, body: bytes, request: Request, start: float) -> Response:
        if add_line is not None:
            add_line((now(), "%s %s status=%d time_ms=%.2f", request.method, _log_path(request.scope), status,
                      (perf() - start) * 1000.0))
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
            return _plain(404, _error(f"model {_shown(name)} not found; loaded models: {view.loaded_names}"),
                          request, start)
        return _plain(200, body, request, start)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        if status == 404:
            message = (
                f"no route for {request.method} {request.url.path}; routes: GET /ping, GET /models, "
                "GET /models/{model_name}, POST /predictions/{model_name}, POST /predictions/{model_name}/{version}"
            )
        elif status == 405:
            allowed = (getattr(exc, "headers", None) or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        else:
            message = str(getattr(exc, "detail", "")) or "bad request"
        if add_line is not None:
            add_line((now(), "%s %s status=%d", request.method, _log_path(request.scope), status))
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


def _header_int(value: bytes) -> int | str:
    """A numeric header as an int, or its text (the handler answers 400 quoting it)."""
    try:
        return int(value)
    except ValueError:
        return value.decode("latin-1")


# ---------------------------------------------------------------------------------------------- CLI
def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048, reuse_port=False)
    except OSError as exc:
        raise ExporterError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def run(args: argparse.Namespace) -> int:
    """Load every model, then serve until interrupted (SIGINT/SIGTERM); reload on SIGHUP and every --poll seconds."""
    import uvicorn

    from exporter.access_log import AccessLog

    _configure_logging(args.log_level)
    started = time.perf_counter()
    registry = ModelRegistry.from_artifacts(args.artifacts, max_rows=args.max_rows, threads=args.threads)
    live = LiveRegistry(registry, args.artifacts, max_rows=args.max_rows, threads=args.threads)
    access_log = AccessLog(sys.stderr) if log.isEnabledFor(logging.INFO) else None
    app = create_app(live, max_body_bytes=args.max_body_bytes, access_log=access_log)
    sock = _listen_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    for name, by_version in sorted(registry.versions.items()):
        print(
            f"exporter serve: loaded {name} versions {','.join(sorted(by_version, key=int))} "
            f"(latest {registry.latest[name].version}, {registry.latest[name].directory})",
            file=sys.stderr,
        )
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        reloader = Reloader(live, args.poll)
        signal.signal(signal.SIGHUP, lambda *_: loop.call_soon_threadsafe(reloader.request, "SIGHUP"))
        reloads = loop.create_task(reloader.run())
        # tests and scripts wait for this exact line (it carries the real port when --port 0 was given)
        print(
            f"exporter serve: listening on http://{shown_host}:{port} "
            f"({len(registry.latest)} models, loaded in {time.perf_counter() - started:.2f}s, pid {os.getpid()}"
            + (f", polling every {args.poll:g}s" if args.poll else "") + ")",
            file=sys.stderr,
            flush=True,
        )
        try:
            await server.serve(sockets=[sock])
        finally:
            reloads.cancel()

    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(serve())
    finally:
        if access_log is not None:
            access_log.close()
    return 0
