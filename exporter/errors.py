"""Exceptions that carry a message meant for the person or pipeline running the exporter.

The command line turns an :class:`ExporterError` into one line on stderr and exit code 2
(``ParityError``: exit code 3), never a traceback: anything else is a bug in the exporter.
"""

from __future__ import annotations


class ExporterError(Exception):
    """Bad input or configuration: says what was wrong, where, and what was expected."""

    exit_code = 2


class ParityError(ExporterError):
    """The exported ONNX model disagrees with the native model beyond the tolerance."""

    exit_code = 3
