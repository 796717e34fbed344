"""A version's model.onnx as an MLflow model (ONNX flavor) and a registered model version.

The signature is the contract's tensors from metadata.json (``features`` FP64 ``[-1, n]`` in,
``predictions`` out); the input example is the version's sample request decoded by the serving handler (the
raw FP64 rows the graph takes, categorical strings as their vocab.json codes), so the MLflow pyfunc's
``predict({"features": rows})`` answers with the numbers :class:`exporter.handler.ModelHandler` gives.
metadata.json and vocab.json travel inside the MLflow model, so a user of the registry can decode requests by
column name the same way.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: tags of each registered model version
TAG_ARTIFACT_VERSION = "artifact_version"
TAG_SHA256 = "sha256"


def signature(meta: dict[str, Any]) -> Any:
    """The MLflow signature of the contract's input and output tensors."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(t: dict[str, Any]) -> Any:
        return TensorSpec(np.dtype(np.float64), tuple(int(d) for d in t["shape"]), str(t["name"]))

    return ModelSignature(
        inputs=Schema([spec(t) for t in meta["inputs"]]), outputs=Schema([spec(t) for t in meta["outputs"]])
    )


def input_example(directory: Path, meta: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The sample request as the graph's input tensor, decoded by the serving handler."""
    from exporter.runtime.handler import Decoded, ModelHandler

    request_path = directory / "sample_request.json"
    if not request_path.is_file():
        return None
    handler = ModelHandler.load(directory)
    decoded = handler.decode(payload=json.loads(request_path.read_text(encoding="utf-8")))
    if not isinstance(decoded, Decoded):
        return None
    return {str(meta["inputs"][0]["name"]): np.asarray(decoded.matrix, dtype=np.float64)}


def _requirements() -> list[str]:
    """What the MLflow model needs to run: onnx and onnxruntime at this run's versions."""
    import onnx
    import onnxruntime

    return [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}", "numpy", "pandas"]


@contextlib.contextmanager
def _no_environment_scan() -> Iterator[None]:
    """Skip two checks of MLflow's ``log_model`` that cost seconds and tell nothing here: that this environment
    satisfies the model's requirements (they are this environment's own versions, :func:`_requirements`; the
    check scans every installed distribution's files), and the serving-input validation (it loads the logged
    model once more to run the example; tests/tracking check the pyfunc's answers against the handler)."""
    from mlflow.models import utils as model_utils
    from mlflow.utils import environment

    saved = (environment.warn_dependency_requirement_mismatches, model_utils._validate_serving_input)
    environment.warn_dependency_requirement_mismatches = lambda *a, **k: None
    model_utils._validate_serving_input = lambda *a, **k: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches, model_utils._validate_serving_input = saved


def log_and_register(client: Any, run: Any, directory: Path, meta: dict[str, Any]) -> Any:
    """Log ``directory``'s model into ``run`` and register it under the model's name, tagged with the
    artifact version and sha256; returns the registry's model version."""
    import mlflow
    import mlflow.onnx
    import onnx

    model = onnx.load(str(directory / str(meta.get("model_file", "model.onnx"))))
    extra = [str(directory / f) for f in ("metadata.json", "vocab.json") if (directory / f).is_file()]
    name = str(meta["name"])
    # the registry's progress lines go to stderr, which is for errors and the tracking warning here
    with (
        mlflow.start_run(run_id=run.run_id, nested=True),
        contextlib.redirect_stderr(io.StringIO()),
        _no_environment_scan(),
    ):
        info = mlflow.onnx.log_model(
            model,
            name=name,
            signature=signature(meta),
            input_example=input_example(directory, meta),
            registered_model_name=name,
            extra_files=extra,
            await_registration_for=0,
            # named, not inferred: MLflow's inference runs a child process for seconds
            pip_requirements=_requirements(),
        )
    version = info.registered_model_version
    client.set_model_version_tag(name, version, TAG_ARTIFACT_VERSION, str(meta["versions"][-1]))
    client.set_model_version_tag(name, version, TAG_SHA256, str(meta["sha256"]))
    return client.get_model_version(name, version)
