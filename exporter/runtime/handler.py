"""The model handler: one exported artifact version in, request bytes in, answer bytes out.

This module is deliberately self-contained (standard library, numpy, onnxruntime and orjson only, never
``exporter.*``) so that the same file serves three consumers:

* a notebook::

      from exporter.runtime.handler import ModelHandler
      ModelHandler.load("artifacts/xgb/1").predict({"data": [{"item_ctr": 0.1, ...}]})

* ``python -m exporter serve`` (:mod:`exporter.serving.server` calls :meth:`ModelHandler.handle_bytes`);
* TorchServe, as a custom handler with module-level entry points :func:`initialize` and :func:`handle`::

      torch-model-archiver --model-name xgb --version 1 --handler exporter/handler.py \\
          --serialized-file artifacts/xgb/1/model.onnx \\
          --extra-files artifacts/xgb/1/metadata.json,artifacts/xgb/1/vocab.json   # vocab.json: string categories

Two request forms are accepted (contract section 4), told apart by their keys:

* TorchServe style ``{"data": [{"<column>": <number>, ...}, ...]}`` answered with ``{"predictions": [...]}``;
* Open Inference Protocol (KServe v2) ``{"inputs": [{"name": "features", "shape": [B, N], "datatype": "FP64",
  "data": [...]}]}`` answered with an ``inference_response``; with Triton's binary tensor data extension
  (:meth:`ModelHandler.handle_http`) the numbers may travel as raw bytes after the JSON header, both ways.

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

# (exporter.features owns these; tests/test_features.py::test_handler_copies_of_feature_facts_agree proves the copies agree)
_MAX_EXACT_INT = 2**53
_UNKNOWN_CODE = -1
_VOCAB_FILE = "vocab.json"


def _hash_code(text: str) -> int:
    """The code of a string in a ``hash_buckets`` column (docs/features.md): sha256, first 6 bytes big-endian."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:6], "big")


class _Missing:
    """Marks a key absent from a row object (distinct from a JSON null)."""


_MISSING = _Missing()


class FeatureColumns:
    """What the handler knows about each input column from ``metadata.json`` ``features`` (docs/features.md).

    Numeric columns take finite numbers. Categorical columns take integer IDs (codes) within +-2^53; a string
    category also takes its raw string (mapped through ``vocab.json``, unknown strings to the OOV code -1, or
    hashed), a boolean column true/false. ``optional`` columns may be absent or null: NaN, which the graph
    turns into the fill or the OOV row. Artifacts without ``features`` (older exports) are all numeric.
    """

    def __init__(self, metadata: Mapping[str, Any], vocab: Mapping[str, Sequence[str]] | None) -> None:
        columns = list(metadata["feature_columns"])
        entries = metadata.get("features")
        by_name = {e.get("name"): e for e in entries} if isinstance(entries, list) else {}
        self.columns = columns
        self.kinds: list[str] = []
        self.optional: list[bool] = []
        #: per column: str -> code for a string vocabulary, "hash" for hashed strings, None otherwise
        self.strings: list[dict[str, int] | str | None] = []
        self.booleans: list[bool] = []
        for c in columns:
            e = by_name.get(c) or {}
            kind = e.get("kind", "numeric")
            self.kinds.append(kind)
            self.optional.append(bool(e.get("optional", False)))
            self.booleans.append(kind == "categorical" and e.get("dtype") == "bool")
            table: dict[str, int] | str | None = None
            if kind == "categorical" and e.get("dtype") == "string":
                oov = e.get("oov") or {}
                if oov.get("policy") == "hash":
                    table = "hash"
                else:
                    words = (vocab or {}).get(c)
                    if words is None:
                        raise ArtifactError(f"string feature {c!r} has no vocabulary in {_VOCAB_FILE}")
                    table = {str(w): i for i, w in enumerate(words)}
            self.strings.append(table)
        self.categorical = [j for j, k in enumerate(self.kinds) if k == "categorical"]
        #: the fast numeric path suffices (no strings, booleans or optional columns to interpret)
        self.plain = not any(self.optional) and all(t is None for t in self.strings) and not any(self.booleans)

    def takes(self, j: int) -> str:
        """What column ``j`` takes, for error messages."""
        table = self.strings[j]
        if table is not None:
            return "a string or its integer code"
        if self.booleans[j]:
            return "true, false or an integer code"
        if self.kinds[j] == "categorical":
            return "an integer ID (at most 2^53 in magnitude)"
        return "a finite number"

    def check_ids(self, matrix: np.ndarray, where: Any) -> None:
        """Categorical columns must hold integers within +-2^53 (NaN: an omitted optional value)."""
        if not self.categorical:
            return
        sub = matrix[:, self.categorical]
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(sub) & ((np.floor(sub) != sub) | (np.abs(sub) > _MAX_EXACT_INT))
        if bad.any():
            i, k = (int(v) for v in np.argwhere(bad)[0])
            j = self.categorical[k]
            raise HandlerError(
                400, f"{where(i, self.columns[j])} is {float(sub[i, k])!r}, not an integer ID; expected {self.takes(j)}")

    def convert(self, value: Any, j: int, where: str) -> float:
        """One cell of the TorchServe form -> its FP64 value; a 400 naming ``where`` when it cannot be one."""
        t = type(value)
        if value is None or value is _MISSING:
            if self.optional[j]:
                return math.nan
            if value is _MISSING:
                raise HandlerError(400, f"{where} is missing; the column is not optional")
            raise HandlerError(400, f"{where} is null; expected {self.takes(j)} (the column is not optional)")
        table = self.strings[j]
        if t is str and table is not None:
            if table == "hash":
                return float(_hash_code(value))
            return float(table.get(value, _UNKNOWN_CODE))  # type: ignore[union-attr]
        if t is bool and self.booleans[j]:
            return 1.0 if value else 0.0
        problem = _describe_bad_value(value)
        if problem is not None:
            raise HandlerError(400, f"{where} is {problem}; expected {self.takes(j)}")
        number = float(value)
        if self.kinds[j] == "categorical" and (number != math.floor(number) or abs(number) > _MAX_EXACT_INT):
            raise HandlerError(400, f"{where} is {number!r}, not an integer ID; expected {self.takes(j)}")
        return number

    def column(self, values: Sequence[Any], j: int, n: int) -> np.ndarray | None:
        """A whole column of one request at once when it is uniform (all numbers, or all strings); else None."""
        types = set(map(type, values))
        table = self.strings[j]
        try:
            if types <= _NUMBER_TYPES:
                return np.fromiter(values, np.float64, n)
            if types == {str} and isinstance(table, dict):
                get = table.get
                return np.fromiter((get(v, _UNKNOWN_CODE) for v in values), np.float64, n)
        except (OverflowError, ValueError):
            return None
        return None


def _read_vocab(directory: Path, metadata: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """``vocab.json`` named by ``features[].vocab``, its sha256 checked like the model file's."""
    entries = metadata.get("features")
    if not isinstance(entries, list):
        return None
    refs = [e.get("vocab") for e in entries if isinstance(e, dict) and isinstance(e.get("vocab"), dict)]
    if not refs:
        return None
    name, digest = refs[0].get("file"), refs[0].get("sha256")
    if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ArtifactError(f"metadata.json names an unusable vocabulary file {name!r}")
    path = directory / name
    if not path.is_file():
        raise ArtifactError(f"vocabulary file {str(path)!r} named by metadata.json is missing")
    actual = _sha256(path)
    if actual != digest:
        raise ArtifactError(
            f"sha256 of {str(path)!r} is {actual} but metadata.json records {digest}: the vocabulary was modified "
            "after export; refusing to load it"
        )
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{str(path)!r} is not readable JSON: {exc}") from exc
    if not isinstance(vocab, dict) or not all(isinstance(v, list) for v in vocab.values()):
        raise ArtifactError(f"{str(path)!r} must map each string column to its list of values")
    return vocab


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


def _forms_hint(columns: Sequence[str], input_name: str, features: "FeatureColumns | None" = None) -> str:
    """The accepted request forms, spelled out for one model (appended to form errors)."""

    def takes(j: int) -> str:
        if features is not None and features.strings[j] is not None:
            return "<string>"
        if features is not None and features.kinds[j] == "categorical":
            return "<integer ID>"
        return "<number>"

    shown = ", ".join(f'"{c}": {takes(j)}' for j, c in enumerate(columns[:3])) + (", ..." if len(columns) > 3 else "")
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
        vocab: Mapping[str, Sequence[str]] | None = None,
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
        self.features = FeatureColumns(metadata, vocab)
        self._hint = _forms_hint(self.feature_columns, self.input_name, self.features)
        #: one codec per request form, chosen by the body's top-level key
        self.torchserve = TorchServeCodec(self)
        self.v2 = V2JsonCodec(self)
        self.v2_binary = V2BinaryCodec(self)

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
        except RecursionError:  # a hostile file must not take the server down
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

        vocab = _read_vocab(directory, metadata)
        session = _create_session(model_path, threads)
        _check_session(session, metadata, model_path)
        return cls(session, metadata, version, directory, max_rows=max_rows, vocab=vocab)

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

    def handle_http(self, body: bytes | bytearray | memoryview | str,
                    header_length: int | None = None) -> tuple[int, bytes, int, int | None]:
        """Answer an HTTP request body, with Triton's binary tensor data extension (:class:`V2BinaryCodec`).

        ``header_length`` is the request's ``Inference-Header-Content-Length`` (None when absent). Returns
        ``(status, answer, rows, answer_header_length)``: the last is the JSON header's byte length when the
        answer carries binary tensor data (send it as ``Inference-Header-Content-Length``), else None and the
        answer is plain JSON. Never raises for client input.
        """
        blob = None
        try:
            if header_length is not None:
                body, blob = self.v2_binary.split(body, header_length)
        except HandlerError as exc:
            return exc.status, exc.to_bytes(), 0, None
        try:
            payload = _decode_json(body)
        except HandlerError as exc:
            return exc.status, HandlerError(exc.status, f"{exc.message}; {self._hint}").to_bytes(), 0, None
        try:
            codec, payload = self._codec(payload)
            if codec is self.v2:
                matrix = self.v2_binary.decode(payload, blob)
            elif blob is not None and len(blob):
                raise HandlerError(400, "binary tensor data comes only with the Open Inference Protocol form "
                                        '{"inputs": [...]}, not with "data" rows')
            else:
                matrix = codec.decode(payload)
            binary = codec is self.v2 and self.v2_binary.wants_binary(payload)
            out = self.run(matrix)
            if not _all_finite(out):
                raise HandlerError(400, _non_finite_message(out, matrix, self.feature_columns))
            if binary:
                answer, answer_header = self.v2_binary.encode(out, payload)
                return 200, answer, len(matrix), answer_header
            return 200, codec.encode(out, payload), len(matrix), None
        except HandlerError as exc:
            return exc.status, exc.to_bytes(), 0, None
        except RecursionError:
            return 400, HandlerError(400, f"request body is nested too deeply; {self._hint}").to_bytes(), 0, None

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
        self.features = model.features
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
            elif not self.features.plain:
                matrix = self._columns_fast(values, n)
        if matrix is not None:
            self.features.check_ids(matrix, lambda i, c: f"data[{i}][{json.dumps(c)}]")
            return matrix
        if not self.features.plain:
            return self._rows_typed(rows)  # names the first bad cell
        self._raise_row_problem(rows)  # always raises for invalid input
        matrix = self._rows_slow(rows)
        self.features.check_ids(matrix, lambda i, c: f"data[{i}][{json.dumps(c)}]")
        return matrix

    def _columns_fast(self, values: list[Any], n: int) -> np.ndarray | None:
        """Column by column when each column is uniform (numbers, or raw strings of a string category)."""
        k = self.n_features
        out = np.empty((n, k), dtype=np.float64)
        columns = [values] if k == 1 else list(zip(*values))
        for j, col in enumerate(columns):
            got = self.features.column(col, j, n)
            if got is None:
                return None
            out[:, j] = got
        return out if np.isfinite(out).all() else None

    def _rows_typed(self, rows: list[Any]) -> np.ndarray:
        """Cell by cell with each column's rules (strings, booleans, optional columns); 400 at the first bad cell."""
        columns = self.feature_columns
        convert = self.features.convert
        out = np.empty((len(rows), len(columns)), dtype=np.float64)
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise HandlerError(
                    400,
                    f"data[{i}] must be an object mapping feature columns to values, got {_type_name(row)}; "
                    f"expected keys: {', '.join(columns)}",
                )
            missing = [c for j, c in enumerate(columns) if c not in row and not self.features.optional[j]]
            if missing:
                raise HandlerError(
                    400,
                    f"data[{i}] is missing feature column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(json.dumps(c) for c in missing)} (not optional); expected keys: {', '.join(columns)}",
                )
            for j, c in enumerate(columns):
                out[i, j] = convert(row.get(c, _MISSING), j, f"data[{i}][{json.dumps(c)}]")
        return out

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
        self.features = model.features

    def decode(self, payload: dict[str, Any]) -> np.ndarray:
        """One ``features`` tensor (flat or nested ``data``) -> the float64 matrix; checks id, parameters, outputs."""
        tensor, n = self.check(payload)
        matrix = self._v2_matrix(tensor["data"], n)
        self.features.check_ids(matrix, lambda i, c: f"inputs[0].data value at row {i}, column {json.dumps(c)}")
        return matrix

    def check(self, payload: dict[str, Any], binary: bool = False) -> tuple[Mapping[str, Any], int]:
        """Everything of a v2 request but its numbers: returns the input tensor and its row count.

        ``binary``: the tensor's numbers may travel after the JSON header instead of in ``data``.
        """
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
        for key in ("name", "shape", "datatype") if binary else ("name", "shape", "datatype", "data"):
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
        return tensor, n

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


class V2BinaryCodec:
    """Triton's binary tensor data extension of the v2 form (HTTP), beside the JSON one.

    A request body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensor bytes:
    an input with ``"parameters": {"binary_data_size": N}`` has no ``data``; its N bytes (little-endian,
    row-major, in its ``datatype``) follow the header. A requested output with ``"parameters": {"binary_data":
    true}`` (or every output, with the request parameter ``binary_data_output: true``) is answered the same
    way: its JSON description carries ``binary_data_size`` and the answer's header length is returned to send
    as ``Inference-Header-Content-Length``. Validation and errors are the JSON form's (:class:`V2JsonCodec`).
    """

    #: v2 datatype -> numpy dtype of its little-endian wire form (BF16: the upper half of an FP32)
    DTYPES = {"FP64": "<f8", "FP32": "<f4", "FP16": "<f2", "BF16": "<u2", "INT8": "i1", "INT16": "<i2",
              "INT32": "<i4", "INT64": "<i8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}
    #: integers beyond this are not exact in FP64 (contract section 1)
    MAX_EXACT_INT = 2**53

    def __init__(self, model: "ModelHandler") -> None:
        self.json = model.v2
        self.model_name = model.model_name
        self.version = model.version
        self.feature_columns = model.feature_columns
        self.n_features = model.n_features
        self.output_name = model.output_name

    @staticmethod
    def split(body: bytes | bytearray | memoryview | str, header_length: Any) -> tuple[memoryview, memoryview]:
        """(the JSON header's bytes, the bytes after it)."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        view = memoryview(body)
        if type(header_length) is not int or not 0 < header_length <= len(view):
            shown = _quote(header_length) if not isinstance(header_length, int) else str(header_length)
            raise HandlerError(
                400, f"Inference-Header-Content-Length is {shown}; expected the byte length of the JSON header, "
                f"a positive integer up to the body's {len(view)} bytes"
            )
        return view[:header_length], view[header_length:]

    def decode(self, payload: dict[str, Any], blob: memoryview | None) -> np.ndarray:
        """The float64 matrix from the tensor's binary bytes (``blob``) or, without ``binary_data_size``, its JSON data."""
        tensor, n = self.json.check(payload, binary=True)
        params = tensor.get("parameters")
        if params is not None and type(params) is not dict:
            raise HandlerError(400, f'inputs[0].parameters must be an object, got {_type_name(params)}')
        size = params.get("binary_data_size") if params else None
        if size is None:
            if "data" not in tensor:
                raise HandlerError(400, 'inputs[0] has neither "data" nor parameters.binary_data_size; send one of them')
            if blob is not None and len(blob):
                raise HandlerError(400, f"the body holds {len(blob)} bytes after the JSON header, but no input declares "
                                        "parameters.binary_data_size")
            return self.json.decode(payload)
        if blob is None:
            raise HandlerError(400, "inputs[0].parameters.binary_data_size needs the Inference-Header-Content-Length "
                                    "header (the JSON header's byte length)")
        if "data" in tensor:
            raise HandlerError(400, 'inputs[0] has both "data" and parameters.binary_data_size; send its numbers once')
        datatype = tensor["datatype"]
        dtype = np.dtype(self.DTYPES[datatype])
        k = self.n_features
        expected = n * k * dtype.itemsize
        if type(size) is not int or size != expected:
            shown = str(size) if type(size) is int else _quote(size) if isinstance(size, str) else _type_name(size)
            raise HandlerError(
                400, f"inputs[0].parameters.binary_data_size is {shown}; shape [{n}, {k}] of {datatype} needs "
                f"{expected} bytes"
            )
        if len(blob) != size:
            raise HandlerError(
                400, f"the body holds {len(blob)} bytes after the JSON header; inputs[0].parameters.binary_data_size "
                f"says {size}"
            )
        raw = np.frombuffer(blob, dtype=dtype, count=n * k)
        if datatype == "BF16":
            matrix = (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        elif datatype == "FP64" and raw.flags.aligned:
            matrix = raw  # the request's own bytes, read-only: onnxruntime reads them in place
        else:
            matrix = raw.astype(np.float64)
        matrix = matrix.reshape(n, k)
        if dtype.kind in "iu" and dtype.itemsize == 8:  # compared as integers: 2^53 + 1 rounds to 2^53 in FP64
            inexact = (raw > self.MAX_EXACT_INT) | (raw < -self.MAX_EXACT_INT) if dtype.kind == "i" else raw > self.MAX_EXACT_INT
        else:
            inexact = None
        if inexact is not None and inexact.any():
            index = int(np.flatnonzero(inexact)[0])
            row, col = divmod(index, k)
            raise HandlerError(
                400, f"inputs[0] binary value at row {row}, column {json.dumps(self.feature_columns[col])} is beyond "
                f"2^53; FP64 holds integers exactly only up to 2^53"
            )
        if not np.isfinite(matrix).all():
            index = int(np.flatnonzero(~np.isfinite(matrix.reshape(-1)))[0])
            row, col = divmod(index, k)
            value = float(matrix.reshape(-1)[index])
            raise HandlerError(
                400, f"inputs[0] binary value at row {row}, column {json.dumps(self.feature_columns[col])} "
                f"(flat index {index}) is {_describe_bad_value(value)}; expected a finite number"
            )
        self.json.features.check_ids(matrix, lambda i, c: f"inputs[0] binary value at row {i}, column {json.dumps(c)}")
        return matrix

    def wants_binary(self, payload: dict[str, Any]) -> bool:
        """Whether the request asks for its output as binary tensor data."""
        params = payload.get("parameters")
        default = params.get("binary_data_output", False) if params else False
        if type(default) is not bool:
            raise HandlerError(400, f"parameters.binary_data_output must be true or false, got {_type_name(default)}")
        outputs = payload.get("outputs")
        if not outputs:
            return default
        wanted = default
        for j, requested in enumerate(outputs):
            out_params = requested.get("parameters")
            if out_params is None:
                continue
            if type(out_params) is not dict:
                raise HandlerError(400, f"outputs[{j}].parameters must be an object, got {_type_name(out_params)}")
            flag = out_params.get("binary_data", default)
            if type(flag) is not bool:
                raise HandlerError(400, f"outputs[{j}].parameters.binary_data must be true or false, got {_type_name(flag)}")
            wanted = flag
        return wanted

    def encode(self, out: np.ndarray, payload: dict[str, Any]) -> tuple[bytes, int]:
        """(answer bytes, JSON header length): an ``inference_response`` header, then the output's FP64 bytes."""
        data = np.ascontiguousarray(out, dtype="<f8")
        answer: dict[str, Any] = {"model_name": self.model_name, "model_version": self.version}
        request_id = payload.get("id")
        if request_id is not None:
            answer["id"] = request_id
        answer["outputs"] = [{"name": self.output_name, "shape": list(out.shape), "datatype": _DATATYPE,
                              "parameters": {"binary_data_size": data.nbytes}}]
        header = orjson.dumps(answer)
        return header + memoryview(data).cast("B"), len(header)  # one copy of the numbers


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
    feats = metadata.get("features")
    if feats is not None and isinstance(cols, list):
        names = [f.get("name") if isinstance(f, dict) else None for f in feats] if isinstance(feats, list) else None
        if names != cols:
            problems.append('"features" must describe the feature_columns, one object each, in their order')
        elif any(f.get("kind") not in ("numeric", "categorical") for f in feats):
            problems.append('"features[].kind" must be "numeric" or "categorical"')
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
