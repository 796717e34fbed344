"""Public face of the embedded handler: ``from exporter.handler import ModelHandler``.

The handler lives in :mod:`exporter.runtime` (the package a TorchServe archive ships); this module keeps the
documented import path and the TorchServe module-level entry points working.
"""

from exporter.runtime.errors import ArtifactError, HandlerError
from exporter.runtime.handler import DEFAULT_MAX_ROWS, ModelHandler
from exporter.runtime.torchserve_entry import handle, initialize

__all__ = ["DEFAULT_MAX_ROWS", "ArtifactError", "HandlerError", "ModelHandler", "handle", "initialize"]
