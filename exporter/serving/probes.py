"""``serve``'s operational routes beside the prediction routes: the Kubernetes probes and ``GET /metrics``.

* ``GET /health/live``: 200 ``{"status": "alive"}`` whenever the process answers at all (the liveness probe:
  a restart would fix nothing else);
* ``GET /health/ready``: 200 ``{"status": "ready", "loaded": [...]}`` when every model version found in the
  tree is served, else 503 ``{"status": "not ready", "loaded": [...], "failed": [{"name", "version",
  "error"}, ...]}`` (the readiness probe; the versions that did load keep answering on the prediction routes);
* ``GET /metrics``: the Prometheus text format (:mod:`exporter.serving.metrics`).

``/ping`` stays TorchServe's. No ``/v2/...`` route: those belong to Triton (contract section 5).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from exporter.serving.live_registry import ModelRegistry
    from exporter.serving.metrics import Metrics

#: ``plain(status, body, request, start)``: a JSON answer with its access-log line (the server's)
Plain = Callable[[int, bytes, "Request", float], "Response"]


def probe_routes(current: Callable[[], ModelRegistry], plain: Plain) -> list[Route]:
    """``/health/live`` and ``/health/ready`` over the view ``current()`` returns at each request."""
    import orjson
    from starlette.routing import Route

    live_body = orjson.dumps({"status": "alive"})

    async def health_live(request: Request) -> Response:
        return plain(200, live_body, request, time.perf_counter())

    async def health_ready(request: Request) -> Response:
        start = time.perf_counter()
        view = current()
        described = view.describe()
        loaded = [f"{m['name']}/{v}" for m in described["models"] for v in m["versions"]]
        if view.failed:
            body = orjson.dumps({"status": "not ready", "loaded": loaded, "failed": described["failed"]})
            return plain(503, body, request, start)
        return plain(200, orjson.dumps({"status": "ready", "loaded": loaded}), request, start)

    return [
        Route("/health/live", health_live, methods=["GET"]),
        Route("/health/ready", health_ready, methods=["GET"]),
    ]


def metrics_route_for(metrics: Metrics) -> Route:
    """``GET /metrics``: every worker's metrics in the Prometheus text format."""
    from starlette.responses import Response
    from starlette.routing import Route

    from exporter.serving.metrics import CONTENT_TYPE

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return Route("/metrics", metrics_endpoint, methods=["GET"])
