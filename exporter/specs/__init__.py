"""The model registry: one declarative spec per model (see :mod:`exporter.specs.base`)."""
from __future__ import annotations

import importlib

from exporter.errors import ExporterError
from exporter.specs.base import ExportUnit, ModelSpec, Trained

#: model -> module defining ``SPEC``. Adding a model means adding one module and one line here.
REGISTRY: dict[str, str] = {
    "xgb": "exporter.specs.xgb",
    "deepfm": "exporter.specs.deepfm",
    "mmoe": "exporter.specs.mmoe",
    "two_tower": "exporter.specs.two_tower",
}
#: repository names that are exported as part of another spec
ALIASES: dict[str, str] = {"two_tower_item": "two_tower"}


def model_names() -> list[str]:
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of a model (or of the model an exported name such as ``two_tower_item`` belongs to)."""
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise ExporterError(f"unknown model '{name}': expected one of {', '.join(REGISTRY)} (or 'all')")
    return importlib.import_module(REGISTRY[key]).SPEC


__all__ = ["ExportUnit", "ModelSpec", "Trained", "get_spec", "model_names", "REGISTRY"]
