"""The model handler: one exported artifact version in, request bytes in, answer bytes out.

:mod:`exporter.runtime` imports nothing else of ``exporter`` (standard library, numpy, onnxruntime and orjson
only), so the same code serves three consumers:

* a notebook::

      from exporter.handler import ModelHandler
      ModelHandler.load("artifacts/xgb/1").predict({"data": [{"item_ctr": 0.1, ...}]})

* ``python -m exporter serve`` (:mod:`exporter.serving.server` calls :meth:`ModelHandler.handle_http`);
* TorchServe, through :mod:`exporter.runtime.torchserve_entry` in the archive ``python -m exporter archive``
  builds.

Two request forms are accepted (contract section 4), told apart by their keys: TorchServe style
``{"data": [{"<column>": <value>, ...}, ...]}`` and Open Inference Protocol (KServe v2) ``{"inputs": [...]}``,
over HTTP also with Triton's binary tensor data extension (:mod:`exporter.runtime.envelopes`). Every entry point
goes through :meth:`ModelHandler.answer`. Client mistakes become ``{"error": "..."}`` answers with status 400 or
413 saying what was wrong, where, and what was expected; only :meth:`ModelHandler.predict` raises them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson

from exporter.runtime.columns import FeatureColumns, read_vocab
from exporter.runtime.envelopes import Envelope, Signature
from exporter.runtime.envelopes.torchserve import TorchServeEnvelope
from exporter.runtime.envelopes.v2_binary import V2BinaryEnvelope, split_body
from exporter.runtime.envelopes.v2_json import V2JsonEnvelope
from exporter.runtime.errors import ArtifactError, HandlerError
from exporter.runtime.messages import forms_hint, non_finite_message, quote, type_name
from exporter.runtime.rules import (
    METADATA_FILE,
    ONNX_TYPE,
    REQUEST_ROWS_KEY,
    MetadataError,
    is_version_name,
    read_metadata,
    sha256_file,
    version_dirs,
)

__all__ = ["Answer", "ArtifactError", "HandlerError", "ModelHandler", "DEFAULT_MAX_ROWS"]

#: Default limit on rows per request; ``serve --max-rows`` overrides it.
DEFAULT_MAX_ROWS = 10_000
_V2_KEY = "inputs"
_NO_PAYLOAD = object()

Body = bytes | bytearray | memoryview | str


class Decoded(NamedTuple):
    """A request validated and decoded by its envelope, ready to run (:meth:`ModelHandler.decode`)."""

    envelope: Envelope
    payload: dict[str, Any]
    matrix: np.ndarray
    binary: bool


class Answer(NamedTuple):
    """What :meth:`ModelHandler.answer` returns for one request."""

    status: int
    body: bytes
    #: rows answered (0 on error), for request logs
    rows: int = 0
    #: the JSON header's byte length when ``body`` carries binary tensor data (else None: plain JSON)
    header_length: int | None = None
    #: the refusal behind a non-200 answer
    error: HandlerError | None = None


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
        self.features = FeatureColumns.from_metadata(metadata, vocab)
        self._hint = forms_hint(
            self.feature_columns, self.input_name, [self.features.placeholder(j) for j in range(self.n_features)]
        )
        signature = Signature(
            self.model_name,
            self.version,
            tuple(self.feature_columns),
            self.input_name,
            self.output_name,
            self.prediction_format,
            tuple(self.output_columns),
            self.max_rows,
            self.features,
        )
        #: one envelope per request form, chosen by the body's top-level key (v2_binary: over HTTP)
        self.torchserve = TorchServeEnvelope(signature)
        self.v2 = V2JsonEnvelope(signature)
        self.v2_binary = V2BinaryEnvelope(signature, self.v2)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        threads: int | None = None,
        model_file: str | None = None,
    ) -> ModelHandler:
        """Load an artifact version directory (or a model directory: its highest version).

        Checks that ``metadata.json`` is usable and that the sha256 of the model file matches it *before*
        creating the onnxruntime session. ``threads`` sets onnxruntime's intra-op threads (default: 1, or the
        ``EXPORTER_ORT_THREADS`` environment variable), which gives the lowest latency per request when a
        server runs many requests side by side. ``model_file`` overrides metadata's (a TorchServe archive's
        ``serializedFile``). Raises :class:`ArtifactError` on any problem.
        """
        directory = _version_directory(Path(path))
        try:
            metadata = read_metadata(directory / METADATA_FILE)
        except MetadataError as exc:
            raise ArtifactError(str(exc)) from None
        model_path = directory / (model_file or metadata["model_file"])
        if not model_path.is_file():
            raise ArtifactError(f"model file {str(model_path)!r} named by metadata.json is missing")
        actual = sha256_file(model_path)
        if actual != metadata["sha256"]:
            raise ArtifactError(
                f"sha256 of {str(model_path)!r} is {actual} but metadata.json records {metadata['sha256']}: "
                "the model file was modified or replaced after export; refusing to load it"
            )
        if is_version_name(directory.name):
            version = directory.name
        else:  # e.g. a TorchServe model_dir: trust the metadata
            versions = metadata.get("versions") or ["1"]
            version = str(versions[-1])
        vocab = read_vocab(directory, metadata)
        session = _create_session(model_path, threads)
        _check_session(session, metadata, model_path)
        return cls(session, metadata, version, directory, max_rows=max_rows, vocab=vocab)

    # ------------------------------------------------------------------ the one path
    def answer(
        self,
        body: Body | None = None,
        *,
        payload: Any = _NO_PAYLOAD,
        header_length: int | str | None = None,
        http: bool = False,
    ) -> Answer:
        """Answer one request: raw ``body`` bytes, or an already-decoded ``payload``. Never raises for client input.

        ``http``: the request came over HTTP, where Triton's binary tensor data extension applies;
        ``header_length`` is its ``Inference-Header-Content-Length`` (None when absent; an int or the header's
        text, which must be ASCII digits: else the 400 quotes it). The request is
        validated once by its form's envelope, the model runs once, the envelope encodes the answer.
        """
        decoded = self.decode(body, payload=payload, header_length=header_length, http=http)
        if isinstance(decoded, Answer):
            return decoded
        return self.encode(decoded, self.run(decoded.matrix))

    def decode(
        self,
        body: Body | None = None,
        *,
        payload: Any = _NO_PAYLOAD,
        header_length: int | str | None = None,
        http: bool = False,
    ) -> Decoded | Answer:
        """The first step of :meth:`answer`: the request validated and decoded, or the 4xx :class:`Answer`.

        ``serve`` calls the steps itself so that only :meth:`run` (onnxruntime, which releases the GIL) goes to
        a worker thread; decoding and encoding stay on its event loop.
        """
        if body is None and payload is _NO_PAYLOAD:
            raise TypeError("answer() needs the request body or its decoded payload")
        try:
            blob = None
            if payload is _NO_PAYLOAD and body is not None:  # body is set whenever payload is not (checked above)
                if header_length is not None:
                    body, blob = split_body(body, header_length)
                    http = True
                payload = self._parse(body)
            envelope, payload = self._envelope(payload, http)
            matrix = envelope.decode(payload, blob)
            return Decoded(envelope, payload, matrix, envelope.wants_binary(payload))
        except HandlerError as exc:
            return Answer(exc.status, exc.to_bytes(), error=exc)
        except RecursionError:
            too_deep = HandlerError(400, f"request body is nested too deeply; {self._hint}")
            return Answer(400, too_deep.to_bytes(), error=too_deep)

    def encode(self, decoded: Decoded, out: np.ndarray) -> Answer:
        """The last step of :meth:`answer`: the model's output in the request's form (a 400 when not finite)."""
        try:
            if not np.isfinite(out).all():
                raise HandlerError(400, non_finite_message(out, decoded.matrix, self.feature_columns))
            data, answer_header = decoded.envelope.encode(out, decoded.payload, decoded.binary)
            return Answer(200, data, len(decoded.matrix), answer_header)
        except HandlerError as exc:
            return Answer(exc.status, exc.to_bytes(), error=exc)

    # ------------------------------------------------------------------ entry points
    def predict(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Answer an already-decoded request; raises :class:`HandlerError` for a bad request."""
        result = self.answer(payload=payload)
        if result.error is not None:
            raise result.error
        decoded: dict[str, Any] = orjson.loads(result.body)  # every envelope answers a JSON object
        return decoded

    def handle_bytes(self, body: Body) -> tuple[int, bytes]:
        """Answer raw request bytes: ``(200, answer)`` or ``(4xx, b'{"error": ...}')``. Never raises for client
        input."""
        result = self.answer(body)
        return result.status, result.body

    def handle_request(self, body: Body) -> tuple[int, bytes, int]:
        """Like :meth:`handle_bytes`, also returning the number of rows answered (0 on error), for logging."""
        result = self.answer(body)
        return result.status, result.body, result.rows

    def handle_http(self, body: Body, header_length: int | str | None = None) -> tuple[int, bytes, int, int | None]:
        """Answer an HTTP request body, with Triton's binary tensor data extension (:mod:`.envelopes.v2_binary`).

        ``header_length`` is the request's ``Inference-Header-Content-Length`` (None when absent; an int or its
        text: ASCII digits only, else the answer is a 400 quoting it). Returns
        ``(status, answer, rows, answer_header_length)``: the last is the JSON header's byte length when the
        answer carries binary tensor data (send it as ``Inference-Header-Content-Length``), else None and the
        answer is plain JSON. Never raises for client input.
        """
        result = self.answer(body, header_length=header_length, http=True)
        return result.status, result.body, result.rows, result.header_length

    def run(self, features: np.ndarray) -> np.ndarray:
        """Run the model on a ready float64 matrix ``[rows, n_features]``."""
        out: np.ndarray = self.session.run(self._outputs, {self.input_name: features})[0]  # onnxruntime is untyped
        return out

    def __repr__(self) -> str:
        return (
            f"ModelHandler(model_name={self.model_name!r}, version={self.version!r}, "
            f"feature_columns={self.feature_columns!r}, prediction_format={self.prediction_format!r})"
        )

    # ------------------------------------------------------------------ dispatch
    def _parse(self, body: Body) -> Any:
        """Decode a request body; a 400 with the accepted forms when it is not JSON."""
        try:
            return _decode_json(body)
        except HandlerError as exc:
            raise HandlerError(exc.status, f"{exc.message}; {self._hint}") from None

    def _envelope(self, payload: Any, http: bool) -> tuple[Envelope, dict[str, Any]]:
        """The envelope of a decoded request's form, told apart by its keys (contract section 4)."""
        if type(payload) is not dict:
            if not isinstance(payload, Mapping):
                raise HandlerError(400, f"request body must be a JSON object, got {type_name(payload)}; {self._hint}")
            payload = dict(payload)
        if _V2_KEY in payload:
            if REQUEST_ROWS_KEY in payload:
                raise HandlerError(
                    400,
                    'request body has both "data" (TorchServe form) and "inputs" (Open Inference Protocol form); '
                    "send exactly one of them",
                )
            return (self.v2_binary if http else self.v2), payload
        if REQUEST_ROWS_KEY in payload:
            return self.torchserve, payload
        keys = ", ".join(quote(k) for k in list(payload)[:10]) or "none"
        raise HandlerError(400, f'request body has neither "data" nor "inputs" (keys found: {keys}); {self._hint}')


def _decode_json(body: Body) -> Any:
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


# ---------------------------------------------------------------------- artifact and session
def _version_directory(directory: Path) -> Path:
    """The version directory to load: ``directory`` itself when it holds metadata.json, else its highest version."""
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory {str(directory)!r} does not exist or is not a directory")
    if (directory / METADATA_FILE).is_file():
        return directory
    versions = version_dirs(directory)
    if not versions:
        raise ArtifactError(
            f"{str(directory)!r} holds no metadata.json and no version sub-directory (1, 2, ...); "
            "expected an artifact version directory such as artifacts/xgb/1 or a model directory such as artifacts/xgb"
        )
    return versions[-1]


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
    if len(inputs) != 1 or inputs[0].name != want_in or inputs[0].type != ONNX_TYPE:
        got = ", ".join(f"{i.name} {i.type}" for i in inputs)
        raise ArtifactError(
            f"{str(model_path)!r} inputs are [{got}]; metadata expects one input {want_in!r} {ONNX_TYPE}"
        )
    shape = inputs[0].shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != n):
        raise ArtifactError(
            f"{str(model_path)!r} input {want_in!r} has shape {shape}; metadata expects [batch, {n}] "
            f"({n} feature_columns)"
        )
    if not any(o.name == want_out for o in outputs):
        got = ", ".join(o.name for o in outputs)
        raise ArtifactError(f"{str(model_path)!r} has outputs [{got}]; metadata expects {want_out!r}")
