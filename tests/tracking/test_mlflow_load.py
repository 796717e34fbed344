"""Load mode from MLflow: ``--checkpoint runs:/RUN_ID/PATH`` (or ``models:/NAME/VERSION``) of an XGBoost or
PyTorch MLflow model; the columns from its signature; other flavors refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.tracking.test_tracking import cli


def _store(tmp_path: Path) -> str:
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def _log(uri: str, log) -> str:
    """Log a model into a run of the store at ``uri`` (its files beside the database, never in the checkout)."""
    from exporter.tracking import store as S

    folder = Path(uri[len("sqlite:///") :]).parent / "artifacts"
    with S.pointed_at(S.Store(uri, folder.parent)) as mlflow:  # the process's settings restored afterwards
        client = mlflow.MlflowClient(uri)
        found = client.get_experiment_by_name("logged")
        exp = found.experiment_id if found else client.create_experiment("logged", artifact_location=folder.as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            log(mlflow)
    return str(run.info.run_id)


@pytest.mark.slow
def test_an_mlflow_xgboost_model_exports_with_its_signature_columns(tmp_path: Path) -> None:
    import xgboost as xgb
    from mlflow.models import infer_signature

    from exporter.training.data import synthetic_dataset

    columns = ["item_ctr", "item_cvr", "user_age", "item_price"]
    frame = synthetic_dataset(2000, 3)
    model = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(frame[columns], frame["label"])
    signature = infer_signature(frame[columns].head(5), model.predict_proba(frame[columns].head(5))[:, 1])
    run_id = _log(
        _store(tmp_path),
        lambda mlflow: mlflow.xgboost.log_model(model, name="model", signature=signature, registered_model_name="ctr"),
    )
    for checkpoint in (f"runs:/{run_id}/model", "models:/ctr/1"):
        done = cli(
            "export",
            "xgb",
            "--mode",
            "load",
            "--checkpoint",
            checkpoint,
            "--rows",
            "2000",
            "--quiet",
            "--artifacts",
            "artifacts",
            "--no-tracking",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "artifacts" / "xgb" / "1" / "metadata.json").read_text())
    assert meta["feature_columns"] == columns and meta["parity"]["passed"]
    assert meta["training"]["mode"] == "load"
    from exporter.handler import ModelHandler

    handler = ModelHandler.load(tmp_path / "artifacts" / "xgb" / "1")
    rows = frame[columns].head(20)
    np.testing.assert_allclose(handler.run(rows.to_numpy(dtype=np.float64)), model.predict_proba(rows)[:, 1], atol=1e-6)


@pytest.mark.slow
def test_an_mlflow_pytorch_model_exports_through_its_checkpoint_and_other_flavors_are_named(tmp_path: Path) -> None:
    import torch

    from tests.conftest import export_small

    export_small("deepfm", tmp_path / "source")
    checkpoint = tmp_path / "source" / "deepfm" / "1" / "checkpoint.pt"
    uri = _store(tmp_path)
    with_ckpt = _log(
        uri,
        lambda mlflow: mlflow.pytorch.log_model(
            torch.nn.Linear(2, 1),
            name="model",
            extra_files=[str(checkpoint)],
            pip_requirements=["torch"],
            input_example=np.zeros((1, 2), dtype=np.float32),
        ),
    )
    done = cli(
        "export",
        "deepfm",
        "--mode",
        "load",
        "--checkpoint",
        f"runs:/{with_ckpt}/model",
        "--rows",
        "3000",
        "--seed",
        "7",
        "--quiet",
        "--artifacts",
        "artifacts",
        "--no-tracking",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "artifacts" / "deepfm" / "1" / "metadata.json").read_text())
    source = json.loads((tmp_path / "source" / "deepfm" / "1" / "metadata.json").read_text())
    assert meta["sha256"] == source["sha256"]  # the same network, exported again

    bare = _log(
        uri,
        lambda mlflow: mlflow.pytorch.log_model(
            torch.nn.Linear(2, 1), name="model", pip_requirements=["torch"], input_example=np.zeros((1, 2), np.float32)
        ),
    )
    refused = cli("export", "deepfm", "--mode", "load", "--checkpoint", f"runs:/{bare}/model", cwd=tmp_path)
    assert refused.returncode == 2 and "without the exporter's checkpoint.pt" in refused.stderr

    as_xgb = cli("export", "xgb", "--mode", "load", "--checkpoint", f"runs:/{with_ckpt}/model", cwd=tmp_path)
    assert as_xgb.returncode == 2 and "is an MLflow pytorch model but xgb is a xgboost model" in as_xgb.stderr

    from sklearn.linear_model import LogisticRegression

    sk = LogisticRegression().fit(np.array([[0.0], [1.0]]), np.array([0, 1]))
    sk_run = _log(
        uri,
        lambda mlflow: mlflow.sklearn.log_model(
            sk, name="model", pip_requirements=["scikit-learn"], serialization_format="cloudpickle"
        ),
    )
    other = cli("export", "xgb", "--mode", "load", "--checkpoint", f"runs:/{sk_run}/model", cwd=tmp_path)
    assert other.returncode == 2 and "of flavor sklearn" in other.stderr and "Traceback" not in other.stderr
    text_run = _log(uri, lambda mlflow: mlflow.log_text("not a model", "model/MLmodel"))
    fake = cli("export", "xgb", "--mode", "load", "--checkpoint", f"runs:/{text_run}/model", cwd=tmp_path)
    assert fake.returncode == 2 and "is not an MLflow model" in fake.stderr
