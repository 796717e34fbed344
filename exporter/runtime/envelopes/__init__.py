"""Request envelopes: each turns one request form into the ``features`` tensor and the model's output back into
that form's answer (like TorchServe's ``ts/torch_handler/request_envelope``: ``parse_input`` / ``format_output``).

* :mod:`.torchserve`: ``{"data": [{"<column>": <value>, ...}, ...]}`` -> ``{"predictions": [...]}``;
* :mod:`.v2_json`: the Open Inference Protocol ``{"inputs": [...]}`` -> ``inference_response``;
* :mod:`.v2_binary`: the same with Triton's binary tensor data extension (HTTP only).

Every envelope has the same three steps, which :meth:`exporter.runtime.handler.ModelHandler.answer` calls once
per request, in this order: ``decode(payload, blob)`` validates the request (once) and returns the float64
matrix; ``wants_binary(payload)`` says whether the answer carries binary tensor data; ``encode(out, payload,
binary)`` returns ``(answer bytes, JSON header length or None)``. An envelope knows the model only through a
:class:`Signature`, never the handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from exporter.runtime.columns import FeatureColumns

__all__ = ["Envelope", "Signature"]


@dataclass(frozen=True)
class Signature:
    """What an envelope needs to know about the served model (from ``metadata.json``)."""

    model_name: str
    version: str
    feature_columns: tuple[str, ...]
    input_name: str
    output_name: str
    prediction_format: str
    output_columns: tuple[str, ...]
    max_rows: int
    features: FeatureColumns

    @property
    def n_features(self) -> int:
        return len(self.feature_columns)


class Envelope(Protocol):
    """One request form (see the module docstring for the order of the calls)."""

    def decode(self, payload: dict[str, Any], blob: memoryview | None = None) -> np.ndarray: ...

    def wants_binary(self, payload: dict[str, Any]) -> bool: ...

    def encode(self, out: np.ndarray, payload: dict[str, Any], binary: bool = False) -> tuple[bytes, int | None]: ...
