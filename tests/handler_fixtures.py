"""Tiny, hand-built artifacts (onnx.helper graphs) for fast handler, server and verify tests.

They follow contract sections 2 and 3 exactly (Triton layout, metadata.json, config.pbtxt, sample request and
response) but need no training: each graph is one MatMul with fixed weights, so expected answers are computable
with numpy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporter.training.data import CATEGORICAL_FEATURES, DEFAULT_FEATURES

#: the contract's seven numeric columns: tiny artifacts without ``features`` metadata are all numeric
DEFAULT_COLUMNS = [c for c in DEFAULT_FEATURES if c not in CATEGORICAL_FEATURES]
MMOE_OUTPUTS = ["ctr", "watch_time", "gmv"]

#: model name -> (prediction_format, feature columns, output width or None)
TINY_MODELS: dict[str, tuple[str, list[str], int | None]] = {
    "xgb": ("scalar", DEFAULT_COLUMNS, None),
    "mmoe": ("named_columns", DEFAULT_COLUMNS, 3),
    "two_tower": ("vector", ["user_age", "user_gender"], 4),
}


def weights(n_features: int, width: int | None, seed: int = 0) -> np.ndarray:
    """Deterministic weights of the tiny graph."""
    rng = np.random.default_rng(seed + n_features * 10 + (width or 0))
    shape = (n_features,) if width is None else (n_features, width)
    return rng.normal(scale=0.05, size=shape)


def expected_output(features: np.ndarray, fmt: str, width: int | None) -> np.ndarray:
    """What the tiny graph computes, in numpy."""
    w = weights(features.shape[1], width)
    z = features @ w
    if fmt == "scalar":
        return 1.0 / (1.0 + np.exp(-z))
    if fmt == "vector":
        return np.tanh(z)
    return z


def tiny_model(n_features: int, fmt: str, width: int | None, *, opset: int = 18) -> onnx.ModelProto:
    """features double [N, n_features] -> predictions double [N] (scalar) or [N, width]."""
    w = numpy_helper.from_array(weights(n_features, width), name="W")
    out_shape: list[Any] = ["batch"] if width is None else ["batch", width]
    nodes = [helper.make_node("MatMul", ["features", "W"], ["z"])]
    if fmt == "scalar":
        nodes.append(helper.make_node("Sigmoid", ["z"], ["predictions"]))
    elif fmt == "vector":
        nodes.append(helper.make_node("Tanh", ["z"], ["predictions"]))
    else:
        nodes.append(helper.make_node("Identity", ["z"], ["predictions"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["batch", n_features])],
        [helper.make_tensor_value_info("predictions", TensorProto.DOUBLE, out_shape)],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def config_pbtxt(name: str, n_features: int, width: int | None) -> str:
    """Triton config.pbtxt as the export pipeline writes it."""
    out_dims = "-1" if width is None else f"-1, {width}"
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 0\n"
        'input [\n  {\n    name: "features"\n    data_type: TYPE_FP64\n'
        f"    dims: [ -1, {n_features} ]\n  }}\n]\n"
        'output [\n  {\n    name: "predictions"\n    data_type: TYPE_FP64\n'
        f"    dims: [ {out_dims} ]\n  }}\n]\n"
        "instance_group [ { kind: KIND_CPU, count: 1 } ]\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )


def sample_rows(columns: list[str], n: int, seed: int = 1) -> list[dict[str, float]]:
    """Plausible raw feature rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        row: dict[str, float] = {}
        for c in columns:
            if c in ("user_age",):
                row[c] = int(rng.integers(18, 60))
            elif c == "user_gender":
                row[c] = int(rng.integers(0, 3))
            elif c == "item_price":
                row[c] = float(rng.uniform(10, 200))
            else:
                row[c] = float(rng.uniform(0.0, 1.0))
        rows.append(row)
    return rows


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def build_artifact(
    root: Path,
    name: str,
    fmt: str | None = None,
    columns: list[str] | None = None,
    width: int | None = -1,
    version: str = "1",
    write_sample_response: bool = True,
) -> Path:
    """Write ``root/<name>/config.pbtxt`` and ``root/<name>/<version>/...``; returns the version directory."""
    default_fmt, default_cols, default_width = TINY_MODELS.get(name, ("scalar", DEFAULT_COLUMNS, None))
    fmt = fmt or default_fmt
    columns = list(columns or default_cols)
    width = default_width if width == -1 else width
    model_dir = root / name
    vdir = model_dir / version
    vdir.mkdir(parents=True, exist_ok=True)
    model = tiny_model(len(columns), fmt, width)
    model_bytes = model.SerializeToString()
    (vdir / "model.onnx").write_bytes(model_bytes)
    out_shape = [-1] if width is None else [-1, width]
    metadata: dict[str, Any] = {
        "name": name,
        "versions": [version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, len(columns)]}],
        "outputs": [{"name": "predictions", "datatype": "FP64", "shape": out_shape}],
        "feature_columns": columns,
        "prediction_format": fmt,
        "model_file": "model.onnx",
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "opset": 18,
        "opset_imports": {"": 18},
        "producer": {
            "framework": "numpy",
            "framework_version": np.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": _ort_version(),
            "exporter": "0.1.0",
        },
        "parity": {
            "rows": 16,
            "max_abs_diff": 0.0,
            "mean_abs_diff": 0.0,
            "atol": 1e-05,
            "passed": True,
            "reference": "numpy",
            "runtime": "onnxruntime CPUExecutionProvider",
        },
        "training": {"mode": "load", "source": "tests", "rows": 0, "seed": 0},
        "created_at": "2026-11-21T23:59:00Z",
    }
    if fmt == "named_columns":
        metadata["output_columns"] = MMOE_OUTPUTS[: width or 3]
    if fmt == "vector":
        metadata["embed_dim"] = width
    (vdir / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (model_dir / "config.pbtxt").write_text(config_pbtxt(name, len(columns), width))
    request = {"data": sample_rows(columns, 3)}
    (vdir / "sample_request.json").write_text(json.dumps(request, indent=2))
    if write_sample_response:
        from exporter.runtime.handler import ModelHandler

        answer = ModelHandler.load(vdir).predict(request)
        (vdir / "sample_response.json").write_text(json.dumps(answer, indent=2))
    return vdir


def build_tree(root: Path) -> Path:
    """An artifacts tree with the three tiny models (one per prediction format); xgb has versions 1 and 2."""
    for name in TINY_MODELS:
        build_artifact(root, name)
    build_artifact(root, "xgb", version="2")
    (root / "xgb" / ".staging-123").mkdir()
    return root


REPO = Path(__file__).resolve().parents[1]
SPEC_PATHS = [
    REPO.parent / "shared" / "specs" / "open_inference_rest.yaml",
    REPO / "exporter" / "specs_data" / "open_inference_rest.yaml",
]


def spec_validator(schema_name: str) -> Any:
    """A jsonschema validator for ``#/components/schemas/<schema_name>`` of the Open Inference REST spec."""
    import jsonschema
    import yaml

    path = next((p for p in SPEC_PATHS if p.is_file()), None)
    assert path is not None, f"open_inference_rest.yaml not found in {SPEC_PATHS}"
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)
