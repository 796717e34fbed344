"""The model registry: the one list of models, one class each (see :class:`exporter.models.base.Model`).

Everything else that needs to know the models (the CLI's help and ``all``, the notebooks and their
runner, the hyper-parameter rules, the tests' parametrisation) derives it from here. Adding a model
means one module with its :class:`~exporter.models.base.Model` subclass, one line in :data:`REGISTRY`,
and ``python tools/build_notebooks.py NAME`` for its notebook (a test fails until that notebook exists).
Model modules are imported on first use, so listing the models imports no framework.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

from exporter.errors import ExporterError
from exporter.models.threads import prefer_passive_wait

prefer_passive_wait()  # before any model module loads torch or xgboost (OpenMP reads it once, at load)

from exporter.models.base import ExportUnit, Model, ModelSpec, NotebookInfo, TrainData, Trained  # noqa: E402

#: model -> ``"module:Class"`` of its class (or the model itself, for models registered at run time).
REGISTRY: dict[str, str | Model] = {
    "xgb": "exporter.models.xgb:XGBoostModel",
    "deepfm": "exporter.models.deepfm:DeepFMModel",
    "mmoe": "exporter.models.mmoe.spec:MMoEModel",
    "two_tower": "exporter.models.two_tower.spec:TwoTowerModel",
}
#: ``"module:Class"`` -> its one instance (models hold no state, so one is enough)
_INSTANCES: dict[str, Model] = {}


def model_names() -> list[str]:
    """The registered models, in the default run order."""
    return list(REGISTRY)


def get_spec(name: str) -> Model:
    """The model of a name, or of the model an exported repository name (``two_tower_item``) belongs to."""
    key = name if name in REGISTRY else _owner(name)
    if key is None:
        raise ExporterError(f"unknown model '{name}': expected one of {', '.join(REGISTRY)} (or 'all')")
    entry = REGISTRY[key]
    return entry if isinstance(entry, Model) else _instance(entry)


def _instance(path: str) -> Model:
    model = _INSTANCES.get(path)
    if model is None:
        module, _, cls = path.partition(":")
        model = _INSTANCES[path] = getattr(importlib.import_module(module), cls)()
    return model


def _owner(repository_name: str) -> str | None:
    """The registered model that exports ``repository_name`` (e.g. two_tower for two_tower_item)."""
    for key in REGISTRY:
        if repository_name in get_spec(key).model_names:
            return key
    return None


def repository_names() -> list[str]:
    """Every repository entry the registered models export (two_tower writes two)."""
    return [n for key in REGISTRY for n in get_spec(key).model_names]


@contextlib.contextmanager
def registered(model: Model) -> Iterator[Model]:
    """Register ``model`` for the duration of a block (plug-ins and tests); the registry is restored after."""
    if model.name in REGISTRY:
        raise ExporterError(f"model '{model.name}' is already registered")
    REGISTRY[model.name] = model
    try:
        yield model
    finally:
        REGISTRY.pop(model.name, None)


__all__ = [
    "ExportUnit",
    "Model",
    "ModelSpec",
    "NotebookInfo",
    "TrainData",
    "Trained",
    "get_spec",
    "model_names",
    "registered",
    "repository_names",
    "REGISTRY",
]
