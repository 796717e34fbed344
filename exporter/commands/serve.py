"""``python -m exporter serve``: the CLI over :mod:`exporter.serving.server` (load the tree, listen, serve until
stopped)."""

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

from exporter.errors import ExporterError
from exporter.serving.http_limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_HEADER_BYTES,
)
from exporter.serving.live_registry import LiveRegistry, Reloader
from exporter.serving.server import DEFAULT_MAX_BODY_BYTES, ModelRegistry, create_app, log
from exporter.serving.workers import (
    DEFAULT_MODEL_CONCURRENCY,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WORKER_THREADS,
    WorkerPool,
)

HELP = "serve every exported model over HTTP with TorchServe-style routes"
#: exporter.serving.drift.DEFAULT_WINDOW, not imported here: prometheus_client reads its multiprocess setting when
#: first imported, which must happen in ``run``, after the metrics are set up (a test checks the two agree)
DEFAULT_DRIFT_WINDOW = 10_000


DESCRIPTION = """\
Serve every model of an artifacts tree (a Triton-style model repository) over HTTP.

Routes:
  GET  /ping                                  {"status": "Healthy"} once every model is loaded
  POST /predictions/{model_name}              latest version
  POST /predictions/{model_name}/{version}    that version
  GET  /models                                loaded models and versions, and versions that failed to load
  GET  /models/{model_name}                   metadata.json of the latest version
  GET  /models/{model_name}/drift             recent request rows against the training statistics

Request bodies: TorchServe {"data": [{"<column>": <number>, ...}, ...]} or an Open Inference
Protocol body {"inputs": [{"name": "features", "shape": [rows, columns], "datatype": "FP64", "data": [...]}]},
also with Triton's binary tensor data extension (Inference-Header-Content-Length header, binary_data_size
on the input, binary_data on the requested output; answered as application/octet-stream with the header).
Errors are 4xx with {"error": "..."}; one log line per request on stderr.

Slow or oversized clients: request line and headers must arrive within --header-timeout seconds (10),
the body within --body-timeout seconds of the headers (30), else 408 and the connection closes; headers
above --max-header-bytes (65536) get 431; idle keep-alive connections close after --keep-alive-timeout (30).

Slow models: predictions run in worker threads, never on the event loop. A prediction not answered
within --request-timeout seconds (30) gets 504; onnxruntime cannot stop a running graph, so the run keeps
its thread until it ends. One model holds at most --model-concurrency threads (8), all models together at
most --worker-threads (32); a request beyond either waits for a thread until its deadline, then gets 503
(no queueing forever behind stuck runs). /ping and the other models keep
answering meanwhile.

Live versions: on SIGHUP, and every --poll SECONDS, the tree is scanned again: new versions become
servable, removed ones go away, requests in flight finish on the version they started with. A new
version that fails to load (or a model directory whose name is not UTF-8) is logged and listed under
"failed" in GET /models; the versions already serving stay, and a failed version is tried again once any
of its files changes. (At startup any broken entry stops serve, exit 2, with every problem listed.)

Example:
  python -m exporter serve --artifacts artifacts --port 8080 --poll 10
  curl -s localhost:8080/predictions/xgb -d @artifacts/xgb/1/sample_request.json
  kill -HUP <pid>    # pick up new versions now
"""


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
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="'warning' silences the per-request lines (default: info)",
    )
    # slow and oversized clients (exporter.serving.http_limits): uvicorn alone would hold such connections forever
    parser.add_argument(
        "--header-timeout",
        default=DEFAULT_HEADER_TIMEOUT,
        type=_positive_float,
        help="seconds a client has to send its request line and headers, else 408 and the "
        f"connection closes (default: {DEFAULT_HEADER_TIMEOUT:g})",
    )
    parser.add_argument(
        "--body-timeout",
        default=DEFAULT_BODY_TIMEOUT,
        type=_positive_float,
        help="seconds a client has to send the whole body after its headers, else 408 and the "
        f"connection closes (default: {DEFAULT_BODY_TIMEOUT:g})",
    )
    parser.add_argument(
        "--keep-alive-timeout",
        default=DEFAULT_KEEP_ALIVE_TIMEOUT,
        type=_positive_int,
        help="seconds an idle keep-alive connection stays open between requests "
        f"(default: {DEFAULT_KEEP_ALIVE_TIMEOUT})",
    )
    parser.add_argument(
        "--max-header-bytes",
        default=DEFAULT_MAX_HEADER_BYTES,
        type=_positive_int,
        help=f"largest request line plus headers, else 431 (default: {DEFAULT_MAX_HEADER_BYTES})",
    )
    # slow or stuck models (exporter.serving.workers): predictions never run on the event loop
    parser.add_argument(
        "--request-timeout",
        default=DEFAULT_REQUEST_TIMEOUT,
        type=_positive_float,
        metavar="SECONDS",
        help="seconds a prediction may run before it is answered 504 (the run itself cannot be stopped and "
        f"keeps its worker thread until it ends) (default: {DEFAULT_REQUEST_TIMEOUT:g})",
    )
    parser.add_argument(
        "--worker-threads",
        default=DEFAULT_WORKER_THREADS,
        type=_positive_int,
        help="threads predictions run in, for all models together; a request when all are busy waits for one "
        "until its deadline, then gets 503 "
        f"(default: {DEFAULT_WORKER_THREADS})",
    )
    parser.add_argument(
        "--model-concurrency",
        default=DEFAULT_MODEL_CONCURRENCY,
        type=_positive_int,
        help="most worker threads one model may occupy (runs that timed out included, until they end); a "
        "request beyond that waits until its deadline, then gets 503, so one stuck model cannot take every thread "
        f"(default: {DEFAULT_MODEL_CONCURRENCY})",
    )
    parser.add_argument(
        "--poll",
        default=0.0,
        type=_non_negative_float,
        metavar="SECONDS",
        help="rescan the artifacts tree every SECONDS: new versions become servable, removed ones go away "
        "(default: 0, only on SIGHUP)",
    )
    # input drift (exporter.serving.drift): recent request rows against the training statistics
    parser.add_argument(
        "--drift-window",
        default=DEFAULT_DRIFT_WINDOW,
        type=_positive_int,
        metavar="N",
        help="rows of recent requests per version compared with the training statistics "
        f"(GET /models/{{model_name}}/drift, the exporter_drift gauges) (default: {DEFAULT_DRIFT_WINDOW})",
    )
    parser.add_argument(
        "--no-drift", action="store_true", help="no drift monitoring (the drift route answers enabled: false)"
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


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

    if not 0 <= args.port <= 65535:  # checked before the models load
        raise ExporterError(f"--port must be from 0 to 65535 (0 picks a free port), got {args.port}")

    from exporter.serving.access_log import AccessLog
    from exporter.serving.drift import DriftMonitor
    from exporter.serving.guarded_http import guarded_protocol

    _configure_logging(args.log_level)
    started = time.perf_counter()
    registry = ModelRegistry.from_artifacts(args.artifacts, max_rows=args.max_rows, threads=args.threads)
    live = LiveRegistry(registry, args.artifacts, max_rows=args.max_rows, threads=args.threads)
    access_log = AccessLog(sys.stderr) if log.isEnabledFor(logging.INFO) else None
    drift = None if args.no_drift else DriftMonitor(args.drift_window)
    app = create_app(
        live,
        max_body_bytes=args.max_body_bytes,
        access_log=access_log,
        request_timeout=args.request_timeout,
        workers=WorkerPool(args.worker_threads, args.model_concurrency),
        drift=drift,
    )
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
        # httptools with header/body timeouts and a header size limit (exporter.serving.guarded_http)
        http=guarded_protocol(
            header_timeout=args.header_timeout, body_timeout=args.body_timeout, max_header_bytes=args.max_header_bytes
        ),
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_keep_alive=args.keep_alive_timeout,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        reloader = Reloader(live, args.poll)
        signal.signal(signal.SIGHUP, lambda *_: loop.call_soon_threadsafe(reloader.request, "SIGHUP"))
        reloads = loop.create_task(reloader.run())
        if drift is not None:
            drift.start()
        # tests and scripts wait for this exact line (it carries the real port when --port 0 was given)
        print(
            f"exporter serve: listening on http://{shown_host}:{port} "
            f"({len(registry.latest)} models, loaded in {time.perf_counter() - started:.2f}s, pid {os.getpid()}"
            + (f", polling every {args.poll:g}s" if args.poll else "")
            + ")",
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
