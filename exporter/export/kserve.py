"""KServe's view of an exported model: ``<artifacts>/<model>/kserve.yaml``, an ``InferenceService`` manifest.

The manifest runs the model on KServe's Triton runtime (``kserve-tritonserver``, Open Inference Protocol v2)
from the same Triton model repository that ``export`` writes: ``storageUri`` is where that repository (the
``artifacts/`` directory) will live, e.g. ``s3://bucket/recsys/artifacts`` or ``pvc://models/artifacts``.
Triton is told to load only this model from it (``--model-control-mode=explicit --load-model=<name>``), so one
repository can back one InferenceService per model.

The ``kserve`` sub-command (:mod:`exporter.commands.kserve`) (re)writes the manifests of an artifacts tree, or
prints them for ``kubectl apply -f -``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.export.repository import write_text_atomic
from exporter.export.tree import require_tree
from exporter.runtime import rules

MANIFEST_FILE = "kserve.yaml"
API_VERSION = "serving.kserve.io/v1beta1"
RUNTIME = "kserve-tritonserver"
PROTOCOL = "v2"
#: Where the artifacts tree (the Triton model repository) will be copied; override with --storage-uri.
DEFAULT_STORAGE_URI = "pvc://model-repository/artifacts"
#: Per predictor pod: the models are small (KiB..MiB) and answer in microseconds; Triton itself needs ~0.5 GiB.
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "1", "memory": "1Gi"},
    "limits": {"cpu": "2", "memory": "2Gi"},
}
#: Storage schemes KServe's storage initializer understands.
STORAGE_SCHEMES = ("gs", "s3", "pvc", "hdfs", "webhdfs", "http", "https", "oci", "hf", "azure")
ANNOTATION_PREFIX = "recsys-onnx-exporter"


def check_storage_uri(uri: Any) -> str:
    """``uri`` if KServe's storage initializer can fetch from it, else an ExporterError saying what is expected."""
    if not isinstance(uri, str) or not re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", uri):
        raise ExporterError(
            f"--storage-uri {uri!r} is not a URI; expected <scheme>://<location> of the artifacts tree, "
            f"e.g. s3://bucket/recsys/artifacts or {DEFAULT_STORAGE_URI}"
        )
    scheme = uri.split("://", 1)[0]
    if scheme not in STORAGE_SCHEMES:
        raise ExporterError(
            f"--storage-uri scheme {scheme!r} is not one KServe fetches from; "
            f"expected one of {', '.join(STORAGE_SCHEMES)}"
        )
    return uri.rstrip("/")


def service_name(model_name: str) -> str:
    """A Kubernetes DNS-1035 name for the InferenceService of ``model_name`` (``two_tower_item`` ->
    ``two-tower-item``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"model-{name}".rstrip("-")
    return name[:63].rstrip("-")


def inference_service(
    metadata: Mapping[str, Any],
    *,
    storage_uri: str = DEFAULT_STORAGE_URI,
    resources: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The InferenceService of one model version's metadata.json, as a plain dict (camelCase, as in YAML)."""
    model_name = str(metadata["name"])
    version = str((metadata.get("versions") or ["1"])[-1])
    annotations = {f"{ANNOTATION_PREFIX}/model-name": model_name, f"{ANNOTATION_PREFIX}/model-version": version}
    if isinstance(metadata.get("sha256"), str):
        annotations[f"{ANNOTATION_PREFIX}/model-sha256"] = metadata["sha256"]
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": service_name(model_name),
            "labels": {
                "app.kubernetes.io/name": service_name(model_name),
                "app.kubernetes.io/part-of": ANNOTATION_PREFIX,
            },
            "annotations": annotations,
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "model": {
                    "modelFormat": {"name": "onnx"},
                    "protocolVersion": PROTOCOL,
                    "runtime": RUNTIME,
                    "storageUri": check_storage_uri(storage_uri),
                    # the repository holds every model: this service loads its own only
                    "args": ["--model-control-mode=explicit", f"--load-model={model_name}"],
                    "resources": {k: dict(v) for k, v in (resources or DEFAULT_RESOURCES).items()},
                },
            }
        },
    }


def to_yaml(manifest: Mapping[str, Any]) -> str:
    """The manifest as YAML, with a comment that says how to use it."""
    import yaml

    name = manifest["metadata"]["name"]
    model = manifest["metadata"]["annotations"][f"{ANNOTATION_PREFIX}/model-name"]
    header = (
        f"# KServe InferenceService for model {model!r}, written by recsys-onnx-exporter.\n"
        f"# Copy the artifacts tree to storageUri, then: kubectl apply -f {MANIFEST_FILE}\n"
        f"# Call: POST http://<ingress>/v2/models/{model}/infer with Host: {name}.<namespace>.<domain>\n"
    )
    return header + yaml.safe_dump(json.loads(json.dumps(manifest)), sort_keys=False, default_flow_style=False)


def manifest_text(metadata: Mapping[str, Any], *, storage_uri: str = DEFAULT_STORAGE_URI) -> str:
    """The ``kserve.yaml`` of ``metadata`` (what :func:`write_manifest` writes and ``export`` stages)."""
    return to_yaml(inference_service(metadata, storage_uri=storage_uri))


def write_manifest(model_dir: Path, metadata: Mapping[str, Any], *, storage_uri: str = DEFAULT_STORAGE_URI) -> Path:
    """Write ``<model_dir>/kserve.yaml`` for ``metadata`` in one step; returns its path."""
    path = Path(model_dir) / MANIFEST_FILE
    write_text_atomic(path, manifest_text(metadata, storage_uri=storage_uri))
    return path


def _latest_metadata(model_dir: Path) -> dict[str, Any]:
    """The checked metadata of the latest version (the version rule of :mod:`exporter.runtime.rules`)."""
    versions = rules.version_dirs(model_dir)
    if not versions:
        raise ExporterError(f"{model_dir} holds no version directory (1, 2, ...); export the model first")
    path = versions[-1] / rules.METADATA_FILE
    try:
        metadata = rules.read_metadata(path)
    except rules.MetadataError as exc:
        raise ExporterError(f"cannot read {path}: {exc}") from exc
    if metadata.get("name") != model_dir.name:
        raise ExporterError(f"{path} does not describe model {model_dir.name!r}")
    return metadata


def manifests(
    artifacts: Path, models: Sequence[str] = (), *, storage_uri: str = DEFAULT_STORAGE_URI
) -> dict[str, dict[str, Any]]:
    """model name -> InferenceService for the latest version of each (named) model under ``artifacts``."""
    artifacts = Path(artifacts)
    require_tree(artifacts)
    found = sorted(
        p.name
        for p in artifacts.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / rules.CONFIG_FILE).is_file()
    )
    names = list(models) or found
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ExporterError(
            f"no exported model {', '.join(map(repr, unknown))} under {artifacts}; found: {', '.join(found) or 'none'}"
        )
    if not names:
        raise ExporterError(f"no exported model under {artifacts} (expected <model>/config.pbtxt)")
    return {n: inference_service(_latest_metadata(artifacts / n), storage_uri=storage_uri) for n in names}
