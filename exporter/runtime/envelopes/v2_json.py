"""The Open Inference Protocol (KServe v2) JSON form: one ``features`` tensor in, an ``inference_response`` out."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any

import numpy as np
import orjson

from exporter.runtime.columns import ValueAt, Where
from exporter.runtime.envelopes import Signature
from exporter.runtime.errors import HandlerError
from exporter.runtime.messages import describe_bad_value, finite_expected, quote, shape_text, type_name
from exporter.runtime.rules import DATATYPE

__all__ = ["NUMERIC_DATATYPES", "V2JsonEnvelope"]

#: the values an integer datatype holds
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    **{f"INT{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
    **{f"UINT{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)},
}

#: Open Inference Protocol datatypes accepted for the input tensor; all are cast to FP64.
NUMERIC_DATATYPES = frozenset(
    {"FP64", "FP32", "FP16", "BF16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
_NUMBER_TYPES = frozenset({float, int})
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _flatten(data: Iterable[Any]) -> Iterable[Any]:
    """Leaves of arbitrarily nested lists (iteratively: no recursion limit for hostile input)."""
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


class V2JsonEnvelope:
    """``{"inputs": [{"name": "features", "shape": [B, N], "datatype": ..., "data": [...]}]}``."""

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        s = signature
        self._expected_input = (
            f'one input tensor {{"name": "{s.input_name}", "shape": [<rows>, {s.n_features}], '
            f'"datatype": "FP64", "data": [...]}}'
        )

    def decode(self, payload: dict[str, Any], blob: memoryview | None = None) -> np.ndarray:
        """One ``features`` tensor (flat or nested ``data``) -> the float64 matrix; checks id, parameters, outputs."""
        tensor, n = self.check(payload)
        matrix = self.matrix(tensor["data"], n)
        self._check_integer_datatype(matrix, tensor["datatype"])
        return matrix

    def _check_integer_datatype(self, matrix: np.ndarray, datatype: str) -> None:
        """An integer tensor holds integers in its type's range: ``INT8`` 300 or ``UINT8`` -1 is no valid tensor
        (Triton and KServe refuse it; the binary form cannot even carry it), so it is refused here too."""
        bounds = INTEGER_RANGES.get(datatype)
        if bounds is None:
            return
        low, high = bounds
        bad = ~np.isfinite(matrix) | (matrix != np.floor(matrix)) | (matrix < low) | (matrix > high)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise HandlerError(
                400,
                f"inputs[0].data value at row {row}, column {json.dumps(self.signature.feature_columns[col])} is "
                f"{matrix[row, col]:.17g}, not a {datatype}; expected an integer from {low} to {high} (send FP64 "
                "for other values)",
            )

    def wants_binary(self, payload: dict[str, Any]) -> bool:
        """Never: binary tensor data needs the HTTP extension (:mod:`.v2_binary`)."""
        return False

    def check(self, payload: dict[str, Any], binary: bool = False) -> tuple[Mapping[str, Any], int]:
        """Everything of a v2 request but its numbers: returns the input tensor and its row count.

        ``binary``: the tensor's numbers may travel after the JSON header instead of in ``data``.
        """
        self._check_envelope(payload)
        tensor = self._input_tensor(payload["inputs"], binary)
        n = self._rows(tensor)
        self._check_outputs(payload.get("outputs"))
        return tensor, n

    def _check_envelope(self, payload: dict[str, Any]) -> None:
        """The request's ``id`` and ``parameters``."""
        request_id = payload.get("id")
        if request_id is not None:
            if type(request_id) is not str:
                raise HandlerError(400, f'"id" must be a string, got {type_name(request_id)}')
            try:
                request_id.encode("utf-8")
            except UnicodeEncodeError:
                raise HandlerError(400, '"id" is not valid Unicode text (it holds a lone surrogate)') from None
        params = payload.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise HandlerError(400, f'"parameters" must be an object, got {type_name(params)}')

    def _input_tensor(self, inputs: Any, binary: bool) -> Mapping[str, Any]:
        """The one input tensor, with its keys, name and datatype checked."""
        s, expected = self.signature, self._expected_input
        if type(inputs) is not list:
            raise HandlerError(400, f'"inputs" must be a list holding {expected}, got {type_name(inputs)}')
        if len(inputs) != 1:
            raise HandlerError(
                400, f'"inputs" holds {len(inputs)} tensors; model {s.model_name!r} takes exactly {expected}'
            )
        tensor = inputs[0]
        if not isinstance(tensor, Mapping):
            raise HandlerError(400, f"inputs[0] must be an object, {expected}; got {type_name(tensor)}")
        for key in ("name", "shape", "datatype") if binary else ("name", "shape", "datatype", "data"):
            if key not in tensor:
                raise HandlerError(400, f'inputs[0] is missing "{key}"; expected {expected}')
        name = tensor["name"]
        if name != s.input_name:
            raise HandlerError(
                400,
                f"inputs[0].name is {quote(name) if isinstance(name, str) else type_name(name)}: unknown input; "
                f'model {s.model_name!r} has one input named "{s.input_name}"',
            )
        datatype = tensor["datatype"]
        if not (isinstance(datatype, str) and datatype in NUMERIC_DATATYPES):
            shown = quote(datatype) if isinstance(datatype, str) else type_name(datatype)
            raise HandlerError(
                400,
                f"inputs[0].datatype {shown} is not supported; expected FP64 or another numeric datatype "
                f"({', '.join(sorted(NUMERIC_DATATYPES))}), which is cast to FP64",
            )
        return tensor

    def _rows(self, tensor: Mapping[str, Any]) -> int:
        """The row count ``shape`` declares: 2-D, at least one row, the model's columns, within ``max_rows``."""
        s = self.signature
        k = s.n_features
        shape = tensor["shape"]
        if (
            type(shape) is not list
            or len(shape) != 2
            or any(type(d) is not int for d in shape)
            or shape[1] != k
            or shape[0] < 1
        ):
            raise HandlerError(
                400,
                f"inputs[0].shape is {shape_text(shape)}; expected [<rows>, {k}]: 2-D, at least 1 row, "
                f"{k} columns ({', '.join(s.feature_columns)})",
            )
        n: int = shape[0]  # checked above: an int
        if n > s.max_rows:
            raise HandlerError(
                413, f"inputs[0].shape has {n} rows; this server accepts at most {s.max_rows} rows per request"
            )
        return n

    def _check_outputs(self, outputs: Any) -> None:
        """Requested outputs may only name the model's one output."""
        if outputs is None:
            return
        s = self.signature
        if type(outputs) is not list:
            raise HandlerError(
                400, f'"outputs" must be a list of {{"name": "{s.output_name}"}}, got {type_name(outputs)}'
            )
        for j, requested in enumerate(outputs):
            req_name = requested.get("name") if isinstance(requested, Mapping) else None
            if req_name != s.output_name:
                shown = quote(req_name) if isinstance(req_name, str) else type_name(requested)
                raise HandlerError(
                    400,
                    f"outputs[{j}] requests {shown}: unknown output; model {s.model_name!r} has one output "
                    f'named "{s.output_name}"',
                )

    def encode(self, out: np.ndarray, payload: dict[str, Any], binary: bool = False) -> tuple[bytes, None]:
        """An ``inference_response``: model name and version, the echoed id, one FP64 ``predictions`` tensor."""
        s = self.signature
        answer: dict[str, Any] = {"model_name": s.model_name, "model_version": s.version}
        request_id = payload.get("id")
        if request_id is not None:
            answer["id"] = request_id
        if not out.flags.c_contiguous:
            out = np.ascontiguousarray(out)
        answer["outputs"] = [
            {"name": s.output_name, "shape": list(out.shape), "datatype": DATATYPE, "data": out.reshape(-1)}
        ]
        return orjson.dumps(answer, option=_JSON_OPTIONS), None

    def matrix(self, data: Any, n: int) -> np.ndarray:
        """The tensor's JSON ``data`` (flat row-major or nested ``[n][k]``) -> the checked float64 matrix."""
        matrix = self._data_matrix(data, n)
        features = self.signature.features
        where: Where = lambda i, c: f"inputs[0].data value at row {i}, column {json.dumps(c)}"  # noqa: E731
        features.check_ids(matrix, where)
        features.check_exact(matrix, _value_at(data, self.signature.n_features), where)
        return matrix

    def _data_matrix(self, data: Any, n: int) -> np.ndarray:
        k = self.signature.n_features
        expected = n * k
        if type(data) is not list:
            raise HandlerError(
                400,
                f"inputs[0].data must be a list of {expected} numbers (flat, row-major) or nested "
                f"as [{n}, {k}], got {type_name(data)}",
            )
        if len(data) == expected and set(map(type, data)) <= _NUMBER_TYPES:  # flat row-major: the common case
            matrix = _numbers(data, n, k)
            if matrix is not None:
                return matrix
            flat = data
        elif len(data) == n and all(type(r) is list for r in data):  # nested [n][k]
            if set(map(len, data)) != {k}:
                bad = next(i for i, r in enumerate(data) if len(r) != k)
                raise HandlerError(
                    400,
                    f"inputs[0].data is nested but row {bad} holds {len(data[bad])} values; "
                    f"shape [{n}, {k}] needs {k} per row",
                )
            flat = list(chain.from_iterable(data))
            if set(map(type, flat)) <= _NUMBER_TYPES:
                matrix = _numbers(flat, n, k)
                if matrix is not None:
                    return matrix
        else:
            flat = list(_flatten(data))
            if len(flat) != expected:
                raise HandlerError(
                    400,
                    f"inputs[0].data holds {len(flat)} values but shape [{n}, {k}] needs {expected} "
                    f"(rows x columns, flat row-major or nested as [{n}, {k}])",
                )
        # slow path: find and name the first bad value, or build the matrix from valid but unusual numbers
        optional = self.signature.features.optional
        for index, value in enumerate(flat):
            problem = describe_bad_value(value)
            if problem is not None:
                row, col = divmod(index, k)
                if problem == "NaN" and optional[col]:
                    continue  # the missing value of an optional column
                raise HandlerError(
                    400,
                    f"inputs[0].data value at row {row}, column {json.dumps(self.signature.feature_columns[col])} "
                    f"(flat index {index}) is {problem}; expected {finite_expected(problem)}",
                )
        return np.array([float(v) for v in flat], dtype=np.float64).reshape(n, k)


def _value_at(data: list[Any], k: int) -> ValueAt:
    """The client's value at (row, column) of the tensor's ``data``, flat or nested (flattened on first use)."""
    flat: list[Any] = []

    def at(i: int, j: int) -> Any:
        if not flat:
            flat.extend(_flatten(data))
        return flat[i * k + j]

    return at


def _numbers(flat: list[Any], n: int, k: int) -> np.ndarray | None:
    """Plain Python numbers -> the finite matrix, or None (overflow, non-finite: the slow path words it)."""
    try:
        matrix = np.fromiter(flat, np.float64, n * k).reshape(n, k)
    except (OverflowError, ValueError):
        return None
    return matrix if np.isfinite(matrix).all() else None
