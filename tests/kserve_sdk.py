"""Check a manifest against KServe's own Python SDK models (``kserve.models``, ``kubernetes.client.models``).

The SDKs are installed without their server dependencies (``requirements-nodeps.txt``): their model classes
need only ``six``, ``urllib3`` and their own ``configuration`` modules, so the packages are mapped in without
running their heavy ``__init__`` (which would import KServe's model server and the Kubernetes API clients).

:func:`sdk_problems` walks the manifest the way the SDKs' ``ApiClient.deserialize`` does (``attribute_map`` for
the YAML key of each attribute, ``openapi_types`` for its type), but strictly: a key the SDK model does not
know, a value of the wrong type, or a required field the model's own setter refuses is a problem, not silently
dropped.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from typing import Any


def _package(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not installed: pip install --no-deps -r requirements-nodeps.txt")
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = module


def sdk_models() -> tuple[Any, Any]:
    """(kserve.models, kubernetes.client.models)."""
    _package("kserve")
    _package("kubernetes")
    return importlib.import_module("kserve.models"), importlib.import_module("kubernetes.client.models")


def _model_class(type_name: str) -> Any:
    kserve_models, k8s_models = sdk_models()
    for module in (kserve_models, k8s_models):
        cls = getattr(module, type_name, None)
        if cls is not None:
            return cls
    raise LookupError(type_name)


_PRIMITIVES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (float, int), "object": (object,)}


def _build(value: Any, type_name: str, where: str, problems: list[str]) -> Any:
    """``value`` as the SDK type ``type_name`` (recording every mismatch in ``problems``)."""
    match = re.fullmatch(r"list\[(.+)\]", type_name)
    if match:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list ({type_name}), got {type(value).__name__}")
            return None
        return [_build(v, match.group(1), f"{where}[{i}]", problems) for i, v in enumerate(value)]
    match = re.fullmatch(r"dict\(([^,]+), (.+)\)", type_name)
    if match:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping ({type_name}), got {type(value).__name__}")
            return None
        return {k: _build(v, match.group(2), f"{where}.{k}", problems) for k, v in value.items()}
    if type_name in _PRIMITIVES:
        if isinstance(value, bool) and type_name != "bool" or not isinstance(value, _PRIMITIVES[type_name]):
            problems.append(f"{where}: expected {type_name}, got {type(value).__name__} {value!r}")
        return value
    cls = _model_class(type_name)
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a {type_name} mapping, got {type(value).__name__}")
        return None
    by_key = {yaml_key: attr for attr, yaml_key in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        attr = by_key.get(key)
        if attr is None:
            problems.append(f"{where}: {type_name} has no field {key!r}")
            continue
        kwargs[attr] = _build(item, cls.openapi_types[attr], f"{where}.{key}", problems)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the SDK's own client-side validation (required fields, enums)
        problems.append(f"{where}: {type_name}: {exc}")
        return None


def sdk_problems(manifest: dict[str, Any]) -> list[str]:
    """Everything in ``manifest`` that KServe's ``V1beta1InferenceService`` model does not accept."""
    problems: list[str] = []
    _build(manifest, "V1beta1InferenceService", "InferenceService", problems)
    return problems


def sdk_object(manifest: dict[str, Any]) -> Any:
    """The manifest as a ``V1beta1InferenceService`` (raises AssertionError listing problems)."""
    problems: list[str] = []
    obj = _build(manifest, "V1beta1InferenceService", "InferenceService", problems)
    assert not problems, problems
    return obj
