"""What the handler refuses, as exceptions that carry the HTTP status to answer with.

A client mistake is a :class:`HandlerError` (400 or 413) whose message says what was wrong, where, and what
was expected; an unusable artifact is an :class:`ArtifactError` (500). Every entry point turns them into an
``{"error": "..."}`` body, so they never escape to a server for client input.
"""

from __future__ import annotations

import json

import orjson

__all__ = ["ArtifactError", "HandlerError"]


class HandlerError(Exception):
    """A request (or artifact) the handler refuses: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message

    def to_bytes(self) -> bytes:
        """The JSON error body, ``{"error": "<message>"}``."""
        try:
            return orjson.dumps({"error": self.message})
        except orjson.JSONEncodeError:  # a lone surrogate in the message: ASCII JSON escapes it
            return json.dumps({"error": self.message}).encode("ascii")


class ArtifactError(HandlerError):
    """The artifact itself is unusable (missing file, sha256 mismatch, inconsistent metadata)."""

    def __init__(self, message: str) -> None:
        super().__init__(500, message)
