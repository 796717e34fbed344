"""Load mode from MLflow: ``--checkpoint models:/NAME/VERSION`` or ``runs:/RUN_ID/PATH``.

The MLflow model is downloaded into a temporary directory and handed to the model's own load as the file it
already reads: an XGBoost flavor's booster (``.json``/``.ubj``; another format saved again as ``.ubj``), or a
PyTorch flavor that carries the exporter's ``checkpoint.pt`` (logged with ``extra_files``: a pickled module
alone lacks the architecture config and feature plan an export needs). The feature columns come from the
model's signature when it names them. Any other flavor is refused, naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.tracking import store as S

SCHEMES = ("models:/", "runs:/")
#: flavor -> the exporter model framework that loads it
EXPORTABLE = {"xgboost": "xgboost", "pytorch": "torch"}


@dataclass
class Localized:
    """What the model's load reads: a local file, and the signature's columns (``None`` when unnamed)."""

    checkpoint: Path
    columns: list[str] | None
    flavor: str


def is_mlflow_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SCHEMES)


def _flavors(model_dir: Path, uri: str) -> dict[str, Any]:
    import yaml

    path = model_dir / "MLmodel"
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ExporterError(f"{uri} is not an MLflow model (cannot read its MLmodel file: {exc})") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("flavors"), dict):
        raise ExporterError(f"{uri} is not an MLflow model (its MLmodel file names no flavors)")
    return loaded


def signature_columns(mlmodel: dict[str, Any]) -> list[str] | None:
    """The input column names of a column-based signature (``None`` for a tensor signature or none)."""
    raw = (mlmodel.get("signature") or {}).get("inputs")
    if not raw:
        return None
    try:
        specs = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    names = [s.get("name") for s in specs if isinstance(s, dict)]
    if not names or any(not isinstance(n, str) for n in names) or any(s.get("type") == "tensor" for s in specs):
        return None
    return [str(n) for n in names]


def localize(uri: str, store: S.Store, framework: str, model: str, workdir: Path) -> Localized:
    """Download ``uri`` from ``store`` into ``workdir`` and find the file ``model``'s load reads."""
    try:
        with S.bounded_http():
            S.check_reachable(store)
            with S.pointed_at(store):
                # what mlflow.pyfunc.load_model downloads with: runs:/ID/NAME resolves to the run's logged model
                from mlflow.tracking.artifact_utils import _download_artifact_from_uri

                local = Path(_download_artifact_from_uri(artifact_uri=uri, output_path=str(workdir)))
    except S.TrackingUnavailable:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExporterError(f"cannot download {uri} from {store.shown()}: {first}") from None
    mlmodel = _flavors(local, uri)
    flavors = [f for f in mlmodel["flavors"] if f != "python_function"]
    exportable = [f for f in flavors if f in EXPORTABLE]
    if not exportable:
        raise ExporterError(
            f"{uri} is an MLflow model of flavor {', '.join(flavors) or 'python_function'}: load mode exports "
            "xgboost and pytorch models (an onnx model is already ONNX: the registry holds it as exported)"
        )
    flavor = exportable[0]
    if EXPORTABLE[flavor] != framework:
        raise ExporterError(
            f"{uri} is an MLflow {flavor} model but {model} is a {framework} model: export it as "
            + ("xgb" if flavor == "xgboost" else "deepfm, mmoe or two_tower (the model it was trained as)")
        )
    columns = signature_columns(mlmodel)
    if flavor == "xgboost":
        return Localized(_booster_file(local, mlmodel["flavors"]["xgboost"], uri), columns, flavor)
    found = sorted(local.rglob("checkpoint.pt"))
    if not found:
        raise ExporterError(
            f"{uri} is an MLflow pytorch model without the exporter's checkpoint.pt: a pickled module lacks the "
            "architecture config and feature plan an export needs; log it with "
            "mlflow.pytorch.log_model(net, extra_files=['artifacts/MODEL/VERSION/checkpoint.pt'])"
        )
    return Localized(found[0], columns, flavor)


def _booster_file(local: Path, flavor: dict[str, Any], uri: str) -> Path:
    """The XGBoost flavor's model file, as JSON or UBJ (what the xgb load reads)."""
    data = flavor.get("data")
    path = local / str(data) if data else None
    if path is None or not path.is_file():
        raise ExporterError(f"{uri}: the xgboost flavor's model file {data!r} is missing")
    if path.suffix in (".json", ".ubj"):
        return path
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except Exception as exc:
        raise ExporterError(f"{uri}: cannot read the xgboost model {path.name}: {exc}") from None
    converted = path.with_suffix(".ubj")
    booster.save_model(str(converted))
    return converted
