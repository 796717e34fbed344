"""What the quality benchmark measures the models with and against: a plain XGBoost, and exported towers run as
serving would run them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter.errors import ExporterError
from exporter.runtime.rules import read_metadata
from exporter.tools.quality_data import SEED


def xgb_baseline(
    x_train: np.ndarray, y_train: np.ndarray, x_held: np.ndarray, params: Mapping[str, Any], threads: int
) -> np.ndarray:
    """Plain XGBoost (xgboost defaults but for ``params``) on the raw numeric columns: held-out probabilities."""
    import xgboost as xgb

    booster = xgb.train(
        {
            "objective": "binary:logistic",
            "tree_method": "hist",
            "max_depth": int(params["max_depth"]),
            "eta": float(params["learning_rate"]),
            "nthread": threads,
            "seed": SEED,
        },
        xgb.DMatrix(x_train, label=y_train),
        num_boost_round=int(params["n_estimators"]),
    )
    return np.asarray(booster.predict(xgb.DMatrix(x_held)), dtype=np.float64)


def tower_embeddings(version_dir: Path, table: pd.DataFrame, threads: int) -> np.ndarray:
    """Run an exported tower (model.onnx, inputs by metadata ``feature_columns``) over every row of ``table``."""
    import onnxruntime as ort

    meta = read_metadata(version_dir)
    columns = list(meta["feature_columns"])
    from exporter.features import input_columns

    missing = [c for c in input_columns(columns, list(table.columns)) if c not in table.columns]
    if missing:
        raise ExporterError(f"{version_dir}: the tower reads {', '.join(missing)}, which the benchmark table lacks")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(version_dir / meta.get("model_file", "model.onnx")), options, providers=["CPUExecutionProvider"]
    )
    from exporter.features import FeaturePlan

    # encoded as `score` would: numbers as they are, a history column of lists as its max_length columns
    x = np.ascontiguousarray(FeaturePlan.from_artifact(version_dir).encode(table, source="benchmark table"))
    parts = [session.run(["predictions"], {"features": x[i : i + 8192]})[0] for i in range(0, len(x), 8192)]
    return np.concatenate(parts).astype(np.float64)
