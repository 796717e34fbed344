"""Triton's own ModelConfig protobuf (``model_config_pb2`` shipped in ``tritonclient``), to parse config.pbtxt.

``tritonclient.grpc``'s package ``__init__`` needs grpcio, which the ``http`` extra does not install; the
generated ``model_config_pb2.py`` itself needs only protobuf, so it is loaded from its file when the package
import fails.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def model_config_pb2() -> Any:
    """The ``model_config_pb2`` module of the installed tritonclient."""
    try:
        from tritonclient.grpc import model_config_pb2 as module  # with grpcio installed

        return module
    except (ImportError, RuntimeError):
        pass
    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("tritonclient_model_config_pb2", path)
    assert spec is not None and spec.loader is not None, f"{path} not found: pip install tritonclient[http]"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(text: str) -> Any:
    """config.pbtxt text as a ``inference.ModelConfig`` message; unknown fields or bad values raise ParseError."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())
