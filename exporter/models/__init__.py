"""The model registry: the one list of models, one declarative spec each (see :mod:`exporter.models.base`).

Everything else that needs to know the models (the CLI's help and ``all``, the notebooks and their
runner, the hyper-parameter rules, the tests' parametrisation) derives it from here. Adding a model
means one spec module, one line in :data:`REGISTRY`, and ``python tools/build_notebooks.py NAME`` for
its notebook (a test fails until that notebook exists).
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Iterator

from exporter.errors import ExporterError
from exporter.models.base import ExportUnit, ModelSpec, NotebookInfo, Trained

#: model -> module defining ``SPEC`` (or the spec itself, for models registered at run time).
REGISTRY: dict[str, str | ModelSpec] = {
    "xgb": "exporter.models.xgb",
    "deepfm": "exporter.models.deepfm",
    "mmoe": "exporter.models.mmoe.spec",
    "two_tower": "exporter.models.two_tower.spec",
}


def model_names() -> list[str]:
    """The registered models, in the default run order."""
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of a model, or of the model an exported repository name (``two_tower_item``) belongs to."""
    key = name if name in REGISTRY else _owner(name)
    if key is None:
        raise ExporterError(f"unknown model '{name}': expected one of {', '.join(REGISTRY)} (or 'all')")
    entry = REGISTRY[key]
    return entry if isinstance(entry, ModelSpec) else importlib.import_module(entry).SPEC


def _owner(repository_name: str) -> str | None:
    """The registered model whose spec exports ``repository_name`` (e.g. two_tower for two_tower_item)."""
    for key in REGISTRY:
        if repository_name in get_spec(key).model_names:
            return key
    return None


def repository_names() -> list[str]:
    """Every repository entry the registered models export (two_tower writes two)."""
    return [n for key in REGISTRY for n in get_spec(key).model_names]


@contextlib.contextmanager
def registered(spec: ModelSpec) -> Iterator[ModelSpec]:
    """Register ``spec`` for the duration of a block (plug-ins and tests); the registry is restored after."""
    if spec.name in REGISTRY:
        raise ExporterError(f"model '{spec.name}' is already registered")
    REGISTRY[spec.name] = spec
    try:
        yield spec
    finally:
        REGISTRY.pop(spec.name, None)


__all__ = ["ExportUnit", "ModelSpec", "NotebookInfo", "Trained", "get_spec", "model_names", "registered",
           "repository_names", "REGISTRY"]
