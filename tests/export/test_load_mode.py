"""Load mode: models trained elsewhere (XGBoost JSON/UBJ) and our own torch checkpoints export again."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import xgboost as xgb

from exporter.export import pipeline
from exporter.training import data as D
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _onnx_predict(version_dir, x):
    return ort.InferenceSession(str(version_dir / "model.onnx")).run(None, {"features": x})[0]


@pytest.fixture(scope="module")
def outside_data(tmp_path_factory):
    """A click log with the contract's columns, as another team's training job would have it."""
    d = tmp_path_factory.mktemp("outside")
    df = D.synthetic_dataset(3000, 11)
    df.to_csv(d / "clicks.csv", index=False)
    return d, df


def test_xgbclassifier_json_with_stored_feature_names(outside_data, tmp_path):
    d, df = outside_data
    cols = [c for c in D.DEFAULT_FEATURES if c not in D.CATEGORICAL_FEATURES]  # another team's numeric columns
    clf = xgb.XGBClassifier(n_estimators=25, max_depth=3, random_state=3).fit(df[cols], df["label"])
    clf.save_model(d / "clf.json")
    result = run_cli(
        "export",
        "xgb",
        "--mode",
        "load",
        "--checkpoint",
        str(d / "clf.json"),
        "--data",
        str(d / "clicks.csv"),
        "--artifacts",
        str(tmp_path),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "xgb" / "1" / "metadata.json").read_text())
    assert meta["training"]["mode"] == "load" and meta["training"]["metrics"]["auc"] > 0.7
    assert meta["feature_columns"] == cols and meta["parity"]["passed"]
    x = df[cols].to_numpy()[:200]
    assert np.isnan(x).any(), "the data should hold empty cells: they reach a foreign model as NaN, as in training"
    np.testing.assert_allclose(_onnx_predict(tmp_path / "xgb" / "1", x), clf.predict_proba(x)[:, 1], atol=1e-5)


def test_booster_ubj_without_names_needs_and_uses_feature_meta(outside_data, tmp_path):
    d, df = outside_data
    cols = ["user_age", "item_price", "item_ctr"]  # a different schema, in its own order
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(df[cols].to_numpy(), label=df["label"]), 15
    )
    booster.save_model(str(d / "booster.ubj"))
    (d / "meta.json").write_text(json.dumps({"feature_columns": cols, "trained_by": "another project"}))

    missing = run_cli(
        "export",
        "xgb",
        "--mode",
        "load",
        "--checkpoint",
        str(d / "booster.ubj"),
        "--artifacts",
        str(tmp_path),
        "--quiet",
    )
    assert missing.returncode == 2 and "pass --feature-meta" in missing.stderr

    ok = run_cli(
        "export",
        "xgb",
        "--mode",
        "load",
        "--checkpoint",
        str(d / "booster.ubj"),
        "--feature-meta",
        str(d / "meta.json"),
        "--data",
        str(d / "clicks.csv"),
        "--artifacts",
        str(tmp_path),
        "--quiet",
    )
    assert ok.returncode == 0, ok.stderr
    meta = json.loads((tmp_path / "xgb" / "1" / "metadata.json").read_text())
    assert meta["feature_columns"] == cols and meta["inputs"][0]["shape"] == [-1, 3]
    x = df[cols].to_numpy()[:200]
    np.testing.assert_allclose(_onnx_predict(tmp_path / "xgb" / "1", x), booster.inplace_predict(x), atol=1e-5)


def test_wrong_objective_is_refused(outside_data, tmp_path):
    d, df = outside_data
    booster = xgb.train({"objective": "reg:squarederror"}, xgb.DMatrix(df[["item_ctr"]].to_numpy(), label=df["gmv"]), 3)
    booster.save_model(str(d / "reg.json"))
    (d / "one.json").write_text(json.dumps({"feature_columns": ["item_ctr"]}))
    result = run_cli(
        "export",
        "xgb",
        "--mode",
        "load",
        "--checkpoint",
        str(d / "reg.json"),
        "--feature-meta",
        str(d / "one.json"),
        "--artifacts",
        str(tmp_path),
        "--quiet",
    )
    assert result.returncode == 2 and "reg:squarederror" in result.stderr


@pytest.mark.parametrize("model", ["deepfm", "mmoe", "two_tower"])
def test_torch_checkpoint_round_trip_gives_the_same_predictions(model, exported_artifacts, tmp_path):
    first = exported_artifacts / model / "1"
    params = pipeline.ExportParams(
        model=model,
        mode="load",
        checkpoint=first / "checkpoint.pt",
        rows=3000,
        seed=7,
        artifacts=tmp_path,
        progress=False,
    )
    result = pipeline.run(params)
    names = ["two_tower", "two_tower_item"] if model == "two_tower" else [model]
    assert [a.model_name for a in result.artifacts] == names
    for name in names:
        again = tmp_path / name / "1"
        meta = json.loads((again / "metadata.json").read_text())
        assert meta["training"]["mode"] == "load" and meta["parity"]["passed"]
        x = np.random.default_rng(1).uniform(0, 100, (64, len(meta["feature_columns"])))
        np.testing.assert_array_equal(_onnx_predict(again, x), _onnx_predict(exported_artifacts / name / "1", x))
        # the same weights export to the same bytes
        original = json.loads((exported_artifacts / name / "1" / "metadata.json").read_text())
        assert meta["sha256"] == original["sha256"]


def test_load_mode_on_unlabelled_data_skips_metrics(outside_data, exported_artifacts, tmp_path):
    d, df = outside_data
    df.drop(columns=["label", "watch_time", "gmv"]).to_csv(d / "unlabelled.csv", index=False)
    params = pipeline.ExportParams(
        model="mmoe",
        mode="load",
        checkpoint=exported_artifacts / "mmoe" / "1" / "checkpoint.pt",
        data_path=d / "unlabelled.csv",
        artifacts=tmp_path,
        progress=False,
    )
    result = pipeline.run(params)
    assert result.evaluation.metrics == {}
    assert result.artifacts[0].metadata["parity"]["passed"]


def test_feature_meta_renames_columns_of_a_torch_checkpoint(exported_artifacts, tmp_path):
    """Same width, other names: the feature-meta sets the columns the artifact advertises."""
    renamed = [f"f{i}" for i in range(10)]
    (tmp_path / "meta.json").write_text(json.dumps({"feature_columns": renamed}))
    df = D.synthetic_dataset(500, 2)
    df.columns = renamed + list(df.columns[10:])
    df.to_csv(tmp_path / "renamed.csv", index=False)
    params = pipeline.ExportParams(
        model="deepfm",
        mode="load",
        checkpoint=exported_artifacts / "deepfm" / "1" / "checkpoint.pt",
        feature_meta=tmp_path / "meta.json",
        data_path=tmp_path / "renamed.csv",
        artifacts=tmp_path / "art",
        progress=False,
    )
    meta = pipeline.run(params).artifacts[0].metadata
    assert meta["feature_columns"] == renamed

    (tmp_path / "short.json").write_text(json.dumps({"feature_columns": renamed[:5]}))
    params.feature_meta = tmp_path / "short.json"
    from exporter.errors import ExporterError

    with pytest.raises(ExporterError, match="lists 5 columns but checkpoint .* was trained on 10"):
        pipeline.prepare(params)


def test_a_loaded_checkpoint_has_its_denormal_weights_zeroed(exported_artifacts, tmp_path):
    """A checkpoint trained before the optimiser flushed denormals: its tiny weights would slow every product
    they enter; loading zeroes those below the flush bound and leaves every other weight as stored."""
    import torch

    from exporter.models import get_spec
    from exporter.models import optimiser as opt

    ckpt = torch.load(exported_artifacts / "deepfm" / "1" / "checkpoint.pt", weights_only=True)
    name, weight = next((k, v) for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.dim() == 2)
    tiny = torch.finfo(weight.dtype).tiny
    weight = weight.clone()
    weight[0, :3] = torch.tensor([tiny / 8, -1e-25, 0.125], dtype=weight.dtype)
    ckpt["state_dict"][name] = weight
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = get_spec("deepfm").load(tmp_path / "old.pt", None, {})
    state = loaded.model.state_dict()
    assert state[name][0, :3].tolist() == [0.0, 0.0, 0.125]
    stored = ckpt["state_dict"]
    for key, value in stored.items():
        keep = value.abs() >= opt.flush_below(value.dtype) if value.is_floating_point() else None
        if keep is not None:
            torch.testing.assert_close(state[key][keep], value[keep], rtol=0, atol=0)


@pytest.mark.parametrize("streaming", ["off", "on"])
def test_columns_named_with_characters_xgboost_refuses_train_export_and_load(tmp_path, streaming):
    """XGBoost refuses '[', ']' and '<' in feature names (``age<30`` is a common column name): the booster is stored
    without names, feature_meta.json beside it names the columns, and load mode reads them from there."""
    from tests.conftest import export_small

    rng = np.random.default_rng(5)
    n = 2000
    frame = pd.DataFrame(
        {"user_id": rng.integers(0, 50, n), "age<30": rng.integers(0, 2, n), "a[0]": rng.normal(size=n)}
    )
    frame["label"] = ((frame["age<30"] + rng.normal(size=n)) > 0.8).astype(int)
    frame.to_parquet(tmp_path / "log.parquet")
    run = export_small("xgb", tmp_path / "art", data_path=tmp_path / "log.parquet", streaming=streaming)
    version = run.artifacts[0].path
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["feature_columns"] == ["user_id", "age<30", "a[0]"] and meta["parity"]["passed"]
    top = meta["evaluation"]["feature_importance"]["heads"]["label"]["top"]
    assert top[0]["column"] == "age<30"  # gain by the column's own name, not f1

    result = run_cli(
        "export", "xgb", "--mode", "load", "--checkpoint", str(version / "model.ubj"),
        "--data", str(tmp_path / "log.parquet"), "--artifacts", str(tmp_path / "again"), "--quiet", "--no-tracking",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    again = tmp_path / "again" / "xgb" / "1"
    assert json.loads((again / "metadata.json").read_text())["feature_columns"] == meta["feature_columns"]
    x = frame[meta["feature_columns"]].to_numpy(dtype=np.float64)[:100]
    np.testing.assert_allclose(_onnx_predict(again, x), _onnx_predict(version, x), atol=1e-6)
