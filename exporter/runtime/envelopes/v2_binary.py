"""Triton's binary tensor data extension of the Open Inference Protocol form (HTTP), beside the JSON one.

A request body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensor bytes: an
input with ``"parameters": {"binary_data_size": N}`` has no ``data``; its N bytes (little-endian, row-major, in
its ``datatype``) follow the header. A requested output with ``"parameters": {"binary_data": true}`` (or every
output, with the request parameter ``binary_data_output: true``) is answered the same way: its JSON description
carries ``binary_data_size`` and the answer's header length is returned to send as
``Inference-Header-Content-Length``. Validation and errors are the JSON form's (:mod:`.v2_json`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from exporter.runtime.envelopes import Signature
from exporter.runtime.envelopes.v2_json import V2JsonEnvelope
from exporter.runtime.errors import HandlerError
from exporter.runtime.messages import describe_bad_value, finite_expected, quote, type_name
from exporter.runtime.rules import DATATYPE, MAX_EXACT_INT

__all__ = ["DTYPES", "V2BinaryEnvelope", "split_body"]

#: v2 datatype -> numpy dtype of its little-endian wire form (BF16: the upper half of an FP32)
DTYPES = {
    "FP64": "<f8",
    "FP32": "<f4",
    "FP16": "<f2",
    "BF16": "<u2",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
}


def split_body(body: bytes | bytearray | memoryview | str, header_length: Any) -> tuple[memoryview, memoryview]:
    """(the JSON header's bytes, the bytes after it), by the request's ``Inference-Header-Content-Length``."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    view = memoryview(body)
    if isinstance(header_length, bytes):
        header_length = header_length.decode("latin-1")
    if type(header_length) is str and header_length.isascii() and header_length.isdigit():
        header_length = int(header_length)  # ASCII digits only: no sign, spaces or underscores
    if type(header_length) is not int or not 0 < header_length <= len(view):
        shown = quote(header_length) if not isinstance(header_length, int) else str(header_length)
        raise HandlerError(
            400,
            f"Inference-Header-Content-Length is {shown}; expected the byte length of the JSON header, "
            f"a positive integer in ASCII digits up to the body's {len(view)} bytes",
        )
    return view[:header_length], view[header_length:]


class V2BinaryEnvelope:
    """The v2 form over HTTP: the input's numbers in ``data`` or as binary bytes; the answer JSON or binary."""

    def __init__(self, signature: Signature, json_form: V2JsonEnvelope) -> None:
        self.signature = signature
        self.json = json_form

    def decode(self, payload: dict[str, Any], blob: memoryview | None = None) -> np.ndarray:
        """The float64 matrix from the tensor's binary bytes (``blob``) or, without ``binary_data_size``, its JSON
        data."""
        tensor, n = self.json.check(payload, binary=True)
        params = tensor.get("parameters")
        if params is not None and type(params) is not dict:
            raise HandlerError(400, f"inputs[0].parameters must be an object, got {type_name(params)}")
        size = params.get("binary_data_size") if params else None
        if size is None:
            if "data" not in tensor:
                raise HandlerError(
                    400, 'inputs[0] has neither "data" nor parameters.binary_data_size; send one of them'
                )
            if blob is not None and len(blob):
                raise HandlerError(
                    400,
                    f"the body holds {len(blob)} bytes after the JSON header, but no input declares "
                    "parameters.binary_data_size",
                )
            return self.json.matrix(tensor["data"], n)
        if blob is None:
            raise HandlerError(
                400,
                "inputs[0].parameters.binary_data_size needs the Inference-Header-Content-Length "
                "header (the JSON header's byte length)",
            )
        if "data" in tensor:
            raise HandlerError(400, 'inputs[0] has both "data" and parameters.binary_data_size; send its numbers once')
        return self._binary_matrix(tensor["datatype"], size, n, blob)

    def _binary_matrix(self, datatype: str, size: Any, n: int, blob: memoryview) -> np.ndarray:
        """The declared ``binary_data_size`` checked against shape and body, the bytes read as the float64 matrix."""
        dtype = np.dtype(DTYPES[datatype])
        k = self.signature.n_features
        expected = n * k * dtype.itemsize
        if type(size) is not int or size != expected:
            shown = str(size) if type(size) is int else quote(size) if isinstance(size, str) else type_name(size)
            raise HandlerError(
                400,
                f"inputs[0].parameters.binary_data_size is {shown}; shape [{n}, {k}] of {datatype} "
                f"needs {expected} bytes",
            )
        if len(blob) != size:
            raise HandlerError(
                400,
                f"the body holds {len(blob)} bytes after the JSON header; "
                f"inputs[0].parameters.binary_data_size says {size}",
            )
        raw = np.frombuffer(blob, dtype=dtype, count=n * k)
        if datatype == "BF16":
            matrix = (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        elif datatype == "FP64" and raw.flags.aligned:
            matrix = raw  # the request's own bytes, read-only: onnxruntime reads them in place
        else:
            matrix = raw.astype(np.float64)
        matrix = matrix.reshape(n, k)
        self._check_values(raw, matrix, dtype)
        return matrix

    def _check_values(self, raw: np.ndarray, matrix: np.ndarray, dtype: np.dtype) -> None:
        """Integers beyond 2^53, non-finite numbers and non-integer IDs are refused, naming row and column."""
        columns = self.signature.feature_columns
        k = len(columns)
        if dtype.kind in "iu" and dtype.itemsize == 8:  # compared as integers: 2^53 + 1 rounds to 2^53 in FP64
            inexact = (raw > MAX_EXACT_INT) | (raw < -MAX_EXACT_INT) if dtype.kind == "i" else raw > MAX_EXACT_INT
            if inexact.any():
                row, col = divmod(int(np.flatnonzero(inexact)[0]), k)
                raise HandlerError(
                    400,
                    f"inputs[0] binary value at row {row}, column {json.dumps(columns[col])} is "
                    "beyond 2^53; FP64 holds integers exactly only up to 2^53",
                )
        if not np.isfinite(matrix).all():
            # NaN is the missing value of an optional column; anything else non-finite is refused
            bad = ~np.isfinite(matrix) & ~(np.isnan(matrix) & np.array(self.signature.features.optional))
            if bad.any():
                index = int(np.flatnonzero(bad.reshape(-1))[0])
                row, col = divmod(index, k)
                problem = describe_bad_value(float(matrix.reshape(-1)[index])) or "not finite"
                raise HandlerError(
                    400,
                    f"inputs[0] binary value at row {row}, column {json.dumps(columns[col])} "
                    f"(flat index {index}) is {problem}; expected {finite_expected(problem)}",
                )
        self.signature.features.check_ids(
            matrix, lambda i, c: f"inputs[0] binary value at row {i}, column {json.dumps(c)}"
        )

    def wants_binary(self, payload: dict[str, Any]) -> bool:
        """Whether the request asks for its output as binary tensor data."""
        params = payload.get("parameters")
        default = params.get("binary_data_output", False) if params else False
        if type(default) is not bool:
            raise HandlerError(400, f"parameters.binary_data_output must be true or false, got {type_name(default)}")
        wanted = default
        for j, requested in enumerate(payload.get("outputs") or ()):
            out_params = requested.get("parameters")
            if out_params is None:
                continue
            if type(out_params) is not dict:
                raise HandlerError(400, f"outputs[{j}].parameters must be an object, got {type_name(out_params)}")
            flag = out_params.get("binary_data", default)
            if type(flag) is not bool:
                raise HandlerError(
                    400, f"outputs[{j}].parameters.binary_data must be true or false, got {type_name(flag)}"
                )
            wanted = flag
        return wanted

    def encode(self, out: np.ndarray, payload: dict[str, Any], binary: bool = False) -> tuple[bytes, int | None]:
        """The JSON form's answer, or (binary) an ``inference_response`` header followed by the output's FP64 bytes."""
        if not binary:
            return self.json.encode(out, payload)
        s = self.signature
        data = np.ascontiguousarray(out, dtype="<f8")
        answer: dict[str, Any] = {"model_name": s.model_name, "model_version": s.version}
        request_id = payload.get("id")
        if request_id is not None:
            answer["id"] = request_id
        answer["outputs"] = [
            {
                "name": s.output_name,
                "shape": list(out.shape),
                "datatype": DATATYPE,
                "parameters": {"binary_data_size": data.nbytes},
            }
        ]
        header = orjson.dumps(answer)
        return header + data.data.cast("B"), len(header)  # one copy of the numbers
