"""``python -m exporter serve``: the CLI over :mod:`exporter.serving.server` (load the tree, listen, serve until
stopped)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

from exporter.errors import ExporterError
from exporter.export.tree import require_tree
from exporter.serving.http_limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_HEADER_BYTES,
)
from exporter.serving.metrics import MULTIPROC_ENV, Metrics, serve_metrics_port
from exporter.serving.process import (
    ServeOptions,
    configure_logging,
    load_registry,
    print_loaded,
    serve_forever,
    usable_cores,
)
from exporter.serving.server import DEFAULT_MAX_BODY_BYTES
from exporter.serving.supervisor import Supervisor
from exporter.serving.workers import (
    DEFAULT_INLINE_SECONDS,
    DEFAULT_MODEL_CONCURRENCY,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WORKER_THREADS,
)

HELP = "serve every exported model over HTTP with TorchServe-style routes"
#: exporter.serving.drift.DEFAULT_WINDOW, not imported here: prometheus_client reads its multiprocess setting when
#: first imported, which must happen in ``run``, after the metrics are set up (a test checks the two agree)
DEFAULT_DRIFT_WINDOW = 10_000


DESCRIPTION = """\
Serve every model of an artifacts tree (a Triton-style model repository) over HTTP.

Routes:
  GET  /ping                                  {"status": "Healthy"} once every model is loaded
  GET  /health/live                           200 while the process answers (Kubernetes liveness probe)
  GET  /health/ready                          200 when every version in the tree loaded, else 503 naming
                                              the ones that failed (readiness probe)
  GET  /metrics                               Prometheus text format, every worker added up
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

Slow models: model runs go to worker threads, off the event loop (a request of at most 64 rows to a model
whose last 16 such runs each took under --inline-max-ms of CPU time stays on the loop). A prediction not answered
within --request-timeout seconds (30) gets 504; onnxruntime cannot stop a running graph, so the run keeps
its thread until it ends. One model holds at most --model-concurrency threads (8), all models together at
most --worker-threads (32); a request beyond either waits for a thread until its deadline, then gets 503
(no queueing forever behind stuck runs). /ping and the other models keep
answering meanwhile.

Workers: --workers N serving processes share the port (default: one per usable core, CPU affinity capped
by a cgroup CPU limit). A supervisor binds the socket, starts the workers (spawn: fresh interpreters), forwards
SIGHUP, restarts a worker that dies (back-off 0.5 s doubling to 30 s, logged with its exit code or signal)
and on SIGTERM/SIGINT lets every worker drain its requests in flight, for at most
max(--request-timeout, --body-timeout) + 1 seconds. --workers 1: one process, no supervisor.

Metrics: GET /metrics (or --metrics-port PORT apart): requests by model, version, form and status class,
request and inference latency, rows per request, rejected requests, reloads, versions loaded and failed
(see docs/serving.md). Requests to models that are not loaded count as model="unknown". --no-metrics: off.

Live versions: on SIGHUP, and every --poll SECONDS, the tree is scanned again: new versions become
servable, removed ones go away, requests in flight finish on the version they started with. A new
version that fails to load (or a model directory whose name is not UTF-8) is logged and listed under
"failed" in GET /models; the versions already serving stay, and a failed version is tried again once any
of its files changes. (At startup any broken entry stops serve, exit 2, with every problem listed.)

Example:
  python -m exporter serve --artifacts artifacts --port 8080 --poll 10
  curl -s localhost:8080/predictions/xgb -d @artifacts/xgb/1/sample_request.json
  kill -HUP <pid>    # pick up new versions now (the supervisor's pid: it tells every worker)
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
    # processes, the event-loop fast path, metrics
    parser.add_argument(
        "--workers",
        default=None,
        type=_positive_int,
        help="serving processes on the one port, each with every model loaded; a supervisor restarts one that "
        "dies (default: one per usable core: CPU affinity, capped by a cgroup CPU limit; 1: a single process)",
    )
    parser.add_argument(
        "--inline-max-ms",
        default=DEFAULT_INLINE_SECONDS * 1000,
        type=_non_negative_float,
        metavar="MS",
        help="a request of at most 64 rows runs on the event loop (no thread hand-off) once its model's last 16 "
        f"such runs each took under MS milliseconds of CPU time; 0: every run in a worker thread (default: "
        f"{DEFAULT_INLINE_SECONDS * 1000:g})",
    )
    parser.add_argument(
        "--metrics-port",
        default=None,
        type=int,
        metavar="PORT",
        help="serve GET /metrics on this port (same --host) instead of the main one (default: on the main port)",
    )
    parser.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        help="no Prometheus metrics and no /metrics route (to measure what they cost)",
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


def _workers(args: argparse.Namespace) -> tuple[int, str]:
    """How many serving processes, and why (said in the startup line)."""
    if args.workers is not None:
        return args.workers, f"--workers {args.workers}"
    cores, found = usable_cores()
    return cores, f"the default: one per usable core ({found})"


def _options(args: argparse.Namespace, workers: int) -> ServeOptions:
    return ServeOptions(
        artifacts=args.artifacts,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        max_rows=args.max_rows,
        threads=args.threads,
        log_level=args.log_level,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_header_bytes=args.max_header_bytes,
        request_timeout=args.request_timeout,
        worker_threads=args.worker_threads,
        model_concurrency=args.model_concurrency,
        poll=args.poll,
        inline_seconds=args.inline_max_ms / 1000.0,
        metrics=args.metrics,
        metrics_port=args.metrics_port,
        workers=workers,
        drift_window=None if args.no_drift else args.drift_window,
    )


def run(args: argparse.Namespace) -> int:
    """Load every model, then serve until interrupted (SIGINT/SIGTERM); reload on SIGHUP and every --poll seconds."""
    for name in ("port", "metrics_port"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 65535:  # checked before the models load
            flag = "--" + name.replace("_", "-")
            raise ExporterError(f"{flag} must be from 0 to 65535 (0 picks a free port), got {value}")
    if args.metrics_port is not None and not args.metrics:
        raise ExporterError("--metrics-port and --no-metrics contradict each other; give one of them")
    require_tree(args.artifacts)  # before any worker starts: one clear line, not one per worker
    configure_logging(args.log_level)
    started = time.perf_counter()
    workers, why = _workers(args)
    options = _options(args, workers)
    registry = metrics = None
    metrics_port: int | None = None
    if workers == 1:
        os.environ.pop(MULTIPROC_ENV, None)  # one process: metrics in memory, never a stray directory's files
        registry = load_registry(options, strict=True)
        if args.metrics:
            metrics = Metrics()
            if args.metrics_port is not None:
                metrics_port = serve_metrics_port(args.host, args.metrics_port, metrics.registry)[1]
    sock = _listen_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host

    def announce(models: int, metrics_port: int | None) -> None:
        # tests and scripts wait for this exact line (it carries the real port when --port 0 was given)
        print(
            f"exporter serve: listening on http://{shown_host}:{port} "
            f"({models} models, loaded in {time.perf_counter() - started:.2f}s, pid {os.getpid()}, "
            f"{workers} worker process{'es' if workers > 1 else ''}: {why}"
            + (f", metrics on port {metrics_port}" if metrics_port is not None else "")
            + (", metrics off" if not args.metrics else "")
            + (f", polling every {args.poll:g}s" if args.poll else "")
            + ")",
            file=sys.stderr,
            flush=True,
        )

    if registry is None:
        return Supervisor(options, sock, announce).run()
    print_loaded(registry)
    models = len(registry.latest)
    serve_forever(options, sock, registry, lambda: announce(models, metrics_port), metrics)
    return 0
