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


#: EASE's L2 penalty in the quality benchmark (of 50, 200 and 500 tried on MovieLens-100k's split, the best on
#: liked pairs, so a slightly optimistic baseline); the most items it takes (its item-item matrix is dense)
EASE_LAMBDA = 200.0
EASE_MAX_ITEMS = 10_000


def ease(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """EASE (Steck, "Embarrassingly Shallow Autoencoders", 2019), a strong item-item collaborative baseline: the
    interactions X [n_users, n_items] (``users``/``items`` are their row indices; duplicates count once) and the
    item weights B = I - P / diag(P) with P = (X'X + lam I)^-1 and diag(B) = 0. A user's scores are its row of
    X B: X's rows are the user embeddings and B's columns the item embeddings of a dot-product retrieval."""
    if n_items > EASE_MAX_ITEMS:
        raise ExporterError(f"EASE needs a dense {n_items} x {n_items} matrix; at most {EASE_MAX_ITEMS:,} items")
    x = np.zeros((n_users, n_items), dtype=np.float64)
    x[np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)] = 1.0
    gram = x.T @ x
    gram[np.diag_indices(n_items)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices(n_items)] = 0.0
    return x, b
