"""One serving process of ``python -m exporter serve``: load the tree, answer on a listening socket until stopped.

With ``--workers 1`` the command runs :func:`serve_forever` itself; with more, the supervisor
(:mod:`exporter.serving.supervisor`) starts :func:`worker_main` in fresh interpreters (``spawn``: no
onnxruntime session or thread is ever forked) on the socket it bound once. Either way the process reloads on
SIGHUP and every ``--poll`` seconds, and on SIGTERM/SIGINT stops accepting connections, lets in-flight requests
finish (at most :func:`drain_seconds`) and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.serving.live_registry import LiveRegistry, ModelRegistry, Reloader, scan

log = logging.getLogger("exporter.serve")


@dataclass(frozen=True)
class ServeOptions:
    """Everything a serving process needs from the command line (picklable: it travels to spawned workers)."""

    artifacts: Path
    host: str
    port: int
    max_body_bytes: int
    max_rows: int | None
    threads: int | None
    log_level: str
    header_timeout: float
    body_timeout: float
    keep_alive_timeout: int
    max_header_bytes: int
    request_timeout: float
    worker_threads: int
    model_concurrency: int
    poll: float
    inline_seconds: float
    metrics: bool
    metrics_port: int | None
    workers: int
    #: rows of recent requests per version the drift monitor compares with training (None: no drift monitoring)
    drift_window: int | None = None


def drain_seconds(options: ServeOptions) -> int:
    """How long a stopping process lets in-flight requests finish: a prediction is answered (504 at worst) within
    ``--request-timeout`` and a body arrives within ``--body-timeout``, so nothing legitimate takes longer."""
    return math.ceil(max(options.request_timeout, options.body_timeout)) + 1


def usable_cores() -> tuple[int, str]:
    """Cores this process may use (CPU affinity, capped by a cgroup CPU quota as Kubernetes limits set) and how
    that was found (for the startup line)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    if quota is not None and quota < affinity:
        return max(1, math.floor(quota)), f"cgroup CPU limit {quota:g} of {affinity} cores in the affinity mask"
    return affinity, f"{affinity} cores in the CPU affinity mask, " + (
        "no cgroup CPU limit" if quota is None else f"cgroup CPU limit {quota:g}"
    )


def _cgroup_cpu_limit() -> float | None:
    """The CPU quota in cores (cgroup v2 ``cpu.max``, else v1 ``cfs_quota_us``), None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def configure_logging(level: str) -> None:
    """``exporter.serve`` lines on stderr in the one layout every line of the server has."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def load_registry(options: ServeOptions, strict: bool) -> ModelRegistry:
    """The tree's models: ``strict`` (startup) refuses any broken entry with every problem listed; otherwise (a
    restarted worker) the broken ones are listed as failed, as a reload does."""
    if strict:
        return ModelRegistry.from_artifacts(options.artifacts, max_rows=options.max_rows, threads=options.threads)
    return scan(options.artifacts, max_rows=options.max_rows, threads=options.threads)


def print_loaded(registry: ModelRegistry) -> None:
    """One ``loaded`` line per model (printed once per server, not per worker)."""
    for name, by_version in sorted(registry.versions.items()):
        print(
            f"exporter serve: loaded {name} versions {','.join(sorted(by_version, key=int))} "
            f"(latest {registry.latest[name].version}, {registry.latest[name].directory})",
            file=sys.stderr,
        )


def serve_forever(
    options: ServeOptions,
    sock: socket.socket,
    registry: ModelRegistry,
    announce: Callable[[], None],
    metrics: Any = None,
    supervisor_pid: int | None = None,
) -> None:
    """Answer on ``sock`` until SIGTERM/SIGINT, then drain; ``announce()`` runs once the loop is up; requests update
    ``metrics`` (a :class:`~exporter.serving.metrics.Metrics`, None: none). A worker
    (``supervisor_pid`` given) also drains and stops when its supervisor is gone (killed with SIGKILL, say),
    instead of serving on as an orphan nobody restarts or stops."""
    import uvicorn

    from exporter.serving.access_log import AccessLog
    from exporter.serving.server import create_app
    from exporter.serving.workers import WorkerPool

    live = LiveRegistry(registry, options.artifacts, max_rows=options.max_rows, threads=options.threads)
    access_log = AccessLog(sys.stderr) if log.isEnabledFor(logging.INFO) else None
    drift = None
    if options.drift_window is not None:
        from exporter.serving.drift import DriftMonitor  # after the metrics set-up: prometheus_client reads it once

        drift = DriftMonitor(options.drift_window)
    app = create_app(
        live,
        max_body_bytes=options.max_body_bytes,
        access_log=access_log,
        request_timeout=options.request_timeout,
        workers=WorkerPool(options.worker_threads, options.model_concurrency, options.inline_seconds),
        metrics=metrics,
        metrics_route=options.metrics_port is None,
        drift=drift,
    )
    config = _uvicorn_config(app, options, metrics)
    server = uvicorn.Server(config)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        reloader = Reloader(live, options.poll, on_reload=metrics.reloaded if metrics is not None else None)
        signal.signal(signal.SIGHUP, lambda *_: loop.call_soon_threadsafe(reloader.request, "SIGHUP"))
        reloads = loop.create_task(reloader.run())
        watch = loop.create_task(_watch_supervisor(server, supervisor_pid)) if supervisor_pid else None
        flushes = loop.create_task(metrics.flush_every()) if metrics is not None else None
        if drift is not None:
            drift.start()
        announce()
        try:
            await server.serve(sockets=[sock])
        finally:
            for task in (reloads, watch, flushes):
                if task is not None:
                    task.cancel()
            if metrics is not None:
                metrics.flush()  # the drained requests' counts, before the process ends
            if drift is not None:
                drift.stop()

    # uvicorn handles SIGTERM/SIGINT while it serves and raises the signal again once it has drained: these
    # handlers take that second delivery, so the process ends normally (exit 0, the request log flushed)
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: None)
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(serve())
    finally:
        if access_log is not None:
            access_log.close()


def _uvicorn_config(app: Any, options: ServeOptions, metrics: Any) -> Any:
    """uvicorn on uvloop with httptools behind header/body timeouts and a header size limit
    (:mod:`exporter.serving.guarded_http`); refusals count in ``metrics``."""
    import uvicorn

    from exporter.serving.guarded_http import guarded_protocol

    return uvicorn.Config(
        app,
        loop="uvloop",
        http=guarded_protocol(
            header_timeout=options.header_timeout,
            body_timeout=options.body_timeout,
            max_header_bytes=options.max_header_bytes,
            on_refuse=metrics.reject if metrics is not None else None,
        ),
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_keep_alive=options.keep_alive_timeout,
        timeout_graceful_shutdown=drain_seconds(options),
    )


async def _watch_supervisor(server: Any, supervisor_pid: int) -> None:
    """Stop ``server`` (a graceful drain) once the process's parent is no longer ``supervisor_pid``."""
    while os.getppid() == supervisor_pid:
        await asyncio.sleep(1.0)
    log.error(
        "the supervisor (pid %d) is gone: draining and stopping this worker (pid %d)", supervisor_pid, os.getpid()
    )
    server.should_exit = True


def worker_main(
    options: ServeOptions, sock: socket.socket, index: int, strict: bool, conn: Any, supervisor_pid: int
) -> None:
    """A worker process (started by the supervisor with ``spawn``): load, tell the supervisor, serve.

    Sends ``("ready", models, seconds)`` once it answers, or ``("error", message)`` and exits 2 when the tree
    cannot be served.
    """
    configure_logging(options.log_level)
    started = time.perf_counter()
    try:
        registry = load_registry(options, strict)
    except ExporterError as exc:
        conn.send(("error", str(exc)))
        conn.close()
        sys.exit(exc.exit_code)
    if index == 0 and strict:
        print_loaded(registry)

    def announce() -> None:
        conn.send(("ready", len(registry.latest), time.perf_counter() - started))
        conn.close()

    metrics = None
    if options.metrics:
        from exporter.serving.metrics import Metrics

        metrics = Metrics()  # its values go to the supervisor's directory (PROMETHEUS_MULTIPROC_DIR)
    serve_forever(options, sock, registry, announce, metrics, supervisor_pid)
