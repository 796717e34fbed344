"""Exceptions that carry a message meant for the person or pipeline running the exporter.

The command line turns an :class:`ExporterError` into one line on stderr and exit code 2
(``ParityError``: exit code 3), never a traceback: anything else is a bug in the exporter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ExporterError(Exception):
    """Bad input or configuration: says what was wrong, where, and what was expected."""

    exit_code = 2


class ParityError(ExporterError):
    """The exported ONNX model disagrees with the native model beyond the tolerance."""

    exit_code = 3


def read_json_file(path: Path, source: str, expected: str) -> Any:
    """A user's JSON file (a schema, a feature-meta file) decoded; what is not readable JSON, or nests too deeply
    to decode, is an :class:`ExporterError` naming ``source`` and saying what was ``expected``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExporterError(f"{source} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ExporterError(f"{source} is nested too deeply to read; expected {expected}") from None
