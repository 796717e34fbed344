"""The floor of ``bench peers``: a bare Starlette + uvicorn + onnxruntime endpoint.

``POST /predict`` takes ``{"inputs": [[float, ...], ...]}``, the feature matrix already prepared (float64, in the
model's column order: what the handler's decode makes of a request), runs ``session.run`` on the event loop and
answers ``{"outputs": [output, ...]}``. No feature conversion, no validation, no metrics, no request log: what is
left is HTTP, JSON and onnxruntime, so a server cannot answer much faster with the same stack. The session is the
handler's (:meth:`ModelHandler.load`, same onnxruntime options and threads as ``serve``).

Run: ``python -m exporter.tools.peer_starlette --version-dir artifacts/xgb/1 --port 8080``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from exporter.runtime.handler import ModelHandler

#: the route the load goes to
PATH = "/predict"


def build_app(session: Any, input_name: str) -> Starlette:
    """The one-route application over an onnxruntime ``session`` whose input is ``input_name``."""

    async def predict(request: Request) -> Response:
        features = np.asarray(orjson.loads(await request.body())["inputs"], dtype=np.float64)
        outputs = session.run(None, {input_name: features})
        return Response(orjson.dumps({"outputs": [o.tolist() for o in outputs]}), media_type="application/json")

    return Starlette(routes=[Route(PATH, predict, methods=["POST"])])


def main(argv: list[str] | None = None) -> None:
    """Serve the model of ``--version-dir`` on 127.0.0.1:``--port`` until stopped (SIGTERM/SIGINT)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version-dir", type=Path, required=True, help="an exported model version directory")
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    args = parser.parse_args(argv)
    handler = ModelHandler.load(args.version_dir)
    app = build_app(handler.session, handler.input_name)
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False)  # fmt: skip


if __name__ == "__main__":
    main()
