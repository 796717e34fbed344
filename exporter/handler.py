"""The model handler: one exported artifact version in, JSON request bytes in, JSON answer bytes out.

This module is deliberately self-contained (standard library, numpy, onnxruntime and orjson only, never
``exporter.*``) so that the same file serves three consumers:

* a notebook::

      from exporter.handler import ModelHandler
      ModelHandler.load("artifacts/xgb/1").predict({"data": [{"item_ctr": 0.1, ...}]})

* ``python -m exporter serve`` (:mod:`exporter.server` calls :meth:`ModelHandler.handle_bytes`);
* TorchServe, as a custom handler with module-level entry points :func:`initialize` and :func:`handle`::

      torch-model-archiver --model-name xgb --version 1 --handler exporter/handler.py \\
          --serialized-file artifacts/xgb/1/model.onnx --extra-files artifacts/xgb/1/metadata.json

Two request forms are accepted (contract section 4), told apart by their keys:

* TorchServe style ``{"data": [{"<column>": <number>, ...}, ...]}`` answered with ``{"predictions": [...]}``;
* Open Inference Protocol (KServe v2) ``{"inputs": [{"name": "features", "shape": [B, N], "datatype": "FP64",
  "data": [...]}]}`` answered with an ``inference_response``.

Client mistakes raise :class:`HandlerError` (status 400 or 413) with a message saying what was wrong, where,
and what was expected; :meth:`ModelHandler.handle_bytes` turns them into ``{"error": "..."}`` bodies and never
raises for client input.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import orjson

__all__ = [
    "ArtifactError",
    "HandlerError",
    "ModelHandler",
    "DEFAULT_MAX_ROWS",
    "handle",
    "initialize",
]

#: Default limit on rows per request; ``serve --max-rows`` overrides it.
DEFAULT_MAX_ROWS = 10_000

_PREDICTION_FORMATS = ("scalar", "named_columns", "vector")
#: Open Inference Protocol datatypes accepted for the input tensor; all are cast to FP64.
NUMERIC_DATATYPES = frozenset(
    {"FP64", "FP32", "FP16", "BF16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
_NUMBER_TYPES = frozenset({float, int})
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class HandlerError(Exception):
    """A request (or artifact) the handler refuses: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message

    def to_bytes(self) -> bytes:
        """The JSON error body, ``{"error": "<message>"}``."""
        return orjson.dumps({"error": self.message})


class ArtifactError(HandlerError):
    """The artifact itself is unusable (missing file, sha256 mismatch, inconsistent metadata)."""

    def __init__(self, message: str) -> None:
        super().__init__(500, message)


def _type_name(value: Any) -> str:
    """JSON-flavoured name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _describe_bad_value(value: Any) -> str | None:
    """Why ``value`` is not a finite number (``None`` when it is one)."""
    if isinstance(value, (bool, np.bool_)):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            f = float(value)
        except OverflowError:
            return "a number too large for FP64"
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return None
    if isinstance(value, str):
        return f"a string ({_quote(value)})"
    return _type_name(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- private copies of contract facts
# (exporter.contract owns them; this module must import nothing from exporter; tests/test_contract.py
# proves these copies agree with it)
_INPUT_NAME = "features"
_OUTPUT_NAME = "predictions"
_DATATYPE = "FP64"
_ROWS_KEY = "data"
_V2_KEY = "inputs"
_MAX_VERSION = 2**63 - 1
#: longest piece of client text quoted in an error message
_QUOTE_CHARS = 40
#: deepest nesting metadata.json may have (exporter.contract.MAX_METADATA_DEPTH)
_MAX_METADATA_DEPTH = 64


_TOO_DEEP = object()


def _too_deep(value: Any) -> bool:
    """Whether decoded JSON nests objects/lists deeper than ``_MAX_METADATA_DEPTH`` (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        if depth + 1 > _MAX_METADATA_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False


def _is_version_name(name: str) -> bool:
    """A canonical positive integer in ASCII digits within int64 (Triton's version rule)."""
    return (name.isascii() and name.isdigit() and not name.startswith("0") and int(name) <= _MAX_VERSION)


def _version_dirs(model_dir: Path) -> list[Path]:
    """Version sub-directories of a model directory, lowest first; every other entry is ignored."""
    found = [child for child in model_dir.iterdir() if _is_version_name(child.name) and child.is_dir()]
    return sorted(found, key=lambda p: int(p.name))


def _quote(text: Any) -> str:
    """Client text for an error message: JSON-quoted, shortened to a prefix and its length when long."""
    text = str(text)
    if len(text) <= _QUOTE_CHARS:
        return json.dumps(text)
    return f"{json.dumps(text[:_QUOTE_CHARS])}... ({len(text)} characters)"


def _shape_text(shape: Any) -> str:
    """A client's ``shape`` for an error message: the list when it is a few integers, else what it is."""
    if type(shape) is not list:
        return _type_name(shape)
    odd = next((d for d in shape if type(d) is not int), None)
    if odd is not None:
        return f"a list holding {_type_name(odd)}" + (f" {_quote(odd)}" if isinstance(odd, str) else "")
    return json.dumps(shape) if len(shape) < 10 else f"a list of {len(shape)} integers"


def _all_finite(out: np.ndarray) -> bool:
    return bool(np.isfinite(out).all())


def _non_finite_message(out: np.ndarray, matrix: np.ndarray, columns: Sequence[str]) -> str:
    """Why an answer was refused: the model gave no finite prediction for some rows (extreme inputs)."""
    bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    rows = np.flatnonzero(bad)
    first = int(rows[0])
    x = matrix[first]
    extreme = [f"{columns[j]}={x[j]:.6g}" for j in np.argsort(-np.abs(x))[:3]]
    return (
        f"the model gives no finite prediction for {len(rows)} row(s), first row {first} "
        f"(largest values: {', '.join(extreme)}); the values are far outside the range the model was trained on"
    )


def _decode_json(body: bytes | bytearray | memoryview | str) -> Any:
    """Parse a request body; NaN/Infinity literals are accepted here so that validation can name the cell."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first_error = exc
    # orjson is strict JSON; Python clients commonly send NaN/Infinity (json.dumps default). Parse those with
    # the standard library so the answer can say which row and column held the non-finite value.
    # (Only on this error path: it costs nothing for well-formed requests.)
    try:
        return json.loads(body if isinstance(body, (str, bytes, bytearray)) else bytes(body))
    except (ValueError, RecursionError):
        pass
    if not isinstance(body, str) and bytes(body[:2]) == b"\x1f\x8b":
        raise HandlerError(400, "request body is gzip-compressed; send the JSON uncompressed")
    raise HandlerError(400, f"request body is not valid JSON ({first_error})")


_FORMS_HINT = (
    'send a JSON object in one of the accepted forms: TorchServe {"data": [{"<feature column>": <number>, ...}, ...]} '
    'or Open Inference Protocol {"inputs": [{"name": "features", "shape": [<rows>, <columns>], '
    '"datatype": "FP64", "data": [...]}]}'
)


def _forms_hint(columns: Sequence[str], input_name: str) -> str:
    """The accepted request forms, spelled out for one model (appended to form errors)."""
    shown = ", ".join(f'"{c}": <number>' for c in columns[:3]) + (", ..." if len(columns) > 3 else "")
    return (
        f'send a JSON object in one of the accepted forms: TorchServe {{"data": [{{{shown}}}, ...]}} with the '
        f"{len(columns)} feature columns {', '.join(columns)}; or Open Inference Protocol "
        f'{{"inputs": [{{"name": "{input_name}", "shape": [<rows>, {len(columns)}], "datatype": "FP64", '
        f'"data": [<rows x {len(columns)} numbers, row-major>]}}]}}'
    )


class ModelHandler:
    """Serves one exported model version: validates requests, runs onnxruntime once per request, encodes answers.

    Create it with :meth:`load`. Thread-safe: onnxruntime sessions may be run concurrently.
    """

    def __init__(
        self,
        session: Any,
        metadata: dict[str, Any],
        version: str,
        directory: Path,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.session = session
        self.metadata = metadata
        self.directory = directory
        self.model_name: str = str(metadata["name"])
        self.version: str = version
        self.max_rows = int(max_rows)
        self.feature_columns: list[str] = list(metadata["feature_columns"])
        self.n_features = len(self.feature_columns)
        self.input_name: str = metadata["inputs"][0]["name"]
        self.output_name: str = metadata["outputs"][0]["name"]
        self.prediction_format: str = metadata["prediction_format"]
        self.output_columns: list[str] = list(metadata.get("output_columns") or [])
        self._outputs = [self.output_name]
        self._hint = _forms_hint(self.feature_columns, self.input_name)
        #: one codec per request form, chosen by the body's top-level key
        self.torchserve = TorchServeCodec(self)
        self.v2 = V2JsonCodec(self)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        threads: int | None = None,
        model_file: str | None = None,
    ) -> "ModelHandler":
        """Load an artifact version directory (or a model directory: its highest version).

        Checks that ``metadata.json`` is usable and that the sha256 of the model file matches it *before*
        creating the onnxruntime session. ``threads`` sets onnxruntime's intra-op threads (default: 1, or the
        ``EXPORTER_ORT_THREADS`` environment variable), which gives the lowest latency per request when a
        server runs many requests side by side. Raises :class:`ArtifactError` on any problem.
        """
        directory = Path(path)
        if not directory.is_dir():
            raise ArtifactError(f"artifact directory {str(directory)!r} does not exist or is not a directory")
        meta_path = directory / "metadata.json"
        if not meta_path.is_file():
            versions = _version_dirs(directory)
            if not versions:
                raise ArtifactError(
                    f"{str(directory)!r} holds no metadata.json and no version sub-directory (1, 2, ...); "
                    "expected an artifact version directory such as artifacts/xgb/1 or a model directory such as artifacts/xgb"
                )
            directory = versions[-1]
            meta_path = directory / "metadata.json"
            if not meta_path.is_file():
                raise ArtifactError(f"{str(meta_path)!r} is missing; every version directory needs a metadata.json")
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ArtifactError(f"{str(meta_path)!r} is not readable JSON: {exc}") from exc
        except RecursionError:  # issue 10: a hostile file must not take the server down
            metadata = _TOO_DEEP
        if metadata is _TOO_DEEP or _too_deep(metadata):
            raise ArtifactError(
                f"{str(meta_path)!r} nests objects or lists more than {_MAX_METADATA_DEPTH} levels deep; "
                "an exported metadata.json has 4: the file is corrupt or not ours"
            )
        problems = validate_metadata(metadata)
        if problems:
            raise ArtifactError(f"{str(meta_path)!r} is not usable: " + "; ".join(problems))

        model_path = directory / (model_file or metadata["model_file"])
        if not model_path.is_file():
            raise ArtifactError(f"model file {str(model_path)!r} named by metadata.json is missing")
        actual = _sha256(model_path)
        if actual != metadata["sha256"]:
            raise ArtifactError(
                f"sha256 of {str(model_path)!r} is {actual} but metadata.json records {metadata['sha256']}: "
                "the model file was modified or replaced after export; refusing to load it"
            )

        if _is_version_name(directory.name):
            version = directory.name
        else:  # e.g. a TorchServe model_dir: trust the metadata
            versions = metadata.get("versions") or ["1"]
            version = str(versions[-1])

        session = _create_session(model_path, threads)
        _check_session(session, metadata, model_path)
        return cls(session, metadata, version, directory, max_rows=max_rows)

    # ------------------------------------------------------------------ public API
    def predict(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Answer an already-decoded request; raises :class:`HandlerError` for a bad request."""
        body, _rows = self._answer(payload)
        return orjson.loads(body)

    def handle_bytes(self, body: bytes | bytearray | memoryview | str) -> tuple[int, bytes]:
        """Answer raw request bytes: ``(200, answer)`` or ``(4xx, b'{"error": ...}')``. Never raises for client input."""
        status, answer, _rows = self.handle_request(body)
        return status, answer

    def handle_request(self, body: bytes | bytearray | memoryview | str) -> tuple[int, bytes, int]:
        """Like :meth:`handle_bytes`, also returning the number of rows answered (0 on error), for logging."""
        try:
            payload = _decode_json(body)
        except HandlerError as exc:
            return 400, HandlerError(400, f"{exc.message}; {self._hint}").to_bytes(), 0
        try:
            answer, rows = self._answer(payload)
            return 200, answer, rows
        except HandlerError as exc:
            return exc.status, exc.to_bytes(), 0
        except RecursionError:
            return 400, HandlerError(400, f"request body is nested too deeply; {self._hint}").to_bytes(), 0

    def run(self, features: np.ndarray) -> np.ndarray:
        """Run the model on a ready float64 matrix ``[rows, n_features]``."""
        return self.session.run(self._outputs, {self.input_name: features})[0]

    def __repr__(self) -> str:
        return (
            f"ModelHandler(model_name={self.model_name!r}, version={self.version!r}, "
            f"feature_columns={self.feature_columns!r}, prediction_format={self.prediction_format!r})"
        )

    # ------------------------------------------------------------------ dispatch
    def _codec(self, payload: Any) -> tuple["TorchServeCodec | V2JsonCodec", dict[str, Any]]:
        """The codec of a decoded request's form, told apart by its keys (contract section 4)."""
        if type(payload) is not dict:
            if isinstance(payload, Mapping):
                payload = dict(payload)
            else:
                raise HandlerError(400, f"request body must be a JSON object, got {_type_name(payload)}; {self._hint}")
        if _V2_KEY in payload:
            if _ROWS_KEY in payload:
                raise HandlerError(
                    400,
                    'request body has both "data" (TorchServe form) and "inputs" (Open Inference Protocol form); '
                    "send exactly one of them",
                )
            return self.v2, payload
        if _ROWS_KEY in payload:
            return self.torchserve, payload
        keys = ", ".join(_quote(k) for k in list(payload)[:10]) or "none"
        raise HandlerError(
            400, f'request body has neither "data" nor "inputs" (keys found: {keys}); {self._hint}'
        )

    def _answer(self, payload: Any) -> tuple[bytes, int]:
        """Decode a request of either form, run the model once, and encode the answer (bytes, rows)."""
        codec, payload = self._codec(payload)
        matrix = codec.decode(payload)
        out = self.run(matrix)
        if not _all_finite(out):
            raise HandlerError(400, _non_finite_message(out, matrix, self.feature_columns))
        return codec.encode(out, payload), len(matrix)


# ---------------------------------------------------------------------- request forms (codecs)
class TorchServeCodec:
    """The TorchServe form: ``{"data": [{"<column>": <number>, ...}, ...]}`` in, ``{"predictions": [...]}`` out."""

    def __init__(self, model: "ModelHandler") -> None:
        self.model_name = model.model_name
        self.max_rows = model.max_rows
        self.feature_columns = model.feature_columns
        self.n_features = model.n_features
        self.prediction_format = model.prediction_format
        self.output_columns = model.output_columns
        self._getter = itemgetter(*self.feature_columns)
        self._named_parts = _named_key_parts(self.output_columns) if self.output_columns else []

    def decode(self, payload: dict[str, Any]) -> np.ndarray:
        """Rows of ``{column: value}`` objects -> the float64 ``features`` matrix."""
        rows = payload[_ROWS_KEY]
        if type(rows) is not list:
            raise HandlerError(
                400, f'"data" must be a list of row objects {{"<feature column>": <number>, ...}}, got {_type_name(rows)}'
            )
        n = len(rows)
        if n == 0:
            raise HandlerError(400, '"data" is empty; send at least one row object (data[0] is missing)')
        if n > self.max_rows:
            raise HandlerError(413, f'"data" has {n} rows; this server accepts at most {self.max_rows} rows per request')
        matrix = None
        try:
            values = list(map(self._getter, rows)) if type(rows[0]) is dict else None
        except (KeyError, TypeError):
            values = None
        if values is not None:
            if self.n_features == 1:
                flat = values
            else:
                flat = list(chain.from_iterable(values))
            if set(map(type, flat)) <= _NUMBER_TYPES:
                try:
                    matrix = np.fromiter(flat, np.float64, n * self.n_features).reshape(n, self.n_features)
                except (OverflowError, ValueError):
                    matrix = None
                if matrix is not None and not np.isfinite(matrix).all():
                    matrix = None
        if matrix is None:
            self._raise_row_problem(rows)  # always raises for invalid input
            matrix = self._rows_slow(rows)
        return matrix

    def _raise_row_problem(self, rows: list[Any]) -> None:
        """Find the first invalid row and raise a 400 naming it (returns when every row is valid)."""
        columns = self.feature_columns
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise HandlerError(
                    400,
                    f"data[{i}] must be an object mapping feature columns to numbers, got {_type_name(row)}; "
                    f"expected keys: {', '.join(columns)}",
                )
            missing = [c for c in columns if c not in row]
            if missing:
                raise HandlerError(
                    400,
                    f"data[{i}] is missing feature column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(json.dumps(c) for c in missing)}; expected keys: {', '.join(columns)}",
                )
            for c in columns:
                problem = _describe_bad_value(row[c])
                if problem is not None:
                    raise HandlerError(
                        400, f"data[{i}][{json.dumps(c)}] is {problem}; expected a finite number"
                    )

    def _rows_slow(self, rows: list[Mapping[str, Any]]) -> np.ndarray:
        """Build the matrix value by value (only for valid rows the fast path could not take, e.g. huge ints)."""
        return np.array([[float(row[c]) for c in self.feature_columns] for row in rows], dtype=np.float64)

    def _encode_named(self, out: np.ndarray) -> bytes:
        """``{"predictions": [{"<col>": v, ...}, ...]}`` without building one dict per row.

        orjson writes the numbers (shortest round-trip, as for every other answer); the object syntax is
        interleaved as bytes. Numbers never contain ``,`` so splitting orjson's flat array is exact.
        """
        n, k = out.shape[0], len(self.output_columns)
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

    def encode(self, out: np.ndarray, payload: dict[str, Any]) -> bytes:
        """TorchServe-style answer for the model's prediction format (contract section 1)."""
        fmt = self.prediction_format
        if fmt == "scalar":
            return orjson.dumps({"predictions": np.ascontiguousarray(out.reshape(-1))}, option=_JSON_OPTIONS)
        if fmt == "named_columns":
            return self._encode_named(out)
        # vector: one row -> the vector itself; several -> list of vectors
        if out.ndim == 1:
            out = out.reshape(-1, 1)
        payload = out[0] if out.shape[0] == 1 else out
        return orjson.dumps({"predictions": np.ascontiguousarray(payload)}, option=_JSON_OPTIONS)


class V2JsonCodec:
    """The Open Inference Protocol JSON form: ``{"inputs": [{"name": "features", ...}]}`` in, ``inference_response`` out."""

    def __init__(self, model: "ModelHandler") -> None:
        self.model_name = model.model_name
        self.version = model.version
        self.max_rows = model.max_rows
        self.feature_columns = model.feature_columns
        self.n_features = model.n_features
        self.input_name = model.input_name
        self.output_name = model.output_name

    def decode(self, payload: dict[str, Any]) -> np.ndarray:
        """One ``features`` tensor (flat or nested ``data``) -> the float64 matrix; checks id, parameters, outputs."""
        request_id = payload.get("id")
        if request_id is not None:
            if type(request_id) is not str:
                raise HandlerError(400, f'"id" must be a string, got {_type_name(request_id)}')
            try:
                request_id.encode("utf-8")
            except UnicodeEncodeError:
                raise HandlerError(400, '"id" is not valid Unicode text (it holds a lone surrogate)') from None
        params = payload.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise HandlerError(400, f'"parameters" must be an object, got {_type_name(params)}')
        inputs = payload["inputs"]
        expected_input = (
            f'one input tensor {{"name": "{self.input_name}", "shape": [<rows>, {self.n_features}], '
            f'"datatype": "FP64", "data": [...]}}'
        )
        if type(inputs) is not list:
            raise HandlerError(400, f'"inputs" must be a list holding {expected_input}, got {_type_name(inputs)}')
        if len(inputs) != 1:
            raise HandlerError(
                400, f'"inputs" holds {len(inputs)} tensors; model {self.model_name!r} takes exactly {expected_input}'
            )
        tensor = inputs[0]
        if not isinstance(tensor, Mapping):
            raise HandlerError(400, f"inputs[0] must be an object, {expected_input}; got {_type_name(tensor)}")
        for key in ("name", "shape", "datatype", "data"):
            if key not in tensor:
                raise HandlerError(400, f'inputs[0] is missing "{key}"; expected {expected_input}')
        name = tensor["name"]
        if name != self.input_name:
            raise HandlerError(
                400,
                f"inputs[0].name is {_quote(name) if isinstance(name, str) else _type_name(name)}: unknown input; "
                f'model {self.model_name!r} has one input named "{self.input_name}"',
            )
        datatype = tensor["datatype"]
        if not (isinstance(datatype, str) and datatype in NUMERIC_DATATYPES):
            shown = _quote(datatype) if isinstance(datatype, str) else _type_name(datatype)
            raise HandlerError(
                400,
                f"inputs[0].datatype {shown} is not supported; expected FP64 or another numeric datatype "
                f"({', '.join(sorted(NUMERIC_DATATYPES))}), which is cast to FP64",
            )
        shape = tensor["shape"]
        if (
            type(shape) is not list
            or len(shape) != 2
            or any(type(d) is not int for d in shape)
            or shape[1] != self.n_features
            or shape[0] < 1
        ):
            shown = _shape_text(shape)
            raise HandlerError(
                400,
                f"inputs[0].shape is {shown}; expected [<rows>, {self.n_features}]: 2-D, at least 1 row, "
                f"{self.n_features} columns ({', '.join(self.feature_columns)})",
            )
        n = shape[0]
        if n > self.max_rows:
            raise HandlerError(
                413, f"inputs[0].shape has {n} rows; this server accepts at most {self.max_rows} rows per request"
            )
        outputs = payload.get("outputs")
        if outputs is not None:
            if type(outputs) is not list:
                raise HandlerError(400, f'"outputs" must be a list of {{"name": "{self.output_name}"}}, got {_type_name(outputs)}')
            for j, requested in enumerate(outputs):
                req_name = requested.get("name") if isinstance(requested, Mapping) else None
                if req_name != self.output_name:
                    shown = _quote(req_name) if isinstance(req_name, str) else _type_name(requested)
                    raise HandlerError(
                        400,
                        f"outputs[{j}] requests {shown}: unknown output; model {self.model_name!r} has one output "
                        f'named "{self.output_name}"',
                    )
        return self._v2_matrix(tensor["data"], n)

    def encode(self, out: np.ndarray, payload: dict[str, Any]) -> bytes:
        """An ``inference_response``: model name and version, the echoed id, one FP64 ``predictions`` tensor."""
        answer: dict[str, Any] = {"model_name": self.model_name, "model_version": self.version}
        request_id = payload.get("id")
        if request_id is not None:
            answer["id"] = request_id
        if not out.flags.c_contiguous:
            out = np.ascontiguousarray(out)
        answer["outputs"] = [
            {"name": self.output_name, "shape": list(out.shape), "datatype": _DATATYPE, "data": out.reshape(-1)}
        ]
        return orjson.dumps(answer, option=_JSON_OPTIONS)

    def _v2_matrix(self, data: Any, n: int) -> np.ndarray:
        k = self.n_features
        expected = n * k
        if type(data) is not list:
            raise HandlerError(
                400, f"inputs[0].data must be a list of {expected} numbers (flat, row-major) or nested as [{n}, {k}], "
                f"got {_type_name(data)}"
            )
        if len(data) == expected and set(map(type, data)) <= _NUMBER_TYPES:
            # flat row-major: the common, fast case
            try:
                matrix = np.fromiter(data, np.float64, expected).reshape(n, k)
            except (OverflowError, ValueError):
                matrix = None
            if matrix is not None and np.isfinite(matrix).all():
                return matrix
            flat = data
        elif len(data) == n and all(type(r) is list for r in data):
            # nested [n][k]
            lengths = set(map(len, data))
            if lengths != {k}:
                bad = next(i for i, r in enumerate(data) if len(r) != k)
                raise HandlerError(
                    400,
                    f"inputs[0].data is nested but row {bad} holds {len(data[bad])} values; shape [{n}, {k}] needs "
                    f"{k} per row",
                )
            flat = list(chain.from_iterable(data))
            if set(map(type, flat)) <= _NUMBER_TYPES:
                try:
                    matrix = np.fromiter(flat, np.float64, expected).reshape(n, k)
                except (OverflowError, ValueError):
                    matrix = None
                if matrix is not None and np.isfinite(matrix).all():
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
        for index, value in enumerate(flat):
            problem = _describe_bad_value(value)
            if problem is not None:
                row, col = divmod(index, k)
                raise HandlerError(
                    400,
                    f"inputs[0].data value at row {row}, column {json.dumps(self.feature_columns[col])} "
                    f"(flat index {index}) is {problem}; expected a finite number",
                )
        return np.array([float(v) for v in flat], dtype=np.float64).reshape(n, k)


def _named_key_parts(columns: Sequence[str]) -> list[bytes]:
    """JSON fragments that precede each value of one row in ``[{"a": v, "b": v}, ...]``."""
    keys = [orjson.dumps(c) for c in columns]
    parts = [b"},{" + keys[0] + b":"] + [b"," + k + b":" for k in keys[1:]]
    return parts


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


# ---------------------------------------------------------------------- metadata and session checks
def validate_metadata(metadata: Any) -> list[str]:
    """Problems that make ``metadata.json`` unusable by the handler (a copy of exporter.contract.usability_problems)."""
    if not isinstance(metadata, dict):
        return ["top level must be an object"]
    problems: list[str] = []
    for key in ("name", "model_file", "sha256", "prediction_format"):
        if not isinstance(metadata.get(key), str):
            problems.append(f'"{key}" must be a string')
    cols = metadata.get("feature_columns")
    if not (isinstance(cols, list) and cols and all(isinstance(c, str) and c for c in cols)):
        problems.append('"feature_columns" must be a non-empty list of column names')
    elif len(set(cols)) != len(cols):
        problems.append('"feature_columns" holds duplicate names')
    for key in ("inputs", "outputs"):
        tensors = metadata.get(key)
        if not (isinstance(tensors, list) and len(tensors) == 1 and isinstance(tensors[0], dict)):
            problems.append(f'"{key}" must describe exactly one tensor')
        elif not isinstance(tensors[0].get("name"), str):
            problems.append(f'"{key}[0].name" must be a string')
    fmt = metadata.get("prediction_format")
    if isinstance(fmt, str) and fmt not in _PREDICTION_FORMATS:
        problems.append(f'"prediction_format" is {fmt!r}; expected one of {", ".join(_PREDICTION_FORMATS)}')
    if fmt == "named_columns":
        oc = metadata.get("output_columns")
        if not (isinstance(oc, list) and oc and all(isinstance(c, str) for c in oc)):
            problems.append('"output_columns" must be a non-empty list of strings when prediction_format is named_columns')
    if fmt == "vector":
        ed = metadata.get("embed_dim")
        if not (isinstance(ed, int) and not isinstance(ed, bool) and ed > 0):
            problems.append('"embed_dim" must be a positive integer when prediction_format is vector')
    model_file = metadata.get("model_file")
    if isinstance(model_file, str) and not _is_plain_file_name(model_file):
        problems.append(f'"model_file" must be a plain file name in the version directory, got {model_file!r}')
    return problems


def _is_plain_file_name(name: str) -> bool:
    """A file name inside the version directory: no separators, no parent or current directory."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and "\x00" not in name


def _create_session(model_path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    if threads is None:
        threads = int(os.environ.get("EXPORTER_ORT_THREADS", "1") or 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting worker threads: they would steal CPU from the server's event loop
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise ArtifactError(f"onnxruntime cannot load {str(model_path)!r}: {exc}") from exc


def _check_session(session: Any, metadata: dict[str, Any], model_path: Path) -> None:
    """The ONNX graph must have the single input/output that metadata describes, as tensor(double)."""
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    want_in = metadata["inputs"][0]["name"]
    want_out = metadata["outputs"][0]["name"]
    n = len(metadata["feature_columns"])
    if len(inputs) != 1 or inputs[0].name != want_in or inputs[0].type != "tensor(double)":
        got = ", ".join(f"{i.name} {i.type}" for i in inputs)
        raise ArtifactError(f"{str(model_path)!r} inputs are [{got}]; metadata expects one input {want_in!r} tensor(double)")
    shape = inputs[0].shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != n):
        raise ArtifactError(
            f"{str(model_path)!r} input {want_in!r} has shape {shape}; metadata expects [batch, {n}] "
            f"({n} feature_columns)"
        )
    if not any(o.name == want_out for o in outputs):
        got = ", ".join(o.name for o in outputs)
        raise ArtifactError(f"{str(model_path)!r} has outputs [{got}]; metadata expects {want_out!r}")


# ---------------------------------------------------------------------- TorchServe entry points
_service: ModelHandler | None = None
_service_lock = threading.Lock()


def initialize(context: Any) -> ModelHandler:
    """TorchServe load hook: load the artifact from ``context.system_properties["model_dir"]``."""
    global _service
    with _service_lock:
        if _service is None:
            props = getattr(context, "system_properties", None) or {}
            model_dir = props.get("model_dir")
            if not model_dir:
                raise ArtifactError('TorchServe context has no system_properties["model_dir"]')
            model_file = None
            manifest = getattr(context, "manifest", None) or {}
            serialized = (manifest.get("model") or {}).get("serializedFile") if isinstance(manifest, dict) else None
            meta_file = Path(model_dir) / "metadata.json"
            if serialized and meta_file.is_file():
                try:
                    if json.loads(meta_file.read_text(encoding="utf-8")).get("model_file") != serialized:
                        model_file = serialized
                except (ValueError, RecursionError, AttributeError):
                    pass  # ModelHandler.load says what is wrong with the file
            _service = ModelHandler.load(model_dir, model_file=model_file)
        return _service


def _request_body(item: Any) -> Any:
    """The body of one TorchServe request: ``body`` or ``data`` (bytes, bytearray, str or decoded JSON)."""
    if isinstance(item, Mapping):
        for key in ("body", "data"):
            if key in item and item[key] is not None:
                return item[key]
        raise HandlerError(400, f'TorchServe request has neither "body" nor "data"; {_FORMS_HINT}')
    return item


def _set_response(context: Any, idx: int, status: int) -> None:
    """Report a per-request status and content type to TorchServe when the context supports it."""
    if context is None or getattr(context, "request_processor", None) is None:
        return
    try:
        context.set_response_content_type(idx, "application/json")
        if status != 200:
            phrase = {400: "Bad Request", 413: "Payload Too Large", 500: "Internal Server Error"}.get(status, "Error")
            context.set_response_status(status, phrase, idx)
    except (AttributeError, IndexError, KeyError, TypeError):
        pass


def handle(data: list[Any] | None, context: Any) -> list[bytes] | None:
    """TorchServe entry point: one JSON answer (bytes) per request in ``data``.

    TorchServe calls ``handle(None, context)`` once at load time for module-level handlers; that loads the model.
    """
    service = initialize(context)
    if data is None:
        return None
    answers: list[bytes] = []
    for idx, item in enumerate(data):
        try:
            body = _request_body(item)
            if isinstance(body, (bytes, bytearray, memoryview, str)):
                status, answer, _ = service.handle_request(body)
            else:
                answer, _ = service._answer(body)
                status = 200
        except HandlerError as exc:
            status, answer = exc.status, exc.to_bytes()
        except RecursionError:
            status, answer = 400, HandlerError(400, "request body is nested too deeply").to_bytes()
        _set_response(context, idx, status)
        answers.append(answer)
    return answers
