"""A peer of ``bench peers``: KServe's Python model server (``kserve.ModelServer``) serving the exported model.

A ``kserve.Model`` whose ``load()`` is :meth:`ModelHandler.load` of the version directory and whose ``predict``
answers KServe's v1 protocol, ``POST /v1/models/{name}:predict`` with ``{"instances": [{column: value}, ...]}``,
by handing the rows to the handler (``handler.predict({"data": instances})``): the same validation, conversion
and onnxruntime run as ``serve``, inside KServe's server instead of ours. A bad request is KServe's
``InvalidInput`` (HTTP 400).

The server keeps KServe's defaults (one uvicorn worker, uvloop, its middlewares and metrics) except: it listens
on 127.0.0.1 (KServe binds 0.0.0.0), its gRPC server is off (nothing here calls it, and it would take a port),
and its loggers write warnings only: no access, latency or timing line per request, as ``serve --log-level
warning`` writes none.

Run: ``python -m exporter.tools.peer_kserve --version-dir artifacts/xgb/1 --name xgb --port 8080``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

from exporter.runtime.handler import ModelHandler


def _quiet_logging() -> None:
    """KServe's own logging configuration with every logger at WARNING (before ModelServer configures its own)."""
    from kserve import logging as kserve_logging

    config = copy.deepcopy(kserve_logging.KSERVE_LOG_CONFIG)
    for logger in config["loggers"].values():
        logger["level"] = "WARNING"
    kserve_logging.configure_logging(config)


def _loopback_rest_server() -> None:
    """Make KServe's REST server listen on 127.0.0.1 instead of every interface."""
    from kserve import model_server
    from kserve.protocol.rest.server import RESTServer

    class LoopbackRESTServer(RESTServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = "127.0.0.1"  # the uvicorn.Config its server serves from

    model_server.RESTServer = LoopbackRESTServer


def serve(version_dir: Path, name: str, port: int) -> None:
    """Load the model and run KServe's model server until stopped (SIGTERM/SIGINT)."""
    import kserve
    from kserve.errors import InvalidInput

    from exporter.runtime.errors import HandlerError

    class HandlerModel(kserve.Model):
        """The exported model inside KServe: the handler answers each v1 request."""

        def __init__(self) -> None:
            super().__init__(name)
            self.handler: ModelHandler | None = None

        def load(self) -> bool:
            self.handler = ModelHandler.load(version_dir)
            self.ready = True
            return True

        def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
            assert self.handler is not None, "predict before load"
            try:
                return self.handler.predict({"data": payload["instances"]})
            except HandlerError as exc:
                raise InvalidInput(exc.message) from None

    _quiet_logging()
    _loopback_rest_server()
    model = HandlerModel()
    model.load()
    kserve.ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False).start([model])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version-dir", type=Path, required=True, help="an exported model version directory")
    parser.add_argument("--name", required=True, help="the model's name in the v1 route")
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    args = parser.parse_args(argv)
    # kserve.model_server parses sys.argv for its own options when imported: give it none of ours
    sys.argv = sys.argv[:1]
    serve(args.version_dir, args.name, args.port)


if __name__ == "__main__":
    main()
