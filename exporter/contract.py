"""The contract every exported model keeps, owned here once (see ``docs/contract.md``).

Tensor names and datatype, prediction formats and their output shapes, the artifact file names, the
version-directory rule, the metadata rules and the ONNX graph I/O rule. The rules a served artifact needs
(names, versions, reading and checking ``metadata.json``) are owned by :mod:`exporter.runtime.rules` and
re-exported here; this module adds the export-time checks (``contract_problems``, ``graph_io_problems``) and
the request builders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from exporter.runtime.rules import (  # the rules are owned by exporter.runtime.rules; re-exported here
    ANSWER_KEY,
    CONFIG_FILE,
    DATATYPE,
    INPUT_NAME,
    MAX_METADATA_DEPTH,
    MAX_VERSION,
    METADATA_FILE,
    MODEL_FILE,
    ONNX_TYPE,
    OUTPUT_NAME,
    PLATFORM,
    PREDICTION_FORMATS,
    REPORT_FILE,
    REQUEST_ROWS_KEY,
    REQUIRED_VERSION_FILES,
    SAMPLE_REQUEST,
    SAMPLE_RESPONSE,
    STAGING_PREFIX,
    MetadataError,
    is_plain_file_name,
    is_version_name,
    nesting_depth,
    read_metadata,
    usability_problems,
    version_dirs,
    version_problem,
)


# ---------------------------------------------------------------------------------------------- shapes
def output_shape(
    prediction_format: str, output_columns: Sequence[str] | None = None, embed_dim: int | None = None
) -> list[int] | None:
    """The ``predictions`` shape a prediction format implies (``None`` when the metadata lacks what it needs)."""
    if prediction_format == "scalar":
        return [-1]
    if prediction_format == "named_columns" and output_columns:
        return [-1, len(output_columns)]
    if (
        prediction_format == "vector"
        and isinstance(embed_dim, int)
        and not isinstance(embed_dim, bool)
        and embed_dim > 0
    ):
        return [-1, embed_dim]
    return None


def metadata_output_shape(metadata: Mapping[str, Any]) -> list[int] | None:
    cols = metadata.get("output_columns")
    return output_shape(
        str(metadata.get("prediction_format")), cols if isinstance(cols, list) else None, metadata.get("embed_dim")
    )


def tensor_specs(n_features: int, out_shape: Sequence[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The v2 ``inputs`` and ``outputs`` descriptions of a model."""
    return (
        [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, int(n_features)]}],
        [{"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": list(out_shape)}],
    )


def contract_problems(metadata: dict[str, Any], model_name: str | None = None, version: str | None = None) -> list[str]:
    """Everything contract section 3 requires of ``metadata.json`` beyond usability (for ``verify``)."""
    problems = usability_problems(metadata)
    if not isinstance(metadata, dict):
        return problems
    if model_name is not None and metadata.get("name") != model_name:
        problems.append(f"name is {metadata.get('name')!r}, but the model directory is {model_name!r}")
    versions = metadata.get("versions")
    if version is not None and not (isinstance(versions, list) and version in versions):
        problems.append(f"versions is {versions!r}; expected it to list this version {version!r}")
    if metadata.get("platform") != PLATFORM:
        problems.append(f"platform is {metadata.get('platform')!r}; expected {PLATFORM!r}")
    cols = metadata.get("feature_columns")
    n = len(cols) if isinstance(cols, list) and cols else None
    for key, want_name, want_shape in (
        ("inputs", INPUT_NAME, [-1, n] if n else None),
        ("outputs", OUTPUT_NAME, metadata_output_shape(metadata)),
    ):
        tensors = metadata.get(key)
        if not (isinstance(tensors, list) and len(tensors) == 1 and isinstance(tensors[0], dict)):
            continue  # reported by usability_problems
        t = tensors[0]
        if t.get("name") != want_name:
            problems.append(f"{key}[0].name is {t.get('name')!r}; the contract names it {want_name!r}")
        if t.get("datatype") != DATATYPE:
            problems.append(f"{key}[0].datatype is {t.get('datatype')!r}; expected {DATATYPE!r}")
        if want_shape is not None and t.get("shape") != want_shape:
            problems.append(f"{key}[0].shape is {t.get('shape')!r}; expected {want_shape}")
    sha = metadata.get("sha256")
    if isinstance(sha, str) and not re.fullmatch(r"[0-9a-f]{64}", sha):
        problems.append("sha256 must be 64 lowercase hex digits")
    if not (isinstance(metadata.get("opset"), int) and metadata["opset"] > 0):
        problems.append("opset must be a positive integer")
    producer = metadata.get("producer")
    if not isinstance(producer, dict) or not all(
        isinstance(producer.get(k), str) for k in ("framework", "onnx", "onnxruntime")
    ):
        problems.append("producer must record framework, onnx and onnxruntime versions")
    parity = metadata.get("parity")
    if not isinstance(parity, dict):
        problems.append("parity is missing")
    else:
        for key in ("rows", "max_abs_diff", "atol", "passed"):
            if key not in parity:
                problems.append(f"parity.{key} is missing")
        if parity.get("passed") is not True:
            problems.append("parity.passed is not true: this export failed its parity check")
        diff, atol, ratio = parity.get("max_abs_diff"), parity.get("atol"), parity.get("max_tolerance_ratio")
        if isinstance(ratio, (int, float)):  # atol + rtol * |native| per value (versions before rtol: atol alone)
            if not ratio <= 1:
                problems.append(f"parity.max_tolerance_ratio {ratio} exceeds 1 (atol + rtol * |native|)")
        elif isinstance(diff, (int, float)) and isinstance(atol, (int, float)) and not diff <= atol:
            problems.append(f"parity.max_abs_diff {diff} exceeds parity.atol {atol}")
    training = metadata.get("training")
    if not isinstance(training, dict):
        problems.append("training is missing")
    elif training.get("mode") not in ("train", "load"):
        problems.append(f"training.mode is {training.get('mode')!r}; expected 'train' or 'load'")
    return problems


# ---------------------------------------------------------------------------------------------- graph
def graph_io_problems(model: Any, n_features: int | None, out_shape: Sequence[int] | None) -> list[str]:
    """The ONNX graph's own inputs and outputs against the contract: one ``features`` tensor(double)
    ``[batch, n]`` in, one ``predictions`` tensor(double) of ``out_shape`` out, batch axis dynamic.

    ``model`` is an ``onnx.ModelProto``; initializers listed as graph inputs (old exporters) are not inputs.
    """
    from onnx import TensorProto

    g = model.graph
    initializers = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in initializers]
    problems: list[str] = []
    for kind, tensors, want_name, want_shape in (
        ("input", inputs, INPUT_NAME, [-1, n_features] if n_features else None),
        ("output", list(g.output), OUTPUT_NAME, list(out_shape) if out_shape is not None else None),
    ):
        if len(tensors) != 1:
            problems.append(
                f"graph has {len(tensors)} {kind}s ({', '.join(t.name for t in tensors)}); "
                f"expected one named {want_name!r}"
            )
            continue
        t = tensors[0]
        if t.name != want_name:
            problems.append(f"{kind} is named {t.name!r}; the contract names it {want_name!r}")
        elem = t.type.tensor_type.elem_type
        if elem != TensorProto.DOUBLE:
            problems.append(
                f"{kind} {t.name!r} is tensor({TensorProto.DataType.Name(elem).lower()}); expected tensor(double)"
            )
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.type.tensor_type.shape.dim]
        if want_shape is None:
            continue
        if len(dims) != len(want_shape):
            problems.append(f"{kind} {t.name!r} has rank {len(dims)} (shape {dims}); expected shape {want_shape}")
            continue
        if dims and dims[0] != -1:
            problems.append(f"{kind} {t.name!r} has a fixed batch axis {dims[0]}; expected a dynamic one (-1)")
        for axis, (got, want) in enumerate(zip(dims, want_shape, strict=True)):
            if axis > 0 and got != want:
                problems.append(f"{kind} {t.name!r} axis {axis} is {got}; expected {want}")
    return problems


# ---------------------------------------------------------------------------------------------- requests
def torchserve_request(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, Any]:
    """``{"data": [{column: value}, ...]}``: raw values by column name (numbers as floats, strings kept)."""

    def value(v: Any) -> Any:
        if isinstance(v, str) or v is None:
            return v
        if isinstance(v, (list, tuple)):  # a history column: its list of IDs
            return [value(e) for e in v]
        if hasattr(v, "item") and not isinstance(v, (list, tuple)):
            v = v.item()  # numpy scalars
        if isinstance(v, (bool, int)):  # booleans and integer IDs as JSON true/false and integers
            return v
        f = float(v)
        return None if f != f else f

    return {REQUEST_ROWS_KEY: [{c: value(row[c]) for c in columns} for row in rows]}


def v2_request(x: Any, request_id: str | None = None) -> dict[str, Any]:
    """An Open Inference Protocol request holding the rows of ``x`` as one flat FP64 ``features`` tensor."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    body: dict[str, Any] = {}
    if request_id is not None:
        body["id"] = request_id
    body["inputs"] = [{"name": INPUT_NAME, "shape": list(x.shape), "datatype": DATATYPE, "data": x.ravel().tolist()}]
    body["outputs"] = [{"name": OUTPUT_NAME}]
    return body


__all__ = [
    "ANSWER_KEY",
    "CONFIG_FILE",
    "DATATYPE",
    "INPUT_NAME",
    "MAX_METADATA_DEPTH",
    "MAX_VERSION",
    "METADATA_FILE",
    "MODEL_FILE",
    "ONNX_TYPE",
    "OUTPUT_NAME",
    "PLATFORM",
    "PREDICTION_FORMATS",
    "REPORT_FILE",
    "REQUEST_ROWS_KEY",
    "REQUIRED_VERSION_FILES",
    "SAMPLE_REQUEST",
    "SAMPLE_RESPONSE",
    "STAGING_PREFIX",
    "MetadataError",
    "is_plain_file_name",
    "is_version_name",
    "nesting_depth",
    "read_metadata",
    "usability_problems",
    "version_dirs",
    "version_problem",
    "contract_problems",
    "graph_io_problems",
    "metadata_output_shape",
    "output_shape",
    "tensor_specs",
    "torchserve_request",
    "v2_request",
]
