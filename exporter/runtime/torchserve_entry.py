"""TorchServe's entry points: module-level :func:`initialize` and :func:`handle` (a custom handler file).

``python -m exporter archive`` ships this file as the archive's ``--handler`` beside the ``exporter/runtime``
package; TorchServe (ts/model_loader.py) imports it by module name from the extracted archive, calls
``handle(None, context)`` once at load time, then ``handle(batch, context)`` with one dict per request holding
the body under ``body`` (or ``data``): bytes, or an already-decoded JSON object for ``application/json``.
Per-request statuses go through ``context.set_response_status(code, phrase, idx)``.

Absolute imports only: the file runs both as ``exporter.runtime.torchserve_entry`` and as the top-level module
``torchserve_entry`` of an archive.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.runtime.errors import ArtifactError, HandlerError
from exporter.runtime.handler import ModelHandler
from exporter.runtime.messages import FORMS_HINT
from exporter.runtime.rules import METADATA_FILE, MetadataError, read_metadata

__all__ = ["ArtifactError", "HandlerError", "ModelHandler", "handle", "initialize"]

_service: ModelHandler | None = None
_service_lock = threading.Lock()
_PHRASES = {400: "Bad Request", 413: "Payload Too Large", 500: "Internal Server Error"}


def initialize(context: Any) -> ModelHandler:
    """TorchServe load hook: load the artifact from ``context.system_properties["model_dir"]`` (once per worker)."""
    global _service
    with _service_lock:
        if _service is None:
            props = getattr(context, "system_properties", None) or {}
            model_dir = props.get("model_dir")
            if not model_dir:
                raise ArtifactError('TorchServe context has no system_properties["model_dir"]')
            _service = ModelHandler.load(model_dir, model_file=_serialized_file(context, Path(model_dir)))
        return _service


def _serialized_file(context: Any, model_dir: Path) -> str | None:
    """The archive's ``serializedFile`` when it differs from metadata's ``model_file`` (else None)."""
    manifest = getattr(context, "manifest", None) or {}
    serialized = (manifest.get("model") or {}).get("serializedFile") if isinstance(manifest, dict) else None
    if not serialized or not (model_dir / METADATA_FILE).is_file():
        return None
    try:
        return serialized if read_metadata(model_dir / METADATA_FILE)["model_file"] != serialized else None
    except MetadataError:
        return None  # ModelHandler.load says what is wrong with the file


def _request_body(item: Any) -> Any:
    """The body of one TorchServe request: ``body`` or ``data`` (bytes, bytearray, str or decoded JSON)."""
    if isinstance(item, Mapping):
        for key in ("body", "data"):
            if key in item and item[key] is not None:
                return item[key]
        raise HandlerError(400, f'TorchServe request has neither "body" nor "data"; {FORMS_HINT}')
    return item


def _set_response(context: Any, idx: int, status: int) -> None:
    """Report a per-request status and content type to TorchServe when the context supports it."""
    if context is None or getattr(context, "request_processor", None) is None:
        return
    try:
        context.set_response_content_type(idx, "application/json")
        if status != 200:
            context.set_response_status(status, _PHRASES.get(status, "Error"), idx)
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
        except HandlerError as exc:
            status, answer = exc.status, exc.to_bytes()
        else:
            raw = isinstance(body, (bytes, bytearray, memoryview, str))
            result = service.answer(body) if raw else service.answer(payload=body)
            status, answer = result.status, result.body
        _set_response(context, idx, status)
        answers.append(answer)
    return answers
