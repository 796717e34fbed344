"""The TorchServe form: ``{"data": [{"<column>": <value>, ...}, ...]}`` in, ``{"predictions": [...]}`` out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from exporter.runtime.envelopes import Signature
from exporter.runtime.errors import ArtifactError, HandlerError
from exporter.runtime.messages import type_name
from exporter.runtime.rules import ANSWER_KEY, REQUEST_ROWS_KEY

__all__ = ["TorchServeEnvelope"]

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _named_key_parts(columns: Sequence[str]) -> list[bytes]:
    """JSON fragments that precede each value of one row in ``[{"a": v, "b": v}, ...]``."""
    keys = [orjson.dumps(c) for c in columns]
    return [b"},{" + keys[0] + b":"] + [b"," + k + b":" for k in keys[1:]]


class TorchServeEnvelope:
    """Rows of ``{column: value}`` objects; answers in the model's prediction format (contract section 1)."""

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self._named_parts = _named_key_parts(signature.output_columns) if signature.output_columns else []

    def decode(self, payload: dict[str, Any], blob: memoryview | None = None) -> np.ndarray:
        """Rows of ``{column: value}`` objects -> the float64 ``features`` matrix."""
        if blob is not None and len(blob):
            raise HandlerError(
                400,
                "binary tensor data comes only with the Open Inference Protocol form "
                '{"inputs": [...]}, not with "data" rows',
            )
        rows = payload[REQUEST_ROWS_KEY]
        if type(rows) is not list:
            raise HandlerError(
                400,
                f'"data" must be a list of row objects {{"<feature column>": <number>, ...}}, got {type_name(rows)}',
            )
        n = len(rows)
        if n == 0:
            raise HandlerError(400, '"data" is empty; send at least one row object (data[0] is missing)')
        max_rows = self.signature.max_rows
        if n > max_rows:
            raise HandlerError(413, f'"data" has {n} rows; this server accepts at most {max_rows} rows per request')
        return self.signature.features.rows(rows, REQUEST_ROWS_KEY)

    def wants_binary(self, payload: dict[str, Any]) -> bool:
        """Never: binary tensor data belongs to the Open Inference Protocol form."""
        return False

    def encode(self, out: np.ndarray, payload: dict[str, Any], binary: bool = False) -> tuple[bytes, None]:
        """``{"predictions": ...}`` for the model's prediction format (contract section 1)."""
        fmt = self.signature.prediction_format
        if fmt == "scalar":
            return orjson.dumps({ANSWER_KEY: np.ascontiguousarray(out.reshape(-1))}, option=_JSON_OPTIONS), None
        if fmt == "named_columns":
            return self.encode_named(out), None
        # vector: one row -> the vector itself; several -> list of vectors
        if out.ndim == 1:
            out = out.reshape(-1, 1)
        one = out[0] if out.shape[0] == 1 else out
        return orjson.dumps({ANSWER_KEY: np.ascontiguousarray(one)}, option=_JSON_OPTIONS), None

    def encode_named(self, out: np.ndarray) -> bytes:
        """``{"predictions": [{"<col>": v, ...}, ...]}`` without building one dict per row.

        orjson writes the numbers (shortest round-trip, as for every other answer); the object syntax is
        interleaved as bytes. Numbers never contain ``,`` so splitting orjson's flat array is exact.
        """
        n, k = out.shape[0], len(self.signature.output_columns)
        if out.ndim != 2 or out.shape[1] != k:
            raise ArtifactError(f"model output has shape {list(out.shape)}; metadata names {k} output_columns")
        values = orjson.dumps(np.ascontiguousarray(out).reshape(-1), option=_JSON_OPTIONS)[1:-1].split(b",")
        parts: list[bytes] = [b""] * (2 * n * k)
        keys = self._named_parts * n
        keys[0] = b'{"predictions":[{' + keys[0][3:]
        parts[0::2] = keys
        parts[1::2] = values
        parts.append(b"}]}")
        return b"".join(parts)
