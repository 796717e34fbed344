"""``KEY=VALUE`` options (Spark configuration), read one way by every command that takes them."""

from __future__ import annotations

from collections.abc import Iterable

from exporter.errors import ExporterError


def key_values(items: Iterable[str], flag: str) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; an item without ``=`` or with an empty key is exit 2 naming ``flag``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ExporterError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out
