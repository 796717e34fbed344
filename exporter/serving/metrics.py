"""``serve``'s Prometheus metrics (``GET /metrics``, or ``--metrics-port``), in one or many worker processes.

With several workers (``serve --workers N``) every worker writes its values to memory-mapped files in a private
directory the supervisor creates (``PROMETHEUS_MULTIPROC_DIR``, set before any worker imports
``prometheus_client``) and removes at exit; whichever process answers ``/metrics`` adds the files of every
worker up (``MultiProcessCollector``), and the supervisor calls :func:`mark_process_dead` for a worker that
died, so its gauges stop counting. With one process the values live in memory.

Labels are bounded by what the server loaded, never by what a client sent: a request to a model or version that
is not loaded is counted as ``model="unknown"`` / ``version="unknown"``.

The request path only adds to plain counters (a dict entry, a histogram bucket found by ``bisect``: about 1 us);
:meth:`Metrics.flush` moves them into ``prometheus_client``'s values every :data:`FLUSH_SECONDS` on the event loop
and before this process answers ``/metrics``. Updating ``prometheus_client`` on every request cost 6-12 us (a
lock per value, a Python loop over the buckets), several per cent of a batch-1 request's ~150 us. So another
worker's last fraction of a second may be missing from a scrape (and is lost if that worker is killed).

Further serving metrics (gauges of another module, say) belong on :attr:`Metrics.registry`: with one process that
registry is what ``/metrics`` answers; with several, every value any worker writes is in the shared files.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from exporter.serving.live_registry import ModelRegistry

#: the environment variable prometheus_client reads (at import) to write values to files, one set per process
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: ``Content-Type`` of the text exposition format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: request forms (label ``form``); ``unknown``: refused before its form was known (404, 413, 415, a bad body)
FORMS = ("torchserve", "v2_json", "v2_binary", "unknown")
#: label value for a model or version the server has not loaded (clients cannot create series)
UNKNOWN = "unknown"
#: reasons a request was refused before the model saw it (label ``reason`` of the rejected counter)
REJECT_REASONS = {
    "body_too_large": 413,
    "too_many_rows": 413,
    "header_timeout": 408,
    "body_timeout": 408,
    "headers_too_large": 431,
    "not_http": 400,
}

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_INFERENCE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
#: how often the request path's counts go to prometheus_client's values (seconds)
FLUSH_SECONDS = 0.5


class _Pending:
    """One histogram child's observations since the last flush: a count per bucket (``+Inf`` last) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = (*buckets, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        self.total += value

    def flush_into(self, child: Any) -> None:
        """Add the observations to a ``prometheus_client`` histogram child (its per-bucket values and sum)."""
        if not any(self.counts):
            return
        for i, n in enumerate(self.counts):
            if n:
                child._buckets[i].inc(n)  # prometheus_client keeps one (non-cumulative) value per bucket
                self.counts[i] = 0
        child._sum.inc(self.total)
        self.total = 0.0


def multiprocess() -> bool:
    """Whether values go to the shared files of several workers (the supervisor set the directory)."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The metrics of one serving process, and the exposition of all of them (``/metrics``)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "exporter_requests",
            "Prediction requests answered, by model, version, request form and status class",
            ["model", "version", "form", "status"],
            registry=reg,
        )
        self.request_seconds = Histogram(
            "exporter_request_duration_seconds",
            "Whole prediction request: body read, decode, model run, encode",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.inference_seconds = Histogram(
            "exporter_inference_duration_seconds",
            "onnxruntime's run alone (what the model costs)",
            ["model"],
            buckets=_INFERENCE_BUCKETS,
            registry=reg,
        )
        self.rows = Histogram(
            "exporter_request_rows",
            "Rows per answered prediction request",
            ["model"],
            buckets=_ROW_BUCKETS,
            registry=reg,
        )
        self.rejected = Counter(
            "exporter_rejected_requests",
            "Requests refused before a model ran them, by reason (413 body or rows, 408 slow client, 431 headers)",
            ["reason"],
            registry=reg,
        )
        self.reloads = Counter(
            "exporter_reloads",
            "Scans of the artifacts tree (SIGHUP or --poll), by trigger and outcome",
            ["trigger", "outcome"],
            registry=reg,
        )
        self.loaded = Gauge(
            "exporter_model_versions_loaded",
            "Model versions this server answers with",
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self.failed = Gauge(
            "exporter_model_versions_failed",
            "Model versions found in the tree that failed to load (listed under failed in GET /models)",
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self._children: dict[tuple[str, ...], Any] = {}
        #: since the last flush: requests per label tuple; per model, the three histograms' observations
        self._counts: dict[tuple[str, str, str, str], int] = {}
        self._models: dict[str, tuple[_Pending, _Pending, _Pending]] = {}
        for reason in REJECT_REASONS:  # every reason shows at 0 from the start
            self.rejected.labels(reason)

    # ------------------------------------------------------------------ the request path
    def request(self, model: str, version: str, form: str, status: int, seconds: float, rows: int) -> None:
        """One prediction answered (``model`` and ``version`` as loaded, or :data:`UNKNOWN`)."""
        key = (model, version, form, f"{status // 100}xx")  # 2xx, 4xx, 5xx: three values, whatever the code
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        pending = self._models.get(model) or self._new_model(model)
        pending[0].observe(seconds)
        if rows:
            pending[2].observe(rows)

    def inference(self, model: str, seconds: float) -> None:
        """One model run took ``seconds``."""
        (self._models.get(model) or self._new_model(model))[1].observe(seconds)

    def _new_model(self, model: str) -> tuple[_Pending, _Pending, _Pending]:
        pending = self._models[model] = (
            _Pending(_LATENCY_BUCKETS),
            _Pending(_INFERENCE_BUCKETS),
            _Pending(_ROW_BUCKETS),
        )
        return pending

    def flush(self) -> None:
        """Move the request path's counts into prometheus_client's values (call on the event loop)."""
        counts, self._counts = self._counts, {}
        for key, n in counts.items():
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.requests.labels(*key)
            child.inc(n)
        for model, pending in self._models.items():
            for histogram, observed in zip(
                (self.request_seconds, self.inference_seconds, self.rows), pending, strict=True
            ):
                observed.flush_into(histogram.labels(model))

    async def flush_every(self, seconds: float = FLUSH_SECONDS) -> None:
        """Flush every ``seconds`` until cancelled (a task on the serving loop), and once more then."""
        try:
            while True:
                await asyncio.sleep(seconds)
                self.flush()
        finally:
            self.flush()

    def reject(self, reason: str) -> None:
        """A request refused before a model ran it (one of :data:`REJECT_REASONS`)."""
        self.rejected.labels(reason).inc()

    # ------------------------------------------------------------------ the served models
    def models(self, view: ModelRegistry) -> None:
        """Record what ``view`` serves and what failed (at startup and after every reload)."""
        self.loaded.set(sum(len(by_version) for by_version in view.versions.values()))
        self.failed.set(len(view.failed))

    def reloaded(self, trigger: str, before: ModelRegistry, after: ModelRegistry) -> None:
        """A reload ended: ``swapped`` when it produced a new view, ``skipped`` when the scan failed."""
        self.reloads.labels(trigger, "swapped" if after is not before else "skipped").inc()
        self.models(after)

    # ------------------------------------------------------------------ exposition
    def exposition(self) -> bytes:
        """The text format of every worker's values (this process's alone without multiprocess mode)."""
        self.flush()
        return exposition(None if multiprocess() else self.registry)


def exposition(registry: Any = None) -> bytes:
    """The text format of ``registry``, or (None) of every worker's files in multiprocess mode."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    if registry is None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    text: bytes = generate_latest(registry)
    return text


def mark_process_dead(pid: int) -> None:
    """A worker ended: drop its live gauges from the sums (its counters stay: they never go back)."""
    from prometheus_client import multiprocess as mp

    mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_metrics_port(host: str, port: int, registry: Any = None) -> tuple[Any, int]:
    """``/metrics`` on its own port in a daemon thread (``serve --metrics-port``); (server, bound port).

    ``registry`` None: every worker's files (the supervisor serves them); else that registry (one process).
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from exporter.errors import ExporterError

    if registry is None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ExporterError(f"cannot listen on {host}:{port} (--metrics-port): {exc.strerror or exc}") from exc
    return server, int(server.server_address[1])


def elapsed(start: float) -> float:
    """Seconds since ``start`` (a ``time.perf_counter()`` value)."""
    return time.perf_counter() - start
