"""End to end: every model trains, exports, passes the parity gate and agrees with its metadata."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exporter.models import get_spec, model_names, repository_names
from exporter.runtime.handler import ModelHandler
from tests.conftest import export_small
from tests.handler_fixtures import spec_validator

pytestmark = pytest.mark.slow

EXPORTED = repository_names()
#: the contract's expectations per exported model (section 1); a registered model without them fails below
#: (the towers' width is a hyper-parameter, embed_dim: the spec's default here)
_EMBED = get_spec("two_tower").default_hparams["embed_dim"]
OUTPUT_WIDTH = {"xgb": None, "deepfm": None, "mmoe": 3, "two_tower": _EMBED, "two_tower_item": _EMBED}
#: contract section 1: the default schema and the two-tower user / item features, in tensor order
CONTRACT_COLUMNS = [
    "item_ctr",
    "item_cvr",
    "item_price",
    "user_age",
    "user_gender",
    "cross_age_x_ctr",
    "cross_gender_x_price",
    "user_id",
    "item_id",
    "item_category",
]
FEATURES = {
    "xgb": CONTRACT_COLUMNS,
    "deepfm": CONTRACT_COLUMNS,
    "mmoe": CONTRACT_COLUMNS,
    "two_tower": ["user_id", "user_age", "user_gender"],
    "two_tower_item": ["item_id", "item_category", "item_ctr", "item_cvr", "item_price"],
}
REQUIRED_METADATA = [
    "name",
    "versions",
    "platform",
    "inputs",
    "outputs",
    "feature_columns",
    "model_file",
    "sha256",
    "opset",
    "producer",
    "parity",
    "training",
    "created_at",
]


def test_every_registered_model_has_contract_expectations():
    assert set(OUTPUT_WIDTH) == set(FEATURES) == set(EXPORTED), (
        "add the expected output width and feature columns of every exported model"
    )


def _version_dir(root: Path, name: str) -> Path:
    return root / name / "1"


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", EXPORTED)
def test_onnx_file_matches_contract_and_metadata(exported_artifacts, name):
    d = _version_dir(exported_artifacts, name)
    meta = json.loads((d / "metadata.json").read_text())
    model = onnx.load(d / "model.onnx")
    onnx.checker.check_model(model, full_check=True)

    [inp], [out] = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("features", "predictions")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert out.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    in_dims, out_dims = _dims(inp), _dims(out)
    assert isinstance(in_dims[0], str) and isinstance(out_dims[0], str), "batch axis must be dynamic"
    assert in_dims[1:] == [len(FEATURES[name])]
    width = OUTPUT_WIDTH[name]
    assert out_dims[1:] == ([] if width is None else [width])

    # metadata tensors are the graph's own, with -1 for the batch axis
    assert meta["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1] + in_dims[1:]}]
    assert meta["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1] + out_dims[1:]}]
    assert meta["feature_columns"] == FEATURES[name]
    assert meta["name"] == name and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["opset"] == {o.domain: o.version for o in model.opset_import}[""]

    session = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(1, 50, (5, len(FEATURES[name])))
    y = session.run(None, {"features": x})[0]
    assert y.dtype == np.float64 and y.shape == ((5,) if width is None else (5, width))


@pytest.mark.parametrize("name", EXPORTED)
def test_metadata_fields_and_v2_schema(exported_artifacts, name):
    import hashlib

    d = _version_dir(exported_artifacts, name)
    meta = json.loads((d / "metadata.json").read_text())
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    assert not missing, f"metadata lacks {missing}"
    errors = list(spec_validator("metadata_model_response").iter_errors(meta))
    assert not errors, errors[0].message
    assert meta["sha256"] == hashlib.sha256((d / meta["model_file"]).read_bytes()).hexdigest()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["created_at"])
    parity = meta["parity"]
    assert parity["passed"] is True and parity["rows"] >= 1000
    assert parity["atol"] == 1e-5 and 0 <= parity["max_tolerance_ratio"] <= 1
    # each column within atol + rtol * |value|: a probability to about atol, mmoe's watch time and GMV (tens to
    # hundreds, computed in float32) to rtol of their size
    for column in parity["columns"]:
        bound = parity["atol"] + parity["rtol"] * column["max_abs_native"]
        assert 0 <= column["max_abs_diff"] <= bound, column
    training = meta["training"]
    assert training["mode"] == "train" and training["data_source"] == "synthetic"
    assert training["seed"] == 7 and training["rows"] == 3000 and training["hyperparameters"]
    assert {"framework", "framework_version", "onnx", "onnxruntime"} <= set(meta["producer"])
    if name == "mmoe":
        assert meta["output_columns"] == ["ctr", "watch_time", "gmv"]
        assert [(t["name"], t["label"], t["type"]) for t in meta["tasks"]] == [
            ("ctr", "label", "binary"),
            ("watch_time", "watch_time", "regression"),
            ("gmv", "gmv", "regression"),
        ]
    if name.startswith("two_tower"):
        assert meta["embed_dim"] == get_spec("two_tower").default_hparams["embed_dim"]


@pytest.mark.parametrize("name", EXPORTED)
def test_config_pbtxt_agrees_with_onnx(exported_artifacts, name):
    """Parsed by Triton's own ModelConfig proto; batched: dims leave out the ONNX graph's dynamic batch axis."""
    from tests.triton_proto import model_config_pb2, parse_config

    pb = model_config_pb2()
    cfg = parse_config((exported_artifacts / name / "config.pbtxt").read_text())
    model = onnx.load(_version_dir(exported_artifacts, name) / "model.onnx")
    assert cfg.name == name and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 1024
    for declared, values in ((cfg.input, model.graph.input), (cfg.output, model.graph.output)):
        assert [t.name for t in declared] == [v.name for v in values]
        for t, v in zip(declared, values, strict=True):
            assert t.data_type == pb.TYPE_FP64
            rest = _dims(v)[1:]  # the graph's shape without its batch axis
            if rest:
                assert list(t.dims) == rest and not t.HasField("reshape")
            else:  # a per-row scalar: Triton needs one dim, reshaped away for the graph
                assert list(t.dims) == [1] and t.HasField("reshape") and list(t.reshape.shape) == []


def test_models_reach_sensible_quality(exported_runs):
    _, runs = exported_runs
    assert runs["xgb"].evaluation.metrics["auc"] > 0.7
    assert runs["deepfm"].evaluation.metrics["auc"] > 0.7
    mmoe = runs["mmoe"].evaluation.metrics
    assert mmoe["ctr_auc"] > 0.7
    assert mmoe["watch_time_rmse"] < 0.9 * mmoe["watch_time_rmse_baseline"]
    assert mmoe["gmv_rmse"] < 0.95 * mmoe["gmv_rmse_baseline"]
    towers = runs["two_tower"].evaluation.metrics  # 30 items here: beating popularity is tested on 20,000 rows
    assert 0 < towers["recall@10"] <= towers["recall@50"] <= 1 and "popularity_recall@10" in towers
    for run in runs.values():
        stored = run.artifacts[0].metadata["training"]["metrics"]
        assert set(stored) == set(run.evaluation.metrics)


def test_preprocessing_lives_in_the_graph(exported_runs):
    """Raw feature values in, the trained model's own predictions out: no scaling on the caller's side."""
    root, runs = exported_runs
    prep, trained = runs["mmoe"].prepared, runs["mmoe"].trained
    raw = prep.raw_heldout[:50]
    assert np.nanmean(raw[:, 2]) > 10, "fixture should hold raw prices, not standardised values"
    assert raw[:, 7].min() >= 100_000, "fixture should hold raw user IDs, not embedding rows"
    session = ort.InferenceSession(str(_version_dir(root, "mmoe") / "model.onnx"))
    got = session.run(None, {"features": raw})[0]
    want = trained.predict(prep.x_heldout[:50])
    # the network computes in float32: the two agree to float32's precision
    np.testing.assert_allclose(got[:, 0], want["ctr"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[:, 1], want["watch_time"], rtol=1e-5, atol=1e-6)
    assert (got[:, 1:] >= 0).all()


@pytest.mark.parametrize("name", EXPORTED)
def test_sample_response_is_the_handlers_answer(exported_artifacts, name):
    d = _version_dir(exported_artifacts, name)
    request = json.loads((d / "sample_request.json").read_text())
    assert len(request["data"]) == 3 and set(request["data"][0]) == set(FEATURES[name])
    stored = json.loads((d / "sample_response.json").read_text())
    fresh = ModelHandler.load(d).predict(request)
    np.testing.assert_allclose(np.asarray(_numbers(fresh)), np.asarray(_numbers(stored)), atol=1e-12)


def _numbers(answer: dict) -> list[float]:
    preds = answer["predictions"]
    if preds and isinstance(preds[0], dict):
        return [v for p in preds for v in p.values()]
    return list(np.ravel(preds))


def test_towers_share_a_version_and_the_checkpoint(exported_artifacts):
    user = json.loads((exported_artifacts / "two_tower" / "1" / "metadata.json").read_text())
    item = json.loads((exported_artifacts / "two_tower_item" / "1" / "metadata.json").read_text())
    assert user["related_models"] == ["two_tower_item"] and item["related_models"] == ["two_tower"]
    assert (exported_artifacts / "two_tower" / "1" / "checkpoint.pt").exists()


def test_same_seed_gives_same_model_bytes_and_predictions(tmp_path):
    for model in ("xgb", "deepfm"):
        a = export_small(model, tmp_path / "a").artifacts[0]
        b = export_small(model, tmp_path / "b").artifacts[0]
        assert a.metadata["sha256"] == b.metadata["sha256"]
        np.testing.assert_array_equal(a.parity.onnx, b.parity.onnx)
        c = export_small(model, tmp_path / "c", seed=8).artifacts[0]
        assert c.metadata["sha256"] != a.metadata["sha256"]


def test_next_version_and_small_data_parity_top_up(tmp_path):
    first = export_small("xgb", tmp_path).artifacts[0]
    second = export_small("xgb", tmp_path, rows=500).artifacts[0]
    assert (first.version, second.version) == (1, 2)
    parity = second.metadata["parity"]
    test_rows = second.metadata["training"]["test_rows"]  # about 20 % of 500, by the row hash
    assert 60 <= test_rows <= 140 and parity["heldout_rows"] == test_rows
    assert parity["synthetic_rows"] == 1000 - test_rows and parity["probe_rows"] >= 8
    assert parity["rows"] == 1000 + parity["probe_rows"]
    assert sorted(p.name for p in (tmp_path / "xgb").iterdir()) == ["1", "2", "config.pbtxt", "kserve.yaml", "warmup"]


def test_export_all_from_the_command_line(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("export", "all", "--rows", "1500", "--artifacts", str(tmp_path), "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [m["model"] for m in summary["models"]] == model_names()
    names = [a["model_name"] for m in summary["models"] for a in m["artifacts"]]
    assert names == EXPORTED
    for m in summary["models"]:
        for a in m["artifacts"]:
            assert a["parity"]["passed"] and a["version"] == 1
            assert (tmp_path / a["model_name"] / "1" / "model.onnx").is_file()
            assert (tmp_path / a["model_name"] / "config.pbtxt").is_file()


@pytest.mark.parametrize("name", EXPORTED)
def test_the_model_rebuilds_its_native_predictor_from_an_artifact(exported_artifacts, name):
    """What the serving benchmark compares against: the native model of a version agrees with its ONNX graph."""
    d = _version_dir(exported_artifacts, name)
    n = len(json.loads((d / "metadata.json").read_text())["feature_columns"])
    x = np.random.default_rng(0).integers(0, 5, size=(16, n)).astype(np.float64)  # raw codes, unseen ones included
    expected = ort.InferenceSession(str(d / "model.onnx")).run(None, {"features": x})[0]
    native = np.asarray(get_spec(name).native_predictor(d)(x), dtype=np.float64).reshape(expected.shape)
    atol = 1e-6  # xgboost predicts in float32, and the torch networks compute in float32
    np.testing.assert_allclose(native, expected, rtol=1e-5, atol=atol)  # mmoe: watch_time and gmv in the hundreds
